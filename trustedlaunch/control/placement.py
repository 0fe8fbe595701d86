"""Where a new node VM runs (recorded on its row before the VM starts): with no node host registered, on
this machine under the direct QEMU driver (the default for one machine); else on a Ready host with room
for one node VM (its registered memory and vCPUs minus the node VMs placed there, each of node/qemu.py's
size), the one holding the fewest nodes of the node's pool (spread), then the one with the most free
memory. Hosts registered but none with room: the limits table's AllocationFailed."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.limits import NodePlacement, check_placement
from trustedlaunch.control.node_drivers import LIBVIRT, QEMU
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS
from trustedlaunch.store.models import Node, NodeHost
from trustedlaunch.store.vocabulary import HostState


class NoHostRoomError(TrustedLaunchError):
    """Node hosts are registered but none is Ready with room for the node: `error` says so (ARM)."""

    def __init__(self, error: ArmError):
        super().__init__(error.message)
        self.error = error


@dataclass(frozen=True)
class Placement:
    """The driver that runs a node's VM and its host (None: this machine)."""

    driver: str
    host: NodeHost | None


@dataclass(frozen=True)
class HostRoom:
    """A host's free memory (MiB) and vCPUs, and how many nodes of the placed node's pool it holds."""

    host: NodeHost
    free_memory_mib: int
    free_vcpus: int
    pool_nodes: int

    @property
    def fits(self) -> bool:
        """Whether one more node VM fits."""
        return self.free_memory_mib >= NODE_MEMORY_MIB and self.free_vcpus >= NODE_VCPUS


def host_rooms(session: Session, node: Node) -> list[HostRoom]:
    """The room of every Ready host for `node` (the nodes placed on each counted without `node` itself)."""
    placed = select(Node.host_id, Node.pool_id).where(Node.host_id.is_not(None))
    if node.id is not None:
        placed = placed.where(Node.id != node.id)
    rows = session.execute(placed).all()
    per_host = Counter(host_id for host_id, _ in rows)
    per_pool = Counter(host_id for host_id, pool_id in rows if pool_id == node.pool_id)
    return [
        HostRoom(
            host,
            host.memory_mib - per_host[host.id] * NODE_MEMORY_MIB,
            host.vcpus - per_host[host.id] * NODE_VCPUS,
            per_pool[host.id],
        )
        for host in session.scalars(select(NodeHost).where(NodeHost.state == HostState.READY))
    ]


def place_node(session: Session, node: Node) -> Placement:
    """Where `node`'s new VM goes (see the module); NoHostRoomError when hosts are registered but none has
    room for it."""
    hosts = session.scalar(select(func.count()).select_from(NodeHost)) or 0
    if hosts == 0:
        return Placement(QEMU, None)
    rooms = [room for room in host_rooms(session, node) if room.fits]
    violations = check_placement(NodePlacement(node.name, hosts, len(rooms)))
    if violations:
        raise NoHostRoomError(violations[0])
    best = min(rooms, key=lambda room: (room.pool_nodes, -room.free_memory_mib, room.host.name))
    return Placement(LIBVIRT, best.host)
