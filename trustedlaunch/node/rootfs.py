"""The node's root filesystem: a reproducible read-only squashfs image of the container runtime, kubelet and
busybox, protected by dm-verity (its hash tree appended to the image, its root hash on the kernel command line
that GRUB measures into PCR 8, so the node's attestation policy covers every byte of it).

squashfs rather than erofs: mksquashfs builds byte-for-byte reproducible images by design (-reproducible is
its default; times, owners and extended attributes are fixed by options) and compresses with lz4, which a
software-emulated guest decompresses cheaply; bookworm's erofs-utils (1.5) needs the UUID and every time set
by hand for the same result. The verity salt is the image's own SHA-256 and the hash tree has no superblock
(no random UUID): the same inputs give the same root hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.container_images import PAUSE_IMAGE
from trustedlaunch.node.debian import debian_release

RUNTIME_BINARIES = ("kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "runc")  # in /usr/bin
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")  # in /opt/cni/bin
BUSYBOX = Path("/usr/bin/busybox")
ROOTFS_NAME = "rootfs.img"
IMAGE_ARCHIVES_DIR = "usr/share/trustedlaunch/images"  # pre-loaded OCI image archives (*.tar)
CONTAINERD_CONFIG = "etc/containerd/config.toml"
CNI_BIN_DIR = "/opt/cni/bin"
CNI_CONF_DIR = "/etc/cni/net.d"
# Mount points of the read-only root: the kernel's file systems, and the tmpfs the node mounts at boot for
# what must be writable (containerd's and kubelet's state, the credentials and CNI configuration it receives).
MOUNT_POINTS = ("proc", "sys", "dev", "run", "var", "tmp", "root", "etc/kubernetes", "etc/cni/net.d")
VERITY_BLOCK_SIZE = 4096
VERITY_HASH = "sha256"
TOOL_TIMEOUT = 600.0  # seconds for mksquashfs or veritysetup on a loaded machine

_ETC_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1 localhost\n::1 localhost\n",
    # No DNS server: the node reaches only its cluster's control plane (by address), no registry.
    "etc/resolv.conf": "",
}


def os_release(debian: str) -> str:
    """The root filesystem's /etc/os-release (kubelet reports its PRETTY_NAME as the Node's osImage): a
    trustedlaunch node booting Debian `debian`'s signed boot chain, not a Debian installation (no dpkg, no
    Debian userland but busybox)."""
    return (
        'NAME="trustedlaunch node"\nID=trustedlaunch-node\nID_LIKE=debian\n'
        f'PRETTY_NAME="trustedlaunch node (Debian {debian} signed shim, GRUB and kernel; '
        'read-only dm-verity root)"\n'
    )


class RootfsError(TrustedLaunchError):
    """The node root filesystem cannot be built or does not verify (missing input, tool failure, a hash
    mismatch)."""


def containerd_config(sandbox_image: str) -> str:
    """containerd 2.x configuration (format version 4): the CRI plugin with the overlayfs snapshotter, runc
    with cgroupfs (SystemdCgroup = false: the node runs no systemd) and the CNI plugin and configuration
    directories; state and sockets under /run and /var (tmpfs at boot)."""
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    return (
        "version = 4\n"
        "root = '/var/lib/containerd'\n"
        "state = '/run/containerd'\n\n"
        "[grpc]\n"
        "  address = '/run/containerd/containerd.sock'\n\n"
        "[plugins.'io.containerd.cri.v1.images']\n"
        "  snapshotter = 'overlayfs'\n\n"
        "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n"
        f"  sandbox = '{sandbox_image}'\n\n"
        f"[{runtime}.containerd]\n"
        "  default_runtime_name = 'runc'\n\n"
        f"[{runtime}.containerd.runtimes.runc]\n"
        "  runtime_type = 'io.containerd.runc.v2'\n\n"
        f"[{runtime}.containerd.runtimes.runc.options]\n"
        "  BinaryName = '/usr/bin/runc'\n"
        "  SystemdCgroup = false\n\n"
        f"[{runtime}.cni]\n"
        f"  bin_dirs = ['{CNI_BIN_DIR}']\n"
        f"  conf_dir = '{CNI_CONF_DIR}'\n"
    )


@dataclass(frozen=True)
class RootfsInputs:
    """What goes into a root filesystem: paths of the runtime binaries (every name of RUNTIME_BINARIES) and
    CNI plugins (every name of CNI_PLUGINS), an optional directory of OCI image archives (*.tar) to pre-load,
    and the sandbox ("pause") image containerd's CRI plugin uses."""

    binaries: Mapping[str, Path]
    cni_plugins: Mapping[str, Path]
    image_archives: Path | None = None
    sandbox_image: str = PAUSE_IMAGE


@dataclass(frozen=True)
class Rootfs:
    """A built root filesystem image: squashfs data (`data_size` bytes, SHA-256 `sha256`) followed by its
    dm-verity hash tree (`hash_size` bytes, no superblock) in one file."""

    path: Path
    sha256: str
    data_size: int
    hash_size: int
    root_hash: str
    salt: str

    @property
    def data_blocks(self) -> int:
        """The number of VERITY_BLOCK_SIZE blocks of squashfs data (the hash tree starts after them)."""
        return self.data_size // VERITY_BLOCK_SIZE

    def metadata(self) -> dict[str, Any]:
        """The root filesystem's entry in the node image metadata (file name relative to the image)."""
        return {
            "path": self.path.name,
            "sha256": self.sha256,
            "dataSize": self.data_size,
            "hashSize": self.hash_size,
            "rootHash": self.root_hash,
            "salt": self.salt,
            "blockSize": VERITY_BLOCK_SIZE,
            "hashAlgorithm": VERITY_HASH,
        }

    @classmethod
    def from_metadata(cls, image_dir: Path, metadata: Mapping[str, Any]) -> Rootfs:
        """The root filesystem a node image's metadata entry describes (KeyError/ValueError/TypeError when
        the entry is malformed)."""
        name = metadata["path"]
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            raise ValueError(f"root filesystem file name {name!r} is not a plain file name")
        sizes = int(metadata["dataSize"]), int(metadata["hashSize"])
        if any(size <= 0 or size % VERITY_BLOCK_SIZE for size in sizes):
            raise ValueError(f"sizes {sizes} are not positive multiples of {VERITY_BLOCK_SIZE}")
        hexes = str(metadata["sha256"]), str(metadata["rootHash"]), str(metadata["salt"])
        if any(len(value) != 64 or value.strip("0123456789abcdef") for value in hexes):
            raise ValueError("root filesystem digests must be 64 lowercase hex digits")
        return cls(image_dir / name, hexes[0], sizes[0], sizes[1], hexes[1], hexes[2])


def _run(command: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except FileNotFoundError as error:
        package = "squashfs-tools" if command[0] == "mksquashfs" else "cryptsetup-bin"
        raise RootfsError(f"{command[0]} not found: install the Debian package {package}") from error
    except subprocess.TimeoutExpired as error:
        raise RootfsError(f"{what}: {command[0]} did not finish within {TOOL_TIMEOUT:.0f} s") from error
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise RootfsError(f"{what}: {command[0]} failed (exit {result.returncode}): {detail}")
    return result


def _install(source: Path, target: Path, mode: int) -> None:
    if not source.is_file():
        raise RootfsError(f"root filesystem input {source} is not a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o644)


def _stage(tree: Path, inputs: RootfsInputs) -> None:
    """Lay out the root filesystem's files in `tree` with fixed permissions."""
    for names, given in ((RUNTIME_BINARIES, inputs.binaries), (CNI_PLUGINS, inputs.cni_plugins)):
        if set(given) != set(names):
            wanted, got = ", ".join(names), ", ".join(sorted(given))
            raise RootfsError(f"root filesystem needs exactly {wanted}; got {got}")
    if not BUSYBOX.is_file():
        raise RootfsError(f"{BUSYBOX} not found: install the Debian package busybox-static")
    _install(BUSYBOX, tree / "bin/busybox", 0o755)
    applets = _run([str(BUSYBOX), "--list-full"], "listing busybox applets").stdout.split()
    for applet in applets:
        if applet != "bin/busybox":
            (tree / applet).parent.mkdir(parents=True, exist_ok=True)
            (tree / applet).symlink_to("/bin/busybox")
    for name, source in inputs.binaries.items():
        (tree / "usr/bin" / name).unlink(missing_ok=True)  # a binary wins over a busybox applet
        _install(source, tree / "usr/bin" / name, 0o755)
    for name, source in inputs.cni_plugins.items():
        _install(source, tree / CNI_BIN_DIR.lstrip("/") / name, 0o755)
    for name, text in _ETC_FILES.items():
        _write(tree / name, text)
    _write(tree / "etc/os-release", os_release(debian_release()))
    _write(tree / CONTAINERD_CONFIG, containerd_config(inputs.sandbox_image))
    archives = tree / IMAGE_ARCHIVES_DIR
    archives.mkdir(parents=True)
    if inputs.image_archives is not None:
        if not inputs.image_archives.is_dir():
            raise RootfsError(f"OCI image archive directory {inputs.image_archives} not found")
        for archive in sorted(inputs.image_archives.glob("*.tar")):
            _install(archive, archives / archive.name, 0o644)
    for mount_point in MOUNT_POINTS:
        (tree / mount_point).mkdir(parents=True, exist_ok=True)
    for directory, subdirectories, _ in os.walk(tree):
        for name in subdirectories:
            path = Path(directory, name)
            if not path.is_symlink():
                path.chmod(0o1777 if name == "tmp" and Path(directory) == tree else 0o755)
    tree.chmod(0o755)


def _file_sha256(path: Path, size: int | None = None) -> str:
    digest = hashlib.sha256()
    remaining = path.stat().st_size if size is None else size
    with path.open("rb") as source:
        while remaining > 0:
            chunk = source.read(min(remaining, 1 << 20))
            if not chunk:
                raise RootfsError(f"{path} is shorter than {size} bytes")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def build_rootfs(target: Path, inputs: RootfsInputs) -> Rootfs:
    """Build the root filesystem image `target` (replacing it): squashfs, then its dm-verity hash tree
    appended. Same inputs, same bytes and root hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tl-rootfs-", dir=target.parent) as staging:
        tree = Path(staging, "tree")
        tree.mkdir()
        _stage(tree, inputs)
        target.unlink(missing_ok=True)
        _run(
            [
                "mksquashfs", str(tree), str(target), "-comp", "lz4", "-reproducible", "-all-root",
                "-mkfs-time", "0", "-all-time", "0", "-no-xattrs", "-noappend", "-quiet", "-no-progress",
            ],
            f"building the root filesystem {target}",
        )  # fmt: skip
    data_size = target.stat().st_size
    if data_size % VERITY_BLOCK_SIZE:  # mksquashfs pads to 4 KiB: anything else is not its image
        raise RootfsError(f"{target}: squashfs of {data_size} bytes is not padded to {VERITY_BLOCK_SIZE}")
    sha256 = _file_sha256(target)
    root_hash_file = target.with_name(target.name + ".roothash")
    try:
        _run(
            [
                "veritysetup", "format", str(target), str(target), "--no-superblock", f"--salt={sha256}",
                f"--hash={VERITY_HASH}", f"--data-block-size={VERITY_BLOCK_SIZE}",
                f"--hash-block-size={VERITY_BLOCK_SIZE}", f"--data-blocks={data_size // VERITY_BLOCK_SIZE}",
                f"--hash-offset={data_size}", f"--root-hash-file={root_hash_file}",
            ],
            f"computing the dm-verity hash tree of {target}",
        )  # fmt: skip
        root_hash = root_hash_file.read_text().strip()
    finally:
        root_hash_file.unlink(missing_ok=True)
    hash_size = target.stat().st_size - data_size
    return Rootfs(target, sha256, data_size, hash_size, root_hash, sha256)


def verify_rootfs(rootfs: Rootfs) -> None:
    """Check every block of the image against its hash tree and root hash (`veritysetup verify`); raises
    RootfsError naming the image when a block or the tree differs."""
    if not rootfs.path.is_file() or rootfs.path.stat().st_size != rootfs.data_size + rootfs.hash_size:
        raise RootfsError(
            f"root filesystem {rootfs.path} is missing or not {rootfs.data_size + rootfs.hash_size} bytes"
        )
    _run(
        [
            "veritysetup", "verify", str(rootfs.path), str(rootfs.path), rootfs.root_hash, "--no-superblock",
            f"--salt={rootfs.salt}", f"--hash={VERITY_HASH}", f"--data-block-size={VERITY_BLOCK_SIZE}",
            f"--hash-block-size={VERITY_BLOCK_SIZE}", f"--data-blocks={rootfs.data_blocks}",
            f"--hash-offset={rootfs.data_size}",
        ],
        f"root filesystem {rootfs.path} does not match its root hash {rootfs.root_hash}",
    )  # fmt: skip
