"""A node that does not boot (its image's kernel is unsigned, Secure Boot on): `run_once` passes record the
node Failed with the diagnosis naming the kernel, fail the operation with an ARM error, leave no process;
the cluster delete then removes the failed node. One (short) failing VM boot."""

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
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.node.image import build_node_image, default_kernel

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "brokencluster")


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'broken.db'}") as factory:
        yield factory


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
    # the reconciler's cached build of this image version, with a kernel shim refuses
    kernel = unsigned_kernel(default_kernel(), reconciler_base / "vmlinuz-unsigned")
    build_node_image(state_dir / "images" / image_version, kernel=kernel)
    reconciler = Reconciler(sessions, state_dir, boot_timeout=180)
    try:
        failed = run_until_finished(reconciler, sessions, create.id, 300)
        assert failed.status == "Failed" and failed.error is not None
        assert failed.error["code"] == "NodeBootFailed"
        assert "kernel" in str(failed.error["message"]) and "bad shim signature" in str(
            failed.error["message"]
        )
        (node,) = nodes(sessions)
        assert node.state == "Failed" and node.labels == {} and node.qemu_pid is None
        assert str(failed.error["message"]).endswith(node.message)
        assert failed.error["target"] == node.name
        assert processes_under(state_dir) == []

        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        assert deletion is not None
        assert run_until_finished(reconciler, sessions, deletion.id, 300).status == "Succeeded"
        assert nodes(sessions) == []
    finally:
        reconciler.release()
