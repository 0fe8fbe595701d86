"""Cordoning and draining a hypervisor host (control.node_hosts `cordon_host`, `drain_host`): a drain cordons
the host and reimages each of its Ready or Unhealthy nodes through its pool's Update operation (started, or
the one already in progress on the pool's cluster), skipping nodes an upgrade quarantined and nodes in other
states; unknown hosts are 404; a drain the other hosts have no room for is refused. On SQLite and
PostgreSQL."""

from __future__ import annotations

import pytest
from monitoring_rows import add_node
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.host_drain import DrainedNode, drain_host
from trustedlaunch.control.node_hosts import cordon_host, get_host
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.placement import room_elsewhere
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS
from trustedlaunch.store.models import AgentPool, Node, NodeHost, Operation
from trustedlaunch.store.vocabulary import HostState

SUB = "11111111-2222-3333-4444-5555555d4a17"


def _pool(session: Session, cluster: str, pool: str, count: int, finish: bool) -> AgentPool:
    spec = PoolSpec(pool, count=count, vm_size="Standard_D4s_v3")
    created, operation, _ = put_cluster(
        session, ResourcePath(SUB, "rg", cluster), ClusterSpec("eastus", agent_pools=[spec])
    )
    if finish:
        finish_operation(session, operation, "Succeeded")
    [agent_pool] = created.agent_pools
    return agent_pool


def test_drain_cordons_the_host_and_reimages_its_ready_nodes(store: sessionmaker[Session]) -> None:
    with store.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        host = NodeHost(name="host1", uri="qemu+tcp://host1/system", memory_mib=8192, vcpus=8)
        other = NodeHost(name="host2", uri="qemu+tcp://host2/system", memory_mib=8192, vcpus=8)
        session.add_all([host, other])
        session.flush()
        idle = _pool(session, "idle", "idle", 5, finish=True)  # no operation in progress
        busy = _pool(session, "busy", "busy", 2, finish=False)  # its cluster's Create still in progress
        busy_operation = session.scalars(select(Operation)).all()[-1].id
        states = {0: "Ready", 1: "Ready", 2: "Ready", 3: "Provisioning", 4: "Ready"}
        for ordinal, state in states.items():
            node = add_node(session, idle, ordinal, state)
            node.host_id, node.driver = (other.id if ordinal == 4 else host.id), "libvirt"
            if ordinal == 2:
                node.quarantined_by_operation = "00000000-0000-0000-0000-000000000001"
        unhealthy = add_node(session, busy, 0, "Unhealthy")
        unhealthy.host_id, unhealthy.driver = host.id, "libvirt"

    with store.begin() as session:
        drained_host, drained = drain_host(session, "host1")
        assert drained_host.cordoned and not get_host(session, "host2").cordoned
        [started] = session.scalars(select(Operation).where(Operation.kind == "Update")).all()
        assert started.resource_id.endswith("/managedClusters/idle/agentPools/idle")
        assert started.note == "agent pool idle: reimaging node aks-idle-0: host host1 drained"
    assert drained == [
        DrainedNode("aks-busy-0", "Unhealthy", busy_operation, started=False),  # the Create reimages it
        DrainedNode("aks-idle-0", "Ready", started.id, started=True),
        DrainedNode("aks-idle-1", "Ready", started.id, started=False),  # one operation for the pool
        DrainedNode(
            "aks-idle-2",
            "Ready",
            skipped="quarantined by an upgrade that could not drain it: its pool's next operation drains "
            "it again",
        ),
        DrainedNode(
            "aks-idle-3",
            "Provisioning",
            skipped="Provisioning: not moved now; drain the host again if it is here once Ready",
        ),
    ]
    with store() as session:
        reasons = {node.name: node.reimage_reason for node in session.scalars(select(Node))}
        assert reasons == {
            "aks-busy-0": "host host1 drained",
            "aks-idle-0": "host host1 drained",
            "aks-idle-1": "host host1 drained",
            "aks-idle-2": None,
            "aks-idle-3": None,
            "aks-idle-4": None,  # on host2
        }
        pool = session.scalars(select(AgentPool).where(AgentPool.name == "idle")).one()
        assert pool.provisioning_state == "Updating"

    with store.begin() as session:  # a second drain starts nothing new: the operation reimages them
        _, again = drain_host(session, "host1")
        assert [(node.name, node.operation_id, node.started) for node in again[1:3]] == [
            ("aks-idle-0", started.id, False),
            ("aks-idle-1", started.id, False),
        ]
        assert len(session.scalars(select(Operation).where(Operation.kind == "Update")).all()) == 1
    with store.begin() as session:
        assert not cordon_host(session, "host1", False).cordoned
        assert cordon_host(session, "host2", True).cordoned
    with store() as session:
        assert {h.name: h.cordoned for h in session.scalars(select(NodeHost))} == {
            "host1": False,
            "host2": True,
        }


@pytest.mark.parametrize("action", ["cordon", "uncordon", "drain"])
def test_unknown_hosts_are_404(sessions: sessionmaker[Session], action: str) -> None:
    with sessions.begin() as session, pytest.raises(ArmError) as raised:
        if action == "drain":
            drain_host(session, "nohost")
        else:
            cordon_host(session, "nohost", action == "cordon")
    assert (raised.value.status, raised.value.code) == (404, "HostNotFound")


def _host(session: Session, name: str, slots: int, ek_ca: bool, **row: object) -> NodeHost:
    host = NodeHost(
        name=name,
        uri=f"qemu+tcp://{name}/system",
        memory_mib=slots * NODE_MEMORY_MIB,
        vcpus=slots * NODE_VCPUS,
        ek_ca_certificate="-----BEGIN CERTIFICATE-----(a registered EK CA)" if ek_ca else None,
        **row,
    )
    session.add(host)
    session.flush()
    return host


def test_a_drain_without_room_elsewhere_is_refused_and_changes_nothing(store: sessionmaker[Session]) -> None:
    with store.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        drained = _host(session, "host1", 3, ek_ca=True)
        _host(session, "plain", 5, ek_ca=False)  # room, but no EK CA: no vTPM node goes there
        _host(session, "trusted", 1, ek_ca=True)
        _host(session, "cordoned", 5, ek_ca=True, cordoned=True)
        _host(session, "lost", 5, ek_ca=True, state=HostState.LOST)
        spec = PoolSpec("tl", count=2, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True)
        cluster, operation, _ = put_cluster(
            session,
            ResourcePath(SUB, "rg", "mixed"),
            ClusterSpec("eastus", agent_pools=[spec, PoolSpec("plain", count=1, vm_size="Standard_D4s_v3")]),
        )
        finish_operation(session, operation, "Succeeded")
        vtpm_pool, plain_pool = cluster.agent_pools
        placed = [
            add_node(session, vtpm_pool, 0),
            add_node(session, vtpm_pool, 1),
            add_node(session, plain_pool, 0),
        ]
        for node in placed:
            node.host_id, node.driver = drained.id, "libvirt"
        assert placed[0].enable_vtpm and not placed[2].enable_vtpm
        assert room_elsewhere(session, placed) == 2  # one vTPM node on 'trusted', the other node on 'plain'
    with pytest.raises(ArmError) as raised, store.begin() as session:  # the caller's transaction rolls back
        drain_host(session, "host1")
    error = raised.value
    assert (error.status, error.code, error.target) == (409, "InsufficientHostCapacity", "name")
    assert (
        "Host 'host1' cannot be drained: the other Ready, uncordoned node hosts have room for 2 of the 3 "
        in (error.message)
    )
    with store.begin() as session:  # nothing changed: not cordoned, no operation, no reimage reason
        assert not get_host(session, "host1").cordoned
        assert session.scalars(select(Operation).where(Operation.kind == "Update")).all() == []
        assert {node.reimage_reason for node in session.scalars(select(Node))} == {None}
        trusted = get_host(session, "trusted")
        trusted.memory_mib, trusted.vcpus = 2 * NODE_MEMORY_MIB, 2 * NODE_VCPUS
    with store.begin() as session:
        host, nodes = drain_host(session, "host1")
        assert host.cordoned and [(node.name, node.started) for node in nodes] == [
            ("aks-plain-0", True),
            ("aks-tl-0", True),
            ("aks-tl-1", False),  # the pool's Update reimages both
        ]
