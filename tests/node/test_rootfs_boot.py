"""Real boots of a node image with its dm-verity root filesystem: the agent opens it (Debian's signed virtio,
dm-verity and squashfs modules under Secure Boot lockdown, dmsetup), reads every block and runs containerd
from it; the root hash on GRUB's measured command line is covered by the predicted policy; a disk altered
under the same root hash stops the node with a diagnosis naming the root filesystem."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.attest.derivation import image_kernel_cmdline, policy_for_image
from trustedlaunch.attest.policy import RootFilesystemRule
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.findings import Check
from trustedlaunch.node.diagnose import diagnose_boot_failure
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import FIRMWARE, NodeVM, RootfsFailedError
from trustedlaunch.node.rootfs import ROOTFS_NAME
from trustedlaunch.tpm.ekca import EkCa
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
NONCE = bytes.fromhex("5007f5")


def measured_cmdline(image: NodeImage) -> str:
    return f"initrd=initrd.gz {image.kernel_cmdline}"  # GRUB unescapes `initrd=\initrd.gz`


@pytest.fixture(scope="module")
def tampered_image(rootfs_node_image: NodeImage, node_base: Path) -> NodeImage:
    """The rootfs node image with one byte of its squashfs data flipped (same root hash on its command
    line)."""
    rootfs = rootfs_node_image.rootfs
    assert rootfs is not None
    tampered = node_base / "tampered" / ROOTFS_NAME
    tampered.parent.mkdir()
    shutil.copyfile(rootfs.path, tampered)
    with tampered.open("r+b") as disk:
        disk.seek(rootfs.data_size // 3)
        byte = disk.read(1)
        disk.seek(rootfs.data_size // 3)
        disk.write(bytes([byte[0] ^ 0x80]))
    return dataclasses.replace(rootfs_node_image, rootfs=dataclasses.replace(rootfs, path=tampered))


@pytest.fixture(scope="module")
def rootfs_nodes(
    rootfs_node_image: NodeImage, tampered_image: NodeImage, node_base: Path, node_ek_ca: EkCa
) -> Iterator[tuple[NodeVM, NodeVM]]:
    """(Secure Boot + vTPM node of the rootfs image, Secure Boot node of the tampered image), started side
    by side; the tampered one is waited for by its test."""
    vtpm = Vtpm.create(node_base / "vtpm-rootfs", ek_ca=node_ek_ca)
    runs = Path(tempfile.mkdtemp(prefix="tl-rootfs-", dir=node_base))
    good = NodeVM(rootfs_node_image, runs / "good", secure_boot=True, vtpm=vtpm)
    bad = NodeVM(tampered_image, runs / "bad", secure_boot=True)
    with good, bad:
        good.wait_ready()
        yield good, bad
    assert not good.running and not bad.running and not vtpm.running


def test_node_opens_its_verity_root_and_runs_containerd_from_it(rootfs_nodes: tuple[NodeVM, NodeVM]) -> None:
    node = rootfs_nodes[0]
    assert node.rootfs_status is not None
    assert node.rootfs_status.state == "verified"
    assert node.rootfs_status.containerd_version.startswith("containerd github.com/containerd/containerd/v2 ")
    assert "v2.3.7" in node.rootfs_status.containerd_version
    assert node.rootfs_status.detail == ""
    assert "trustedlaunch: root filesystem verified (uptime " in node.console_log.read_text(errors="replace")


def test_predicted_policy_covers_the_root_hash_and_the_initramfs(
    rootfs_nodes: tuple[NodeVM, NodeVM],
    rootfs_node_image: NodeImage,
    node_image: NodeImage,
    node_ek_ca: EkCa,
    tmp_path: Path,
) -> None:
    node = rootfs_nodes[0]
    rootfs = rootfs_node_image.rootfs
    assert rootfs is not None
    varstore = FIRMWARE[True][1]
    policy = policy_for_image(
        rootfs_node_image.esp_dir, varstore, kernel_cmdline=measured_cmdline(rootfs_node_image)
    )
    assert policy.root_filesystem == RootFilesystemRule(rootfs.root_hash)  # read from the image's grub.cfg
    attestation = attest_node(node, policy=policy, ek_ca=[node_ek_ca.certificate])
    assert attestation.ok, [str(finding) for finding in attestation.result.findings]
    quote = node.request_quote(NONCE)
    assert quote.event_log is not None
    summary = summarize(parse_event_log(quote.event_log))
    assert summary.kernel_cmdline == measured_cmdline(rootfs_node_image)
    assert image_kernel_cmdline(rootfs_node_image.esp_dir) == summary.kernel_cmdline  # predicted exactly
    assert f"trustedlaunch.verity_roothash={rootfs.root_hash}" in summary.kernel_cmdline.split()
    # the same boot chain expecting the image without a root filesystem (no root hash): refused
    other = policy_for_image(rootfs_node_image.esp_dir, varstore, kernel_cmdline=measured_cmdline(node_image))
    refused = attest_node(node, policy=other, ek_ca=[node_ek_ca.certificate], node_state=attestation.state)
    assert not refused.ok
    assert Check.KERNEL_CMDLINE in {finding.check for finding in refused.result.findings}
    # the predicted policy of an image with another root filesystem: refused, the finding names it
    other_root = "0f" * 32
    rule = RootFilesystemRule(other_root, "TLDebian12gen2TLcontainerd-202612.06.0")
    another = dataclasses.replace(policy, root_filesystem=rule)
    refused = attest_node(node, policy=another, ek_ca=[node_ek_ca.certificate], node_state=refused.state)
    assert not refused.ok
    [finding] = refused.result.findings
    assert summary.kernel_cmdline_event is not None
    assert (finding.check, finding.component, finding.pcr, finding.event_index) == (
        Check.ROOT_FILESYSTEM,
        "root filesystem",
        8,
        summary.kernel_cmdline_event.index,
    )
    assert finding.message == (
        "root filesystem hash differs from node image TLDebian12gen2TLcontainerd-202612.06.0: "
        f"measured {rootfs.root_hash}, expected {other_root}"
    )
    # the predicted policy of the same image with another initramfs (agent): the initramfs GRUB read and
    # measured into PCR 9 is not that one, and the finding names it
    altered = tmp_path / "altered"
    shutil.copytree(rootfs_node_image.esp_dir, altered)
    (altered / "initrd.gz").write_bytes((altered / "initrd.gz").read_bytes() + b"\0")
    altered_policy = policy_for_image(altered, varstore)
    ek_ca = [node_ek_ca.certificate]
    refused = attest_node(node, policy=altered_policy, ek_ca=ek_ca, node_state=refused.state)
    [finding] = refused.result.findings
    assert (finding.check, finding.component, finding.pcr) == (Check.PCR_VALUE, "initramfs", 9)
    assert "GRUB read /initrd.gz" in finding.message, finding.message


def test_altered_root_filesystem_stops_the_node_naming_it(rootfs_nodes: tuple[NodeVM, NodeVM]) -> None:
    node = rootfs_nodes[1]
    rootfs = node.image.rootfs
    assert rootfs is not None
    with pytest.raises(RootfsFailedError) as failure:
        node.wait_ready()
    assert failure.value.status.state == "corrupted"
    message = str(failure.value)
    assert f"root filesystem {ROOTFS_NAME} (root hash {rootfs.root_hash}) is corrupted: dm-verity" in message
    assert "verity" in failure.value.status.detail and "corrupted" in failure.value.status.detail
    assert "trustedlaunch: root filesystem corrupted (dm-verity)" in failure.value.console_tail
    diagnosis = diagnose_boot_failure(node, failure.value)
    assert diagnosis.component == "root filesystem"
    assert "is corrupted: dm-verity failed a read" in diagnosis.message
    assert node.agent().channel.ping("again", 30.0)  # the agent still serves the host
