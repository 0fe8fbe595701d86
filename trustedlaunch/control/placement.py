"""Where a new node VM runs (recorded on its row before the VM starts): with no node host registered, on
this machine under the direct QEMU driver (the default for one machine); else on a Ready host with room
for one node VM (its registered memory and vCPUs minus the node VMs placed there, each of node/qemu.py's
size), the one holding the fewest nodes of the node's pool (spread), then the one with the most free
memory. A cordoned host (`tl host cordon`/`drain`) takes no new node VM; its nodes stay. A vTPM node goes
only on a host whose vTPMs an EK CA we know vouches for (this machine's, or one registered with its EK CA).
Hosts registered but none with room: the limits table's AllocationFailed (saying so when only cordoned hosts
have room)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.limits import NodePlacement, check_placement
from trustedlaunch.control.node_drivers import LIBVIRT, QEMU
from trustedlaunch.control.node_hosts import node_names_by_host, usage
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.kubelet import uri_is_this_machine
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


def makes_trusted_vtpms(host: NodeHost) -> bool:
    """Whether an EK CA we know vouches for the vTPMs of `host`'s nodes: a libvirtd on this machine (our
    swtpm, the platform EK CA) or a host registered with its own EK CA."""
    return host.ek_ca_certificate is not None or uri_is_this_machine(host.uri)


def room_elsewhere(session: Session, nodes: list[Node]) -> int:
    """How many of `nodes` placement could make again at once on the Ready, uncordoned hosts that hold none
    of them (each host's room in node VMs; vTPM nodes first, on hosts that make trusted vTPMs)."""
    own = {node.host_id for node in nodes}
    names = node_names_by_host(session)
    vtpm_slots = other_slots = 0
    ready = select(NodeHost).where(NodeHost.state == HostState.READY, NodeHost.cordoned.is_(False))
    for host in session.scalars(ready):
        if host.id in own:
            continue
        free = usage(host, names.get(host.id, [])).free
        slots = max(0, min(free.memory_mib // NODE_MEMORY_MIB, free.vcpus // NODE_VCPUS))
        if makes_trusted_vtpms(host):
            vtpm_slots += slots
        else:
            other_slots += slots
    vtpm_nodes = sum(1 for node in nodes if node.enable_vtpm)
    placed_vtpm = min(vtpm_nodes, vtpm_slots)
    return placed_vtpm + min(len(nodes) - vtpm_nodes, vtpm_slots - placed_vtpm + other_slots)


def host_rooms(session: Session, node: Node) -> list[HostRoom]:
    """The room of every Ready host that can run `node` (the nodes placed on each counted without `node`
    itself: node_hosts.usage). A vTPM node needs a host whose vTPMs some EK CA vouches for: one on this
    machine (our swtpm, the platform EK CA) or one registered with its own EK CA."""
    placed = select(Node.host_id, Node.pool_id, Node.name).where(Node.host_id.is_not(None))
    if node.id is not None:
        placed = placed.where(Node.id != node.id)
    names: dict[int, list[str]] = defaultdict(list)
    per_pool: Counter[int] = Counter()
    for host_id, pool_id, name in session.execute(placed):
        if host_id is not None:  # (the query's condition; the column is nullable)
            names[host_id].append(name)
            per_pool[host_id] += pool_id == node.pool_id
    rooms = []
    for host in session.scalars(select(NodeHost).where(NodeHost.state == HostState.READY)):
        if node.enable_vtpm and not makes_trusted_vtpms(host):
            continue
        free = usage(host, names[host.id]).free
        rooms.append(HostRoom(host, free.memory_mib, free.vcpus, per_pool[host.id]))
    return rooms


def place_node(session: Session, node: Node) -> Placement:
    """Where `node`'s new VM goes (see the module): never a cordoned host; NoHostRoomError when hosts are
    registered but none uncordoned has room for it."""
    hosts = session.scalar(select(func.count()).select_from(NodeHost)) or 0
    if hosts == 0:
        return Placement(QEMU, None)
    fitting = [room for room in host_rooms(session, node) if room.fits]
    rooms = [room for room in fitting if not room.host.cordoned]
    cordoned = tuple(room.host.name for room in fitting if room.host.cordoned)
    violations = check_placement(NodePlacement(node.name, hosts, len(rooms), cordoned))
    if violations:
        raise NoHostRoomError(violations[0])
    best = min(rooms, key=lambda room: (room.pool_nodes, -room.free_memory_mib, room.host.name))
    return Placement(LIBVIRT, best.host)
