"""Node-image volumes on a private libvirtd (no VM): the ESP as a FAT disk image holding the ESP's files, the
same bytes from the same folder; an upload once per content, found again and checked by download from another
connection, a volume that differs from its file (a half upload) replaced, and files that are not the size
expected or larger than their kind's bound refused with our error before anything is uploaded."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from trustedlaunch.node.esp_disk import build_esp_disk
from trustedlaunch.node.libvirt_driver import ensure_event_loop
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.node.libvirt_volumes import MAX_VOLUME_BYTES, POOL_NAME, ImageVolumeError, ImageVolumes


@pytest.fixture(scope="module")
def host() -> Iterator[LibvirtHost]:
    ensure_event_loop()  # before the connections whose streams use it
    with LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvv-"))) as host:
        yield host
    shutil.rmtree(host.base, ignore_errors=True)


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tl-lvv-files-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def esp_in(folder: Path) -> Path:
    esp = folder / "esp"
    for name, data in {
        "EFI/BOOT/BOOTX64.EFI": b"MZ shim" * 1000,
        "EFI/debian/grub.cfg": b"linux /vmlinuz\n",
        "vmlinuz": bytes(range(256)) * 4096,
    }.items():
        (esp / name).parent.mkdir(parents=True, exist_ok=True)
        (esp / name).write_bytes(data)
    return esp


def test_esp_disk_holds_the_esp_files_and_is_reproducible(folder: Path) -> None:
    esp = esp_in(folder)
    first = build_esp_disk(esp, folder / "one.img")
    second = build_esp_disk(esp, folder / "two.img")
    assert first.read_bytes() == second.read_bytes()
    for path in (path for path in esp.rglob("*") if path.is_file()):
        inside = f"::/{path.relative_to(esp).as_posix()}"
        copied = subprocess.run(["mtype", "-i", str(first), inside], capture_output=True, check=True)
        assert copied.stdout == path.read_bytes(), inside


def test_a_volume_is_uploaded_once_and_checked_by_download_elsewhere(host: LibvirtHost, folder: Path) -> None:
    image = folder / "rootfs.img"
    image.write_bytes(bytes(range(256)) * 12289)  # ~3 MiB: more than one 1 MiB stream message
    first = ImageVolumes(libvirt.open(host.uri))
    volume = first.volume(image, "rootfs")
    assert first.uploaded == [volume.name] and volume.name.startswith("rootfs-")
    stored = host.base / "lib" / "images" / POOL_NAME / volume.name
    assert volume.path == f"/var/lib/libvirt/images/{POOL_NAME}/{volume.name}"  # the host's own path
    assert stored.read_bytes() == image.read_bytes()
    assert first.volume(image, "rootfs") == volume and first.uploaded == [volume.name]
    before = stored.stat()
    other = ImageVolumes(libvirt.open(host.uri))  # another control plane
    assert other.volume(image, "rootfs") == volume and other.uploaded == []
    assert (stored.stat().st_ino, stored.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with stored.open("r+b") as half_upload:  # same name and size, other bytes
        half_upload.seek(len(image.read_bytes()) // 2)
        half_upload.write(b"\0" * 4096)
    repaired = ImageVolumes(libvirt.open(host.uri))
    assert repaired.volume(image, "rootfs") == volume and repaired.uploaded == [volume.name]
    assert stored.read_bytes() == image.read_bytes()


def test_truncated_and_oversized_files_are_refused(host: LibvirtHost, folder: Path) -> None:
    volumes = ImageVolumes(libvirt.open(host.uri))
    truncated = folder / "truncated.img"
    truncated.write_bytes(b"x" * 4096)
    with pytest.raises(ImageVolumeError, match=r"truncated\.img: 4096 bytes, not the 8192 of this rootfs"):
        volumes.volume(truncated, "rootfs", 8192)
    oversized = folder / "OVMF_VARS.fd"
    with oversized.open("wb") as sparse:
        sparse.truncate(MAX_VOLUME_BYTES["ovmf-vars"] + 1)
    with pytest.raises(
        ImageVolumeError, match=r"OVMF_VARS\.fd: 67108865 bytes, more than a ovmf-vars file may have"
    ):
        volumes.volume(oversized, "ovmf-vars")
    with pytest.raises(ImageVolumeError, match=r"missing\.img: cannot read"):
        volumes.volume(folder / "missing.img", "esp")
    assert volumes.uploaded == []
    pool = host.base / "lib" / "images" / POOL_NAME
    assert not any(path.name.startswith(("ovmf-vars-", "esp-")) for path in pool.glob("*"))
