"""Retention rules (control/retention.py) on a real store, SQLite and PostgreSQL: alerts by age and count,
attestation records by age and count per node, evidence stripped from older records, expired dashboard
sessions; and the settings read from the environment."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from monitoring_rows import RealAttestation, add_alert, add_attestation, add_node, real_attestation
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.control.retention import Pruned, Retention, RetentionSettings, prune
from trustedlaunch.control.ui_sessions import open_session, session_principal
from trustedlaunch.store.models import AgentPool, AlertRecord, AttestationRecord, UiSession, utc_now

SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "99999999-8888-7777-6666-555555555555"
SETTINGS = RetentionSettings(
    alert_days=30,
    alerts_per_subscription=3,
    attestation_days=30,
    attestations_per_node=4,
    evidence_days=7,
    evidence_per_node=2,
)


@pytest.fixture(scope="module")
def attestation(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> RealAttestation:
    return real_attestation(testdata, tmp_path_factory.mktemp("quote"))


def test_settings_come_from_the_environment() -> None:
    settings = RetentionSettings.from_environment(
        {
            "TL_ALERT_RETENTION_DAYS": "14",
            "TL_MAX_ALERTS_PER_SUBSCRIPTION": "500",
            "TL_EVIDENCE_RETENTION_DAYS": "0.5",
            "TL_MAX_EVIDENCE_PER_NODE": "0",  # not positive: the default stays
            "TL_MAX_ATTESTATIONS_PER_NODE": "many",  # not a number: the default stays
        }
    )
    assert settings == RetentionSettings(alert_days=14, alerts_per_subscription=500, evidence_days=0.5)
    assert RetentionSettings.from_environment({}) == RetentionSettings()


def test_prune_by_age_and_count_keeps_what_is_still_needed(
    store: sessionmaker[Session], attestation: RealAttestation, tmp_path: Path
) -> None:
    now = utc_now()
    with store.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec("nodepool1", count=2, vm_size="Standard_D4s_v3", enable_vtpm=True)
        _, operation, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[spec])
        )
        finish_operation(session, operation, "Succeeded")
        pool = session.scalars(select(AgentPool)).one()
        busy, quiet, gone = (add_node(session, pool, ordinal, "Failed") for ordinal in range(3))
        records: dict[str, list[int]] = {}
        for node, ages in ((busy, range(8)), (quiet, (90,)), (gone, (1, 90))):
            for days in ages:  # newest first
                when = now - timedelta(days=days, minutes=1)
                record = add_attestation(session, node, attestation, ok=True, when=when)
                records.setdefault(node.name, []).append(record.id)
        alerts: dict[str, str] = {}
        for name, subscription, days, status in (
            ("new active", SUB, 0.1, "Active"),
            ("old active", SUB, 100, "Active"),
            ("new resolved", SUB, 1, "Resolved"),
            ("newer resolved", SUB, 0.5, "Resolved"),
            ("old resolved", SUB, 31, "Resolved"),
            ("other", OTHER_SUB, 31, "Active"),
        ):
            when = now - timedelta(days=days)
            row = add_alert(
                session, busy, attestation, subscription_id=subscription, when=when, status=status
            )
            row.resolved_at = when if status == "Resolved" else None
            alerts[name] = row.id
        session.delete(gone)
        session.flush()
        live = open_session(session, (tmp_path / "admin-token").read_text().strip(), now)
        ended = open_session(session, (tmp_path / "admin-token").read_text().strip(), now - timedelta(days=1))
        assert isinstance(live, str) and isinstance(ended, str)

    with store.begin() as session:
        pruned = prune(session, SETTINGS, now)
    # 1 old resolved by age, 1 resolved over the bound; busy: 4 over its bound, gone: 1 by age;
    # busy: records 3 and 4 stripped (over 2 with evidence); one session
    assert pruned == Pruned(alerts=2, attestations=5, evidence=2, sessions=1)
    with store() as session:
        kept_alerts = set(session.scalars(select(AlertRecord.id)))
        assert kept_alerts == {
            alerts[name] for name in ("new active", "old active", "newer resolved", "other")
        }
        kept = {
            record.id: record.event_log is not None and record.quote is not None
            for record in session.scalars(select(AttestationRecord))
        }
        busy_ids = records["aks-nodepool1-0"]
        assert kept == {
            **{record: index < 2 for index, record in enumerate(busy_ids[:4])},
            records["aks-nodepool1-1"][0]: True,  # the newest of an existing node stays, with evidence
            records["aks-nodepool1-2"][0]: True,  # a deleted node's history goes by age only
        }
        assert session_principal(session, live, now) is not None
        assert session.scalar(select(UiSession.id_sha256).where(UiSession.expires_at <= now)) is None
    with store.begin() as session:
        assert prune(session, SETTINGS, now) == Pruned()  # nothing left to prune


def test_retention_runs_at_most_every_interval(store: sessionmaker[Session]) -> None:
    retention = Retention(store, RetentionSettings(interval_seconds=3600))
    assert retention.prune_if_due() == Pruned()
    assert retention.prune_if_due() is None  # not due again for an hour
