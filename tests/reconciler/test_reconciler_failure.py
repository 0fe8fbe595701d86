"""A node that does not boot (its image's kernel is unsigned, Secure Boot on): `run_once` passes record the
node Failed with the diagnosis naming the kernel, fail the operation with an ARM error, leave no process;
the cluster delete then removes the failed node. A node whose root filesystem was altered under the image's
root hash fails as NodeBootFailed naming the root filesystem. Two (short) failing VM boots."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import (
    SUB,
    nodes,
    processes_under,
    run_until_finished,
    trusted_launch_store,
    unsigned_kernel,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.node_images import build_release_image
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.node.image import default_kernel
from trustedlaunch.store.models import AlertRecord

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "brokencluster")


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'broken.db'}") as factory:
        yield factory


def boot_integrity_alert(sessions: sessionmaker[Session], node_name: str) -> tuple[str, str]:
    """The severity and failed components of the node's one open alert, a boot integrity failure (a node
    of that name an earlier test deleted left a resolved one)."""
    with sessions() as session:
        query = select(AlertRecord).where(AlertRecord.node_name == node_name, AlertRecord.status == "Active")
        [alert] = session.scalars(query).all()
        assert alert.alert_type == "VM_BootIntegrityFailure"
        properties = alert.document["properties"]
        return alert.severity, properties["extendedProperties"]["failedComponents"]  # type: ignore[index]


def test_boot_failure_fails_the_node_and_the_operation(
    sessions: sessionmaker[Session], reconciler_base: Path
) -> None:
    state_dir = reconciler_base / "broken-state"
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    with sessions.begin() as session:
        cluster, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
        image_version = cluster.agent_pools[0].node_image_version
    # the reconciler's cached build of this image version, with a kernel shim refuses (named as Debian's, so
    # that its modules open the root filesystem)
    (reconciler_base / "unsigned").mkdir()
    kernel = unsigned_kernel(default_kernel(), reconciler_base / "unsigned" / default_kernel().name)
    build_release_image(state_dir / "images" / image_version, kernel=kernel)
    reconciler = Reconciler(sessions, state_dir, boot_timeout=180)
    try:
        failed = run_until_finished(reconciler, sessions, create.id, 300)
        assert failed.status == "Failed" and failed.error is not None
        assert failed.error["code"] == "NodeBootFailed"
        assert "kernel" in str(failed.error["message"]) and "bad shim signature" in str(
            failed.error["message"]
        )
        (node,) = nodes(sessions)
        assert node.state == "Failed" and node.labels == {} and node.handle is None
        assert str(failed.error["message"]).endswith(node.message)
        assert failed.error["target"] == node.name
        assert processes_under(state_dir) == []
        assert boot_integrity_alert(sessions, node.name) == ("High", "kernel")  # alerted as such

        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        assert deletion is not None
        assert run_until_finished(reconciler, sessions, deletion.id, 300).status == "Succeeded"
        assert nodes(sessions) == []
    finally:
        reconciler.release()


def test_an_altered_root_filesystem_fails_the_node_naming_it(
    sessions: sessionmaker[Session], reconciler_base: Path
) -> None:
    path = ResourcePath(SUB, "rg", "alteredcluster")
    state_dir = reconciler_base / "altered-state"
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=False
    )
    with sessions.begin() as session:
        cluster, create, _ = put_cluster(session, path, ClusterSpec("eastus", agent_pools=[pool]))
        image_version = cluster.agent_pools[0].node_image_version
    # the reconciler's cached build of this image version, one byte of its root filesystem flipped on disk
    image = build_release_image(state_dir / "images" / image_version)
    assert image.rootfs is not None
    with image.rootfs.path.open("r+b") as disk:
        disk.seek(image.rootfs.data_size // 2)
        byte = disk.read(1)
        disk.seek(image.rootfs.data_size // 2)
        disk.write(bytes([byte[0] ^ 0x01]))
    reconciler = Reconciler(sessions, state_dir, boot_timeout=180)
    try:
        failed = run_until_finished(reconciler, sessions, create.id, 300)
        assert failed.status == "Failed" and failed.error is not None
        assert failed.error["code"] == "NodeBootFailed"
        message = str(failed.error["message"])
        assert f"root filesystem rootfs.img (root hash {image.rootfs.root_hash}) is corrupted" in message
        (node,) = [node for node in nodes(sessions) if node.name == failed.error["target"]]
        assert node.state == "Failed" and node.handle is None and message.endswith(node.message)
        assert processes_under(state_dir) == []
        assert boot_integrity_alert(sessions, node.name) == ("High", "root filesystem")  # not a generic one

        with sessions.begin() as session:
            deletion = delete_cluster(session, path)
        assert deletion is not None
        assert run_until_finished(reconciler, sessions, deletion.id, 300).status == "Succeeded"
    finally:
        reconciler.release()
