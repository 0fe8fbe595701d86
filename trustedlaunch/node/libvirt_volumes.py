"""What a node boots, as volumes of a libvirt host's storage pool: for hosts that do not share our files.

The driver defines a `dir` pool (POOL_NAME, under the host's /var/lib/libvirt/images) and uploads into it the
ESP disk image (trustedlaunch.node.esp_disk), the dm-verity root filesystem and the OVMF code and varstore
template the node's policy was predicted from. Each volume is named by its kind and the SHA-256 of its bytes
(`esp-<digest>`), so it is uploaded once per build and shared by every node of that build; the volumes stay
when nodes go (the node's own state, varstore and TPM, goes with its domain), until the control plane's host
checks find them unused by every domain of the host for an hour (control/node_hosts.py).

A half-uploaded volume is never used: libvirt has no volume rename (an upload under a temporary name would
need a host-side clone to its final name, whose own interruption leaves the same half volume), so a volume
this process did not upload itself is downloaded once and its digest checked before use; one that differs
(an interrupted upload, or changed on the host) is deleted and uploaded again. The same check is the
per-host firmware check: every host boots OVMF code and varstore byte-identical to the files the node's
policy was predicted from (their digests are in the volume names and in the domain's metadata).

Uploads and downloads go through non-blocking libvirt streams in chunks of at most 1 MiB (larger messages
break the stream); the calling thread sends and receives, libvirt's event loop only wakes it. A download goes
in segments of 32 MiB, one stream each (libvirt's client queues what the host sends faster than it is read).
Every file has a size bound per kind, and the bytes sent must be the bytes hashed (a file that changes or
shrinks during the upload fails it, and the volume is deleted).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import libvirt

from trustedlaunch.errors import TrustedLaunchError

POOL_NAME = "tl-node-images"
POOL_PATH = "/var/lib/libvirt/images/tl-node-images"
CHUNK = 1024 * 1024  # bytes per stream message: the pitfall (larger ones break the upload)
DOWNLOAD_SEGMENT = 32 * 1024 * 1024  # bytes per download stream (bounds the client's receive queue)
STREAM_TIMEOUT = 60.0  # seconds a stream may make no progress
MIB = 1024 * 1024
MAX_VOLUME_BYTES = {  # the largest file of each kind the driver uploads
    "esp": 512 * MIB,
    "rootfs": 8192 * MIB,
    "ovmf-code": 64 * MIB,
    "ovmf-vars": 64 * MIB,
}


class ImageVolumeError(TrustedLaunchError):
    """A node's file cannot become a volume of its host (too large, not the size expected, changed while
    uploaded, or the host refused it)."""


@dataclass(frozen=True)
class HostVolume:
    """One uploaded file on its host: volume name, path on the host, size and SHA-256."""

    name: str
    path: str
    size: int
    sha256: str


class _StreamWaiter:
    """Wakes the thread using a non-blocking stream when libvirt's event loop sees it ready."""

    def __init__(self, stream: libvirt.virStream, events: int):
        self._ready = threading.Event()
        stream.eventAddCallback(events, self._on_event, None)
        self._stream = stream

    def _on_event(self, _stream: libvirt.virStream, _events: int, _opaque: object) -> None:
        self._ready.set()

    def wait(self, what: str) -> None:
        """Wait for the stream to be ready again; ImageVolumeError after STREAM_TIMEOUT s."""
        if not self._ready.wait(STREAM_TIMEOUT):
            raise ImageVolumeError(f"{what}: the stream made no progress for {STREAM_TIMEOUT:.0f} s")
        self._ready.clear()

    def remove(self) -> None:
        """Stop watching the stream."""
        with contextlib.suppress(libvirt.libvirtError):
            self._stream.eventRemoveCallback()


def _send_all(stream: libvirt.virStream, chunks: Callable[[], bytes], what: str) -> None:
    waiter = _StreamWaiter(stream, libvirt.VIR_STREAM_EVENT_WRITABLE | libvirt.VIR_STREAM_EVENT_ERROR)
    try:
        while chunk := chunks():
            while chunk:
                sent = stream.send(chunk)
                if sent == -2:  # would block
                    waiter.wait(what)
                    continue
                chunk = chunk[sent:]
    finally:
        waiter.remove()


def _receive(stream: libvirt.virStream, length: int, digest: hashlib._Hash, what: str) -> None:
    """Hash a download of `length` bytes into `digest`; ImageVolumeError when it is longer or shorter."""
    received = 0
    waiter = _StreamWaiter(stream, libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_HANGUP)
    try:
        while True:
            data = stream.recv(CHUNK)
            if data == -2:
                waiter.wait(what)
                continue
            if not isinstance(data, bytes) or data == b"":
                break
            received += len(data)
            if received > length:
                raise ImageVolumeError(f"{what}: the download sent more than the {length} bytes asked")
            digest.update(data)
    finally:
        waiter.remove()
    if received != length:
        raise ImageVolumeError(f"{what}: the download sent {received} bytes, not {length}")


def check_size(path: Path, actual: int, size: int, kind: str) -> None:
    """ImageVolumeError unless a `kind` file of `actual` bytes is the `size` expected, within its bound."""
    limit = MAX_VOLUME_BYTES[kind]
    if (largest := max(size, actual)) > limit:
        raise ImageVolumeError(f"{path}: {largest} bytes, more than a {kind} file may have ({limit})")
    if actual != size:
        raise ImageVolumeError(f"{path}: {actual} bytes, not the {size} of this {kind} (truncated or grown)")


def _file_sha256(path: Path, size: int, kind: str) -> str:
    """The SHA-256 of the first `size` bytes of the `kind` file `path` (its size checked: check_size)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as source:
            while chunk := source.read(min(CHUNK, size)):
                digest.update(chunk)
                size -= len(chunk)
    except OSError as error:
        raise ImageVolumeError(f"{path}: cannot read this {kind} file: {error}") from error
    return digest.hexdigest()


class ImageVolumes:
    """The node-image volumes of one libvirt host (its pool POOL_NAME, defined on first use). `uploaded`
    lists the volumes this object uploaded; volumes it found already verified are not uploaded again."""

    def __init__(self, connection: libvirt.virConnect):
        self._connection = connection
        self._pool: libvirt.virStoragePool | None = None
        self._verified: dict[str, HostVolume] = {}
        self._digests: dict[tuple[str, int, int, int], str] = {}  # (path, inode, size, mtime) -> SHA-256
        self._lock = threading.Lock()
        self.uploaded: list[str] = []

    def pool(self) -> libvirt.virStoragePool:
        """The host's node-image pool, defined, built and started when missing."""
        if self._pool is not None:
            return self._pool
        try:
            pools = self._connection.listStoragePools() + self._connection.listDefinedStoragePools()
            if POOL_NAME in pools:  # (listed first: a failed lookup would print libvirt's error)
                pool = self._connection.storagePoolLookupByName(POOL_NAME)
            else:
                xml = (
                    f"<pool type='dir'><name>{POOL_NAME}</name>"
                    f"<target><path>{escape(POOL_PATH)}</path></target></pool>"
                )
                pool = self._connection.storagePoolDefineXML(xml)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
        except libvirt.libvirtError as error:
            raise ImageVolumeError(f"cannot make the storage pool {POOL_NAME}: {error}") from None
        self._pool = pool
        return pool

    def _digest(self, path: Path, size: int | None, kind: str) -> tuple[int, str]:
        """(size, SHA-256) of `path`, hashed once while the file stays the same."""
        try:
            status = path.stat()
        except OSError as error:
            raise ImageVolumeError(f"{path}: cannot read this {kind} file: {error}") from error
        size = status.st_size if size is None else size
        check_size(path, status.st_size, size, kind)
        key = (str(path), status.st_ino, status.st_size, status.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = _file_sha256(path, size, kind)
        return size, self._digests[key]

    def volume(self, path: Path, kind: str, size: int | None = None) -> HostVolume:
        """The host's volume holding exactly the bytes of `path` (a file of `kind`, a key of
        MAX_VOLUME_BYTES, of `size` bytes when the caller knows what it must be), uploaded when the host
        has none or one that differs."""
        size, digest = self._digest(path, size, kind)
        name = f"{kind}-{digest}"
        with self._lock:
            pool = self.pool()
            what = f"volume {name} of pool {POOL_NAME}"
            try:
                if (
                    name in self._verified and name in pool.listVolumes()
                ):  # the host checks remove unused ones
                    return self._verified[name]
                existing = self._existing(pool, name, size, digest, what)
                volume = (
                    existing if existing is not None else self._upload(pool, path, name, size, digest, what)
                )
                verified = HostVolume(name, volume.path(), size, digest)
            except libvirt.libvirtError as error:
                raise ImageVolumeError(f"{what} ({path}): {error}") from None
            self._verified[name] = verified
            return verified

    def _existing(
        self, pool: libvirt.virStoragePool, name: str, size: int, digest: str, what: str
    ) -> libvirt.virStorageVol | None:
        """The volume `name` if it holds exactly these bytes (downloaded and hashed); a volume that does
        not (a half upload) is deleted."""
        if name not in pool.listVolumes():
            return None
        volume = pool.storageVolLookupByName(name)
        if volume.info()[1] == size and self._downloaded_sha256(volume, size, what) == digest:
            return volume
        volume.delete(0)
        return None

    def _downloaded_sha256(self, volume: libvirt.virStorageVol, size: int, what: str) -> str | None:
        """The SHA-256 of the volume's first `size` bytes, downloaded in segments of DOWNLOAD_SEGMENT bytes
        (libvirt's client queues what the host sends faster than it is hashed: one segment at most); None
        when the download fails."""
        digest = hashlib.sha256()
        for offset in range(0, size, DOWNLOAD_SEGMENT):
            length = min(DOWNLOAD_SEGMENT, size - offset)
            stream = self._connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                volume.download(stream, offset, length, 0)
                _receive(stream, length, digest, what)
                stream.finish()
            except (ImageVolumeError, libvirt.libvirtError):
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                return None
        return digest.hexdigest()

    def _upload(
        self, pool: libvirt.virStoragePool, path: Path, name: str, size: int, digest: str, what: str
    ) -> libvirt.virStorageVol:
        xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
            "<target><format type='raw'/></target></volume>"
        )
        volume = pool.createXML(xml, 0)
        stream = self._connection.newStream(libvirt.VIR_STREAM_NONBLOCK)
        try:
            volume.upload(stream, 0, size, 0)
            sent = hashlib.sha256()
            with path.open("rb") as source:
                remaining = size

                def chunks() -> bytes:
                    nonlocal remaining
                    chunk = source.read(min(CHUNK, remaining))
                    remaining -= len(chunk)
                    sent.update(chunk)
                    return chunk

                _send_all(stream, chunks, what)
                if remaining or source.read(1) or sent.hexdigest() != digest:
                    raise ImageVolumeError(f"{what}: {path} changed while it was uploaded")
            stream.finish()
        except BaseException:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            with contextlib.suppress(libvirt.libvirtError):
                volume.delete(0)
            raise
        self.uploaded.append(name)
        return volume
