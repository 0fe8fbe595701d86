"""A node image version whose boot chain cannot be had (its build record names a kernel Debian does not
serve: apt's index answers at once) fails only its own node and operation, with an error naming the image
and the package; its fetch runs before the reconciler's image lock is taken and with no store session open,
so it holds up no other image. Real store, real apt; no VM boots."""

from __future__ import annotations

import threading
from pathlib import Path

from reconciler_helpers import SUB
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.node_image_versions import ImageBuild, register_build
from trustedlaunch.control.node_plan import NodePhase
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.store.models import Node, Operation

UNSERVED = ImageBuild(
    release="202612.07.0",
    kernel_package="linux-image-6.1.0-99-amd64",
    kernel_version="6.1.999-1",
    kernel_release="6.1.0-99-amd64",
    shim_version="15.8-1",
    grub_version="2.06-13",
    kubernetes="v1.36.3",
    node_runtime="containerd-2.3.7",
)


def store(tmp_path: Path) -> tuple[sessionmaker[Session], str, str, str]:
    """Cluster `k` being created with one node of the unserved version; cluster `other` (no node) being
    deleted. The store, the version and the two operations' ids."""
    _, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        version, _ = register_build(session, UNSERVED)
        spec = ClusterSpec("eastus", agent_pools=[PoolSpec("pool", count=1, vm_size="Standard_D4s_v3")])
        cluster, creating, _ = put_cluster(session, ResourcePath(SUB, "rg", "k"), spec)
        _, created, _ = put_cluster(session, ResourcePath(SUB, "rg", "other"), spec)
        finish_operation(session, created, "Succeeded")
        deleting = delete_cluster(session, ResourcePath(SUB, "rg", "other"))
        assert deleting is not None
        cluster.agent_pools[0].node_image_version = version
        session.flush()
        return sessions, version, creating.id, deleting.id


def test_an_image_that_cannot_be_had_fails_its_own_node_and_operation_only(tmp_path: Path) -> None:
    sessions, version, failing_id, other_id = store(tmp_path)
    reconciler = Reconciler(sessions, tmp_path / "state")
    try:
        for _ in range(3):
            reconciler.run_once()  # never raises: the failure is the operation's
        with sessions() as session:
            failing = session.get_one(Operation, failing_id)
            assert failing.status == "Failed" and failing.error is not None
            message = str(failing.error["message"])
            assert f"node image {version}: its boot chain cannot be had" in message
            assert "linux-image-6.1.0-99-amd64 6.1.999-1" in message
            node = session.scalars(select(Node)).one()
            assert node.state == NodePhase.FAILED and version in node.message
            assert session.get_one(Operation, other_id).status == "Succeeded"
    finally:
        reconciler.release()


def test_the_fetch_waits_for_no_image_lock(tmp_path: Path) -> None:
    """Another thread holds the image lock (building an image for minutes): the fetch of this version's
    boot chain runs and fails meanwhile instead of waiting for it."""
    sessions, version, _, _ = store(tmp_path)
    reconciler = Reconciler(sessions, tmp_path / "state")
    held, release = threading.Event(), threading.Event()

    def build_elsewhere() -> None:
        with reconciler._artefacts_lock:
            held.set()
            release.wait(120.0)

    holder = threading.Thread(target=build_elsewhere, daemon=True)
    holder.start()
    assert held.wait(10.0)
    failures: list[TrustedLaunchError] = []

    def image() -> None:
        try:
            reconciler._image(version)
        except TrustedLaunchError as exc:
            failures.append(exc)

    fetching = threading.Thread(target=image, daemon=True)
    fetching.start()
    fetching.join(60.0)
    try:
        assert not fetching.is_alive(), "the fetch waited for the image lock"
        assert [str(failure).split(":")[0] for failure in failures] == [f"node image {version}"]
    finally:
        release.set()
        holder.join(10.0)
