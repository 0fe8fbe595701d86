"""Node health, as AKS node auto-repair sees it: the reconciler checks every Ready node's liveness on its own
(`LIVENESS_INTERVAL`, whatever the attestation interval) and records each outcome here.

The rules kept here:
- a node whose VM is gone or paused is Unhealthy at once; one whose agent does not answer is Unhealthy after
  `FAILED_CHECKS` checks in a row ("agent unreachable for 3 checks");
- an Unhealthy node loses its trusted launch labels and gets one open alert of type NodeUnhealthy naming the
  cause (updated, not duplicated, while it stays unhealthy); a node whose checks pass again is Ready again,
  its alert resolved, and it is attested again before it gets its labels back;
- auto-repair (a server setting, on by default): reboot after `FAILED_CHECKS` failed checks; a node still
  failing `REIMAGE_AFTER` after its reboot is reimaged; at most `MAX_REPAIRS_PER_HOUR` repairs per node in
  any hour; each step is recorded on the node (`Node.repairs`) and in its alert.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy.orm import Session

from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control import alert_lifecycle
from trustedlaunch.control.labels import node_labels
from trustedlaunch.control.node_plan import NodePhase
from trustedlaunch.findings import Check, Finding
from trustedlaunch.store.models import Node, utc_now
from trustedlaunch.store.vocabulary import AlertType, AttestationStatus, HostState

LIVENESS_INTERVAL = 20.0  # seconds between two liveness checks of a node: 3 failed checks within 60 s
PING_TIMEOUT = 5.0  # seconds a liveness PING waits for the agent
BUSY_AGENT_SILENCE = 10.0  # seconds an agent busy with an attestation may leave a request unanswered
FAILED_CHECKS = 3  # an unanswered agent makes the node Unhealthy, and a node is rebooted, after this many
REIMAGE_AFTER = timedelta(minutes=5)  # a node still failing this long after its reboot is reimaged
REPAIR_WINDOW = timedelta(hours=1)
MAX_REPAIRS_PER_HOUR = 3
REPAIRS_KEPT = 20  # the newest repairs kept on a node row
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
DEGRADED = "Degraded"


class RepairAction(StrEnum):
    """What auto-repair does to an Unhealthy node."""

    REBOOT = "Reboot"  # the same VM (vTPM, identity) started again
    REIMAGE = "Reimage"  # a new VM and vTPM from the pool's image


@dataclass(frozen=True)
class LivenessCheck:
    """The outcome of one liveness check of a node: `cause` is None when it passed. `certain` failures (the
    VM is gone or paused) make the node Unhealthy at once; an unanswered agent only after FAILED_CHECKS."""

    node_id: int
    node_name: str
    cause: str | None = None
    certain: bool = False
    vm_exited: bool = False  # its QEMU process is gone


def health_state(node: Node) -> str:
    """Healthy, or Unhealthy while the node is Unhealthy or being repaired."""
    return UNHEALTHY if node.state in (NodePhase.UNHEALTHY, NodePhase.REPAIRING) else HEALTHY


def rolled_up_health(nodes: Iterable[Node]) -> str:
    """A pool's or cluster's health from its `nodes`: Degraded while one is Unhealthy, being repaired or
    Failed, else Healthy."""
    degraded = (NodePhase.UNHEALTHY, NodePhase.REPAIRING, NodePhase.FAILED)
    return DEGRADED if any(node.state in degraded for node in nodes) else HEALTHY


def ready_nodes(nodes: Iterable[Node]) -> int:
    """How many of `nodes` are Ready."""
    return sum(1 for node in nodes if node.state == NodePhase.READY)


def power_state(node: Node) -> str:
    """Running while the node's VM is known to run (its driver's handle recorded), else Stopped."""
    return "Running" if node.handle is not None else "Stopped"


def record_check(session: Session, node: Node, check: LivenessCheck) -> bool:
    """Apply one liveness check to a Ready or Unhealthy `node`: count a failure (making the node Unhealthy,
    its labels removed and its alert raised, when it is certain or the FAILED_CHECKS-th in a row), or clear
    the failures (an Unhealthy node is Ready again, its alert resolved, and due for attestation). True if
    the node's health changed (the caller applies it to Kubernetes)."""
    now = utc_now()
    if check.cause is None:
        node.failed_checks = 0
        node.health_cause = None
        if node.state != NodePhase.UNHEALTHY:
            return False
        _recover(session, node, now)
        return True
    node.failed_checks += 1
    if node.state == NodePhase.UNHEALTHY:
        node.health_cause = _cause(node, check)
        _raise_alert(session, node, now)  # the open alert counts it
        return False
    if not check.certain and node.failed_checks < FAILED_CHECKS:
        node.health_cause = check.cause[:1024]
        return False
    node.state = NodePhase.UNHEALTHY
    node.health_cause = _cause(node, check)
    node.unhealthy_since = now
    status = node.attestation_status or AttestationStatus.NOT_APPLICABLE
    node.labels = node_labels(
        node.pool.name, node.enable_secure_boot, node.enable_vtpm, status, healthy=False
    )
    node.message = f"unhealthy: {node.health_cause}"[:4000]
    node.updated_at = now
    _raise_alert(session, node, now)
    return True


def _cause(node: Node, check: LivenessCheck) -> str:
    cause = check.cause or ""
    if not check.certain:
        cause = f"agent unreachable for {node.failed_checks} checks: {cause}"
    return cause[:1024]


def _recover(session: Session, node: Node, now: datetime) -> None:
    node.state = NodePhase.READY
    node.unhealthy_since = None
    node.updated_at = now
    if node.enable_vtpm:  # the labels come back with the next attestation, requested now
        node.attestation_requested_at = now
        node.message = "healthy again: attesting"
    else:
        node.labels = node_labels(
            node.pool.name, node.enable_secure_boot, False, AttestationStatus.NOT_APPLICABLE
        )
        node.message = "healthy again"
    alert_lifecycle.resolve_open_alerts(session, node.name, (AlertType.NODE_UNHEALTHY,))


def next_repair(
    node: Node, now: datetime, *, enabled: bool = True, reimage_after: timedelta = REIMAGE_AFTER
) -> RepairAction | None:
    """The repair an Unhealthy `node` is due for now, if any: a reboot once it failed FAILED_CHECKS checks; a
    reimage when it still fails `reimage_after` after the last repair of this episode (a reboot or a
    reimage that did not help); none beyond MAX_REPAIRS_PER_HOUR repairs in the last hour, or with
    auto-repair off. A node whose host is Lost is reimaged at once (made again where
    placement puts it: its VM is gone with its host), not rebooted on that host."""
    host_gone = node.host is not None and node.host.state != HostState.READY
    if not enabled or node.state != NodePhase.UNHEALTHY:
        return None
    if node.failed_checks < FAILED_CHECKS and not host_gone:
        return None
    started = [datetime.fromisoformat(repair["time"]) for repair in node.repairs]
    if sum(1 for time in started if now - time < REPAIR_WINDOW) >= MAX_REPAIRS_PER_HOUR:
        return None
    since = node.unhealthy_since or now
    this_episode = [time for time in started if time >= since]
    if not this_episode:
        return RepairAction.REIMAGE if host_gone else RepairAction.REBOOT
    return RepairAction.REIMAGE if now - this_episode[-1] >= reimage_after else None


def start_repair(session: Session, node: Node, action: RepairAction) -> None:
    """Record on `node` and in its alert that auto-repair starts `action` (the node is Repairing)."""
    now = utc_now()
    entry = {"time": now.isoformat(), "action": action.value, "cause": node.health_cause or "", "outcome": ""}
    node.repairs = [*node.repairs, entry][-REPAIRS_KEPT:]
    node.state = NodePhase.REPAIRING
    node.message = f"auto-repair: {action.value.lower()} ({node.health_cause})"[:4000]
    _note(session, node, f"{action.value.lower()} started after {node.failed_checks} failed checks")


def finish_repair(session: Session, node: Node, outcome: str) -> None:
    """Record the `outcome` ("done: ...", "failed: ...") of `node`'s latest repair on it and in its alert."""
    *earlier, latest = node.repairs
    node.repairs = [*earlier, {**latest, "outcome": outcome[:1000]}]
    _note(session, node, f"{latest['action'].lower()} {outcome}")


def _note(session: Session, node: Node, what: str) -> None:
    line = f"Auto-repair ({utc_now().isoformat(timespec='seconds')}): {what}."
    alert_lifecycle.note_remediation(session, node.name, AlertType.NODE_UNHEALTHY, line[:1000])


def _raise_alert(session: Session, node: Node, now: datetime) -> None:
    finding = Finding(Check.NODE_HEALTH, "vm", node.health_cause or "unhealthy")
    result = AttestationResult(False, (finding,))  # Medium: NODE_HEALTH is one of the Medium checks
    alert_lifecycle.raise_node_alert(session, node, result, AlertType.NODE_UNHEALTHY, now)
