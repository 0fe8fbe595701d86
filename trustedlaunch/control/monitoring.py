"""Integrity monitoring as operators reach it: on-demand re-attestation of a pool, a node's attestation
history and token, the subscription's alerts (Defender for Cloud shaped) and its alert webhook.

The reconciler (control/attestation_monitor.py) writes attestations and alerts and clears
`attestation_requested_at` once a node is re-attested; this module reads them, requests attestations and
changes an alert's status and the webhook.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.attest.destinations import (
    DestinationRefused,
    DestinationUnresolved,
    IpNetwork,
    resolve,
)
from trustedlaunch.attest.tokens import TokenError, TokenIssuer
from trustedlaunch.control import alert_lifecycle
from trustedlaunch.control.errors import ArmError, bad_request, conflict, not_found
from trustedlaunch.control.limits import canonical_subscription_id
from trustedlaunch.control.node_plan import NodePhase
from trustedlaunch.control.resources import ResourcePath, get_pool
from trustedlaunch.control.timeutil import iso
from trustedlaunch.store.models import (
    AgentPool,
    AlertRecord,
    AlertWebhook,
    AttestationRecord,
    Node,
    utc_now,
)
from trustedlaunch.store.vocabulary import AlertSeverity, AlertStatus, ProvisioningState

MAX_WEBHOOK_URL_LENGTH = 2048  # the column's size
DEFAULT_HISTORY = 50
MAX_HISTORY = 1000


@dataclass(frozen=True)
class AttestationRequest:
    """The nodes asked to re-attest at `requested_at`, and the pool's nodes that were not (not Ready)."""

    pool: AgentPool
    requested_at: datetime
    nodes: list[Node]
    skipped: list[Node]


@dataclass(frozen=True)
class AlertFilter:
    """Optional filters of an alert listing (None: any)."""

    resource_group: str | None = None
    cluster_name: str | None = None
    status: str | None = None
    severity: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A node's current attestation token, the attestation it came from and its claims."""

    token: str
    attestation: AttestationRecord
    claims: dict[str, object]


def request_attestation(session: Session, path: ResourcePath, pool_name: str) -> AttestationRequest:
    """Ask the reconciler to re-attest every Ready node of a vTPM pool now (sets attestation_requested_at).

    409 when the pool has no vTPM, is being deleted, or has no Ready node with a vTPM."""
    pool = get_pool(session, path, pool_name)
    if not pool.enable_vtpm:
        raise conflict(
            "VTPMNotEnabled",
            f"Agent pool '{pool.name}' has no vTPM, so its nodes cannot be attested; enable it with "
            f"`tl aks nodepool update --enable-vtpm --cluster-name {path.cluster_name} -n {pool.name}`.",
            "agentPoolName",
        )
    if ProvisioningState.DELETING in (pool.provisioning_state, pool.cluster.provisioning_state):
        raise conflict("OperationNotAllowed", f"Agent pool '{pool.name}' is being deleted.", "agentPoolName")
    ready = [node for node in pool.nodes if node.state == NodePhase.READY and node.enable_vtpm]
    if not ready:
        states = ", ".join(f"{node.name}: {node.state}" for node in pool.nodes) or "no nodes yet"
        raise conflict(
            "NoReadyNodes",
            f"Agent pool '{pool.name}' has no Ready node with a vTPM to attest ({states}).",
            "agentPoolName",
        )
    now = utc_now()
    for node in ready:
        node.attestation_requested_at = now
    skipped = [node for node in pool.nodes if node not in ready]
    return AttestationRequest(pool, now, ready, skipped)


def _pool_of_machine(session: Session, path: ResourcePath, pool_name: str, node_name: str) -> AgentPool:
    """The pool, checking that the node is (or was: history outlives nodes) one of its machines."""
    pool = get_pool(session, path, pool_name)
    if any(node.name == node_name for node in pool.nodes):
        return pool
    recorded = session.scalar(
        select(AttestationRecord.id).where(
            AttestationRecord.pool_id == pool.id, AttestationRecord.node_name == node_name
        )
    )
    if recorded is None:
        raise not_found(
            "ResourceNotFound",
            f"Machine '{node_name}' was not found in agent pool '{pool.name}' (and has no attestation "
            "history there).",
            "machineName",
        )
    return pool


def list_attestations(
    session: Session, path: ResourcePath, pool_name: str, node_name: str, top: int = DEFAULT_HISTORY
) -> list[AttestationRecord]:
    """A node's attestations, newest first, at most `top` (1..MAX_HISTORY)."""
    if not 1 <= top <= MAX_HISTORY:
        raise bad_request("InvalidParameter", f"$top must be between 1 and {MAX_HISTORY}, got {top}.", "$top")
    pool = _pool_of_machine(session, path, pool_name, node_name)
    query = (
        select(AttestationRecord)
        .where(AttestationRecord.pool_id == pool.id, AttestationRecord.node_name == node_name)
        .order_by(AttestationRecord.time.desc(), AttestationRecord.id.desc())
        .limit(top)
    )
    return list(session.scalars(query))


def get_attestation(
    session: Session, path: ResourcePath, pool_name: str, node_name: str, attestation_id: int
) -> AttestationRecord:
    """One attestation of the node, or 404."""
    pool = _pool_of_machine(session, path, pool_name, node_name)
    record = session.get(AttestationRecord, attestation_id)
    if record is None or record.pool_id != pool.id or record.node_name != node_name:
        raise not_found(
            "AttestationNotFound",
            f"Attestation {attestation_id} of machine '{node_name}' was not found.",
            "attestationId",
        )
    return record


def attestation_token(
    session: Session, path: ResourcePath, pool_name: str, node_name: str, issuer: TokenIssuer
) -> IssuedToken:
    """The token of the node's newest attestation, if that one passed and its token still verifies.

    A node whose newest attestation failed gets no token, even if an older token has not expired (409)."""
    records = list_attestations(session, path, pool_name, node_name, top=1)
    if not records:
        raise not_found(
            "AttestationNotFound",
            f"Machine '{node_name}' has not been attested yet; request it with `tl aks nodepool attest`.",
            "machineName",
        )
    newest = records[0]
    when = iso(newest.time)
    if not newest.ok:
        reasons = "; ".join(str(finding.get("message", "")) for finding in newest.findings) or newest.status
        raise conflict(
            "NodeAttestationFailed",
            f"Machine '{node_name}' failed its latest attestation ({newest.id} at {when}, {newest.status}): "
            f"{reasons}. No token is issued until it attests again.",
            "machineName",
        )
    if not newest.token:
        raise conflict(
            "AttestationTokenNotIssued",
            f"Attestation {newest.id} of machine '{node_name}' at {when} passed but carries no token.",
            "machineName",
        )
    try:
        claims = issuer.verify(newest.token)
    except TokenError as exc:
        raise conflict(
            "AttestationTokenInvalid",
            f"The token of machine '{node_name}' from attestation {newest.id} at {when} is no longer valid "
            f"({exc}); re-attest the node with `tl aks nodepool attest`.",
            "machineName",
        ) from None
    return IssuedToken(newest.token, newest, claims)


def _choice(value: str | None, allowed: type[StrEnum], target: str) -> str | None:
    """`value` spelled as the matching member of `allowed` (any case); 400 naming the choices if none."""
    if value is None:
        return None
    for member in allowed:
        if member.value.lower() == value.lower():
            return member.value
    names = ", ".join(member.value for member in allowed)
    raise bad_request("InvalidParameter", f"{target} must be one of {names}, got '{value}'.", target)


def list_alerts(session: Session, subscription_id: str, filters: AlertFilter) -> Sequence[AlertRecord]:
    """The subscription's alerts matching `filters`, newest first."""
    subscription_id = canonical_subscription_id(subscription_id)
    query = select(AlertRecord).where(AlertRecord.subscription_id == subscription_id)
    if filters.resource_group is not None:
        query = query.where(AlertRecord.resource_group == filters.resource_group.lower())
    if filters.cluster_name is not None:
        query = query.where(AlertRecord.cluster_name == filters.cluster_name.lower())
    status = _choice(filters.status, AlertStatus, "status")
    if status is not None:
        query = query.where(AlertRecord.status == status)
    severity = _choice(filters.severity, AlertSeverity, "severity")
    if severity is not None:
        query = query.where(AlertRecord.severity == severity)
    return list(session.scalars(query.order_by(AlertRecord.time.desc(), AlertRecord.id)))


def get_alert(session: Session, subscription_id: str, alert_id: str) -> AlertRecord:
    """One alert of the subscription, or 404."""
    subscription_id = canonical_subscription_id(subscription_id)
    record = session.get(AlertRecord, alert_id)
    if record is None or record.subscription_id != subscription_id:
        raise not_found(
            "AlertNotFound", f"Alert '{alert_id}' was not found in the subscription.", "alertName"
        )
    return record


def resolve_alert(session: Session, subscription_id: str, alert_id: str) -> AlertRecord:
    """Mark an alert Resolved (idempotent: an already resolved alert keeps its resolution time)."""
    record = alert_lifecycle.lock(session, get_alert(session, subscription_id, alert_id))
    alert_lifecycle.resolve(record)
    return record


def acknowledge_alert(session: Session, subscription_id: str, alert_id: str) -> AlertRecord:
    """Acknowledge an Active alert: InProgress (idempotent; a Resolved alert is a 409 Conflict)."""
    record = alert_lifecycle.lock(session, get_alert(session, subscription_id, alert_id))
    if record.status == AlertStatus.RESOLVED:
        raise conflict("AlertResolved", f"Alert '{alert_id}' is resolved: there is nothing to acknowledge.")
    alert_lifecycle.acknowledge(record)
    return record


def check_webhook_url(url: str) -> str:
    """`url` if it is an absolute http(s) URL without credentials, at most MAX_WEBHOOK_URL_LENGTH long;
    else a 400 naming what is wrong."""

    def invalid(reason: str) -> ArmError:
        return bad_request(
            "InvalidWebhookUrl", f"The alert webhook URL is invalid: {reason}.", "properties.url"
        )

    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        raise invalid(f"it is {len(url)} characters long, the limit is {MAX_WEBHOOK_URL_LENGTH}")
    if any(character.isspace() or not character.isprintable() for character in url):
        raise invalid("it contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise invalid(f"the scheme must be https or http, got '{parts.scheme or url}'")
    if parts.username is not None or parts.password is not None:
        raise invalid("credentials in the URL are not accepted (put a secret in the path or query instead)")
    if not parts.hostname:
        raise invalid("it has no host")
    if port == 0:
        raise invalid("port 0 is not a port")
    if parts.fragment:
        raise invalid("a fragment (#...) is never sent to a server")
    return url


def check_webhook_destination(url: str, allowed: Sequence[IpNetwork]) -> str:
    """`url` if it is valid (check_webhook_url) and its host resolves only to addresses alerts may go to
    (attest.destinations: public ones, or inside the operator's `allowed` networks); else a 400 naming the
    refused address. A name that does not resolve now is accepted: every delivery resolves and checks it
    again. Resolves names (blocking): call it outside the event loop."""
    check_webhook_url(url)
    try:
        resolve(httpx.URL(url), allowed)
    except DestinationUnresolved:
        pass
    except (DestinationRefused, httpx.InvalidURL) as exc:
        raise bad_request(
            "InvalidWebhookUrl", f"The alert webhook URL is invalid: {exc}.", "properties.url"
        ) from None
    return url


def set_webhook(session: Session, subscription_id: str, url: str) -> tuple[AlertWebhook, bool]:
    """Create or replace the subscription's alert webhook; (webhook, created). Check its destination with
    `check_webhook_destination` first."""
    subscription_id = canonical_subscription_id(subscription_id)
    check_webhook_url(url)
    webhook = session.get(AlertWebhook, subscription_id)
    if webhook is None:
        webhook = AlertWebhook(subscription_id=subscription_id, url=url, created_at=utc_now())
        session.add(webhook)
        return webhook, True
    webhook.url = url
    return webhook, False


def get_webhook(session: Session, subscription_id: str) -> AlertWebhook:
    """The subscription's alert webhook, or 404."""
    subscription_id = canonical_subscription_id(subscription_id)
    webhook = session.get(AlertWebhook, subscription_id)
    if webhook is None:
        raise not_found(
            "WebhookNotFound",
            "No alert webhook is configured for the subscription; set one with "
            "`tl alerts webhook set --url`.",
        )
    return webhook


def delete_webhook(session: Session, subscription_id: str) -> bool:
    """Remove the subscription's alert webhook; False if there was none."""
    subscription_id = canonical_subscription_id(subscription_id)
    webhook = session.get(AlertWebhook, subscription_id)
    if webhook is None:
        return False
    session.delete(webhook)
    return True
