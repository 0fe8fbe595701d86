"""operations.start_node_reimage: a node whose agent cannot renew its kubelet credentials gets an Update
operation on its pool (the rolling reimage takes it), once, and none while it is quarantined by an upgrade
that could not drain it (the operator's next operation drains it again). Real SQLite store, no VMs."""

from __future__ import annotations

import threading

from monitoring_rows import add_node
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.operations import finish_operation, start_node_reimage
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import AgentPool, Node, Operation

SUB = "11111111-2222-3333-4444-555555555555"
REASON = "its agent cannot renew its kubelet credentials"


def test_one_operation_per_node_and_none_while_quarantined(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        _, create, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1")])
        )
        session.flush()
        finish_operation(session, create, "Succeeded")
        pool = session.scalars(select(AgentPool)).one()
        older, quarantined = add_node(session, pool, 0), add_node(session, pool, 1)
        operation = start_node_reimage(session, older, REASON)
        assert operation is not None and operation.kind == "Update"
        assert operation.note == f"agent pool nodepool1: reimaging node {older.name}: {REASON}"
        assert older.reimage_reason == REASON and pool.provisioning_state == "Updating"
        assert start_node_reimage(session, older, REASON) is None  # the one in progress reimages it
        finish_operation(session, operation, "Failed")
        quarantined.quarantined_by_operation = operation.id
        assert start_node_reimage(session, quarantined, REASON) is None
        assert quarantined.reimage_reason == REASON  # recorded: the next operation reimages it
        assert len(session.scalars(select(Operation).where(Operation.kind == "Update")).all()) == 1


def test_two_nodes_of_a_pool_at_once_start_one_operation(store: sessionmaker[Session]) -> None:
    """Two renewals (attestation threads, each its own transaction) find an older agent on two nodes of one
    pool at the same time: the second waits for the first's pool row lock, then finds its operation (on
    SQLite and PostgreSQL)."""
    with store.begin() as session:
        _, create, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1")])
        )
        session.flush()
        finish_operation(session, create, "Succeeded")
        pool = session.scalars(select(AgentPool)).one()
        node_ids = [add_node(session, pool, 0).id, add_node(session, pool, 1).id]
    started: list[Operation | None] = []

    def second() -> None:
        with store.begin() as session:
            started.append(start_node_reimage(session, session.get_one(Node, node_ids[1]), REASON))

    with store() as first:
        assert start_node_reimage(first, first.get_one(Node, node_ids[0]), REASON) is not None
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive()  # waiting for the pool row the first transaction holds
        first.commit()
    thread.join(30.0)
    assert started == [None]  # the first's operation reimages its node too
    with store() as session:
        assert len(session.scalars(select(Operation).where(Operation.kind == "Update")).all()) == 1
        assert session.get_one(Node, node_ids[1]).reimage_reason == REASON
