"""Node-image volumes on a private libvirtd (no VM): the ESP as a FAT disk image holding the ESP's files, the
same bytes from the same folder; an upload once per content, found again and checked by download from another
connection, a volume that differs from its file (a half upload) replaced, and files that are not the size
expected or larger than their kind's bound refused with our error before anything is uploaded; volumes no
domain names deleted by the host checks' sweep after its hold, and uploaded again when needed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from trustedlaunch.control.node_hosts import UnusedVolumeSweep
from trustedlaunch.node.esp_disk import build_esp_disk
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import NodeVolumes, domain_xml, ensure_event_loop, host_domains
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.node.libvirt_volumes import MAX_VOLUME_BYTES, POOL_NAME, ImageVolumeError, ImageVolumes
from trustedlaunch.node.rootfs import Rootfs


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


def test_volumes_no_domain_names_for_the_hold_are_deleted_and_uploaded_again_when_needed(
    host: LibvirtHost, folder: Path
) -> None:
    """The host checks' volume sweep (control/node_hosts.py UnusedVolumeSweep) against a real pool: the
    volumes of an older build that no domain names go once unused for the whole hold (being named again
    restarts it); the newer build's volumes, which a node domain names, stay; the uploader whose cache still
    held a deleted volume uploads it again."""
    files = {}
    for name, size in (("esp-1", 4096), ("rootfs-1", 8192), ("esp-2", 4097), ("rootfs-2", 8193)):
        files[name] = folder / name
        files[name].write_bytes(name.encode() * size)
    files["code"], files["vars"] = folder / "code.fd", folder / "vars.fd"
    files["code"].write_bytes(b"OVMF code" * 1000)
    files["vars"].write_bytes(b"OVMF vars" * 1000)
    uploader = ImageVolumes(libvirt.open(host.uri))
    earlier = set(uploader.pool().listVolumes())  # other tests' volumes, which no domain names either
    code, template = uploader.volume(files["code"], "ovmf-code"), uploader.volume(files["vars"], "ovmf-vars")
    builds = [
        NodeVolumes(
            uploader.volume(files[f"esp-{n}"], "esp"),
            uploader.volume(files[f"rootfs-{n}"], "rootfs"),
            code,
            template,
        )
        for n in (1, 2)
    ]
    image = NodeImage(
        esp_dir=folder,
        metadata_path=folder / "image.json",
        version="1",
        kernel_cmdline="",
        files={},
        rootfs=Rootfs(
            folder / "rootfs-1", "0" * 64, 0, 0, "0" * 64, "0" * 64
        ),  # (disks: rootfs vda, ESP vdb)
    )
    connection = libvirt.open(host.uri)
    volume_sweep = UnusedVolumeSweep(hold=1.0)

    def sweep() -> list[str]:
        return sorted(set(volume_sweep(7, connection, host_domains(connection))) - earlier)

    def define(name: str, volumes: NodeVolumes) -> libvirt.virDomain:
        xml = domain_xml(name, image, folder / name, secure_boot=True, tpm_socket=None, volumes=volumes)
        return connection.defineXML(xml)

    try:
        current = define("tl-node-000000b2", builds[1])
        assert sweep() == []  # the older build's volumes are unused from now on
        older = define("tl-node-000000b1", builds[0])  # named again: the hold starts over
        time.sleep(1.2)
        assert sweep() == []
        older.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        assert sweep() == []
        time.sleep(1.2)
        assert sweep() == sorted(v.name for v in (builds[0].esp, builds[0].rootfs))
        named = {v.name for v in (builds[1].esp, builds[1].rootfs, code, template)}
        pool = connection.storagePoolLookupByName(POOL_NAME)
        assert set(pool.listVolumes()) == named
        again = uploader.volume(files["esp-1"], "esp")  # cached as verified, deleted since: uploaded again
        assert again == builds[0].esp and uploader.uploaded.count(again.name) == 2
        assert again.name in pool.listVolumes()
        current.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
    finally:
        connection.close()
