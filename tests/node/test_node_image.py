"""Node image builder: reproducible ESP folder and an initramfs with busybox and the agent only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from node_helpers import initramfs_listing

from trustedlaunch.node.image import (
    DEFAULT_CMDLINE,
    NodeImage,
    NodeImageError,
    build_node_image,
    default_kernel,
)


def test_image_is_reproducible(node_image: NodeImage, tmp_path: Path) -> None:
    again = build_node_image(tmp_path / "again")
    assert again.version == node_image.version
    assert again.files == node_image.files
    for name in node_image.files:
        assert (again.esp_dir / name).read_bytes() == (node_image.esp_dir / name).read_bytes()


def test_cmdline_changes_version(node_image: NodeImage, tmp_path: Path) -> None:
    other = build_node_image(tmp_path / "other", cmdline=DEFAULT_CMDLINE + " quiet")
    assert other.version != node_image.version
    assert other.files["vmlinuz"] == node_image.files["vmlinuz"]
    assert other.files["EFI/debian/grub.cfg"] != node_image.files["EFI/debian/grub.cfg"]


def test_metadata_lists_every_file_with_its_hash(node_image: NodeImage) -> None:
    metadata = json.loads(node_image.metadata_path.read_text())
    assert metadata["trustedLaunchCapable"] is True
    assert metadata["version"] == node_image.version
    assert metadata["kernel"] == default_kernel().name
    listed = {item["path"]: item["sha256"] for item in metadata["files"]}
    assert set(listed) == {
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/grubx64.efi",
        "EFI/debian/grub.cfg",
        "vmlinuz",
        "initrd.gz",
    }
    assert listed == node_image.files
    assert NodeImage.load(node_image.metadata_path.parent) == node_image
    shim = Path("/usr/lib/shim/shimx64.efi.signed").read_bytes()
    assert (node_image.esp_dir / "EFI/BOOT/BOOTX64.EFI").read_bytes() == shim


def test_grub_reads_the_initramfs_then_chainloads_the_kernel_efi_stub(node_image: NodeImage) -> None:
    """GRUB reads the initramfs (so it measures it into PCR 9) before the kernel's stub loads it."""
    config = (node_image.esp_dir / "EFI/debian/grub.cfg").read_text().splitlines()
    assert config.index("loopback initramfs /initrd.gz") < config.index("loopback -d initramfs")
    assert f"chainloader /vmlinuz initrd=\\initrd.gz {DEFAULT_CMDLINE}" in config
    assert "boot" in config


def test_initramfs_holds_the_agent_and_busybox_only(node_image: NodeImage) -> None:
    members = initramfs_listing(node_image)
    assert members["init"] == "-"
    assert members["bin/busybox"] == "-"
    for applet in ("bin/sh", "bin/base64", "bin/dd", "usr/bin/od", "usr/bin/sha256sum"):
        assert members[applet] == "l", applet
    assert members["dev/console"] == "c"
    # the TSS runs on the host: no TPM software or shared library in the node
    regular_files = {name for name, kind in members.items() if kind == "-"}
    assert regular_files == {"init", "bin/busybox"}
    assert (node_image.esp_dir / "initrd.gz").stat().st_size < 2_000_000


def test_bad_cmdline_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(NodeImageError, match="command line"):
        build_node_image(tmp_path / "bad", cmdline='console=ttyS0 "; reboot')


def test_missing_kernel_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(NodeImageError, match="not found"):
        build_node_image(tmp_path / "bad", kernel=tmp_path / "vmlinuz-missing")


def test_load_rejects_a_folder_without_metadata(tmp_path: Path) -> None:
    with pytest.raises(NodeImageError, match="not a node image"):
        NodeImage.load(tmp_path)
