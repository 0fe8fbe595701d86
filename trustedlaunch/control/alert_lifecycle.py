"""The lifecycle of a stored integrity alert, as Defender for Cloud's: Active when raised, InProgress once an
operator acknowledged it, Resolved by an operator or when the node attests again (or is deleted).

The rules kept here:
- one open (Active or InProgress) alert per node and alert type: a failure of the same type while one is
  open updates it (count, last seen = `endTimeUtc`, latest findings and evidence) instead of adding one;
  after it is resolved, the next failure raises a new alert;
- an unreachable node (no evidence) and a failed attestation (evidence against the policy) are distinct
  types; a node that answers again resolves its unreachable alert;
- the remediation steps say only what was done: the trusted launch labels removed from the node, cordoned
  and tainted only once the Kubernetes adapter did it (`note_quarantine`);
- the webhook gets every alert once per state change (Active, InProgress, Resolved): a state change, or a
  repeat of a higher severity, puts the alert's delivery back to Pending; a repeat does not. An alert whose
  delivery is still Pending when its state changes is delivered once, in its latest state.

The stored document (Alert.to_dict()) is kept current: status, severity, startTimeUtc (first seen),
endTimeUtc (last seen), resolvedTimeUtc, and in extendedProperties count and acknowledgedTimeUtc.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from trustedlaunch.attest.alerts import Alert, alerts_from_result
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control.resource_id import ResourceId
from trustedlaunch.store.models import AlertRecord, Node, utc_now
from trustedlaunch.store.vocabulary import OPEN_ALERT_STATUSES, AlertSeverity, AlertStatus, AlertType

PENDING = "Pending"  # attestation_monitor.DeliveryState.PENDING (that module imports this one)
LABELS_REMOVED = "The node's trusted launch labels were removed (attestation status: AttestationFailed)."
UNHEALTHY_LABELS_REMOVED = "The node's trusted launch labels were removed until it is healthy and attested."
NOT_JOINED = "The node's VM was stopped: it got no kubelet credential and never joined its cluster."
HOST_NODES_REPLACED = "The host's nodes are lost and made again on other hosts."
QUARANTINED = "The node was cordoned and tainted in Kubernetes; its workloads are not rescheduled onto it."
NEXT_STEPS = {
    AlertType.ATTESTATION_FAILURE: (
        "Compare the failed components with the pool's node image and reimage the node."
    ),
    AlertType.NODE_UNREACHABLE: (
        "Check that the node's VM runs and its agent answers; "
        "reboot or reimage a node that stays unreachable."
    ),
    AlertType.NODE_UNHEALTHY: (
        "Auto-repair reboots the node, then reimages it if it still fails; with auto-repair off, or past its "
        "hourly limit, reboot or reimage the node yourself."
    ),
    AlertType.BOOT_INTEGRITY: (
        "Compare the refused component with the pool's node image (its signatures, its dm-verity root "
        "hash), restore the image from its packages and reimage the node."
    ),
    AlertType.HOST_LOST: (
        "Find out why the host's libvirt daemon stopped answering (network, daemon, machine); the host is "
        "Ready again, and this alert resolved, once it answers, or remove it (tl host remove)."
    ),
}
_SEVERITY_RANK = {AlertSeverity.HIGH: 0, AlertSeverity.MEDIUM: 1, AlertSeverity.LOW: 2}


def remediation_steps(alert_type: AlertType) -> tuple[str, ...]:
    """The remediation of a new alert: what the control plane did (the labels), then what to do."""
    done = {
        AlertType.NODE_UNHEALTHY: UNHEALTHY_LABELS_REMOVED,
        AlertType.BOOT_INTEGRITY: NOT_JOINED,
        AlertType.HOST_LOST: HOST_NODES_REPLACED,
    }.get(alert_type, LABELS_REMOVED)
    return (done, NEXT_STEPS[alert_type])


def _timestamp(moment: datetime) -> str:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")


def refresh_document(alert: AlertRecord) -> None:
    """Write the alert's state into its stored Defender-shaped document."""
    document = dict(alert.document)
    properties = dict(cast(dict[str, object], document.get("properties") or {}))
    extended = dict(cast(dict[str, object], properties.get("extendedProperties") or {}))
    properties["status"] = alert.status
    properties["severity"] = alert.severity
    properties["startTimeUtc"] = _timestamp(alert.time)
    properties["endTimeUtc"] = _timestamp(alert.last_seen)
    extended["count"] = str(alert.count)
    if alert.acknowledged_at is not None:
        extended["acknowledgedTimeUtc"] = _timestamp(alert.acknowledged_at)
    if alert.resolved_at is not None:
        properties["resolvedTimeUtc"] = _timestamp(alert.resolved_at)
    properties["extendedProperties"] = extended
    document["properties"] = properties
    alert.document = document


def open_alert(session: Session, node_name: str, alert_type: AlertType) -> AlertRecord | None:
    """The open (Active or InProgress) alert of `node_name` and `alert_type`, if any."""
    return session.scalars(
        select(AlertRecord)
        .where(
            AlertRecord.node_name == node_name,
            AlertRecord.alert_type == alert_type.value,
            AlertRecord.status.in_(OPEN_ALERT_STATUSES),
        )
        .order_by(AlertRecord.time)
        .with_for_update()
    ).first()


def raise_alert(session: Session, alert: Alert, new_record: AlertRecord) -> AlertRecord:
    """File `alert` for its node: update the open alert of its type (count, last seen, latest findings and
    evidence) if there is one, else add `new_record` (Active, delivery Pending). The stored alert."""
    existing = open_alert(session, alert.node, alert.alert_type)
    if existing is None:
        new_record.alert_type = alert.alert_type.value
        new_record.status = AlertStatus.ACTIVE
        new_record.last_seen = new_record.time
        new_record.count = 1
        new_record.delivery_state = PENDING
        new_record.document = alert.to_dict()
        refresh_document(new_record)
        session.add(new_record)
        return new_record
    if _SEVERITY_RANK[AlertSeverity(alert.severity)] < _SEVERITY_RANK[AlertSeverity(existing.severity)]:
        existing.severity = alert.severity.value
        existing.delivery_state = PENDING  # an escalation is news for the webhook
    existing.count += 1
    existing.last_seen = max(existing.last_seen, alert.time)
    existing.attestation_id = new_record.attestation_id
    existing.document = dataclasses.replace(alert, id=existing.id, time=existing.time).to_dict()
    refresh_document(existing)
    return existing


def raise_node_alert(
    session: Session,
    node: Node,
    result: AttestationResult,
    alert_type: AlertType,
    time: datetime,
    attestation_id: int | None = None,
) -> None:
    """File the alert of failed `result` for `node` (raise_alert): its findings, the severity of the most
    severe one, the remediation of `alert_type`, the node's pool and cluster, and the attestation record it
    comes from, if any."""
    pool = node.pool
    cluster = pool.cluster
    for alert in alerts_from_result(
        result,
        node=node.name,
        pool=pool.name,
        cluster=cluster.name,
        resource_id=ResourceId.of(pool).path(),
        now=time,
        alert_type=alert_type,
        remediation=remediation_steps(alert_type),
    ):
        raise_alert(
            session,
            alert,
            AlertRecord(
                id=alert.id,
                attestation_id=attestation_id,
                subscription_id=cluster.subscription_id,
                resource_group=cluster.resource_group,
                cluster_name=cluster.name,
                pool_name=pool.name,
                node_name=node.name,
                severity=alert.severity.value,
                time=alert.time,
            ),
        )


def lock(session: Session, alert: AlertRecord) -> AlertRecord:
    """`alert` re-read under a write lock, so that a state change and a repeat the reconciler records at the
    same time do not overwrite each other's document: a no-op UPDATE takes the row lock on PostgreSQL and
    the database's write lock on SQLite (whose driver begins a transaction only at the first write, so a
    SELECT ... FOR UPDATE alone would lock nothing there)."""
    session.execute(
        update(AlertRecord)
        .where(AlertRecord.id == alert.id)
        .values(id=AlertRecord.id)
        .execution_options(synchronize_session=False)
    )
    session.refresh(alert, with_for_update=True)
    return alert


def acknowledge(alert: AlertRecord) -> bool:
    """Acknowledge an Active alert (InProgress); True if it changed (not for InProgress or Resolved)."""
    if alert.status != AlertStatus.ACTIVE:
        return False
    alert.status = AlertStatus.IN_PROGRESS
    alert.acknowledged_at = utc_now()
    alert.delivery_state = PENDING
    refresh_document(alert)
    return True


def resolve(alert: AlertRecord) -> bool:
    """Resolve an open alert (idempotent: a resolved alert keeps its resolution time); True if it changed."""
    if alert.status == AlertStatus.RESOLVED:
        return False
    alert.status = AlertStatus.RESOLVED
    alert.resolved_at = utc_now()
    alert.delivery_state = PENDING
    refresh_document(alert)
    return True


def resolve_open_alerts(
    session: Session, node_name: str, alert_types: Sequence[AlertType] = tuple(AlertType)
) -> list[AlertRecord]:
    """Resolve the open alerts of `node_name` of `alert_types` (default all); the alerts resolved."""
    alerts = list(
        session.scalars(
            select(AlertRecord)
            .where(
                AlertRecord.node_name == node_name,
                AlertRecord.status.in_(OPEN_ALERT_STATUSES),
                AlertRecord.alert_type.in_([alert_type.value for alert_type in alert_types]),
            )
            .with_for_update()
        )
    )
    for alert in alerts:
        resolve(alert)
    return alerts


def note_quarantine(node: Node, error: str | None) -> None:
    """Add to the open alerts of `node` what the Kubernetes adapter did: cordoned and tainted, or why
    Kubernetes was not updated (`error`). Needs `node` to be in a session (the caller commits)."""
    session = object_session(node)
    if session is None:
        return
    step = QUARANTINED if error is None else f"Kubernetes was not updated: {error}"[:1000]
    open_alerts = (
        select(AlertRecord)
        .where(AlertRecord.node_name == node.name, AlertRecord.status.in_(OPEN_ALERT_STATUSES))
        .with_for_update()
    )
    for alert in session.scalars(open_alerts):
        document = dict(alert.document)
        properties = dict(cast(dict[str, object], document.get("properties") or {}))
        steps = [str(line) for line in cast(list[object], properties.get("remediationSteps") or [])]
        steps = [line for line in steps if line != QUARANTINED and not line.startswith("Kubernetes was not")]
        properties["remediationSteps"] = [*steps[:1], step, *steps[1:]]
        document["properties"] = properties
        alert.document = document


def note_remediation(session: Session, node_name: str, alert_type: AlertType, step: str) -> None:
    """Append `step` (something the control plane did) to the remediation of the newest alert of `node_name`
    and `alert_type` (open, or resolved by what was done), if there is one (the caller commits). Not a
    state change: not delivered again."""
    alert = session.scalars(
        select(AlertRecord)
        .where(AlertRecord.node_name == node_name, AlertRecord.alert_type == alert_type.value)
        .order_by(AlertRecord.time.desc())
        .with_for_update()
    ).first()
    if alert is None:
        return
    document = dict(alert.document)
    properties = dict(cast(dict[str, object], document.get("properties") or {}))
    steps = [str(line) for line in cast(list[object], properties.get("remediationSteps") or [])]
    properties["remediationSteps"] = [*steps, step]
    document["properties"] = properties
    alert.document = document
