"""Integrity monitoring of attested nodes: every attestation (at provisioning, on the interval, on demand)
is kept with its full evidence; a pass issues an attestation token and lifts a quarantine, a failure raises
an integrity alert (or updates the node's open one, see control.alert_lifecycle) and quarantines the node
(trusted launch labels removed, tainted and cordoned in Kubernetes). Alerts are POSTed to the
subscription's webhook by `AlertDelivery`, in its own thread, once per state change.

The rules kept here: the node labels per attestation status, the history bound at every attestation
(TL_MAX_ATTESTATIONS_PER_NODE newest records per node, default HISTORY_PER_NODE; the other retention
rules are in control/retention.py), when a node is due for re-attestation, and the alert delivery states
(Pending until a webhook of the subscription takes it, then Delivered or Failed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from cryptography import x509
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.alerts import WebhookDelivery
from trustedlaunch.attest.destinations import IpNetwork, allowed_networks_from_environment
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.remote import AgentLike, AgentQuote, NodeState, attest_node
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control import alert_lifecycle
from trustedlaunch.control.kubernetes import KubernetesAdapterError, KubernetesNodeAdapter
from trustedlaunch.control.labels import node_labels, quarantined_labels, verdict_labels
from trustedlaunch.control.retention import RetentionSettings
from trustedlaunch.control.verifier import TokenSubject, attestation_token
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import Check, Finding
from trustedlaunch.node.channel import AgentProtocolError
from trustedlaunch.store.models import (
    AgentPool,
    AlertRecord,
    AlertWebhook,
    AttestationRecord,
    Node,
    utc_now,
)
from trustedlaunch.store.vocabulary import AlertType, AttestationStatus

HISTORY_PER_NODE = 200
DEFAULT_ATTESTATION_INTERVAL = 300.0
_NEVER = datetime.min.replace(tzinfo=UTC)  # the last attestation of a node never attested

log = logging.getLogger("trustedlaunch.control.attestation_monitor")


class Trigger(StrEnum):
    """Why a node was attested."""

    PROVISIONING = "Provisioning"
    INTERVAL = "Interval"
    ON_DEMAND = "OnDemand"


class DeliveryState(StrEnum):
    """Webhook delivery of an alert: Pending until a webhook of its subscription took it (or refused it)."""

    PENDING = "Pending"
    DELIVERED = "Delivered"
    FAILED = "Failed"


def attestation_due(node: Node, interval: float, now: datetime) -> bool:
    """True when `node` (Ready, vTPM) is to be attested now: asked for on demand, or not attested for
    `interval` seconds (0: never on the interval)."""
    if node.attestation_requested_at is not None:
        return True
    if interval <= 0:
        return False
    last = node.last_attested_at
    return last is None or last + timedelta(seconds=interval) <= now


def attestation_order(node: Node) -> tuple[int, datetime]:
    """Sort key of due nodes: on-demand requests first (oldest first), then the longest unattested."""
    if node.attestation_requested_at is not None:
        return (0, node.attestation_requested_at)
    return (1, node.last_attested_at or _NEVER)


def due_trigger(node: Node) -> Trigger:
    """The trigger of a due node's attestation."""
    return Trigger.ON_DEMAND if node.attestation_requested_at is not None else Trigger.INTERVAL


def _unreachable_result(error: Exception, garbage: bool) -> AttestationResult:
    if garbage:
        what = "the node's agent answered garbage to the attestation request"
    else:
        what = "the node is unreachable: its agent did not answer the attestation request"
    message = f"{what} ({error}): no evidence"
    return AttestationResult(False, (Finding(Check.EVIDENCE_FORMAT, "agent", message),))


def describe_failure(record: AttestationRecord) -> str:
    """One line for a failed attestation: the failed components, then every finding."""
    components = ", ".join(dict.fromkeys(str(finding["component"]) for finding in record.findings))
    findings = "; ".join(str(Finding.from_dict(finding)) for finding in record.findings)
    verdict = "was unreachable" if record.status == AttestationStatus.UNREACHABLE else "failed attestation"
    return f"node {record.node_name} {verdict} ({components}): {findings}"


def _pcr_document(quote: AgentQuote | None) -> dict[str, dict[str, str]] | None:
    if quote is None:
        return None
    return {
        bank: {str(index): value.hex() for index, value in sorted(values.items())}
        for bank, values in quote.pcr_values.items()
    }


class AttestationMonitor:
    """Attests one node and applies the verdict: history, token, alerts, labels, quarantine.

    `token_issuer` signs a token for every pass (none without it); `kubernetes` gives the adapter of a
    node's cluster (its API server), which applies the labels and the quarantine to the node's Node object
    (only the store's labels without one).
    """

    def __init__(
        self,
        *,
        token_issuer: TokenIssuer | None = None,
        kubernetes: Callable[[Node], KubernetesNodeAdapter | None] | None = None,
        history_per_node: int | None = None,
    ) -> None:
        self.token_issuer = token_issuer
        self.kubernetes = kubernetes
        # default: TL_MAX_ATTESTATIONS_PER_NODE, the bound the retention pass keeps too
        self.history_per_node = history_per_node or RetentionSettings.from_environment().attestations_per_node

    def attest(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        agent: AgentLike,
        *,
        policy: Policy,
        ek_ca: Sequence[x509.Certificate],
        trigger: Trigger,
    ) -> AttestationRecord:
        """Attest `node` through `agent`, store the record and apply the verdict to the node row (status,
        labels, NodeState, last_attested_at; an on-demand request made before it started is cleared).
        Kubernetes is not touched here: call `sync_kubernetes` once the node row is final."""
        started = utc_now()
        stored = NodeState.from_dict(node.attestation_state) if node.attestation_state else None
        try:
            attestation = attest_node(agent, policy=policy, ek_ca=ek_ca, node_state=stored)
        except AgentProtocolError as exc:  # garbage from the node: it failed, it was not merely unreachable
            return self.record_unreachable(session, pool, node, exc, trigger, started=started, garbage=True)
        except TrustedLaunchError as exc:  # agent transport: the channel reports socket errors as AgentError
            return self.record_unreachable(session, pool, node, exc, trigger, started=started)
        except Exception as exc:  # hostile bytes a parser below did not foresee: this node's failure only
            log.exception("node %s: its agent's answers broke the attestation", node.name)
            return self.record_unreachable(session, pool, node, exc, trigger, started=started, garbage=True)
        node.attestation_state = attestation.state.to_dict()
        node.enrolled_ak_name = None if attestation.state.ak_name is None else attestation.state.ak_name.hex()
        result = attestation.result
        quote = attestation.quote
        record = AttestationRecord(
            pool_id=pool.id,
            node_name=node.name,
            time=started,
            trigger=trigger.value,
            ok=result.ok,
            status=AttestationStatus.ATTESTED if result.ok else AttestationStatus.ATTESTATION_FAILED,
            findings=[finding.to_dict() for finding in result.findings],
            secure_boot=result.summary.secure_boot if result.summary is not None else None,
            pcrs=_pcr_document(quote),
            nonce=attestation.nonce.hex() if attestation.nonce is not None else None,
            ak_public=quote.ak_public if quote is not None else None,
            quote=quote.quote if quote is not None else None,
            signature=quote.signature if quote is not None else None,
            event_log=quote.event_log if quote is not None else None,
            duration_ms=attestation.duration * 1000,
        )
        if result.ok and self.token_issuer is not None:
            subject = TokenSubject(node.name, pool.name, node.node_image_version)
            record.token = attestation_token(self.token_issuer, result, subject)
        return self._apply(session, pool, node, record, result)

    def record_unreachable(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        error: Exception,
        trigger: Trigger,
        *,
        started: datetime | None = None,
        garbage: bool = False,
    ) -> AttestationRecord:
        """Record that `node`'s agent did not answer (`error`): an Unreachable record without evidence, an
        alert, and the node treated as failed (it cannot prove its state). With `garbage` (it answered
        what its protocol never produces) the record is AttestationFailed."""
        started = started or utc_now()
        result = _unreachable_result(error, garbage)
        record = AttestationRecord(
            pool_id=pool.id,
            node_name=node.name,
            time=started,
            trigger=trigger.value,
            ok=False,
            status=AttestationStatus.ATTESTATION_FAILED if garbage else AttestationStatus.UNREACHABLE,
            findings=[finding.to_dict() for finding in result.findings],
            duration_ms=(utc_now() - started).total_seconds() * 1000,
        )
        return self._apply(session, pool, node, record, result)

    def _apply(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        record: AttestationRecord,
        result: AttestationResult,
    ) -> AttestationRecord:
        session.add(record)
        session.flush()  # the record's id, for its alert
        node_status = AttestationStatus.ATTESTED if result.ok else AttestationStatus.ATTESTATION_FAILED
        node.attestation_status = node_status
        node.labels = node_labels(pool.name, node.enable_secure_boot, node.enable_vtpm, node_status)
        node.last_attested_at = utc_now()
        requested = node.attestation_requested_at
        if requested is not None and requested <= record.time:
            node.attestation_requested_at = None
        node.updated_at = utc_now()
        if result.ok:
            resolve_alerts(session, node.name)
        else:
            self._raise_alert(session, node, result, record)
        prune_history(session, node.name, self.history_per_node)
        log.info("node %s: %s (%s)", node.name, record.status, record.trigger)
        return record

    @staticmethod
    def _raise_alert(
        session: Session, node: Node, result: AttestationResult, record: AttestationRecord
    ) -> None:
        alert_type = (
            AlertType.NODE_UNREACHABLE
            if record.status == AttestationStatus.UNREACHABLE
            else AlertType.ATTESTATION_FAILURE
        )
        if alert_type == AlertType.ATTESTATION_FAILURE:  # the agent answered: no longer unreachable
            alert_lifecycle.resolve_open_alerts(session, node.name, (AlertType.NODE_UNREACHABLE,))
        alert_lifecycle.raise_node_alert(session, node, result, alert_type, record.time, record.id)

    def sync_kubernetes(self, node: Node, quarantine_reason: str | None = None) -> None:
        """Apply the node row to its Kubernetes Node (with an adapter): quarantine it with
        `quarantine_reason`, else give it the trusted launch labels of `node.labels` (lifting a quarantine).
        A node no kubelet registered (404), or an API server error, is noted in `node.message`."""
        adapter = None if self.kubernetes is None else self.kubernetes(node)
        if adapter is None:
            return
        try:
            if quarantine_reason is not None:
                adapter.quarantine(node.name, quarantine_reason[:1000], quarantined_labels(node.labels))
                alert_lifecycle.note_quarantine(node, None)
            else:
                adapter.restore(node.name, verdict_labels(node.labels))
        except KubernetesAdapterError as exc:
            if str(exc).startswith(f"node {node.name}: 404 "):
                note = "not registered in Kubernetes (no kubelet registered it): labels not applied there"
            else:
                note = f"Kubernetes not updated: {exc}"
            if quarantine_reason is not None:
                alert_lifecycle.note_quarantine(node, note)
            log.warning("node %s: %s", node.name, note)
            node.message = f"{node.message}; {note}"[:4000]


def resolve_alerts(session: Session, node_name: str) -> list[AlertRecord]:
    """Resolve the open alerts of `node_name` (it attested again or was deleted); the alerts resolved."""
    return alert_lifecycle.resolve_open_alerts(session, node_name)


def prune_history(session: Session, node_name: str, keep: int = HISTORY_PER_NODE) -> int:
    """Delete all but the `keep` newest attestation records of `node_name`; how many were deleted."""
    newest = (
        select(AttestationRecord.id)
        .where(AttestationRecord.node_name == node_name)
        .order_by(AttestationRecord.time.desc(), AttestationRecord.id.desc())
        .limit(keep)
    )
    outcome = session.execute(
        delete(AttestationRecord)
        .where(AttestationRecord.node_name == node_name, AttestationRecord.id.not_in(newest))
        .execution_options(synchronize_session=False)
    )
    return int(getattr(outcome, "rowcount", 0) or 0)


class AlertDelivery:
    """POSTs the Pending alerts of every subscription that has an AlertWebhook (WebhookDelivery: bounded
    retries with exponential backoff), oldest first, and records Delivered or Failed with the attempts and
    the last error. An alert is Pending again after each state change (control.alert_lifecycle), so the
    webhook gets it once per state; a change while its POST was in flight leaves it Pending for the next
    pass. Alerts of a subscription without a webhook stay Pending until one is configured. No
    database session is held while a POST is in flight. Webhooks go to public addresses only, or to
    `allowed_networks` (default: TL_WEBHOOK_ALLOWED_NETWORKS, see attest.destinations)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_attempts: int = 5,
        base_delay: float = 0.5,
        timeout: float = 10.0,
        poll_seconds: float = 2.0,
        allowed_networks: Sequence[IpNetwork] | None = None,
    ) -> None:
        self.sessions = sessions
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.timeout = timeout
        self.poll_seconds = poll_seconds
        self.allowed_networks = (
            allowed_networks_from_environment() if allowed_networks is None else tuple(allowed_networks)
        )

    def _pending(self) -> list[tuple[str, str, dict[str, object], tuple[str, str]]]:
        with self.sessions() as session:
            rows = session.execute(
                select(
                    AlertRecord.id,
                    AlertWebhook.url,
                    AlertRecord.document,
                    AlertRecord.status,
                    AlertRecord.severity,
                )
                .join(AlertWebhook, AlertWebhook.subscription_id == AlertRecord.subscription_id)
                .where(AlertRecord.delivery_state == DeliveryState.PENDING.value)
                .order_by(AlertRecord.time)
            )
            return [
                (alert_id, url, document, (status, severity))
                for alert_id, url, document, status, severity in rows
            ]

    def deliver_pending(self, stop_event: threading.Event | None = None) -> int:
        """Deliver every Pending alert that has a webhook; the number handled (delivered or failed)."""
        handled = 0
        for alert_id, url, document, sent_state in self._pending():
            if stop_event is not None and stop_event.is_set():
                break
            delivery = WebhookDelivery(
                url,
                max_attempts=self.max_attempts,
                base_delay=self.base_delay,
                timeout=self.timeout,
                allowed_networks=self.allowed_networks,
            )
            delivered = delivery.deliver_document(alert_id, dict(document))
            last = delivery.log[-1] if delivery.log else None
            with self.sessions.begin() as session:
                alert = session.get(AlertRecord, alert_id)
                if alert is None:
                    continue
                alert.delivery_attempts += len(delivery.log)
                alert.delivery_error = None
                if not delivered and last is not None:
                    alert.delivery_error = last.describe(url)[:1024]
                outcome = DeliveryState.DELIVERED if delivered else DeliveryState.FAILED
                if (alert.status, alert.severity) == sent_state:  # else it changed meanwhile: stays Pending
                    alert.delivery_state = outcome.value
            handled += 1
        return handled

    def run_forever(self, stop_event: threading.Event) -> None:
        """Deliver pending alerts every `poll_seconds` until `stop_event` is set; errors are logged."""
        while not stop_event.is_set():
            try:
                self.deliver_pending(stop_event)
            except Exception:
                log.exception("alert delivery pass failed; retrying")
            stop_event.wait(self.poll_seconds)
