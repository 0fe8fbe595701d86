"""The lifecycle of integrity alerts, on SQLite and PostgreSQL, without a VM: an agent that hangs up (a real
unix socket) is unreachable, an agent that answers with an unreadable AK is an evidence failure. Repeats
update one open alert per node and type (count, first/last seen), the two causes get distinct types, the
remediation says only what was done (Kubernetes: a real kube-apiserver), and the webhook (a real HTTP
server) gets each state change once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from kube_apiserver import admin_client, read_node, register_node
from lightkube.resources.core_v1 import Node as LightkubeNode
from monitoring_helpers import LOOPBACK, AlertReceiver, create_trusted_cluster
from reconciler_helpers import SUB
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from test_monitoring_store import TRUSTED_LABELS, HangingUpAgentSocket

from trustedlaunch.attest.policy import Policy
from trustedlaunch.control import monitoring
from trustedlaunch.control.alert_lifecycle import LABELS_REMOVED, NEXT_STEPS, QUARANTINED
from trustedlaunch.control.attestation_monitor import (
    AlertDelivery,
    AttestationMonitor,
    Trigger,
    resolve_alerts,
)
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes import KubernetesNodeAdapter
from trustedlaunch.control.node_drivers import connect_agent
from trustedlaunch.store.db import alembic_config, make_engine, migrate, session_factory
from trustedlaunch.store.models import AgentPool, AlertRecord, AlertWebhook, AttestationRecord, Node
from trustedlaunch.store.vocabulary import AlertType

NODE = "aks-n-0"


@dataclass(frozen=True)
class UnreadableQuote:
    """A quote whose AK is not a TPM2B_PUBLIC: the agent answered, its evidence is malformed."""

    ak_public: bytes = b"\x00\x02no"
    ak_name: bytes = b"\x00\x0b" + bytes(32)
    ek_public: bytes = b""
    quote: bytes = b"garbage"
    signature: bytes = b"garbage"
    pcr_values: dict[str, dict[int, bytes]] | None = None
    event_log: bytes | None = None


class UnreadableEvidenceAgent:
    """An agent that answers every request with unreadable evidence."""

    def request_quote(self, nonce: bytes) -> UnreadableQuote:
        return UnreadableQuote(pcr_values={})

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        raise AssertionError("an enrolled node is not enrolled again")

    def ek_certificate(self) -> bytes:
        raise AssertionError("an enrolled node is not enrolled again")


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = (
        f"sqlite:///{tmp_path / 'alerts.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgresql_url")
    )
    engine, factory = open_store(url, tmp_path / "token")
    yield factory
    engine.dispose()


@pytest.fixture
def pool(sessions: sessionmaker[Session], tmp_path: Path) -> AgentPool:
    pool, _ = create_trusted_cluster(sessions, "lifecycle")
    with sessions.begin() as session:
        session.add(
            Node(
                pool_id=pool.id,
                ordinal=0,
                name=NODE,
                node_image_version=pool.node_image_version,
                enable_secure_boot=True,
                enable_vtpm=True,
                state="Ready",
                attestation_status="Attested",
                labels=dict(TRUSTED_LABELS),
                run_dir=str(tmp_path),
                attestation_state={"akName": "000b" + "00" * 32, "clock": None},  # enrolled
            )
        )
    return pool


def attest(sessions: sessionmaker[Session], agent: Any, monitor: AttestationMonitor) -> AttestationRecord:
    with sessions.begin() as session:
        node = session.scalars(select(Node).where(Node.name == NODE)).one()
        return monitor.attest(
            session, node.pool, node, agent, policy=Policy(), ek_ca=[], trigger=Trigger.INTERVAL
        )


def attest_unreachable(sessions: sessionmaker[Session], run_dir: Path, times: int) -> list[AttestationRecord]:
    hang_up = HangingUpAgentSocket(run_dir)
    try:
        records = []
        for _ in range(times):
            agent = connect_agent(run_dir, timeout=5)
            try:
                records.append(attest(sessions, agent, AttestationMonitor()))
            finally:
                agent.close()
        return records
    finally:
        hang_up.close()
        (run_dir / "agent.sock").unlink()


def alerts(session: Session) -> list[AlertRecord]:
    return list(session.scalars(select(AlertRecord).order_by(AlertRecord.time, AlertRecord.id)))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_repeats_update_one_alert_per_node_and_cause(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    unreachable = attest_unreachable(sessions, tmp_path, 3)
    assert [record.status for record in unreachable] == ["Unreachable"] * 3
    with sessions() as session:
        [alert] = alerts(session)
        assert (alert.alert_type, alert.status, alert.count) == ("VM_AttestationUnreachable", "Active", 3)
        assert alert.time == unreachable[0].time and alert.last_seen == unreachable[-1].time
        assert alert.attestation_id == unreachable[-1].id
        properties: Any = alert.document["properties"]
        assert properties["alertType"] == "VM_AttestationUnreachable"
        assert properties["alertDisplayName"] == "VM unreachable for attestation"
        assert utc(properties["startTimeUtc"]) == alert.time
        assert utc(properties["endTimeUtc"]) == alert.last_seen > alert.time
        assert properties["extendedProperties"]["count"] == "3"
        assert "gave no attestation evidence" in properties["description"]
        # no Kubernetes is configured: nothing claims a cordon or a taint
        assert properties["remediationSteps"] == [LABELS_REMOVED, NEXT_STEPS[AlertType.NODE_UNREACHABLE]]
        unreachable_id = alert.id

    # the agent answers again, with bad evidence: the unreachable alert resolves, an evidence alert opens
    failed = [attest(sessions, UnreadableEvidenceAgent(), AttestationMonitor()) for _ in range(2)]
    assert [record.status for record in failed] == ["AttestationFailed"] * 2
    with sessions() as session:
        first, second = alerts(session)
        assert (first.id, first.status, first.count) == (unreachable_id, "Resolved", 3)
        assert first.document["properties"]["status"] == "Resolved"  # type: ignore[index]
        assert (second.alert_type, second.status, second.count) == ("VM_AttestationFailure", "Active", 2)
        assert (second.time, second.last_seen) == (failed[0].time, failed[1].time)
        properties = second.document["properties"]
        assert properties["alertDisplayName"] == "VM attestation failure"
        assert properties["remediationSteps"] == [LABELS_REMOVED, NEXT_STEPS[AlertType.ATTESTATION_FAILURE]]
        assert properties["extendedProperties"]["failedComponents"] == "AK"

    # an acknowledged alert still takes the repeats; once resolved, the next failure opens a new alert
    with sessions.begin() as session:
        monitoring.acknowledge_alert(session, SUB, second.id)
    attest(sessions, UnreadableEvidenceAgent(), AttestationMonitor())
    with sessions.begin() as session:
        acknowledged = session.get_one(AlertRecord, second.id)
        assert (acknowledged.status, acknowledged.count) == ("InProgress", 3)
        assert acknowledged.document["properties"]["extendedProperties"]["acknowledgedTimeUtc"]  # type: ignore[index]
        assert [alert.id for alert in resolve_alerts(session, NODE)] == [second.id]
    attest(sessions, UnreadableEvidenceAgent(), AttestationMonitor())
    with sessions() as session:
        assert [(alert.alert_type, alert.status, alert.count) for alert in alerts(session)] == [
            ("VM_AttestationUnreachable", "Resolved", 3),
            ("VM_AttestationFailure", "Resolved", 3),
            ("VM_AttestationFailure", "Active", 1),
        ]


def test_the_webhook_gets_each_state_change_once(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    delivery = AlertDelivery(sessions, max_attempts=2, base_delay=0.01, allowed_networks=LOOPBACK)
    with AlertReceiver() as receiver:
        with sessions.begin() as session:
            session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
        attest_unreachable(sessions, tmp_path, 1)
        assert delivery.deliver_pending() == 1
        attest_unreachable(sessions, tmp_path, 2)  # repeats: count and last seen, no delivery
        assert delivery.deliver_pending() == 0
        with sessions.begin() as session:
            [alert] = alerts(session)
            assert (alert.count, alert.delivery_state) == (3, "Delivered")
            monitoring.acknowledge_alert(session, SUB, alert.id)
            monitoring.acknowledge_alert(session, SUB, alert.id)  # idempotent: one state change
        assert delivery.deliver_pending() == 1
        attest_unreachable(sessions, tmp_path, 1)
        assert delivery.deliver_pending() == 0
        with sessions.begin() as session:
            monitoring.resolve_alert(session, SUB, alert.id)
        assert delivery.deliver_pending() == 1
        with sessions.begin() as session:
            monitoring.resolve_alert(session, SUB, alert.id)
        assert delivery.deliver_pending() == 0
    sent = [
        (
            document["id"],
            document["properties"]["status"],
            document["properties"]["extendedProperties"]["count"],
        )
        for document in receiver.received
    ]
    assert sent == [(alert.id, "Active", "1"), (alert.id, "InProgress", "3"), (alert.id, "Resolved", "4")]


def test_a_state_change_while_delivering_is_delivered_next(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    attest_unreachable(sessions, tmp_path, 1)
    with sessions() as session:
        [alert] = alerts(session)

    with AlertReceiver() as receiver:
        with sessions.begin() as session:
            session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
        delivery = AlertDelivery(sessions, max_attempts=1, allowed_networks=LOOPBACK)
        pending = delivery._pending()
        with sessions.begin() as session:
            monitoring.resolve_alert(session, SUB, alert.id)
        delivery._pending = lambda: pending  # type: ignore[method-assign]  # the POST of the Active state
        assert delivery.deliver_pending() == 1
        with sessions() as session:
            assert session.get_one(AlertRecord, alert.id).delivery_state == "Pending"
        assert AlertDelivery(sessions, max_attempts=1, allowed_networks=LOOPBACK).deliver_pending() == 1
    assert [document["properties"]["status"] for document in receiver.received] == ["Active", "Resolved"]


def test_remediation_says_cordoned_only_when_kubernetes_did_it(
    kube_apiserver: HostedControlPlane, tmp_path: Path
) -> None:
    kubeconfig = kube_apiserver.admin_kubeconfig
    with admin_client(kube_apiserver) as client:
        register_node(client, NODE)
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'alerts.db'}", tmp_path / "token")
    try:
        pool, _ = create_trusted_cluster(sessions, "lifecycle")
        with sessions.begin() as session:
            for ordinal, name in enumerate((NODE, "aks-unregistered-0")):
                session.add(
                    Node(
                        pool_id=pool.id,
                        ordinal=ordinal,
                        name=name,
                        node_image_version=pool.node_image_version,
                        enable_secure_boot=True,
                        enable_vtpm=True,
                        state="Ready",
                        labels=dict(TRUSTED_LABELS),
                        attestation_state={"akName": "000b" + "00" * 32, "clock": None},
                    )
                )

        def fail_and_quarantine(name: str) -> list[object]:
            with KubernetesNodeAdapter(kubeconfig) as adapter:
                monitor = AttestationMonitor(kubernetes=lambda _node: adapter)
                with sessions() as session:
                    node = session.scalars(select(Node).where(Node.name == name)).one()
                    monitor.attest(
                        session,
                        node.pool,
                        node,
                        UnreadableEvidenceAgent(),
                        policy=Policy(),
                        ek_ca=[],
                        trigger=Trigger.INTERVAL,
                    )
                    session.commit()
                    monitor.sync_kubernetes(node, "failed attestation (AK)")
                    session.commit()
                    alert = session.scalars(select(AlertRecord).where(AlertRecord.node_name == name)).one()
                    return list(alert.document["properties"]["remediationSteps"])  # type: ignore[index]

        steps = fail_and_quarantine(NODE)
        assert steps == [LABELS_REMOVED, QUARANTINED, NEXT_STEPS[AlertType.ATTESTATION_FAILURE]]
        with admin_client(kube_apiserver) as client:
            assert read_node(client, NODE)["spec"]["unschedulable"] is True
            client.delete(LightkubeNode, NODE)
        steps = fail_and_quarantine("aks-unregistered-0")
        assert steps[0] == LABELS_REMOVED and QUARANTINED not in steps
        assert steps[1].startswith("Kubernetes was not updated: not registered in Kubernetes")
    finally:
        engine.dispose()


def test_old_alerts_migrate_as_seen_once(tmp_path: Path) -> None:
    """An alert written before 0008 is one of type VM_AttestationFailure, seen once, last at its time."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0007_lowercase_subscriptions")
    time = datetime(2026, 12, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO alerts (id, subscription_id, resource_group, cluster_name, pool_name, node_name,"
            " severity, status, time, document, delivery_state, delivery_attempts)"
            " VALUES ('old', ?, 'rg', 'c', 'p', 'n', 'High', 'Active', '2026-12-01 00:00:00', '{}',"
            " 'Delivered', 1)",
            (SUB,),
        )
    migrate(engine)
    with session_factory(engine)() as session:
        old = session.get_one(AlertRecord, "old")
        assert (old.alert_type, old.count, old.time, old.last_seen, old.acknowledged_at) == (
            "VM_AttestationFailure",
            1,
            time,
            time,
            None,
        )
    engine.dispose()
