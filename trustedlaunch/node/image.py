"""Node image builder: an EFI System Partition folder booting Debian's signed shim -> GRUB -> kernel.

The kernel's initramfs holds busybox and the trustedlaunch agent as /init (the agent relays TPM
commands: the TSS runs on the host, so the node needs no TPM software and its initramfs stays ~1 MB).
With a root filesystem (trustedlaunch.node.rootfs: kubelet and the container runtime on squashfs under
dm-verity), the image also holds that disk, its root hash goes on the kernel command line GRUB measures
(PCR 8: the predicted policy covers every byte of it), and the initramfs carries what the agent opens it
with and a joining node needs (the kernel's signed virtio, dm-verity, squashfs, overlay, bridge and veth
modules, Debian's dmsetup; ~3.8 MB).
The image's version is a hash of its content: same inputs, same version. `refresh_agent` gives an image
built by an older trustedlaunch the current agent and keeps its boot chain.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.debian import package_version
from trustedlaunch.node.initramfs import Initramfs
from trustedlaunch.node.rootfs import ROOTFS_NAME, Rootfs, RootfsInputs, build_rootfs

SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
BUSYBOX = Path("/usr/bin/busybox")
DMSETUP = Path("/usr/sbin/dmsetup")
# Opening the root filesystem: its virtio disk, dm-verity over it, squashfs on top; then what a joining node
# runs needs: its virtio NIC, overlayfs (containerd's snapshotter), the pods' bridge and veth pairs (with
# their dependencies).
ROOTFS_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "dm-verity",
    "squashfs",
    "virtio_net",
    "overlay",
    "bridge",
    "veth",
)
VERITY_ROOTHASH_ARG = "trustedlaunch.verity_roothash"
VERITY_SALT_ARG = "trustedlaunch.verity_salt"
VERITY_BLOCKS_ARG = "trustedlaunch.verity_blocks"
KERNEL_GLOB = "/boot/vmlinuz-*-amd64"
MODULES_ROOT = Path("/lib/modules")  # the installed kernels' modules; a downloaded kernel's are elsewhere
DEFAULT_CMDLINE = "console=ttyS0 panic=-1 loglevel=4"
METADATA_NAME = "node-image.json"
GRUB_CONFIG_FILE = "EFI/debian/grub.cfg"
BOOT_FAILED_MARKER = "trustedlaunch: boot failed"


def _esp_files(shim: Path, grub: Path) -> dict[str, tuple[Path, str]]:
    """ESP path -> (source file, the Debian package that has it) of the signed boot loaders."""
    return {
        "EFI/BOOT/BOOTX64.EFI": (shim, "shim-signed"),
        "EFI/BOOT/grubx64.efi": (grub, "grub-efi-amd64-signed"),
    }


class NodeImageError(TrustedLaunchError):
    """A node image cannot be built (missing boot files or tools, bad kernel, bad command line)."""


@dataclass(frozen=True)
class NodeImage:
    """A built node image: the ESP folder QEMU serves as a FAT disk, and its metadata."""

    esp_dir: Path
    metadata_path: Path
    version: str
    kernel_cmdline: str
    files: dict[str, str]  # ESP-relative path -> sha256 hex
    rootfs: Rootfs | None = None  # the dm-verity protected root filesystem disk, when the image has one
    # What its builder recorded it was built from (e.g. the Kubernetes and runtime releases of its root
    # filesystem), kept by refresh_agent.
    release: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, out_dir: Path) -> NodeImage:
        """Read a node image built earlier into `out_dir` (its metadata JSON file)."""
        metadata_path = out_dir / METADATA_NAME
        try:
            metadata = json.loads(metadata_path.read_text())
            return cls(
                esp_dir=out_dir / "esp",
                metadata_path=metadata_path,
                version=metadata["version"],
                kernel_cmdline=metadata["kernelCmdline"],
                files={item["path"]: item["sha256"] for item in metadata["files"]},
                rootfs=Rootfs.from_metadata(out_dir, metadata["rootfs"]) if "rootfs" in metadata else None,
                release=_release(metadata.get("release", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise NodeImageError(f"{metadata_path}: not a node image metadata file ({error})") from error


def _release(record: object) -> dict[str, str]:
    """A metadata file's release record: an object of strings (ValueError otherwise)."""
    if not isinstance(record, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in record.items()
    ):
        raise ValueError("release is not an object of strings")
    return dict(record)


def default_kernel() -> Path:
    """The newest Debian kernel installed in /boot (package linux-image-amd64)."""
    kernels = glob.glob(KERNEL_GLOB)
    if not kernels:
        raise NodeImageError(f"no kernel matches {KERNEL_GLOB}: install the Debian package linux-image-amd64")

    return Path(max(kernels, key=lambda path: package_version(kernel_release(Path(path).name))))


def _require(path: Path, package: str) -> Path:
    if not path.is_file():
        raise NodeImageError(f"{path} not found: install the Debian package {package}")
    return path


def _kernel_modules(
    kernel_release: str, names: tuple[str, ...], modules_root: Path = MODULES_ROOT
) -> list[tuple[str, bytes]]:
    """(file name, bytes) of the kernel modules `names` and every module they depend on, in load order
    (dependencies first), from `modules_root`/<kernel_release> (Debian signs them: they load under
    lockdown)."""
    directory = modules_root / kernel_release
    try:
        lines = (directory / "modules.dep").read_text().splitlines()
    except OSError as error:
        raise NodeImageError(
            f"kernel modules of {kernel_release} not found ({error}): install its linux-image package"
        ) from error
    dependencies: dict[str, list[str]] = {}
    for line in lines:
        module, _, needs = line.partition(":")
        dependencies[module] = needs.split()
    by_name = {Path(module).name.removesuffix(".ko").replace("_", "-"): module for module in dependencies}
    ordered: list[str] = []

    def add(module: str) -> None:
        for dependency in reversed(dependencies.get(module, [])):
            add(dependency)
        if module not in ordered:
            ordered.append(module)

    for name in names:
        if name.replace("_", "-") not in by_name:
            raise NodeImageError(f"kernel {kernel_release} has no module {name}")
        add(by_name[name.replace("_", "-")])
    return [(Path(module).name, (directory / module).read_bytes()) for module in ordered]


def _program_with_libraries(program: Path, package: str) -> dict[str, bytes]:
    """A dynamically linked program and the shared libraries the dynamic linker resolves for it (ldd),
    each at its own absolute path (initramfs-relative)."""
    _require(program, package)
    listing = subprocess.run(["ldd", str(program)], capture_output=True, text=True, check=True).stdout
    files = {str(program).lstrip("/"): program.read_bytes()}
    for line in listing.splitlines():
        path = line.split("=>")[-1].split("(")[0].strip()
        if path.startswith("/"):
            files[path.lstrip("/")] = Path(path).read_bytes()
    return files


def build_initramfs(kernel_release: str | None = None, modules_root: Path = MODULES_ROOT) -> bytes:
    """The gzip-compressed newc initramfs: busybox and the agent as /init; with `kernel_release` also what
    opening the dm-verity root filesystem needs (that kernel's virtio, dm-verity and squashfs modules from
    `modules_root`, listed in load order in /etc/modules, and Debian's dmsetup with its libraries)."""
    tree = Initramfs()
    for directory in ("proc", "sys", "dev", "tmp", "run", "etc"):
        tree.directory(directory)
    tree.char_device("dev/console", 5, 1)
    tree.file("bin/busybox", _require(BUSYBOX, "busybox-static").read_bytes(), 0o755)
    applets = subprocess.run([str(BUSYBOX), "--list-full"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "bin/busybox":
            tree.symlink(applet, "/bin/busybox")
    if kernel_release is not None:
        tree.directory("sysroot")
        modules = _kernel_modules(kernel_release, ROOTFS_MODULES, modules_root)
        for name, data in modules:
            tree.file(f"lib/modules/{name}", data)
        tree.file("etc/modules", "".join(f"{name}\n" for name, _ in modules).encode())
        for name, data in _program_with_libraries(DMSETUP, "dmsetup").items():
            tree.file(name, data, 0o755)
    agent = resources.files("trustedlaunch.node").joinpath("agent/init.sh").read_bytes()
    tree.file("init", agent, 0o755)
    return tree.gzip()


def kernel_release(kernel_name: str) -> str:
    """The release of a Debian kernel image file name (vmlinuz-6.1.0-57-amd64 -> 6.1.0-57-amd64)."""
    if not kernel_name.startswith("vmlinuz-"):
        raise NodeImageError(f"kernel {kernel_name} is not named vmlinuz-<release>: no modules to go with it")
    return kernel_name.removeprefix("vmlinuz-")


def verity_cmdline(rootfs: Rootfs) -> str:
    """The kernel command line arguments the agent opens the root filesystem with: its dm-verity root hash,
    salt and number of data blocks (the hash tree follows them on the same disk)."""
    return (
        f"{VERITY_ROOTHASH_ARG}={rootfs.root_hash} {VERITY_SALT_ARG}={rootfs.salt} "
        f"{VERITY_BLOCKS_ARG}={rootfs.data_blocks}"
    )


def grub_config(cmdline: str) -> str:
    """GRUB config chainloading the kernel's EFI stub (so the kernel receives the TCG event log, with or
    without Secure Boot: Debian's GRUB boots a `linux` kernel without its stub when Secure Boot is off).
    The stub loads the initramfs, and measures nothing of it: so GRUB first reads it whole (`loopback`
    opens the file and GRUB's TPM verifier measures every file it opens into PCR 9), making the initramfs,
    the agent that opens the dm-verity root filesystem, part of the measured boot."""
    return (
        "set timeout=0\n"
        "loopback initramfs /initrd.gz\n"
        "loopback -d initramfs\n"
        f"chainloader /vmlinuz initrd=\\initrd.gz {cmdline}\n"
        "boot\n"
        f'echo "{BOOT_FAILED_MARKER}"\n'
        "reboot\n"
    )


def build_node_image(
    out_dir: Path,
    *,
    kernel: Path | None = None,
    cmdline: str = DEFAULT_CMDLINE,
    rootfs: RootfsInputs | None = None,
    release: Mapping[str, str] | None = None,
    modules_root: Path = MODULES_ROOT,
    shim: Path = SHIM,
    grub: Path = GRUB,
) -> NodeImage:
    """Build the ESP folder `out_dir/esp` and its metadata `out_dir/node-image.json` (replacing both), and
    with `rootfs` the root filesystem disk `out_dir/rootfs.img`; `release` is recorded in the metadata.
    The boot chain is `shim`, `grub` and `kernel` (by default the installed ones), the initramfs takes the
    kernel's modules from `modules_root` (another than /lib/modules is recorded in the metadata)."""
    if any(character in cmdline for character in "\n\r\"'\\$;") or not cmdline.strip():
        raise NodeImageError(
            f"kernel command line {cmdline!r} is empty or has characters GRUB would interpret "
            "(quotes, \\, $, ;)"
        )
    kernel = default_kernel() if kernel is None else kernel
    if not kernel.is_file():
        raise NodeImageError(f"kernel {kernel} not found")
    contents: dict[str, bytes] = {
        name: _require(source, package).read_bytes()
        for name, (source, package) in _esp_files(shim, grub).items()
    }
    built_rootfs = None
    if rootfs is not None:
        modules_release = kernel_release(kernel.name)
        built_rootfs = build_rootfs(out_dir / ROOTFS_NAME, rootfs)
        cmdline = f"{cmdline} {verity_cmdline(built_rootfs)}"
    contents[GRUB_CONFIG_FILE] = grub_config(cmdline).encode()
    contents["vmlinuz"] = kernel.read_bytes()
    contents["initrd.gz"] = build_initramfs(None if rootfs is None else modules_release, modules_root)
    return _write_image(
        out_dir, contents, kernel.name, cmdline, built_rootfs, dict(release or {}), modules_root
    )


@functools.cache
def current_initramfs_sha256(kernel_release: str | None = None, modules_root: Path = MODULES_ROOT) -> str:
    """The sha256 of the initramfs build_initramfs makes (installed busybox and agent, and the modules of
    `kernel_release` in `modules_root`), once per process."""
    return hashlib.sha256(build_initramfs(kernel_release, modules_root)).hexdigest()


def _initramfs_modules(image: NodeImage) -> tuple[str | None, Path]:
    """The kernel release whose modules `image`'s initramfs holds (its kernel's when it has a root
    filesystem, else none) and the folder they were taken from."""
    try:
        metadata = json.loads(image.metadata_path.read_text())
        modules_root = Path(metadata.get("modulesRoot", str(MODULES_ROOT)))
        if image.rootfs is None:
            return None, modules_root
        return kernel_release(metadata["kernel"]), modules_root
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise NodeImageError(f"node image {image.esp_dir.parent} cannot be read: {error}") from error


def has_current_boot_config(image: NodeImage) -> bool:
    """Whether `image`'s GRUB configuration is the one this trustedlaunch writes for its command line (an
    older one left the initramfs unmeasured)."""
    try:
        written = (image.esp_dir / GRUB_CONFIG_FILE).read_bytes()
    except OSError:
        return False
    return written == grub_config(image.kernel_cmdline).encode()


def has_current_agent(image: NodeImage) -> bool:
    """Whether `image` carries the initramfs (agent) of this trustedlaunch: an image built by an older one
    may hold an agent whose protocol the host no longer speaks."""
    return image.files.get("initrd.gz") == current_initramfs_sha256(*_initramfs_modules(image))


def refresh_agent(image: NodeImage, out_dir: Path) -> NodeImage:
    """A copy of `image` in `out_dir` with the current initramfs (agent); shim, GRUB, the kernel and its
    command line stay the image's own (the policy's PCR 9 follows the new initramfs)."""
    try:
        kernel_name = json.loads(image.metadata_path.read_text())["kernel"]
        contents = {name: (image.esp_dir / name).read_bytes() for name in image.files}
    except (OSError, ValueError, KeyError) as error:
        raise NodeImageError(f"node image {image.esp_dir.parent} cannot be read: {error}") from error
    modules_release, modules_root = _initramfs_modules(image)
    contents["initrd.gz"] = build_initramfs(modules_release, modules_root)
    rootfs = image.rootfs
    if rootfs is not None:
        target = out_dir / ROOTFS_NAME
        if target != rootfs.path:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(rootfs.path, target)
        rootfs = replace(rootfs, path=target)
    return _write_image(
        out_dir, contents, kernel_name, image.kernel_cmdline, rootfs, image.release, modules_root
    )


def _write_image(
    out_dir: Path,
    contents: dict[str, bytes],
    kernel_name: str,
    cmdline: str,
    rootfs: Rootfs | None,
    release: dict[str, str],
    modules_root: Path = MODULES_ROOT,
) -> NodeImage:
    """Write the ESP files `contents` (ESP-relative path -> bytes) and their metadata into `out_dir`; the
    version is a digest of every file's digest (and of the root filesystem's entry)."""
    files = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(contents.items())}
    versioned: dict[str, object] = dict(files)
    if rootfs is not None:
        versioned[ROOTFS_NAME] = rootfs.metadata()
    version = hashlib.sha256(json.dumps(versioned, sort_keys=True).encode()).hexdigest()[:16]
    esp_dir = out_dir / "esp"
    if esp_dir.exists():
        shutil.rmtree(esp_dir)
    for name, data in contents.items():
        target = esp_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    metadata = {
        "version": version,
        "trustedLaunchCapable": True,
        "kernel": kernel_name,
        "kernelCmdline": cmdline,
        "files": [
            {"path": name, "sha256": digest, "size": len(contents[name])} for name, digest in files.items()
        ],
    }
    if rootfs is not None:
        metadata["rootfs"] = rootfs.metadata()
    if release:
        metadata["release"] = release
    if modules_root != MODULES_ROOT:
        metadata["modulesRoot"] = str(modules_root)
    metadata_path = out_dir / METADATA_NAME
    metadata_path.write_text(json.dumps(metadata, indent=2) + "\n")
    return NodeImage(esp_dir, metadata_path, version, cmdline, files, rootfs, release)
