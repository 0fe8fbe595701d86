"""Binaries built once into the user cache and checked by SHA-256 before every use.

A cached set is a folder with `bin/` and `manifest.sha256` (`sha256sum` format, paths relative to the
folder), written after a successful build. kubernetes_release.py (the control-plane binaries) and
node_runtime_release.py (the node's container runtime) each name what they cache; both verify it here.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import platformdirs

from trustedlaunch.errors import TrustedLaunchError

MANIFEST_NAME = "manifest.sha256"


class CachedBinaryError(TrustedLaunchError):
    """A cached binary is missing or is not the one the build recorded."""

    setup_hint = "run `make setup` to build it"

    def __init__(self, binary: str, reason: str) -> None:
        super().__init__(f"{reason}: {self.setup_hint}")
        self.binary = binary
        self.reason = reason


def user_cache_dir() -> Path:
    """trustedlaunch's folder in the user cache (`$XDG_CACHE_HOME/trustedlaunch`, ~/.cache by default)."""
    return Path(platformdirs.user_cache_dir("trustedlaunch"))


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_text(bin_dir: Path, names: Iterable[str]) -> str:
    """The manifest of the named binaries in `bin_dir` (`sha256sum` lines, paths relative to its parent)."""
    return "".join(f"{file_sha256(bin_dir / name)}  bin/{name}\n" for name in sorted(names))


def read_manifest(directory: Path) -> dict[str, str]:
    """Binary name -> recorded SHA-256, from a cached set's manifest (empty if there is none)."""
    try:
        text = (directory / MANIFEST_NAME).read_text()
    except FileNotFoundError:
        return {}
    recorded = {}
    for line in text.splitlines():
        digest, _, relative = line.partition("  ")
        recorded[Path(relative).name] = digest
    return recorded


def verify_binaries(directory: Path, names: Iterable[str], what: str, error: type[CachedBinaryError]) -> None:
    """Check each named binary of `directory/bin` against the manifest; raises `error` naming `what`
    (e.g. "Kubernetes v1.36.3 binary") and the first binary missing, not executable or altered."""
    recorded = read_manifest(directory)
    manifest = directory / MANIFEST_NAME
    for name in names:
        path = directory / "bin" / name
        if not path.is_file():
            raise error(name, f"{what} {name} is not built ({path} missing)")
        if name not in recorded:
            raise error(name, f"{what} {path} has no SHA-256 in {manifest}")
        if not os.access(path, os.X_OK):
            raise error(name, f"{what} {path} is not executable")
        if file_sha256(path) != recorded[name]:
            raise error(name, f"{what} {path} does not match its SHA-256 in {manifest}")
