"""Placement of new node VMs (control.placement): this machine without hosts; else a Ready host with room,
spreading each pool over the hosts, then the most free memory, never a cordoned one; AllocationFailed when no
host has room (naming the cordoned hosts that have)."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.placement import NoHostRoomError, place_node
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS
from trustedlaunch.store.models import AgentPool, Node, NodeHost
from trustedlaunch.store.vocabulary import HostState

SUB = "00000000-0000-0000-0000-00000000a11c"


def pools(session: Session) -> tuple[AgentPool, AgentPool]:
    spec = ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1", count=1), PoolSpec("other", count=1)])
    cluster, _, _ = put_cluster(session, ResourcePath(SUB, "rg", "c"), spec)
    first, second = cluster.agent_pools
    return first, second


def host(
    session: Session, name: str, nodes: int, state: str = HostState.READY, cordoned: bool = False
) -> NodeHost:
    """A host with room for `nodes` node VMs."""
    row = NodeHost(
        name=name,
        uri=f"qemu+tcp://{name}/system",
        memory_mib=nodes * NODE_MEMORY_MIB,
        vcpus=nodes * NODE_VCPUS,
        state=state,
        cordoned=cordoned,
    )
    session.add(row)
    return row


def node(session: Session, pool: AgentPool, ordinal: int, on: NodeHost | None = None) -> Node:
    row = Node(
        pool=pool,
        ordinal=ordinal,
        name=f"aks-{pool.name}-{ordinal}",
        node_image_version=pool.node_image_version,
        state="Provisioning",
        labels={},
        driver="libvirt" if on is not None else "qemu",
        host=on,
    )
    session.add(row)
    session.flush()
    return row


def test_without_hosts_nodes_run_on_this_machine(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        pool, _ = pools(session)
        placement = place_node(session, node(session, pool, 0))
        assert (placement.driver, placement.host) == ("qemu", None)


def test_a_pool_spreads_over_ready_hosts_then_fills_the_freest(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        pool, other = pools(session)
        big, small = host(session, "big", 3), host(session, "small", 2)
        host(session, "lost", 10, HostState.LOST)
        node(session, other, 0, big)  # another pool's node: the same free memory on both hosts now
        first = node(session, pool, 0)
        assert place_node(session, first).host is big  # a tie on the pool: the name orders them
        first.host = big
        second = node(session, pool, 1)
        assert place_node(session, second).host is small  # spread: the pool has none there yet
        second.host = small
        third = node(session, pool, 2)
        assert place_node(session, third).host is big  # one each: big has one node VM's room left, small one
        third.host = big
        fourth = node(session, pool, 3)
        placement = place_node(session, fourth)
        assert (placement.driver, placement.host) == ("libvirt", small)  # big is full
        assert place_node(session, third).host is big  # a node re-placed does not count itself


def test_no_host_with_room_fails_the_node_naming_the_need(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        pool, _ = pools(session)
        full = host(session, "full", 1)
        host(session, "lost", 10, HostState.LOST)
        node(session, pool, 0, full)
        with pytest.raises(NoHostRoomError) as failure:
            place_node(session, node(session, pool, 1))
    error = failure.value.error
    assert (error.code, error.target, error.status) == ("AllocationFailed", "nodeHosts", 409)
    assert error.message.startswith(
        "Allocation failed: none of the 2 registered node hosts is Ready with room "
    )
    assert f"node aks-nodepool1-1 ({NODE_MEMORY_MIB} MiB of memory and {NODE_VCPUS} vCPUs" in error.message


def test_a_cordoned_host_takes_no_new_node_and_keeps_its_own(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        pool, _ = pools(session)
        big = host(session, "big", 4, cordoned=True)  # the most room, and the pool's spread, but cordoned
        small = host(session, "small", 1)
        placed = node(session, pool, 0, big)
        assert place_node(session, placed).host is small  # re-placed (a reimage): not back on big
        assert place_node(session, node(session, pool, 1)).host is small
        node(session, pool, 2, small)  # small is full now
        with pytest.raises(NoHostRoomError) as failure:
            place_node(session, node(session, pool, 3))
        assert placed.host is big  # a node already on a cordoned host stays there
        big.cordoned = False
        assert place_node(session, node(session, pool, 4)).host is big
    error = failure.value.error
    assert (error.code, error.status) == ("AllocationFailed", 409)
    assert "only cordoned ones have room for node aks-nodepool1-3 (big)" in error.message
