"""The libvirt node driver on a private libvirtd: the node image boots as a libvirt domain under OVMF Secure
Boot with our vTPM (external TPM backend), its agent answers over a libvirt console stream, and it passes the
project's attestation (EK certificate from our platform CA, credential activation, predicted PCR 4 and 7)."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from cryptography import x509

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.eventlog.predict import predict_pcrs
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import LibvirtDriver, LibvirtNodeVM
from trustedlaunch.node.libvirt_host import LibvirtHost, NamespaceNetwork
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.tpm.ekca import EkCa, verify_ek_certificate
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 600.0  # generous: TCG on two cores shared with other VM tests
TCP_CLIENT = Path(__file__).with_name("libvirt_tcp_client.py")


@pytest.fixture(scope="module")
def libvirt_host() -> Iterator[LibvirtHost]:
    base = Path(tempfile.mkdtemp(prefix="tl-lvh-"))
    with LibvirtHost(base) as host:
        yield host
    assert not host.running and not host.qemu_pids()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def driver(libvirt_host: LibvirtHost) -> Iterator[LibvirtDriver]:
    driver = LibvirtDriver(libvirt_host.uri)
    yield driver
    driver.close()


@pytest.fixture(scope="module")
def libvirt_node(
    driver: LibvirtDriver, node_image: NodeImage, node_base: Path, node_ek_ca: EkCa
) -> Iterator[LibvirtNodeVM]:
    vtpm = Vtpm.create(node_base / "vtpm-libvirt", ek_ca=node_ek_ca)
    with driver.create(node_image, node_base / "vm-libvirt", secure_boot=True, vtpm=vtpm) as vm:
        vm.wait_ready(BOOT_TIMEOUT)
        yield vm
    assert not vm.running and not vtpm.running


def test_node_boots_through_libvirt_and_passes_attestation(
    libvirt_node: LibvirtNodeVM,
    node_image: NodeImage,
    node_ek_ca: EkCa,
    libvirt_host: LibvirtHost,
    node_base: Path,
) -> None:
    assert libvirt_node.ready_after is not None
    policy = policy_for_image(node_image.esp_dir, FIRMWARE[True][1])
    attestation = attest_node(libvirt_node, policy=policy, ek_ca=[node_ek_ca.certificate])
    assert attestation.ok, [str(finding) for finding in attestation.result.findings]
    assert attestation.enrolled
    certificate = x509.load_der_x509_certificate(libvirt_node.ek_certificate())
    verify_ek_certificate(certificate, [node_ek_ca.certificate])
    quote = libvirt_node.request_quote(b"libvirt")
    predicted = predict_pcrs(node_image.esp_dir, FIRMWARE[True][1], ("sha256",))
    for pcr in (4, 7):
        assert predicted.values["sha256"][pcr] == quote.pcr_values["sha256"][pcr], f"PCR{pcr}"
    assert libvirt_node.console_tail().strip()  # the serial console's log file, written by QEMU
    pid = libvirt_host.qemu_pid(libvirt_node.domain_name)
    assert pid is not None and libvirt_host.qemu_pids() == [pid]
    assert str(node_base / "vm-libvirt") in Path(f"/proc/{pid}/cmdline").read_text()


def test_running_domain_is_adopted_by_its_uuid(
    libvirt_node: LibvirtNodeVM, libvirt_host: LibvirtHost, node_base: Path
) -> None:
    other = LibvirtDriver(libvirt_host.uri)  # a restarted control plane's own connection
    try:
        adopted = other.adopt(libvirt_node.handle, node_base / "vm-libvirt")
        assert adopted is not None and adopted.running
        assert adopted.agent().channel.ping("adopted", 30.0)
        adopted.agent().close()
        assert other.adopt("00000000-0000-0000-0000-000000000000", node_base / "x") is None
    finally:
        other.close()


def test_root_filesystem_disk_opens_under_dm_verity(
    driver: LibvirtDriver, rootfs_node_image: NodeImage, node_base: Path
) -> None:
    """The root filesystem disk is the guest's first virtio disk (/dev/vda) beside the ESP's virtual FAT."""
    with driver.create(
        rootfs_node_image, node_base / "vm-libvirt-rootfs", secure_boot=False, vtpm=None
    ) as vm:
        vm.wait_ready(BOOT_TIMEOUT)
        assert vm.rootfs_status is not None and vm.rootfs_status.state == "verified"
        assert "v2.3.7" in vm.rootfs_status.containerd_version


def test_node_on_a_host_in_a_network_namespace_attests_over_tcp(
    node_image: NodeImage, node_ek_ca: EkCa, node_base: Path
) -> None:
    """A host in its own network namespace, reached with qemu+tcp:// from the client namespace (where the
    driver runs, as a control plane on another machine would): the node boots there and attests."""
    network = NamespaceNetwork(f"tl-{secrets.token_hex(3)}")
    try:
        namespace, address = network.add_host()
        host = LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvh-")), namespace=namespace, address=address)
        try:
            host.start()
            vtpm_dir = node_base / "vtpm-libvirt-tcp"
            Vtpm.create(vtpm_dir, ek_ca=node_ek_ca)
            paths = (node_image.esp_dir.parent, node_ek_ca.directory, vtpm_dir, node_base / "vm-libvirt-tcp")
            client = [sys.executable, str(TCP_CLIENT), host.tcp_uri, *map(str, paths)]
            result = subprocess.run(
                ["ip", "netns", "exec", network.client, *client],
                capture_output=True,
                text=True,
                timeout=BOOT_TIMEOUT + 120,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            outcome = json.loads(result.stdout.splitlines()[-1])
            assert outcome["ok"] and outcome["enrolled"], outcome["findings"]
            assert not host.qemu_pids()  # the client destroyed its domain
        finally:
            host.remove()
    finally:
        network.remove()


def test_destroyed_domain_leaves_nothing(
    driver: LibvirtDriver, node_image: NodeImage, node_base: Path, libvirt_host: LibvirtHost
) -> None:
    vm = driver.create(node_image, node_base / "vm-libvirt-short", secure_boot=False, vtpm=None)
    vm.start()
    handle = vm.handle
    assert vm.running
    vm.destroy()
    assert not vm.running
    with pytest.raises(libvirt.libvirtError):
        driver.connection.lookupByUUIDString(handle)
