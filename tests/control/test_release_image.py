"""The node image real nodes boot (`build_release_image`): the verified kubelet and container runtime and the
pre-loaded images on its dm-verity root filesystem, the releases it was built from recorded and kept by an
agent refresh; an image an older trustedlaunch built (no root filesystem, or other releases) is not current.
Real mksquashfs/veritysetup builds (a few seconds each), read back with unsquashfs."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

import pytest

from trustedlaunch.attest.derivation import image_root_hash
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION, KubernetesRelease
from trustedlaunch.control.node_images import (
    PRELOADED_IMAGES_DIR,
    build_release_image,
    image_release,
    installed_boot_chain,
    is_release_image,
)
from trustedlaunch.control.node_runtime_release import NodeRuntime, release_name
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, PAUSE_IMAGE, image_archive_references
from trustedlaunch.node.image import NodeImage, NodeImageError, build_node_image, refresh_agent
from trustedlaunch.node.rootfs import IMAGE_ARCHIVES_DIR


@pytest.fixture(scope="module")
def release_image(
    kubernetes_release: KubernetesRelease, node_runtime: NodeRuntime, tmp_path_factory: pytest.TempPathFactory
) -> NodeImage:
    """The release image (the fixtures first check the cached binaries: a missing one fails the test)."""
    return build_release_image(tmp_path_factory.mktemp("release") / "image")


def squashfs_member(image: NodeImage, path: str) -> bytes:
    assert image.rootfs is not None
    command = ["unsquashfs", "-cat", str(image.rootfs.path), path]
    return subprocess.run(command, capture_output=True, check=True, timeout=120).stdout


def test_the_release_image_carries_kubelet_the_runtime_and_the_preloaded_images(
    release_image: NodeImage, kubernetes_release: KubernetesRelease, node_runtime: NodeRuntime
) -> None:
    rootfs = release_image.rootfs
    assert rootfs is not None
    chain = installed_boot_chain()
    assert release_image.release == {
        "kernelPackage": chain.kernel.package,  # linux-image-6.1.0-57-amd64, the newest installed
        "kernelVersion": chain.kernel.version,
        "shim": f"shim-signed {chain.loaders.shim_version}",
        "grub": f"grub-efi-amd64-signed {chain.loaders.grub_version}",
        "kubernetes": KUBERNETES_VERSION,
        "nodeRuntime": release_name(),
    }
    assert (
        squashfs_member(release_image, "usr/bin/kubelet") == kubernetes_release.binary("kubelet").read_bytes()
    )
    assert (
        squashfs_member(release_image, "usr/bin/containerd") == node_runtime.binary("containerd").read_bytes()
    )
    archives = sorted((release_image.metadata_path.parent / PRELOADED_IMAGES_DIR).glob("*.tar"))
    references = sorted(reference for archive in archives for reference in image_archive_references(archive))
    assert references[0] == PAUSE_IMAGE and references[1].startswith(f"{BUSYBOX_REPOSITORY}:")
    for archive in archives:  # covered by dm-verity: in the squashfs, byte for byte
        assert squashfs_member(release_image, f"{IMAGE_ARCHIVES_DIR}/{archive.name}") == archive.read_bytes()
    assert image_root_hash(release_image.esp_dir) == rootfs.root_hash  # what the predicted policy pins
    assert is_release_image(release_image)
    assert NodeImage.load(release_image.metadata_path.parent) == release_image


def test_an_agent_refresh_keeps_the_release_record(release_image: NodeImage, tmp_path: Path) -> None:
    refreshed = refresh_agent(release_image, tmp_path / "refreshed")
    assert refreshed.release == release_image.release and is_release_image(refreshed)
    assert json.loads(refreshed.metadata_path.read_text())["release"] == image_release()


def test_images_of_an_older_trustedlaunch_are_not_current(release_image: NodeImage, tmp_path: Path) -> None:
    without_rootfs = build_node_image(tmp_path / "plain")  # what trustedlaunch built before the root fs
    assert without_rootfs.release == {} and not is_release_image(without_rootfs)
    assert "release" not in json.loads(without_rootfs.metadata_path.read_text())
    older_kubelet = dataclasses.replace(release_image, release={**image_release(), "kubernetes": "v1.35.0"})
    assert not is_release_image(older_kubelet)
    assert not is_release_image(dataclasses.replace(release_image, rootfs=None))


def test_a_malformed_release_record_is_refused(release_image: NodeImage, tmp_path: Path) -> None:
    metadata = json.loads(release_image.metadata_path.read_text())
    metadata["release"] = {"kubernetes": 136}
    (tmp_path / "node-image.json").write_text(json.dumps(metadata))
    with pytest.raises(
        NodeImageError, match=r"not a node image metadata file.*release is not an object of strings"
    ):
        NodeImage.load(tmp_path)
