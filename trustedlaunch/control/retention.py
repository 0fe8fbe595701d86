"""Retention: what the control plane keeps is bounded by age and count, pruned by the reconciler.

Settings (environment, read when the reconciler starts; a value that is not a positive number is logged
and the default used):

- TL_ALERT_RETENTION_DAYS (90): Resolved alerts resolved longer ago than this are deleted; Active alerts
  stay until resolved (or the count bound).
- TL_MAX_ALERTS_PER_SUBSCRIPTION (10000): at most this many alerts per subscription; beyond it the oldest
  Resolved alerts go first, then the oldest Active ones.
- TL_ATTESTATION_RETENTION_DAYS (90): attestation records older than this are deleted, except the newest
  record of each existing node (its current verdict and token).
- TL_MAX_ATTESTATIONS_PER_NODE (200): the newest records of each node kept (also applied at every
  attestation).
- TL_EVIDENCE_RETENTION_DAYS (7) and TL_MAX_EVIDENCE_PER_NODE (20): a record older than this, or beyond
  its node's newest N, keeps its verdict, findings, PCRs and token but loses its raw evidence (event log,
  quote, signature, AK public key); the newest record of a node always keeps its evidence.
- TL_RETENTION_INTERVAL_SECONDS (600): how often the reconciler prunes.

Expired dashboard sessions are deleted by the same pass.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Subquery, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.ui_sessions import delete_expired_sessions
from trustedlaunch.store.models import AlertRecord, AttestationRecord, Node, utc_now
from trustedlaunch.store.vocabulary import OPEN_ALERT_STATUSES, AlertStatus

log = logging.getLogger("trustedlaunch.control.retention")

SETTINGS_ENV = {
    "alert_days": "TL_ALERT_RETENTION_DAYS",
    "alerts_per_subscription": "TL_MAX_ALERTS_PER_SUBSCRIPTION",
    "attestation_days": "TL_ATTESTATION_RETENTION_DAYS",
    "attestations_per_node": "TL_MAX_ATTESTATIONS_PER_NODE",
    "evidence_days": "TL_EVIDENCE_RETENTION_DAYS",
    "evidence_per_node": "TL_MAX_EVIDENCE_PER_NODE",
    "interval_seconds": "TL_RETENTION_INTERVAL_SECONDS",
}


@dataclass(frozen=True)
class RetentionSettings:
    """How long and how many alerts and attestation records are kept (see the module docstring)."""

    alert_days: float = 90.0
    alerts_per_subscription: int = 10_000
    attestation_days: float = 90.0
    attestations_per_node: int = 200
    evidence_days: float = 7.0
    evidence_per_node: int = 20
    interval_seconds: float = 600.0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> RetentionSettings:
        """The settings of SETTINGS_ENV that are set (positive numbers), the defaults for the rest."""
        values: dict[str, float | int] = {}
        for field in dataclasses.fields(cls):
            name = SETTINGS_ENV[field.name]
            text = environ.get(name)
            if text is None:
                continue
            kind = int if field.type in ("int", int) else float
            try:
                value = kind(text)
            except ValueError:
                value = 0
            if value > 0:
                values[field.name] = value
            else:
                log.warning("%s=%r is not a positive number; using %s", name, text, field.default)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Pruned:
    """What one retention pass deleted (or stripped of evidence)."""

    alerts: int = 0
    attestations: int = 0
    evidence: int = 0
    sessions: int = 0


def _count(outcome: object) -> int:
    return int(getattr(outcome, "rowcount", 0) or 0)


def prune_alerts(session: Session, settings: RetentionSettings, now: datetime) -> int:
    """Delete Resolved alerts past their retention and the alerts beyond each subscription's bound
    (Resolved before open ones, oldest first); how many."""
    cutoff = now - timedelta(days=settings.alert_days)
    resolved_long_ago = and_(
        AlertRecord.status == AlertStatus.RESOLVED,
        func.coalesce(AlertRecord.resolved_at, AlertRecord.time) < cutoff,
    )
    deleted = _count(session.execute(delete(AlertRecord).where(resolved_long_ago)))
    ranked = select(
        AlertRecord.id,
        func.row_number()
        .over(
            partition_by=AlertRecord.subscription_id,
            order_by=(
                case((AlertRecord.status.in_(OPEN_ALERT_STATUSES), 0), else_=1),
                AlertRecord.time.desc(),
                AlertRecord.id.desc(),
            ),
        )
        .label("rank"),
    ).subquery()
    beyond = select(ranked.c.id).where(ranked.c.rank > settings.alerts_per_subscription)
    return deleted + _count(
        session.execute(
            delete(AlertRecord).where(AlertRecord.id.in_(beyond)).execution_options(synchronize_session=False)
        )
    )


def _ranked_attestations() -> Subquery:
    """Every attestation record's id, time, rank in its node's history (1 = newest) and whether the node
    still exists."""
    return (
        select(
            AttestationRecord.id,
            AttestationRecord.time,
            func.row_number()
            .over(
                partition_by=(AttestationRecord.pool_id, AttestationRecord.node_name),
                order_by=(AttestationRecord.time.desc(), AttestationRecord.id.desc()),
            )
            .label("rank"),
            Node.id.label("node_id"),
        )
        .outerjoin(
            Node, and_(Node.pool_id == AttestationRecord.pool_id, Node.name == AttestationRecord.node_name)
        )
        .subquery()
    )


def prune_attestations(session: Session, settings: RetentionSettings, now: datetime) -> tuple[int, int]:
    """Delete the attestation records past their age or count, then strip the raw evidence of the older
    ones (see the module docstring); (records deleted, records stripped)."""
    ranked = _ranked_attestations()
    columns = ranked.c
    cutoff = now - timedelta(days=settings.attestation_days)
    expired = select(columns.id).where(
        or_(
            columns.rank > settings.attestations_per_node,
            and_(columns.time < cutoff, or_(columns.rank > 1, columns.node_id.is_(None))),
        )
    )
    deleted = _count(
        session.execute(
            delete(AttestationRecord)
            .where(AttestationRecord.id.in_(expired))
            .execution_options(synchronize_session=False)
        )
    )
    ranked = _ranked_attestations()
    columns = ranked.c
    evidence_cutoff = now - timedelta(days=settings.evidence_days)
    old_evidence = select(columns.id).where(
        columns.rank > 1, or_(columns.rank > settings.evidence_per_node, columns.time < evidence_cutoff)
    )
    stripped = _count(
        session.execute(
            update(AttestationRecord)
            .where(
                AttestationRecord.id.in_(old_evidence),
                or_(
                    AttestationRecord.event_log.is_not(None),
                    AttestationRecord.quote.is_not(None),
                    AttestationRecord.signature.is_not(None),
                    AttestationRecord.ak_public.is_not(None),
                ),
            )
            .values(event_log=None, quote=None, signature=None, ak_public=None)
            .execution_options(synchronize_session=False)
        )
    )
    return deleted, stripped


def prune(session: Session, settings: RetentionSettings, now: datetime | None = None) -> Pruned:
    """One retention pass over the store: alerts, attestation records and their evidence, expired
    dashboard sessions."""
    now = now or utc_now()
    alerts = prune_alerts(session, settings, now)
    attestations, evidence = prune_attestations(session, settings, now)
    return Pruned(alerts, attestations, evidence, delete_expired_sessions(session, now))


class Retention:
    """Runs `prune` on the store behind `sessions` at most every `settings.interval_seconds` (default
    settings: from the environment); the reconciler calls `prune_if_due` from its loop."""

    def __init__(self, sessions: sessionmaker[Session], settings: RetentionSettings | None = None) -> None:
        self.sessions = sessions
        self.settings = settings or RetentionSettings.from_environment()
        self._next_pass = 0.0

    def prune_if_due(self) -> Pruned | None:
        """Prune if the interval has passed since the last pass; what was pruned (None: not due, or the
        pass failed, which is logged: housekeeping never stops the reconciler)."""
        now = time.monotonic()
        if now < self._next_pass:
            return None
        self._next_pass = now + self.settings.interval_seconds
        try:
            with self.sessions.begin() as session:
                pruned = prune(session, self.settings)
        except Exception:
            log.exception("retention pass failed; retrying in %g s", self.settings.interval_seconds)
            return None
        if pruned != Pruned():
            log.info("retention: %s", pruned)
        return pruned
