"""Windows pools: refused when new (only Linux node images boot here), and a Windows pool an earlier version
stored keeps its rows (GET, DELETE) while no VM boots under its name: its nodes' provisioning fails naming
it, with no process started. Real SQLite store, real reconciler (it fails before building any image)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.limits import OS_TYPE_NOT_SUPPORTED
from trustedlaunch.control.node_images import node_images
from trustedlaunch.control.operations import finish_operation, get_operation
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import (
    ClusterSpec,
    PoolSpec,
    ResourcePath,
    delete_pool,
    get_cluster,
    get_pool,
    put_cluster,
    put_pool,
)
from trustedlaunch.store.models import AgentPool, Node, NodeImage, Operation

SUB = "11111111-2222-3333-4444-555555555555"
PATH = ResourcePath(SUB, "rg", "winCluster")
# the image row an earlier version seeded for Windows2022 pools (node_images.py no longer lists it)
EARLIER_WINDOWS_IMAGE = "AKSWindows-2022-containerd-20348.2849.241113"


def error_of(raised: pytest.ExceptionInfo[ArmError]) -> list[tuple[str, str | None]]:
    error = raised.value
    return [(d.code, d.target) for d in error.details] or [(error.code, error.target)]


def finish_operations(session: Session) -> None:
    for operation_id in session.scalars(select(Operation.id).where(Operation.status == "InProgress")):
        finish_operation(session, get_operation(session, SUB, operation_id), "Succeeded")


def test_the_catalogue_has_no_windows_image() -> None:
    assert {image.os_type for image in node_images()} == {"Linux"}


def test_a_cluster_with_a_windows_pool_is_refused_saying_why(sessions: sessionmaker[Session]) -> None:
    windows = PoolSpec(name="npwin", os_type="Windows", mode="System")
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_cluster(session, PATH, ClusterSpec(location="eastus", agent_pools=[windows]))
    assert raised.value.status == 400
    assert error_of(raised) == [(OS_TYPE_NOT_SUPPORTED, "properties.agentPoolProfiles[0].osType")]
    assert "only Linux node images" in raised.value.message and "npwin" in raised.value.message
    with sessions() as session:
        assert session.scalars(select(AgentPool)).all() == []


def test_a_windows_pool_put_is_refused_with_aks_errors_too(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        put_cluster(session, PATH, ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1")]))
        finish_operations(session)
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="win1234", os_type="Windows", enable_secure_boot=True))
    assert raised.value.status == 400
    assert set(error_of(raised)) == {
        ("InvalidParameter", "name"),  # AKS: at most 6 characters for Windows
        (OS_TYPE_NOT_SUPPORTED, "properties.osType"),
        ("TrustedLaunchIncompatibleWithConfig", "properties.osType"),  # AKS: no trusted launch on Windows
    }
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="win", os_type="Windows"))
    assert error_of(raised) == [(OS_TYPE_NOT_SUPPORTED, "properties.osType")]


def stored_windows_pool(sessions: sessionmaker[Session]) -> None:
    """A cluster with a System Linux pool and a Windows pool of one node as an earlier version stored it
    (its image row included)."""
    with sessions.begin() as session:
        put_cluster(session, PATH, ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1")]))
        finish_operations(session)
        put_pool(session, PATH, PoolSpec(name="win", count=1))
        finish_operations(session)
    with sessions.begin() as session:
        if session.get(NodeImage, EARLIER_WINDOWS_IMAGE) is None:
            session.add(
                NodeImage(
                    version=EARLIER_WINDOWS_IMAGE,
                    os_type="Windows",
                    os_sku="Windows2022",
                    hyper_v_generation="V2",
                    architecture="x64",
                    trusted_launch_capable=False,
                    fips=False,
                )
            )
            session.flush()
        pool = session.scalars(select(AgentPool).where(AgentPool.name == "win")).one()
        pool.os_type, pool.os_sku, pool.node_image_version = "Windows", "Windows2022", EARLIER_WINDOWS_IMAGE


def test_a_stored_windows_pool_keeps_its_rows_may_shrink_not_grow(sessions: sessionmaker[Session]) -> None:
    stored_windows_pool(sessions)
    with sessions.begin() as session:
        pool = get_pool(session, PATH, "win")
        assert (pool.os_type, pool.node_image_version) == ("Windows", EARLIER_WINDOWS_IMAGE)
        assert {p.name for p in get_cluster(session, PATH).agent_pools} == {"nodepool1", "win"}
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        put_pool(session, PATH, PoolSpec(name="win", count=2))
    assert error_of(raised) == [(OS_TYPE_NOT_SUPPORTED, "properties.osType")]
    with sessions.begin() as session:
        put_pool(session, PATH, PoolSpec(name="win", count=0))  # scaling down is allowed
        finish_operations(session)
    with sessions.begin() as session:
        operation = delete_pool(session, PATH, "win")
        assert operation is not None and operation.kind == "Delete"


def test_a_stored_windows_pool_fails_provisioning_naming_it_without_booting(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    stored_windows_pool(sessions)
    with sessions.begin() as session:  # its nodes are wanted again (as an operation an earlier version left)
        put_pool(session, PATH, PoolSpec(name="win", count=1))
        (operation_id,) = session.scalars(select(Operation.id).where(Operation.status == "InProgress"))
    reconciler = Reconciler(sessions, tmp_path / "state", attestation_interval=0, liveness_interval=0)
    try:
        for _ in range(5):
            if not reconciler.run_once():
                break
    finally:
        reconciler.release()
    with sessions() as session:
        operation = get_operation(session, SUB, operation_id)
        assert operation.status == "Failed"
        assert operation.error is not None
        assert operation.error["code"] == OS_TYPE_NOT_SUPPORTED
        assert "Pool 'win' is Windows" in operation.error["message"]
        assert "only Linux node images" in operation.error["message"]
        (node,) = session.scalars(select(Node)).all()
        assert node.state == "Failed" and node.handle is None
        assert "Pool 'win' is Windows" in (node.message or "")
    assert not (tmp_path / "state" / "images").exists()  # no Debian image built under a Windows name
