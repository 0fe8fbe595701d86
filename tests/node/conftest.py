"""Node VM fixtures: one node image and platform EK CA per session, two vTPM nodes (Secure Boot on and off)
shared by the modules, no orphan processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import processes_under

from trustedlaunch.control.binary_cache import CachedBinaryError
from trustedlaunch.control.kubernetes_release import verified_release
from trustedlaunch.control.node_runtime_release import node_rootfs_inputs, verified_node_runtime
from trustedlaunch.node.container_images import write_node_images
from trustedlaunch.node.image import BUSYBOX, NodeImage, build_node_image
from trustedlaunch.node.qemu import NodeVM
from trustedlaunch.node.rootfs import RootfsInputs
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that destroy a shared VM after all the tests that still use it."""
    items.sort(key=lambda item: item.get_closest_marker("kills_shared_node") is not None)


@pytest.fixture(scope="session")
def node_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Short base folder for this session's node files; fails the session if processes are left behind."""
    base = tmp_path_factory.mktemp("node")
    yield base
    leftovers = processes_under(base)
    assert not leftovers, f"qemu/swtpm processes left running: {leftovers}"


@pytest.fixture(scope="session")
def node_image(node_base: Path) -> NodeImage:
    """The default node image (Debian signed shim, GRUB and kernel)."""
    return build_node_image(node_base / "image")


@pytest.fixture(scope="session")
def node_ek_ca(node_base: Path) -> EkCa:
    """The platform EK CA that certifies the EKs of every vTPM of the session."""
    return create_ek_ca(node_base / "ek-ca")


@pytest.fixture(scope="session")
def node_vtpm(node_base: Path, node_ek_ca: EkCa) -> Iterator[Vtpm]:
    """One manufactured vTPM, reused by the vTPM boots like one VM restarted with other settings."""
    vtpm = Vtpm.create(node_base / "vtpm", ek_ca=node_ek_ca)
    yield vtpm
    vtpm.stop()


@pytest.fixture(scope="session")
def other_vtpm(node_base: Path, node_ek_ca: EkCa) -> Iterator[Vtpm]:
    """A second vTPM (another node's TPM identity), certified by the same platform EK CA."""
    vtpm = Vtpm.create(node_base / "vtpm-other", ek_ca=node_ek_ca)
    yield vtpm
    vtpm.stop()


@pytest.fixture(scope="session")
def vtpm_nodes(
    node_image: NodeImage, node_vtpm: Vtpm, other_vtpm: Vtpm, node_base: Path
) -> Iterator[tuple[NodeVM, NodeVM]]:
    """(Secure Boot + vTPM node, Secure Boot off node with the other vTPM), booted side by side (one vCPU
    each, so two boots take about the time of one) and shared by every module that needs a vTPM node."""
    secure = NodeVM(node_image, node_base / "vm-sb-vtpm", secure_boot=True, vtpm=node_vtpm)
    insecure = NodeVM(node_image, node_base / "vm-nosb-vtpm", secure_boot=False, vtpm=other_vtpm)
    with secure, insecure:
        secure.wait_ready()
        insecure.wait_ready()
        yield secure, insecure
    assert not secure.running and not node_vtpm.running
    assert not insecure.running and not other_vtpm.running


@pytest.fixture(scope="session")
def secure_node(vtpm_nodes: tuple[NodeVM, NodeVM]) -> NodeVM:
    """The Secure Boot + vTPM node (OVMF with Microsoft keys, node_vtpm)."""
    return vtpm_nodes[0]


@pytest.fixture(scope="session")
def insecure_node(vtpm_nodes: tuple[NodeVM, NodeVM]) -> NodeVM:
    """The Secure Boot off + vTPM node (OVMF without keys, other_vtpm)."""
    return vtpm_nodes[1]


@pytest.fixture(scope="session")
def rootfs_inputs() -> RootfsInputs:
    """The node root filesystem's inputs: the cached, verified kubelet and container runtime."""
    try:
        return node_rootfs_inputs(verified_release(), verified_node_runtime())
    except CachedBinaryError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def rootfs_node_image(node_base: Path, rootfs_inputs: RootfsInputs) -> NodeImage:
    """The default node image with its dm-verity protected root filesystem disk."""
    return build_node_image(node_base / "image-rootfs", rootfs=rootfs_inputs)


@pytest.fixture(scope="session")
def join_image(node_base: Path) -> NodeImage:
    """The rootfs node image with the pre-loaded pause and busybox images (the node joins a cluster)."""
    images = node_base / "join-images"
    write_node_images(images, BUSYBOX)
    inputs = node_rootfs_inputs(verified_release(), verified_node_runtime(), images)
    return build_node_image(node_base / "image-join", rootfs=inputs)
