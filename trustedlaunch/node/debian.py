"""The Debian release a node image comes from: its boot chain is the host's Debian packages (shim-signed,
grub-efi-amd64-signed, linux-image-amd64), so it is the host's release, read from its os-release; and the one
order of Debian package versions (dpkg's), which tells which kernel, shim or GRUB is newer."""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping

from debian.debian_support import Version

from trustedlaunch.errors import TrustedLaunchError

RELEASE_NUMBER = re.compile(r"^\d{1,3}$")  # a Debian stable release: 12 (bookworm), 13 (trixie), ...


class DebianReleaseError(TrustedLaunchError):
    """The host is not a Debian stable release: there is no Debian signed boot chain to build nodes from."""


def debian_release(os_release: Mapping[str, str] | None = None) -> str:
    """The Debian release number ("12") of `os_release` (the fields of an os-release file; by default the
    host's /etc/os-release): its VERSION_ID when its ID is debian."""
    fields = platform.freedesktop_os_release() if os_release is None else os_release
    distribution, version = fields.get("ID", ""), fields.get("VERSION_ID", "")
    if distribution != "debian" or not RELEASE_NUMBER.match(version):
        raise DebianReleaseError(
            f"os-release names ID={distribution[:40]!r} VERSION_ID={version[:40]!r}, not a Debian stable "
            "release: node images boot Debian's signed shim, GRUB and kernel from the host's packages"
        )
    return version


def package_version(version: str) -> Version:
    """`version` ordered as dpkg orders Debian package versions (`dpkg --compare-versions`): 6.12.118-1 is
    newer than 6.1.192-3. A kernel release such as 6.1.0-57-amd64 orders the same way."""
    return Version(version)
