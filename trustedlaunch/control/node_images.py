"""Node image catalogue: which flavour of image a new pool gets, and whether that image can run trusted
launch; the one name of the Linux node image (`linux_image_version`: Debian's signed boot chain, not AKS's
Ubuntu or Azure Linux image) and the one builder of the node image real nodes boot (`build_release_image`).

Node image versions: the installed boot chain (kernel, shim, GRUB packages) makes this release's image,
IMAGE_RELEASE. An image built from another Debian signed kernel, shim or GRUB (fetched by
control.boot_packages, never installed on the host) is another version, named in the order of its packages
(<YYYYMM>.<DD>.<patch>); its per-build record (`ImageBuild`: the packages and versions, the Kubernetes and
runtime releases) is stored with it, and its policy is predicted from its image before any node boots it.
A new pool gets the latest version of its flavour, the one of the newest packages
(control.node_image_versions.latest_version)."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.control import boot_packages, kubernetes_release, node_runtime_release
from trustedlaunch.control.boot_packages import BootLoaders, KernelBuild
from trustedlaunch.control.vm_sizes import VmSize
from trustedlaunch.node import image as node_image
from trustedlaunch.node.container_images import add_image_archive, write_node_images
from trustedlaunch.node.debian import debian_release
from trustedlaunch.store.models import NodeImage

# This node image's release, in AKS's <YYYYMM>.<DD>.<patch> style: the dm-verity root filesystem image of
# kubelet and the container runtime on Debian's signed boot chain (2026-12-06).
IMAGE_RELEASE = "202612.06.0"
# Every osSKU AKS accepts for Linux pools (the AKS REST API's OSSKU enum): all of them name this one image
# (there is no Ubuntu, Azure Linux, Mariner or Flatcar image here); the pool keeps the osSKU it was given, as
# AKS echoes it, and so does its nodes' kubernetes.azure.com/os-sku label.
LINUX_OS_SKUS = (
    "Ubuntu",
    "Ubuntu2204",
    "Ubuntu2404",
    "AzureLinux",
    "AzureLinux3",
    "CBLMariner",
    "Mariner",
    "Flatcar",
)
# AKS's Windows osSKUs: accepted values, so a Windows pool request meets AKS's own errors (control.limits),
# but no image boots them (no Windows node image exists here: a Windows pool is refused, OSTypeNotSupported).
WINDOWS_OS_SKUS = ("Windows2019", "Windows2022")
OS_SKUS = {"Linux": LINUX_OS_SKUS, "Windows": WINDOWS_OS_SKUS}


@dataclass(frozen=True)
class NodeImageInfo:
    """A node image version and its capabilities."""

    version: str
    os_type: str
    os_sku: str
    hyper_v_generation: str
    architecture: str
    trusted_launch_capable: bool
    fips: bool = False


def linux_image_version(*, trusted_launch: bool, debian: str, release: str = IMAGE_RELEASE) -> str:
    """The name of the Linux node image, styled as AKS names its images (AKSUbuntu-2204gen2TLcontainerd-
    202411.12.0): `TLDebian<debian>gen2[TL]containerd-<release>`, trustedlaunch's image of Debian
    `debian`'s signed shim, GRUB and kernel for Generation 2 (UEFI) VMs, trusted launch capable ("TL") or
    not, with containerd. The one place that names it (at most 63 characters: it is a label value)."""
    return f"TLDebian{debian}gen2{'TL' if trusted_launch else ''}containerd-{release}"


@functools.cache
def node_images() -> tuple[NodeImageInfo, ...]:
    """The catalogue. Linux: the one Debian image (x64, Generation 2, whatever the pool's size: nodes are
    QEMU x86-64 VMs on OVMF), under a trusted-launch-capable name and a name that is not (the same bytes: a
    pool created before TrustedLaunchPreview was registered, or with FIPS, keeps the latter and so cannot
    turn trusted launch on, as in AKS). There is no FIPS-validated image: FIPS pools run this image too. No
    Windows image: only Linux node images can be booted here (Windows image rows an earlier version stored
    stay in the store for the pools naming them). Raises DebianReleaseError when the host is not Debian."""
    debian = debian_release()
    return tuple(
        NodeImageInfo(
            linux_image_version(trusted_launch=capable, debian=debian),
            "Linux",
            f"Debian{debian}",
            "V2",
            "x64",
            capable,
        )
        for capable in (True, False)
    )


def find_image(version: str, session: Session | None = None) -> NodeImageInfo | None:
    """The catalogue's image `version`, else (with `session`) the stored version of that name (a version
    built from other Debian packages: control.node_image_versions), or None."""
    image = next((image for image in node_images() if image.version == version), None)
    row = session.get(NodeImage, version) if image is None and session is not None else None
    if row is None:
        return image
    return NodeImageInfo(
        row.version,
        row.os_type,
        row.os_sku,
        row.hyper_v_generation,
        row.architecture,
        row.trusted_launch_capable,
        row.fips,
    )


def select_image(size: VmSize | None, fips: bool, trusted_launch_registered: bool) -> NodeImageInfo:
    """The flavour of image a new (Linux) pool gets, as this release's catalogue names it (the pool gets the
    latest version of that flavour: node_image_versions.latest_version): the Debian image whatever its
    osSKU. Trusted-launch capable images only once TrustedLaunchPreview is registered (pools created before
    that stay on a non-TL image for their lifetime, as in AKS), and not for FIPS, Arm64 or Generation 1 sizes
    (which cannot turn it on)."""
    candidates = node_images()
    architecture = size.architecture if size else "x64"
    generation = "V2" if size is None or size.supports_gen2 else "V1"

    # as AKS: the trusted launch capable image only where trusted launch may be turned on later
    wants_tl = trusted_launch_registered and not fips and (architecture, generation) == ("x64", "V2")

    def rank(image: NodeImageInfo) -> tuple[bool, bool, bool, bool]:
        return (
            image.architecture == architecture,
            image.hyper_v_generation == generation,
            image.fips == fips,
            image.trusted_launch_capable == wants_tl,
        )

    return max(candidates, key=rank)


def seed_node_images(session: Session) -> None:
    """Insert the catalogue's images that the store does not have yet."""
    known = set(session.scalars(select(NodeImage.version)))
    for image in node_images():
        if image.version not in known:
            session.add(
                NodeImage(
                    version=image.version,
                    os_type=image.os_type,
                    os_sku=image.os_sku,
                    hyper_v_generation=image.hyper_v_generation,
                    architecture=image.architecture,
                    trusted_launch_capable=image.trusted_launch_capable,
                    fips=image.fips,
                )
            )


PRELOADED_IMAGES_DIR = "container-images"  # next to the built image: the archives its root filesystem holds


OPERATOR_IMAGES_DIR = "container-images"  # in the reconciler's state dir: an operator's OCI image archives


def operator_archives(operator_images: Path | None) -> list[Path]:
    """The OCI image archives (`*.tar`) an operator put into `operator_images`, by name."""
    if operator_images is None or not operator_images.is_dir():
        return []
    return sorted(operator_images.glob("*.tar"))


@dataclass(frozen=True)
class BootChain:
    """The Debian signed boot chain of a node image: its kernel (package, version, files) and its shim and
    GRUB (files, package versions)."""

    kernel: KernelBuild
    loaders: BootLoaders

    def record(self) -> dict[str, str]:
        """The packages and versions it is built from, as recorded in an image's release record."""
        return {
            "kernelPackage": self.kernel.package,
            "kernelVersion": self.kernel.version,
            "shim": f"{boot_packages.SHIM_PACKAGE} {self.loaders.shim_version}",
            "grub": f"{boot_packages.GRUB_PACKAGE} {self.loaders.grub_version}",
        }


def installed_boot_chain(kernel: Path | None = None) -> BootChain:
    """The host's installed boot chain (`kernel`, by default the newest in /boot, and the installed shim and
    GRUB). Raises BootPackageError when a package is not installed."""
    return BootChain(boot_packages.installed_kernel(kernel), boot_packages.installed_boot_loaders())


def image_release(operator_images: Path | None = None, boot_chain: BootChain | None = None) -> dict[str, str]:
    """What the node image of this trustedlaunch is built from (recorded in the image's metadata): the
    Debian packages of its boot chain (`boot_chain`, by default the installed one), the pinned Kubernetes
    release (kubelet) and container runtime of its root filesystem, and the operator's image archives in
    `operator_images` (a fingerprint of their names, sizes and modification times: an archive added,
    removed or replaced makes another release)."""
    release = {
        **(installed_boot_chain() if boot_chain is None else boot_chain).record(),
        "kubernetes": kubernetes_release.KUBERNETES_VERSION,
        "nodeRuntime": node_runtime_release.release_name(),
    }
    archives = operator_archives(operator_images)
    if archives:
        stats = [(archive.name, archive.stat()) for archive in archives]
        listing = "".join(f"{name} {stat.st_size} {stat.st_mtime_ns}\n" for name, stat in stats)
        release["operatorImages"] = hashlib.sha256(listing.encode()).hexdigest()
    return release


def build_release_image(
    out_dir: Path,
    *,
    kernel: Path | None = None,
    operator_images: Path | None = None,
    boot_chain: BootChain | None = None,
) -> node_image.NodeImage:
    """Build the node image real nodes boot into `out_dir`: Debian's signed boot chain (`boot_chain`, by
    default the installed one with `kernel`, by default the newest installed, as its kernel: one of its
    files may be given in place of the packaged one, e.g. an unsigned copy) and the agent, and a dm-verity
    root filesystem holding the verified kubelet and
    container runtime (from the user cache, each binary checked by SHA-256), the pre-loaded pause and
    busybox images and the operator's image archives in `operator_images` (each checked by
    add_image_archive; all written into `out_dir/container-images` first). Raises CachedBinaryError when
    `make setup` has not built them, ContainerImageError naming an operator archive that is refused."""
    release = kubernetes_release.verified_release()
    runtime = node_runtime_release.verified_node_runtime()
    archives = out_dir / PRELOADED_IMAGES_DIR
    write_node_images(archives, node_image.BUSYBOX)
    for archive in operator_archives(operator_images):
        add_image_archive(archives, archive)
    inputs = node_runtime_release.node_rootfs_inputs(release, runtime, image_archives=archives)
    chain = installed_boot_chain(kernel) if boot_chain is None else boot_chain
    recorded = image_release(operator_images, chain)
    return node_image.build_node_image(
        out_dir,
        kernel=chain.kernel.vmlinuz if kernel is None else kernel,
        rootfs=inputs,
        release=recorded,
        modules_root=chain.kernel.modules_root,
        shim=chain.loaders.shim,
        grub=chain.loaders.grub,
    )


def is_release_image(
    image: node_image.NodeImage, operator_images: Path | None = None, boot_chain: BootChain | None = None
) -> bool:
    """Whether `image` is the node image of this trustedlaunch's releases, the operator's images in
    `operator_images` and `boot_chain` (by default the installed one): it has a root filesystem built from
    the pinned Kubernetes release and container runtime and those archives, and that boot chain's packages.
    An image an older trustedlaunch built (without a root filesystem, with other binaries or images in it,
    another boot chain or another GRUB configuration) is not: build it anew (its policy changes with it;
    running nodes keep attesting against the policy they were provisioned with)."""
    return (
        image.rootfs is not None
        and image.release == image_release(operator_images, boot_chain)
        and node_image.has_current_boot_config(image)
    )
