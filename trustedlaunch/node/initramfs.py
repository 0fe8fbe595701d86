"""A reproducible initramfs: an in-memory file tree written as a gzip-compressed newc cpio archive."""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass, field
from pathlib import PurePosixPath

_NEWC_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, regular file, symlink or device node."""

    mode: int  # full st_mode (type and permission bits)
    data: bytes = b""  # file contents, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


@dataclass
class Initramfs:
    """The file tree of an initramfs; parents of added paths are created as directories."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def _add(self, path: str, entry: Entry) -> None:
        name = PurePosixPath("/", path).relative_to("/")
        for parent in reversed(name.parents[:-1]):
            self.entries.setdefault(str(parent), Entry(stat.S_IFDIR | 0o755))
        self.entries[str(name)] = entry

    def directory(self, path: str) -> None:
        """Add an empty directory."""
        self._add(path, Entry(stat.S_IFDIR | 0o755))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Add a regular file with the given permission bits."""
        self._add(path, Entry(stat.S_IFREG | mode, data))

    def symlink(self, path: str, target: str) -> None:
        """Add a symbolic link to `target`."""
        self._add(path, Entry(stat.S_IFLNK | 0o777, target.encode()))

    def char_device(self, path: str, major: int, minor: int) -> None:
        """Add a character device node (no privileges needed: it only exists in the archive)."""
        self._add(path, Entry(stat.S_IFCHR | 0o600, rdev=(major, minor)))

    def cpio(self) -> bytes:
        """The tree as a newc cpio archive: sorted names, inode numbers in order, zero times and owners."""
        out = io.BytesIO()
        for ino, name in enumerate(sorted(self.entries), start=1):
            _write_member(out, ino, name, self.entries[name])
        _write_member(out, 0, _TRAILER, Entry(0))
        return out.getvalue()

    def gzip(self) -> bytes:
        """The cpio archive compressed with gzip (no name, zero mtime: byte-for-byte reproducible)."""
        out = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as compressed:
            compressed.write(self.cpio())
        return out.getvalue()


def _pad(out: io.BytesIO) -> None:
    out.write(b"\0" * (-out.tell() % 4))


def _write_member(out: io.BytesIO, ino: int, name: str, entry: Entry) -> None:
    encoded_name = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(encoded_name), 0)
    out.write(_NEWC_MAGIC + b"".join(b"%08X" % value for value in fields))
    out.write(encoded_name)
    _pad(out)
    out.write(entry.data)
    _pad(out)
