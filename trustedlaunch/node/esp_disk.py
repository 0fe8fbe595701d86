"""A node image's ESP as one FAT disk image file, for libvirt hosts that do not share our files (uploaded as a
volume by trustedlaunch.node.libvirt_volumes; the direct driver and local libvirt hosts serve the ESP folder
itself through QEMU's virtual FAT).

The disk is a "superfloppy": one FAT file system over the whole disk, no partition table. The node's policy
(trustedlaunch.attest.derivation.policy_for_image) predicts PCR 4, 7 and 9: the boot applications'
Authenticode digests, the Secure Boot variables and the files GRUB reads, none of which depend on the disk's
layout (a GPT would only add an EV_EFI_GPT_EVENT to PCR 5, which no policy checks); OVMF's boot manager
boots \\EFI\\BOOT\\BOOTX64.EFI from a whole-disk FAT file system as from a partition.

Built with dosfstools (mkfs.fat --invariant: fixed serial number and times) and mtools (mcopy, with
SOURCE_DATE_EPOCH for the entries' times), folders and files in sorted order: the same ESP gives the same
bytes on any machine, so one volume per ESP content serves every control plane of a host.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from trustedlaunch.node.image import NodeImage, NodeImageError

VOLUME_LABEL = "TLESP"
FAT_EPOCH = "315532800"  # 1980-01-01T00:00:00Z, FAT's own epoch: every entry's timestamp
SLACK_BYTES = 2 * 1024 * 1024  # FAT tables, directories and cluster rounding on top of the files
TOOL_TIMEOUT = 120.0  # seconds for mkfs.fat or mcopy


def _run(command: list[str], what: str) -> None:
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT,
            env={**os.environ, "SOURCE_DATE_EPOCH": FAT_EPOCH, "MTOOLS_SKIP_CHECK": "1"},
        )
    except FileNotFoundError as error:
        package = "dosfstools" if command[0] == "mkfs.fat" else "mtools"
        raise NodeImageError(f"{command[0]} not found: install the Debian package {package}") from error
    except subprocess.TimeoutExpired as error:
        raise NodeImageError(f"{what}: {command[0]} did not finish in {TOOL_TIMEOUT:.0f} s") from error
    if result.returncode != 0:
        raise NodeImageError(f"{what}: {command[0]} failed: {result.stderr.strip()[-500:]}")


def build_esp_disk(esp_dir: Path, target: Path) -> Path:
    """Write the FAT disk image of the ESP folder `esp_dir` to `target` (replaced atomically); `target`."""
    files = sorted(path for path in esp_dir.rglob("*") if path.is_file())
    if not files:
        raise NodeImageError(f"ESP folder {esp_dir} is empty or missing: build the image first")
    size_kib = (sum(path.stat().st_size for path in files) * 21 // 20 + SLACK_BYTES) // 1024
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tl-esp-", dir=target.parent) as staging:
        disk = Path(staging, "esp.img")
        what = f"building the ESP disk image of {esp_dir}"
        _run(["mkfs.fat", "-C", "--invariant", "-n", VOLUME_LABEL, str(disk), str(size_kib)], what)
        parents = {path.parent.relative_to(esp_dir) for path in files}
        for folder in sorted({folder for parent in parents for folder in (parent, *parent.parents)}):
            if folder != Path("."):  # (sorted: a folder before its subfolders)
                _run(["mmd", "-i", str(disk), f"::/{folder.as_posix()}"], what)
        for path in files:
            _run(["mcopy", "-i", str(disk), str(path), f"::/{path.relative_to(esp_dir).as_posix()}"], what)
        os.replace(disk, target)
    return target


def esp_disk(image: NodeImage) -> Path:
    """The FAT disk image of `image`'s ESP, built once per image version beside its ESP folder."""
    target = image.esp_dir.parent / f"esp-{image.version}.img"
    return target if target.is_file() else build_esp_disk(image.esp_dir, target)
