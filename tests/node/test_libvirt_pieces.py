"""The libvirt driver's pieces that need no VM: the console bridge's bounded backlog against a real socket
pair, and domain definitions and adoption on libvirt's own test driver (`test:///default`: libvirt's
in-process hypervisor, which parses, stores and "runs" domains), with a real vTPM (swtpm and the bank proxy)
in the adopted VM's run directory."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest

from trustedlaunch.control.libvirt_node_driver import AdoptedLibvirtVM, LibvirtNodeDriver
from trustedlaunch.control.node_drivers import node_driver
from trustedlaunch.control.node_processes import node_processes
from trustedlaunch.node.image import BUSYBOX, NodeImage
from trustedlaunch.node.kubelet import NodeNetwork
from trustedlaunch.node.libvirt_driver import (
    METADATA_NS,
    QEMU_SANDBOX,
    QEMU_XML_NAMESPACE,
    ConsoleBacklog,
    ConsoleBacklogFullError,
    ConsoleLogFile,
    NodeVolumes,
    domain_xml,
)
from trustedlaunch.node.libvirt_volumes import POOL_NAME, HostVolume
from trustedlaunch.node.qemu import readable_tail
from trustedlaunch.tpm.vtpm import Vtpm

TEST_HOST = "test:///default"
HOSTILE_DIR_NAME = "a&b<c>'\""


def test_the_backlog_never_blocks_on_a_full_socket_and_refuses_past_its_bound() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setblocking(False)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        backlog = ConsoleBacklog(256 * 1024)
        sent = bytes(range(256)) * 1024
        backlog.add(sent)
        backlog.drain_to_socket(ours)  # nobody reads: returns with most of it still queued
        assert 0 < len(backlog) < len(sent)
        with pytest.raises(ConsoleBacklogFullError, match="more than 262144 bytes"):
            backlog.add(b"y" * (backlog.limit - len(backlog) + 1))
        received = bytearray()
        theirs.settimeout(5.0)
        while len(received) < len(sent):
            received += theirs.recv(65536)
            backlog.drain_to_socket(ours)
        assert bytes(received) == sent and len(backlog) == 0


def test_the_backlog_stops_when_the_stream_takes_nothing() -> None:
    backlog = ConsoleBacklog(1024)
    backlog.add(b"ping")
    backlog.drain(lambda data: -2)  # a non-blocking libvirt stream that would block
    assert len(backlog) == 4


@pytest.fixture
def run_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="tl-lvp-"))
    yield base / HOSTILE_DIR_NAME
    shutil.rmtree(base, ignore_errors=True)


def image_in(folder: Path) -> NodeImage:
    esp = folder / "image" / "esp"
    esp.mkdir(parents=True)
    return NodeImage(
        esp_dir=esp, metadata_path=folder / "image.json", version="1", kernel_cmdline="", files={}
    )


def test_domain_definition_escapes_the_run_directory(run_dir: Path) -> None:
    xml = domain_xml(
        "tl-node-0a1b2c3d", image_in(run_dir), run_dir, secure_boot=True, tpm_socket=run_dir / "t"
    )
    definition = ElementTree.fromstring(xml)
    assert definition.findtext("os/nvram") == str(run_dir / "OVMF_VARS.fd")
    serial_logs = [source.get("path") for source in definition.iterfind("devices/serial/source")]
    assert serial_logs == [str(run_dir / "console.log")]
    connection = libvirt.open(TEST_HOST)
    try:
        stored = ElementTree.fromstring(connection.defineXML(xml).XMLDesc(0))
        assert stored.findtext("os/nvram") == str(run_dir / "OVMF_VARS.fd")
    finally:
        connection.close()


def passed_through(xml: str) -> list[str | None]:
    """The QEMU arguments a domain definition passes through."""
    definition = ElementTree.fromstring(xml)
    assert definition.find("devices/interface") is None  # no NIC of libvirt's: the guest has only ours
    return [arg.get("value") for arg in definition.iterfind(f"{{{QEMU_XML_NAMESPACE}}}commandline/*")]


def test_the_domain_network_is_the_direct_drivers_user_network_passed_through(run_dir: Path) -> None:
    network = NodeNetwork(6443, 40123, apiserver_address="10.254.0.1", kubelet_address="10.254.1.2")
    image = image_in(run_dir)
    without = passed_through(domain_xml("tl-node-1", image, run_dir, secure_boot=False, tpm_socket=None))
    assert without == ["-sandbox", QEMU_SANDBOX]  # no NIC, the sandbox still on
    arguments = passed_through(
        domain_xml("tl-node-1", image, run_dir, secure_boot=False, tpm_socket=None, network=network)
    )
    assert arguments[:4] == ["-sandbox", QEMU_SANDBOX, "-netdev", network.netdev()]
    assert arguments[4:] == ["-device", "virtio-net-pci,netdev=net0,bus=pcie.0,addr=0x10"]
    options = network.netdev().split(",")
    assert "restrict=on" in options
    assert f"guestfwd=tcp:10.0.2.100:443-cmd:{BUSYBOX} nc 10.254.0.1 6443" in options
    assert "hostfwd=tcp:10.254.1.2:40123-10.0.2.15:40123" in options
    assert "spawn" not in QEMU_SANDBOX and "elevateprivileges" not in QEMU_SANDBOX  # the forward's nc


def running_domain(driver: LibvirtNodeDriver, name: str, run_dir: Path, image: NodeImage) -> str:
    """A domain of ours (as domain_xml defines it) running on the test host; its UUID."""
    domain = driver.connection.defineXML(domain_xml(name, image, run_dir, secure_boot=False, tpm_socket=None))
    domain.create()
    return str(domain.UUIDString())


def test_only_a_node_domain_of_the_run_directory_is_adopted(run_dir: Path) -> None:
    driver = node_driver("libvirt", TEST_HOST)
    assert isinstance(driver, LibvirtNodeDriver)
    try:
        image = image_in(run_dir.parent)
        foreign = driver.connection.lookupByName("test")  # the test host's own running domain
        assert foreign.isActive() and driver.adopt(foreign.UUIDString(), run_dir) is None
        renamed = running_domain(driver, "guest-1", run_dir, image)
        assert driver.adopt(renamed, run_dir) is None
        elsewhere = running_domain(driver, "tl-node-00000001", run_dir.parent / "other", image)
        assert driver.adopt(elsewhere, run_dir) is None
        ours = running_domain(driver, "tl-node-00000002", run_dir, image)
        assert driver.adopt(ours, run_dir.parent / "a") is None  # a prefix of the run directory is not it
        assert driver.adopt("not-a-uuid", run_dir) is None
        adopted = driver.adopt(ours, run_dir)
        assert isinstance(adopted, AdoptedLibvirtVM) and adopted.running
        driver.connection.lookupByUUIDString(ours).destroy()
        assert driver.adopt(ours, run_dir) is None  # not running
    finally:
        driver.close()


def test_destroying_an_adopted_vm_kills_its_vtpm(run_dir: Path) -> None:
    """The vTPM an earlier control-plane process started for the domain (swtpm and the bank proxy in the
    run directory) goes with the adopted VM."""
    vtpm = Vtpm.create(run_dir / "vtpm", ek_ca=None)
    driver = node_driver("libvirt", TEST_HOST)
    assert isinstance(driver, LibvirtNodeDriver)
    try:
        tpm_socket = vtpm.start()
        xml = domain_xml(
            "tl-node-00000003", image_in(run_dir.parent), run_dir, secure_boot=False, tpm_socket=tpm_socket
        )
        domain = driver.connection.defineXML(xml)
        domain.create()
        assert sorted(node_processes(run_dir).values()) == ["bankproxy", "swtpm"]
        adopted = driver.adopt(domain.UUIDString(), run_dir)
        assert adopted is not None
        adopted.destroy()
        assert not node_processes(run_dir) and not adopted.running
        uuid = domain.UUIDString()
        assert uuid not in [left.UUIDString() for left in driver.connection.listAllDomains(0)]  # undefined
    finally:
        vtpm.stop()
        driver.close()


def test_the_control_plane_imports_without_libvirt_python() -> None:
    """libvirt-python is imported only when a libvirt driver is asked for (control.node_drivers)."""
    check = "import sys, trustedlaunch.control.node_drivers; assert 'libvirt' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)


def test_a_remote_domain_names_only_the_hosts_volumes_and_is_adopted_by_its_metadata(run_dir: Path) -> None:
    """With a remote host's volumes the definition names none of our paths (the run directory only as a
    digest in our metadata, which adoption checks) and records the firmware it boots."""
    image = image_in(run_dir.parent)

    def volume(kind: str, digest: str) -> HostVolume:
        return HostVolume(
            f"{kind}-{digest}", f"/var/lib/libvirt/images/{POOL_NAME}/{kind}-{digest}", 1, digest
        )

    volumes = NodeVolumes(
        volume("esp", "e" * 64), None, volume("ovmf-code", "c" * 64), volume("ovmf-vars", "d" * 64)
    )
    xml = domain_xml(
        "tl-node-00000004", image, run_dir, secure_boot=True, tpm_socket=None, host_tpm=True, volumes=volumes
    )
    assert str(run_dir.parent) not in xml and "/usr/share" not in xml
    definition = ElementTree.fromstring(xml)
    assert [disk.get("type") for disk in definition.iterfind("devices/disk")] == ["volume"]
    assert definition.findtext("os/loader") == volumes.firmware_code.path
    assert definition.find("os/nvram").get("template") == volumes.varstore_template.path  # type: ignore[union-attr]
    assert [serial.get("type") for serial in definition.iterfind("devices/serial")] == ["pty", "pty"]
    assert definition.find("devices/tpm/backend").get("type") == "emulator"  # type: ignore[union-attr]
    driver = node_driver("libvirt", TEST_HOST)
    assert isinstance(driver, LibvirtNodeDriver)
    try:
        domain = driver.connection.defineXML(xml)
        stored = ElementTree.fromstring(domain.XMLDesc(0))
        ours = stored.find(f"metadata/{{{METADATA_NS}}}node")
        assert ours is not None and ours.get("firmwareCode") == "c" * 64
        domain.create()
        assert driver.adoptable_domain(domain.UUIDString(), run_dir) is not None
        assert driver.adoptable_domain(domain.UUIDString(), run_dir.parent / "other") is None
        domain.destroy()
    finally:
        driver.close()


def test_the_pumped_console_log_keeps_its_tail_within_its_bound(run_dir: Path) -> None:
    run_dir.mkdir(parents=True)
    log = ConsoleLogFile(run_dir / "console.log", limit=64 * 1024)
    try:
        for line in range(5000):
            log.append(f"boot line {line}\r\n".encode())
            assert (run_dir / "console.log").stat().st_size <= log.limit
    finally:
        log.close()
    tail = readable_tail(run_dir / "console.log")
    assert tail.endswith("boot line 4999\n") and "boot line 4998\n" in tail
    assert "boot line 0\n" not in (run_dir / "console.log").read_text()
