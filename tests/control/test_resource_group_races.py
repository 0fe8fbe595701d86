"""A cluster PUT and its resource group's DELETE at the same time, on SQLite and on PostgreSQL: each takes the
group's lock first in its transaction (resource_groups.lock_group), so either the cluster is created first
and deleted with the group, or the PUT waits and is refused; never a cluster left in a deleted group."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.resource_groups import delete_group, find_group, get_group, put_group
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import ManagedCluster
from trustedlaunch.store.vocabulary import ProvisioningState

SUB = "00000000-0000-0000-0000-00000000a0ce"
PATH = ResourcePath(SUB, "racing", "k1")
SPEC = ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1", count=1)])
WAIT_SECONDS = 0.5  # long enough for the other transaction to reach the lock


def in_thread(work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    """Run `work` in a thread of its own; what it raised is in the list once the thread ends."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # the test reads it
            raised.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


def make_group(store: sessionmaker[Session]) -> None:
    with store.begin() as session:
        put_group(session, SUB, "racing", "eastus", None)


def test_group_delete_waits_for_a_cluster_put_and_deletes_its_cluster(store: sessionmaker[Session]) -> None:
    make_group(store)

    def delete() -> None:
        with store.begin() as session:
            delete_group(session, SUB, "racing")

    with store.begin() as session:
        get_group(session, SUB, "racing", write=True)  # the PUT checked the group: it is there
        deleting, raised = in_thread(delete)
        deleting.join(WAIT_SECONDS)
        assert deleting.is_alive(), "the group's delete did not wait for the cluster PUT's transaction"
        put_cluster(session, PATH, SPEC)
    deleting.join(30)
    assert not deleting.is_alive() and not raised
    with store.begin() as session:
        group = find_group(session, SUB, "racing")
        cluster = session.scalar(select(ManagedCluster))
        assert group is not None and group.provisioning_state == ProvisioningState.DELETING
        assert cluster is not None and cluster.provisioning_state == ProvisioningState.DELETING


def test_cluster_put_waits_for_a_group_delete_and_is_refused(store: sessionmaker[Session]) -> None:
    make_group(store)
    refused: list[ArmError] = []

    def put() -> None:
        with store.begin() as session:
            try:
                get_group(session, SUB, "racing", write=True)
            except ArmError as error:
                refused.append(error)
                return
            put_cluster(session, PATH, SPEC)

    with store.begin() as session:
        assert delete_group(session, SUB, "racing") == []  # no cluster yet: the group goes at once
        putting, raised = in_thread(put)
        time.sleep(WAIT_SECONDS)
        assert putting.is_alive(), "the cluster PUT did not wait for the group's delete"
    putting.join(30)
    assert not putting.is_alive() and not raised
    assert [(error.status, error.code) for error in refused] == [(404, "ResourceGroupNotFound")]
    with store.begin() as session:
        assert find_group(session, SUB, "racing") is None
        assert session.scalar(select(ManagedCluster)) is None


def test_cluster_put_in_a_group_being_deleted_is_refused(store: sessionmaker[Session]) -> None:
    make_group(store)
    with store.begin() as session:
        put_cluster(session, PATH, SPEC)
    with store.begin() as session:
        assert len(delete_group(session, SUB, "racing") or []) == 1
    with store.begin() as session, pytest.raises(ArmError) as refused:
        get_group(session, SUB, "racing", write=True)
    assert (refused.value.status, refused.value.code) == (409, "ResourceGroupBeingDeleted")
