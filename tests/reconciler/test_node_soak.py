"""An upgrade's node soak (upgradeSettings.nodeSoakDurationInMinutes) is a deadline on the node's row that
each reconciler pass checks: nothing waits inside the operation's step, so other operations move meanwhile,
a pass with only the soak to wait for does nothing (the loop sleeps), a restarted reconciler resumes the
soak, and the node goes once its deadline has passed. Store and reconciler only (no VM: a soak the
operation started goes on whatever became of the node's VM)."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from reconciler_helpers import SUB
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.node_plan import NodePhase
from trustedlaunch.control.operations import finish_operation, start_operation
from trustedlaunch.control.reconciler import NodeStays, Reconciler
from trustedlaunch.control.resources import (
    ClusterSpec,
    PoolSpec,
    ResourcePath,
    delete_cluster,
    pool_resource_id,
    put_cluster,
)
from trustedlaunch.store.models import Node, Operation, utc_now

HOUR = 3600.0


def soaking_store(tmp_path: Path) -> tuple[sessionmaker[Session], str, str]:
    """Cluster `k` (one 1-node pool) under an Update whose surge node (ordinal 1) replaced the outdated
    node at ordinal 0, drained and soaking for an hour; cluster `other` (a pool without nodes) being
    deleted. The store and the two operations' ids."""
    _, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        pools = [PoolSpec("pool", count=1, vm_size="Standard_D4s_v3", max_surge="1")]
        cluster, created, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "k"), ClusterSpec("eastus", agent_pools=pools)
        )
        finish_operation(session, created, "Succeeded")
        pool = cluster.agent_pools[0]
        update = start_operation(session, SUB, "eastus", pool_resource_id(cluster, pool.name), "Update")
        session.flush()
        for ordinal, reason in ((0, "upgraded"), (1, None)):
            node = Node(
                pool=pool,
                ordinal=ordinal,
                name=f"aks-pool-soak-vmss{ordinal:06d}",
                node_image_version=pool.node_image_version,
                state=NodePhase.READY,
                labels={},
                reimage_reason=reason,
            )
            session.add(node)
        outdated = session.scalars(select(Node).where(Node.ordinal == 0)).one()
        outdated.soak_until, outdated.soaked_by_operation = utc_now() + timedelta(hours=1), update.id
        _, created, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "other"), ClusterSpec("eastus", agent_pools=pools)
        )
        finish_operation(session, created, "Succeeded")
        deletion = delete_cluster(session, ResourcePath(SUB, "rg", "other"))
        assert deletion is not None
        return sessions, update.id, deletion.id


def test_a_soaking_node_holds_up_no_other_operation_and_a_restart_resumes_its_soak(tmp_path: Path) -> None:
    sessions, update_id, deletion_id = soaking_store(tmp_path)
    reconciler = Reconciler(sessions, tmp_path / "state")
    try:
        started = time.monotonic()
        assert reconciler.run_once() is True  # the other cluster's deletion moved
        assert time.monotonic() - started < 30.0  # the pass did not wait out the soak
        with sessions() as session:
            assert session.get_one(Operation, deletion_id).status == "Succeeded"
            update = session.get_one(Operation, update_id)
            assert update.status == "InProgress"
            assert update.note == "agent pool pool: soaking node aks-pool-soak-vmss000000 (60 min left)"
            assert len(session.scalars(select(Node)).all()) == 2
        assert reconciler.run_once() is False  # only the soak is left: nothing done, the loop sleeps
    finally:
        reconciler.release()
    restarted = Reconciler(sessions, tmp_path / "state")
    try:
        assert restarted.run_once() is False  # the soak goes on where it was, no new drain
        with sessions.begin() as session:
            node = session.scalars(select(Node).where(Node.ordinal == 0)).one()
            assert (node.state, node.soaked_by_operation) == (NodePhase.READY, update_id)
            node.soak_until = utc_now() - timedelta(seconds=1)  # its deadline has passed
        assert restarted.run_once() is True  # the replaced node goes
        with sessions() as session:
            assert [node.ordinal for node in session.scalars(select(Node))] == [1]
        assert restarted.run_once() is True
        with sessions() as session:
            assert session.get_one(Operation, update_id).status == "Succeeded"
    finally:
        restarted.release()


def test_the_first_soak_records_its_deadline_and_a_later_operation_drains_again(tmp_path: Path) -> None:
    """The deadline is set from the pool's soak (here the reconciler's override) when the drain ended; a
    soak whose operation ended (canceled meanwhile) is no soak: a later operation drains anew."""
    sessions, update_id, _ = soaking_store(tmp_path)
    reconciler = Reconciler(sessions, tmp_path / "state", node_soak_duration=HOUR)
    notes: list[str] = []
    try:
        with sessions() as session:
            node = session.scalars(select(Node).where(Node.ordinal == 0)).one()
            node.soak_until = node.soaked_by_operation = None
            pool = node.pool
            update = session.get_one(Operation, update_id)
            before = utc_now()
            assert reconciler._soak(session, pool, node, notes.append, update) == NodeStays.SOAKING
            assert node.soak_until is not None and node.soaked_by_operation == update_id
            assert before + timedelta(hours=1) <= node.soak_until <= utc_now() + timedelta(hours=1)
            assert (node.message, notes) == (
                "soaking",
                ["soaking node aks-pool-soak-vmss000000 (60 min left)"],
            )
            assert reconciler._soaking(session, node) is True
            finish_operation(session, update, "Canceled")  # its soak is no step's to wait for any more
            assert reconciler._soaking(session, node) is False
        without = Reconciler(sessions, tmp_path / "state2", node_soak_duration=0.0)
        with sessions() as session:
            node = session.scalars(select(Node).where(Node.ordinal == 1)).one()
            assert without._soak(session, node.pool, node, notes.append, update) is None
            assert node.soak_until is None
    finally:
        reconciler.release()


def test_the_soak_is_the_nodes_another_operation_on_its_pool_neither_takes_nor_drains_it(
    tmp_path: Path,
) -> None:
    """A cluster Update on the pool of a node that the pool's Update soaks: its steps wait for the same
    deadline (no new drain, no deletion before it), its note counting the soak down; then the node goes."""
    sessions, update_id, _ = soaking_store(tmp_path)
    with sessions.begin() as session:
        cluster_update = start_operation(
            session, SUB, "eastus", ResourcePath(SUB, "rg", "k").cluster_id, "Update"
        )
        cluster_update_id = cluster_update.id
    reconciler = Reconciler(sessions, tmp_path / "state", node_soak_duration=HOUR)
    try:
        for _ in range(3):
            reconciler.run_once()
        with sessions() as session:
            node = session.scalars(select(Node).where(Node.ordinal == 0)).one()
            assert node.soaked_by_operation == update_id  # not restarted by the other operation
            assert node.soak_until is not None and node.soak_until > utc_now() + timedelta(minutes=59)
            note = "agent pool pool: soaking node aks-pool-soak-vmss000000 (60 min left)"
            assert session.get_one(Operation, cluster_update_id).note == note
            node.soak_until = utc_now() - timedelta(seconds=1)
            session.commit()
        reconciler.run_once()
        with sessions() as session:
            assert [node.ordinal for node in session.scalars(select(Node))] == [1]
    finally:
        reconciler.release()


def test_a_soaking_pass_writes_the_operations_note_once(tmp_path: Path) -> None:
    """While a node soaks, the operation's note is the soak's, written when it changes (not the step's and
    then the soak's on every pass)."""
    sessions, update_id, _ = soaking_store(tmp_path)
    notes: list[str] = []

    def record(_mapper: object, _connection: object, operation: Operation) -> None:
        if operation.id == update_id:
            notes.append(operation.note)

    reconciler = Reconciler(sessions, tmp_path / "state")
    event.listen(Operation, "after_update", record)
    try:
        reconciler.run_once()
        assert notes == ["agent pool pool: soaking node aks-pool-soak-vmss000000 (60 min left)"]
        reconciler.run_once()
        assert len(notes) == 1  # nothing changed: nothing written
    finally:
        event.remove(Operation, "after_update", record)
        reconciler.release()


def test_the_soak_of_an_operation_that_ended_is_cleared(tmp_path: Path) -> None:
    """The pool's Update failed while its node soaked: the next pass clears the deadline (no step waits for
    it any more); which operation drained the node stays recorded (its Node stays cordoned until an
    operation takes it or releases it)."""
    sessions, update_id, _ = soaking_store(tmp_path)
    with sessions.begin() as session:
        finish_operation(session, session.get_one(Operation, update_id), "Failed")
    reconciler = Reconciler(sessions, tmp_path / "state")
    try:
        reconciler.run_once()
        with sessions() as session:
            node = session.scalars(select(Node).where(Node.ordinal == 0)).one()
            assert (node.soak_until, node.soaked_by_operation) == (None, update_id)
            assert node.message == "cordoned: the upgrade that drained it ended during its soak"
    finally:
        reconciler.release()
