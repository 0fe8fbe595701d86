"""Debian's signed boot chain packages (kernel, GRUB, shim) a node image is built from: the installed ones, or
another version Debian serves, fetched with `apt-get download` (apt checks it against the signed Release
files) into the user cache without installing it on the host.

A fetched package lives in `{user cache}/debian-packages/<package>_<version>/`: the .deb, `package.json` (its
size and SHA-256, which must equal the ones apt's signed index gives, checked again before every use) and
`root/`, its `dpkg-deb -x` extraction (a kernel's with the modules.dep depmod writes). A package that cannot
be had (unknown version, too large, no network) raises BootPackageError naming it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.control.binary_cache import file_sha256, user_cache_dir
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node import image as node_image
from trustedlaunch.node.debian import package_version

PACKAGES_DIR = "debian-packages"
PACKAGE_RECORD = "package.json"
MAX_PACKAGE_BYTES = 256 << 20  # a signed kernel package is ~70 MB; GRUB and shim well under 1 MB
APT_TIMEOUT_SECONDS = 600
TOOL_TIMEOUT_SECONDS = 300
KERNEL_PACKAGE = re.compile(r"^linux-image-(\d+\.\d+[0-9a-z.+-]*-amd64)$")  # linux-image-6.1.0-50-amd64
PACKAGE_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~:-]{0,99}$")  # Debian policy's version characters
# the generic flavour's signed kernels (not -cloud- or -rt-): linux-image-6.1.0-50-amd64,
# linux-image-6.12.57+deb12-amd64
GENERIC_KERNEL_PACKAGE = re.compile(r"^linux-image-\d+\.\d+\.\d+(?:-\d+|\+deb\d+)-amd64$")
SHIM_PACKAGE = "shim-signed"
GRUB_PACKAGE = "grub-efi-amd64-signed"
SHIM_FILE = "usr/lib/shim/shimx64.efi.signed"
GRUB_FILE = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"


class BootPackageError(TrustedLaunchError):
    """A boot chain package cannot be had (unknown to apt, too large, refused, or not what it should be)."""


@dataclass(frozen=True)
class FetchedPackage:
    """A Debian package fetched into the cache: its .deb (SHA-256 as apt's signed index gives it) and its
    extracted files under `root`."""

    name: str
    version: str
    deb: Path
    sha256: str
    root: Path


@dataclass(frozen=True)
class KernelBuild:
    """A Debian signed kernel: its package and version, its release (6.1.0-50-amd64), the vmlinuz file and
    the folder holding its modules (`<modules_root>/<release>`)."""

    package: str
    version: str
    release: str
    vmlinuz: Path
    modules_root: Path


@dataclass(frozen=True)
class BootLoaders:
    """The signed shim and GRUB files and the package versions they come from."""

    shim: Path
    shim_version: str
    grub: Path
    grub_version: str


def _run(
    command: list[str], what: str, timeout: float = TOOL_TIMEOUT_SECONDS, cwd: Path | None = None
) -> str:
    """stdout of `command` (run in `cwd`); BootPackageError naming `what` with the tool's last error line
    otherwise."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BootPackageError(f"{what}: {command[0]} failed ({error})") from error
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()] or ["no message"]
        raise BootPackageError(f"{what}: {command[0]} exited with {done.returncode}: {lines[-1][:300]}")
    return done.stdout


def _check_name(name: str, version: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9+.-]{1,99}", name) or not PACKAGE_VERSION.fullmatch(version):
        raise BootPackageError(f"{name[:100]!r} {version[:100]!r} is not a Debian package name and version")


def installed_version(name: str) -> str:
    """The installed version of Debian package `name` (BootPackageError when it is not installed)."""
    _check_name(name, "0")
    version = _run(["dpkg-query", "-W", "-f", "${Version}", name], f"installed package {name}").strip()
    if not version:
        raise BootPackageError(f"installed package {name}: not installed")
    return version


def installed_kernel(kernel: Path | None = None) -> KernelBuild:
    """The installed kernel `kernel` (by default the newest in /boot) and the package that installed it."""
    kernel = node_image.default_kernel() if kernel is None else kernel
    release = node_image.kernel_release(kernel.name)
    package = f"linux-image-{release}"
    return KernelBuild(package, installed_version(package), release, kernel, node_image.MODULES_ROOT)


def installed_boot_loaders() -> BootLoaders:
    """The installed shim and GRUB (node/image.py's files) and their package versions."""
    return BootLoaders(
        node_image.SHIM,
        installed_version(SHIM_PACKAGE),
        node_image.GRUB,
        installed_version(GRUB_PACKAGE),
    )


def package_cache_dir() -> Path:
    """Where fetched packages are kept: `{user cache}/debian-packages`."""
    return user_cache_dir() / PACKAGES_DIR


def _index_record(name: str, version: str) -> tuple[int, str]:
    """(size, SHA-256) of `name` `version` in apt's package index (checked against the signed Release)."""
    what = f"Debian package {name} {version}"
    fields: dict[str, str] = {}
    for line in _run(["apt-cache", "show", "--no-all-versions", f"{name}={version}"], what).splitlines():
        key, separator, value = line.partition(": ")
        if separator and key in ("Size", "SHA256"):
            fields.setdefault(key, value.strip())
    size, digest = fields.get("Size", ""), fields.get("SHA256", "")
    if not size.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BootPackageError(
            f"{what}: apt's index has no such package version (`apt-cache madison {name}` lists the versions "
            "Debian serves; `apt-get update` refreshes the index)"
        )
    if int(size) > MAX_PACKAGE_BYTES:
        raise BootPackageError(f"{what}: {int(size)} bytes, more than the {MAX_PACKAGE_BYTES} allowed")
    return int(size), digest


def fetch_package(name: str, version: str, cache: Path | None = None) -> FetchedPackage:
    """Debian package `name` at `version`, downloaded by apt into `cache` (default package_cache_dir()) and
    extracted, once: a cached one is used when its .deb still has the recorded SHA-256 (else fetched again).
    Raises BootPackageError naming the package when apt does not have it or it is not what apt's index
    says."""
    _check_name(name, version)
    cache = package_cache_dir() if cache is None else cache
    entry = cache / f"{name}_{version.replace(':', '%3a')}"
    cached = _cached_package(entry, name, version)
    if cached is not None:
        return cached
    size, digest = _index_record(name, version)
    cache.mkdir(parents=True, exist_ok=True)
    # a scratch directory of this call's own: another process (the reconciler, `tl image build-version`)
    # may fetch the same package at the same time
    scratch = Path(tempfile.mkdtemp(prefix=f"{entry.name}.", suffix=".partial", dir=cache))
    try:
        what = f"Debian package {name} {version}"
        _run(["apt-get", "download", "-q", f"{name}={version}"], what, APT_TIMEOUT_SECONDS, scratch)
        debs = list(scratch.glob("*.deb"))
        if len(debs) != 1:
            raise BootPackageError(f"{what}: apt-get download left {len(debs)} .deb files")
        deb = debs[0]
        if deb.stat().st_size != size or file_sha256(deb) != digest:
            raise BootPackageError(f"{what}: {deb.name} is not the size and SHA-256 apt's index gives")
        fields = _run(["dpkg-deb", "-f", str(deb), "Package", "Version"], what).splitlines()
        if fields != [f"Package: {name}", f"Version: {version}"]:
            raise BootPackageError(f"{what}: {deb.name} is another package ({', '.join(fields)[:200]})")
        _run(["dpkg-deb", "-x", str(deb), str(scratch / "root")], what)
        record = {"package": name, "version": version, "file": deb.name, "size": size, "sha256": digest}
        (scratch / PACKAGE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if _cached_package(entry, name, version) is None:  # a stale or altered entry; else another's: kept
            shutil.rmtree(entry, ignore_errors=True)
            try:
                scratch.rename(entry)
            except OSError as exc:  # another process wrote the entry in between: theirs is checked below
                if _cached_package(entry, name, version) is None:
                    raise BootPackageError(f"{what}: {entry} could not be written ({exc})") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    fetched = _cached_package(entry, name, version)
    if fetched is None:
        raise BootPackageError(f"Debian package {name} {version}: {entry} was not written")
    return fetched


def _cached_package(entry: Path, name: str, version: str) -> FetchedPackage | None:
    """The package cached in `entry` when its record names it and its .deb still has the recorded SHA-256."""
    try:
        record = json.loads((entry / PACKAGE_RECORD).read_text())
        deb = entry / Path(record["file"]).name
        if (record["package"], record["version"]) != (name, version) or file_sha256(deb) != record["sha256"]:
            return None
        return FetchedPackage(name, version, deb, record["sha256"], entry / "root")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _one_file(root: Path, pattern: str, what: str) -> Path:
    matches = sorted(root.glob(pattern))
    if len(matches) != 1 or not matches[0].is_file():
        raise BootPackageError(f"{what}: {len(matches)} files match {pattern}, expected one")
    return matches[0]


def fetched_kernel(package: str, version: str, cache: Path | None = None) -> KernelBuild:
    """The signed kernel of Debian package `package` (linux-image-<release>) at `version`, fetched (not
    installed): its vmlinuz and its modules, with the modules.dep `depmod` writes for them."""
    if not KERNEL_PACKAGE.fullmatch(package):
        raise BootPackageError(
            f"{package[:100]!r} is not a Debian amd64 kernel package (linux-image-<release>)"
        )
    fetched = fetch_package(package, version, cache)
    what = f"Debian package {package} {version}"
    vmlinuz = _one_file(fetched.root, "boot/vmlinuz-*", what)
    release = node_image.kernel_release(vmlinuz.name)
    if package != f"linux-image-{release}":
        raise BootPackageError(f"{what}: holds kernel {release}, not the one its name says")
    modules_root = next(
        (
            root
            for root in (fetched.root / "lib/modules", fetched.root / "usr/lib/modules")
            if (root / release).is_dir()
        ),
        None,
    )
    if modules_root is None:
        raise BootPackageError(f"{what}: has no modules folder for {release}")
    if not (modules_root / release / "modules.dep").is_file():
        _run(["depmod", "-b", str(modules_root.parent.parent), release], what)
    return KernelBuild(package, version, release, vmlinuz, modules_root)


def fetched_grub(version: str, cache: Path | None = None) -> tuple[Path, str]:
    """(signed GRUB file, version) of grub-efi-amd64-signed `version`, fetched (not installed)."""
    fetched = fetch_package(GRUB_PACKAGE, version, cache)
    return _one_file(fetched.root, GRUB_FILE, f"Debian package {GRUB_PACKAGE} {version}"), version


def fetched_shim(version: str, cache: Path | None = None) -> tuple[Path, str]:
    """(signed shim file, version) of shim-signed `version`, fetched (not installed)."""
    fetched = fetch_package(SHIM_PACKAGE, version, cache)
    return _one_file(fetched.root, SHIM_FILE, f"Debian package {SHIM_PACKAGE} {version}"), version


def available_kernels() -> list[tuple[str, str]]:
    """(package, version) of every Debian signed kernel of the generic amd64 flavour in apt's index (installed
    or not), newest first: what a node image version can be built from."""
    what = "Debian signed kernels"
    found = _run(["apt-cache", "search", "--names-only", "^linux-image-[0-9].*-amd64$"], what)
    packages = sorted(
        {name for line in found.splitlines() if GENERIC_KERNEL_PACKAGE.fullmatch(name := line.split(" ")[0])}
    )
    if not packages:
        return []
    versions = set()
    for line in _run(["apt-cache", "madison", *packages], what).splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) >= 2 and fields[0] in packages and PACKAGE_VERSION.fullmatch(fields[1]):
            versions.add((fields[0], fields[1]))
    return sorted(versions, key=lambda item: (package_version(item[1]), item[0]), reverse=True)
