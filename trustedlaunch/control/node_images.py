"""Node image catalogue: which image a new pool gets, and whether that image can run trusted launch; and the
one builder of the node image real nodes boot (`build_release_image`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.control import kubernetes_release, node_runtime_release
from trustedlaunch.control.vm_sizes import VmSize
from trustedlaunch.node import image as node_image
from trustedlaunch.node.container_images import write_node_images
from trustedlaunch.store.models import NodeImage

IMAGE_RELEASE = "202411.12.0"


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


def _linux(prefix: str, os_sku: str) -> list[NodeImageInfo]:
    return [
        NodeImageInfo(f"{prefix}gen2TLcontainerd-{IMAGE_RELEASE}", "Linux", os_sku, "V2", "x64", True),
        NodeImageInfo(f"{prefix}gen2containerd-{IMAGE_RELEASE}", "Linux", os_sku, "V2", "x64", False),
        NodeImageInfo(f"{prefix}containerd-{IMAGE_RELEASE}", "Linux", os_sku, "V1", "x64", False),
        NodeImageInfo(f"{prefix}gen2arm64containerd-{IMAGE_RELEASE}", "Linux", os_sku, "V2", "Arm64", False),
        NodeImageInfo(
            f"{prefix}gen2fipscontainerd-{IMAGE_RELEASE}", "Linux", os_sku, "V2", "x64", False, True
        ),
    ]


NODE_IMAGES: tuple[NodeImageInfo, ...] = (
    *_linux("AKSUbuntu-2204", "Ubuntu"),
    *_linux("AKSAzureLinux-V2", "AzureLinux"),
    NodeImageInfo(
        "AKSWindows-2019-containerd-17763.6532.241113", "Windows", "Windows2019", "V1", "x64", False
    ),
    NodeImageInfo(
        "AKSWindows-2022-containerd-20348.2849.241113", "Windows", "Windows2022", "V2", "x64", False
    ),
)
IMAGES_BY_VERSION = {image.version: image for image in NODE_IMAGES}


def select_image(
    os_type: str, os_sku: str, size: VmSize | None, fips: bool, trusted_launch_registered: bool
) -> NodeImageInfo:
    """The image a new pool gets. Trusted-launch capable images only once TrustedLaunchPreview is registered
    (pools created before that stay on a non-TL image for their lifetime, as in AKS)."""
    candidates = [i for i in NODE_IMAGES if i.os_type == os_type and i.os_sku == os_sku]
    if not candidates:  # osSKU/osType mismatch is rejected by the limits table; fall back per os type
        candidates = [i for i in NODE_IMAGES if i.os_type == os_type]
    architecture = size.architecture if size else "x64"
    generation = "V2" if size is None or size.supports_gen2 else "V1"

    def rank(image: NodeImageInfo) -> tuple[bool, bool, bool, bool]:
        wants_tl = trusted_launch_registered and not fips
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
    for image in NODE_IMAGES:
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


def image_release() -> dict[str, str]:
    """What the node image of this trustedlaunch is built from: the pinned Kubernetes release (kubelet) and
    container runtime of its root filesystem (recorded in the image's metadata)."""
    return {
        "kubernetes": kubernetes_release.KUBERNETES_VERSION,
        "nodeRuntime": node_runtime_release.release_name(),
    }


def build_release_image(out_dir: Path, *, kernel: Path | None = None) -> node_image.NodeImage:
    """Build the node image real nodes boot into `out_dir`: Debian's signed boot chain (`kernel`, by default
    the newest installed) and the agent, and a dm-verity root filesystem holding the verified kubelet and
    container runtime (from the user cache, each binary checked by SHA-256) and the pre-loaded pause and
    busybox images (their archives written into `out_dir/container-images` first). Raises
    CachedBinaryError when `make setup` has not built them."""
    release = kubernetes_release.verified_release()
    runtime = node_runtime_release.verified_node_runtime()
    archives = out_dir / PRELOADED_IMAGES_DIR
    write_node_images(archives, node_image.BUSYBOX)
    inputs = node_runtime_release.node_rootfs_inputs(release, runtime, image_archives=archives)
    return node_image.build_node_image(out_dir, kernel=kernel, rootfs=inputs, release=image_release())


def is_release_image(image: node_image.NodeImage) -> bool:
    """Whether `image` is the node image of this trustedlaunch's releases: it has a root filesystem built
    from the pinned Kubernetes release and container runtime. An image an older trustedlaunch built (without
    a root filesystem, with other binaries in it, or another GRUB configuration) is not: build it anew (its
    policy changes with it)."""
    return (
        image.rootfs is not None
        and image.release == image_release()
        and node_image.has_current_boot_config(image)
    )
