"""Helpers for the node tests: find processes started by a test, strip a kernel's signatures, list an
image's initramfs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from trustedlaunch.node.image import NodeImage
from trustedlaunch.tpm.vtpm import PROXY_MODULE


def processes_under(base: Path) -> list[str]:
    """qemu/swtpm/bank proxy processes whose command line mentions `base` (i.e. started by these tests)."""
    found = []
    for program in ("qemu-system", "swtpm", PROXY_MODULE):
        listing = subprocess.run(["pgrep", "-a", "-f", program], capture_output=True, text=True, check=False)
        found += [line for line in listing.stdout.splitlines() if str(base) in line]
    return found


def unsigned_copy(kernel: Path, output: Path) -> Path:
    """Copy a PE image and remove all its Authenticode signatures with sbattach --remove."""
    shutil.copyfile(kernel, output)
    while (
        "signature"
        in subprocess.run(["sbverify", "--list", str(output)], capture_output=True, text=True).stdout
    ):
        subprocess.run(["sbattach", "--remove", str(output)], check=True, capture_output=True)
    return output


def initramfs_listing(image: NodeImage) -> dict[str, str]:
    """Name -> `ls -l` type character of every member, read back with the real cpio tool."""
    archive = subprocess.run(
        ["zcat", str(image.esp_dir / "initrd.gz")], capture_output=True, check=True
    ).stdout
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True).stdout.decode()
    members = {}
    for line in listing.splitlines():
        fields = line.split()
        name = fields[8] if fields[0][0] != "c" else fields[9]
        members[name] = fields[0][0]
    return members
