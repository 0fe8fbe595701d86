"""Draining a hypervisor host (`tl host drain`): cordon it (control.node_hosts `cordon_host`: placement puts
no new node VM there) and have each of its Ready or Unhealthy nodes reimaged through its pool's Update
operation (control.operations `start_node_reimage`: drained in Kubernetes first, surge per maxSurge), which
makes the node again, the same row, name and attestation history, where placement puts it: on another
host. Refused (the limits table's InsufficientHostCapacity) when the other hosts lack room for the nodes to
move: a node reimaged in place with nowhere to go would fail. Once no node is left on it, the host can be
removed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.control.limits import HostDrain, check_drain, raise_violations
from trustedlaunch.control.node_hosts import cordon_host
from trustedlaunch.control.node_plan import NodePhase
from trustedlaunch.control.operations import pool_operation_in_progress, start_node_reimage
from trustedlaunch.control.placement import room_elsewhere
from trustedlaunch.store.models import Node, NodeHost

DRAINED_STATES = (NodePhase.READY, NodePhase.UNHEALTHY)
QUARANTINED = "quarantined by an upgrade that could not drain it: its pool's next operation drains it again"


@dataclass(frozen=True)
class DrainedNode:
    """A node on a drained host: the Update operation of its pool that reimages it elsewhere (started by
    the drain, or already in progress on its pool or cluster), or why it stays (`skipped`)."""

    name: str
    state: str
    operation_id: str | None = None
    started: bool = False
    skipped: str | None = None


def _skipped(node: Node) -> str | None:
    if node.state not in DRAINED_STATES:
        return f"{node.state}: not moved now; drain the host again if it is here once Ready"
    if node.quarantined_by_operation is not None:
        return QUARANTINED
    return None


def drain_host(session: Session, name: str) -> tuple[NodeHost, list[DrainedNode]]:
    """Cordon host `name` (404 if it is not registered) and start the reimage of each of its Ready or
    Unhealthy nodes (see the module); 409 InsufficientHostCapacity, nothing changed, when the other Ready,
    uncordoned hosts lack room for them. A node an upgrade left quarantined, or in another state (being
    provisioned, reimaged, deleted or repaired), is skipped and stays: drain again once it is Ready. The host
    and what happens to each of its nodes, by name."""
    host = cordon_host(session, name, True)
    nodes = list(session.scalars(select(Node).where(Node.host_id == host.id).order_by(Node.name)))
    moving = [node for node in nodes if _skipped(node) is None]
    raise_violations(check_drain(HostDrain(host.name, len(moving), room_elsewhere(session, moving))))
    reason = f"host {host.name} drained"
    drained = []
    for node in nodes:
        skipped = _skipped(node)
        if skipped is not None:
            drained.append(DrainedNode(node.name, node.state, skipped=skipped))
            continue
        started = start_node_reimage(session, node, reason)
        operation = started or pool_operation_in_progress(session, node.pool)
        drained.append(
            DrainedNode(node.name, node.state, operation.id if operation else None, started is not None)
        )
    return host, drained
