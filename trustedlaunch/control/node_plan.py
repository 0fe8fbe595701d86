"""The reconciler's decision, as a pure function: given a pool's desired state and its node rows, the next
single step (create, resume, reimage or delete one node) or nothing left to do."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum


class NodePhase(StrEnum):
    """Lifecycle of a node row; the transitional states are written before acting (write-ahead)."""

    PROVISIONING = "Provisioning"  # VM being created (run dir recorded before QEMU starts)
    READY = "Ready"
    FAILED = "Failed"
    REIMAGING = "Reimaging"  # old VM and vTPM being destroyed before the node is provisioned again
    DELETING = "Deleting"  # VM and vTPM being destroyed before the row is removed
    UNHEALTHY = "Unhealthy"  # was Ready; VM gone or paused, or its agent stopped answering (node_health)
    REPAIRING = "Repairing"  # an auto-repair (reboot or reimage) of an Unhealthy node is under way


class Action(StrEnum):
    """What the reconciler does next for a pool."""

    CREATE = "Create"  # a new node row at `ordinal`
    RESUME = "Resume"  # provision `node_id` again from scratch (it was left Provisioning)
    REIMAGE = "Reimage"  # replace the VM and vTPM of `node_id` with ones of the desired settings
    DELETE = "Delete"  # destroy `node_id` and remove its row
    DONE = "Done"  # the pool has converged


@dataclass(frozen=True)
class DesiredPool:
    """What a pool's nodes must look like."""

    count: int
    secure_boot: bool
    vtpm: bool
    image_version: str
    deleting: bool = False


@dataclass(frozen=True)
class ObservedNode:
    """A node row as the planner needs it."""

    node_id: int
    ordinal: int
    state: str
    secure_boot: bool
    vtpm: bool
    image_version: str
    reimage_reason: str | None = None  # set: outdated whatever its settings (e.g. an older agent)
    quarantined: bool = False  # the operation planned for could not drain it (undrainableNodeBehavior Cordon)


@dataclass(frozen=True)
class Step:
    """The next step for a pool, with the progress note shown on its operation."""

    action: Action
    node_id: int | None = None
    ordinal: int | None = None
    note: str = ""
    # Why a Reimage or Delete takes its node: True when it replaces an outdated node (a reimage in place, or
    # the deletion of one a surge node replaced), False for a scale down or the pool's deletion. Only an
    # upgrade soaks the drained node and applies undrainableNodeBehavior to one it cannot drain.
    upgrade: bool = False


def is_current(node: ObservedNode, desired: DesiredPool) -> bool:
    """True if the node is Ready with the desired security settings and image, and nothing else calls for
    its reimage."""
    return (
        node.state == NodePhase.READY
        and node.reimage_reason is None
        and node.secure_boot == desired.secure_boot
        and node.vtpm == desired.vtpm
        and node.image_version == desired.image_version
    )


def _why(node: ObservedNode | None) -> str:
    """The reason a node is reimaged although it has the desired settings, for a step's note ("" if none)."""
    return f" ({node.reimage_reason})" if node is not None and node.reimage_reason else ""


def _first_free_ordinal(nodes: Sequence[ObservedNode]) -> int:
    used = {node.ordinal for node in nodes}
    return next(ordinal for ordinal in range(len(used) + 1) if ordinal not in used)


def plan_next_step(desired: DesiredPool, nodes: Sequence[ObservedNode], max_surge: int = 0) -> Step:
    """The one next step that brings `nodes` closer to `desired`.

    Interrupted steps are resumed first (Deleting, Reimaging, Provisioning); then surplus nodes are deleted
    (outdated ones first), missing ones created, and outdated ones (other settings, a reimage reason, or
    Failed; a reimage reason is named in the step's note) replaced: in
    place one at a time, or with `max_surge` >= 1 by first creating up to `max_surge` replacements above
    the desired count, then deleting outdated nodes down to it. A Reimage or Delete step says whether it is
    an upgrade (`Step.upgrade`): a surplus node deleted while the pool shrinks is not, even an outdated one.

    A quarantined node (one the operation could not drain, undrainableNodeBehavior Cordon) is left as it
    is: the pool is planned as if it were not there, so a surge node stays in its place; a pool's deletion
    takes it all the same.
    """
    nodes = sorted(nodes, key=lambda node: node.ordinal)
    for state, action, verb in (
        (NodePhase.DELETING, Action.DELETE, "deleting"),
        (NodePhase.REIMAGING, Action.REIMAGE, "reimaging"),
    ):
        interrupted = next((node for node in nodes if node.state == state), None)
        if interrupted is not None:
            return Step(
                action,
                interrupted.node_id,
                interrupted.ordinal,
                f"{verb} node {interrupted.ordinal}{_why(interrupted)}",
                upgrade=action == Action.REIMAGE,
            )
    if desired.deleting:
        if not nodes:
            return Step(Action.DONE, note="all nodes deleted")
        return Step(
            Action.DELETE,
            nodes[0].node_id,
            nodes[0].ordinal,
            f"deleting node {nodes[0].ordinal} ({len(nodes)} left)",
        )
    every_ordinal = nodes  # a quarantined node keeps its ordinal
    nodes = [node for node in nodes if not node.quarantined]
    current = [node for node in nodes if is_current(node, desired)]
    provisioning = next((node for node in nodes if node.state == NodePhase.PROVISIONING), None)
    if provisioning is not None:
        return Step(
            Action.RESUME,
            provisioning.node_id,
            provisioning.ordinal,
            f"creating node {len(current) + 1}/{desired.count}",
        )
    outdated = [node for node in nodes if not is_current(node, desired)]
    if (
        outdated
        and max_surge >= 1
        and len(current) < desired.count
        and len(nodes) < desired.count + max_surge
    ):
        return Step(
            Action.CREATE,
            ordinal=_first_free_ordinal(every_ordinal),
            note=f"reimaging node {len(current) + 1}/{desired.count} (surge node){_why(outdated[0])}",
        )
    if len(nodes) > desired.count:
        victim = (outdated or nodes)[-1]
        # The nodes above the count are surge nodes (each a current node made in an outdated one's place)
        # when there are no more of them than maxSurge and than current nodes; else the pool shrinks.
        replaced = bool(outdated) and len(nodes) - desired.count <= min(max_surge, len(current))
        why = "replaced by a surge node" if replaced else f"scaling to {desired.count}"
        return Step(
            Action.DELETE,
            victim.node_id,
            victim.ordinal,
            f"deleting node {victim.ordinal} ({why}){_why(victim)}",
            upgrade=replaced,
        )
    if len(nodes) < desired.count:
        ordinal = _first_free_ordinal(every_ordinal)
        return Step(Action.CREATE, ordinal=ordinal, note=f"creating node {len(current) + 1}/{desired.count}")
    if outdated:  # no surge: in place
        note = f"reimaging node {len(current) + 1}/{desired.count}{_why(outdated[0])}"
        return Step(Action.REIMAGE, outdated[0].node_id, outdated[0].ordinal, note, upgrade=True)
    return Step(Action.DONE, note=f"{desired.count} node(s) ready")
