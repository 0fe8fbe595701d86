"""Monitoring without a VM: an unreachable agent (a real unix socket that hangs up) is recorded, alerted and
quarantined, an agent answering garbage fails attestation the same way; the history stays bounded; alerts
go to the subscription's webhook (a real HTTP server) in the background, stay Pending without one;
Kubernetes quarantine/restore against a real kube-apiserver, and a node no kubelet registered is a note,
not an error."""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from kube_apiserver import admin_client, read_node, register_node, taints_besides_the_node_lifecycle
from lightkube.resources.core_v1 import Node as LightkubeNode
from monitoring_helpers import LOOPBACK, AlertReceiver, create_trusted_cluster
from reconciler_helpers import SUB, wait_until
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.api.app import JWKS_PATH, create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.attest.policy import Policy
from trustedlaunch.control.attestation_monitor import (
    AlertDelivery,
    AttestationMonitor,
    Trigger,
    attestation_due,
    attestation_order,
    prune_history,
)
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes import KubernetesNodeAdapter
from trustedlaunch.control.labels import (
    LABEL_ATTESTATION,
    LABEL_SECURE_BOOT,
    LABEL_TRUSTED_LAUNCH,
    QUARANTINE_ANNOTATION,
    QUARANTINE_TAINT_KEY,
)
from trustedlaunch.control.node_drivers import connect_agent
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resource_id import AGENT_POOLS, ResourceId
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import AgentPool, AlertRecord, AlertWebhook, AttestationRecord, Node

QUARANTINE_TAINT = {"key": QUARANTINE_TAINT_KEY, "value": "true", "effect": "NoExecute"}
TRUSTED_LABELS = {
    "kubernetes.azure.com/agentpool": "nodepool1",
    "kubernetes.azure.com/attestation-status": "Attested",
    "kubernetes.azure.com/trusted-launch": "true",
    "kubernetes.azure.com/secure-boot": "true",
}


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, factory = open_store(f"sqlite:///{tmp_path / 'monitor.db'}", tmp_path / "token")
    yield factory
    engine.dispose()


@pytest.fixture
def pool(sessions: sessionmaker[Session]) -> AgentPool:
    pool, _ = create_trusted_cluster(sessions, "moncluster")
    return pool


def add_node(sessions: sessionmaker[Session], pool: AgentPool, run_dir: Path, name: str = "aks-n-0") -> None:
    with sessions.begin() as session:
        session.add(
            Node(
                pool_id=pool.id,
                ordinal=0,
                name=name,
                node_image_version=pool.node_image_version,
                enable_secure_boot=True,
                enable_vtpm=True,
                state="Ready",
                attestation_status="Attested",
                labels=dict(TRUSTED_LABELS),
                run_dir=str(run_dir),
                attestation_requested_at=datetime.now(UTC) - timedelta(seconds=5),
            )
        )


class HangingUpAgentSocket:
    """A real unix socket at run_dir/agent.sock that accepts connections and closes them at once (a VM whose
    agent is gone)."""

    def __init__(self, run_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(run_dir / "agent.sock"))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            connection.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()


def attest_unreachable(
    sessions: sessionmaker[Session], run_dir: Path, monitor: AttestationMonitor, name: str = "aks-n-0"
) -> AttestationRecord:
    with sessions.begin() as session:
        node = session.scalars(select(Node).where(Node.name == name)).one()
        agent = connect_agent(run_dir, timeout=5)
        try:
            record = monitor.attest(
                session, node.pool, node, agent, policy=Policy(), ek_ca=[], trigger=Trigger.ON_DEMAND
            )
        finally:
            agent.close()
    return record


def test_unreachable_agent_is_recorded_alerted_and_quarantined(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    add_node(sessions, pool, tmp_path)
    with pytest.raises(TrustedLaunchError, match="cannot connect to the node's agent socket"):
        connect_agent(tmp_path)  # no socket yet
    hang_up = HangingUpAgentSocket(tmp_path)
    try:
        record = attest_unreachable(sessions, tmp_path, AttestationMonitor())
    finally:
        hang_up.close()

    assert (record.trigger, record.status, record.ok, record.token) == (
        "OnDemand",
        "Unreachable",
        False,
        None,
    )
    assert (record.nonce, record.quote, record.event_log, record.pcrs) == (None, None, None, None)
    [finding] = record.findings
    assert finding["component"] == "agent"
    # the hang-up reaches the host as EOF, EPIPE on the send or ECONNRESET on the read, whichever comes first
    hung_up = r"serial port was closed|Broken pipe|Connection reset by peer"
    assert re.search(rf"unreachable: .*\(.*({hung_up})", str(finding["message"]))
    with sessions() as session:
        node = session.scalars(select(Node)).one()
        assert node.attestation_status == "AttestationFailed"
        assert node.labels == {
            "kubernetes.azure.com/agentpool": "nodepool1",
            "kubernetes.azure.com/attestation-status": "AttestationFailed",
        }
        assert node.attestation_requested_at is None and node.last_attested_at is not None
        alert = session.scalars(select(AlertRecord)).one()
        cluster = session.get_one(AgentPool, pool.id).cluster
        assert alert.attestation_id == record.id
        assert (alert.subscription_id, alert.resource_group, alert.cluster_name, alert.pool_name) == (
            SUB,
            "rg",
            "moncluster",
            "nodepool1",
        )
        assert (alert.node_name, alert.status, alert.delivery_state) == ("aks-n-0", "Active", "Pending")
        properties: Any = alert.document["properties"]
        assert properties["compromisedEntity"] == "aks-n-0"
        assert properties["extendedProperties"]["failedComponents"] == "agent"
        assert properties["resourceIdentifiers"] == [
            {
                "type": "AzureResource",
                "azureResourceId": ResourceId.of(cluster).child(AGENT_POOLS, "nodepool1").path(),
            }
        ]
        assert "unreachable" in properties["description"]


class GarbageAgentSocket:
    """A real unix socket at run_dir/agent.sock whose "agent" answers every request with a well-framed
    answer of the wrong types (what a compromised node can send)."""

    def __init__(self, run_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(run_dir / "agent.sock"))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            # The channel drops the connection once it sees garbage: a reset here is that, not a failure.
            with connection, connection.makefile("rb") as requests, contextlib.suppress(ConnectionError):
                for request in requests:
                    command, request_id, *_ = (*request.decode().split(), "", "")
                    line = f'{{"id":"{request_id}","reply":"{command}","error":"x","detail":5}}'.encode()
                    sha = hashlib.sha256(line + b"\n").hexdigest().encode()
                    connection.sendall(line + b"\nEND " + sha + b"\n")

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join()


def test_an_agent_answering_garbage_fails_attestation_alerted_and_quarantined(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    add_node(sessions, pool, tmp_path)
    garbage = GarbageAgentSocket(tmp_path)
    try:
        record = attest_unreachable(sessions, tmp_path, AttestationMonitor())
    finally:
        garbage.close()
    assert (record.status, record.ok, record.event_log) == ("AttestationFailed", False, None)
    [finding] = record.findings
    assert str(finding["message"]).startswith("the node's agent answered garbage to the attestation request")
    assert "flat JSON object of strings" in str(finding["message"])
    with sessions() as session:
        node = session.scalars(select(Node)).one()
        assert node.attestation_status == "AttestationFailed"
        assert "kubernetes.azure.com/trusted-launch" not in node.labels
        alert = session.scalars(select(AlertRecord)).one()
        assert (alert.node_name, alert.status, alert.attestation_id) == ("aks-n-0", "Active", record.id)


def test_history_keeps_the_newest_records_per_node(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    add_node(sessions, pool, tmp_path)
    monitor = AttestationMonitor(history_per_node=2)
    hang_up = HangingUpAgentSocket(tmp_path)
    try:
        ids = [attest_unreachable(sessions, tmp_path, monitor).id for _ in range(3)]
    finally:
        hang_up.close()
    with sessions() as session:
        kept = list(session.scalars(select(AttestationRecord.id).order_by(AttestationRecord.id)))
        assert kept == ids[1:]
        alerts = list(session.scalars(select(AlertRecord).order_by(AlertRecord.time)))
        # one open alert for the repeats, pointing at the newest record
        assert [(alert.attestation_id, alert.count) for alert in alerts] == [(ids[-1], 3)]

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with sessions.begin() as session:
        for index in range(5):
            for name in ("aks-a", "aks-b"):
                session.add(
                    AttestationRecord(
                        pool_id=pool.id,
                        node_name=name,
                        time=start + timedelta(minutes=index),
                        trigger="Interval",
                        ok=True,
                        status="Attested",
                    )
                )
    with sessions.begin() as session:
        assert prune_history(session, "aks-a", keep=3) == 2
    with sessions() as session:
        rows = session.execute(select(AttestationRecord.node_name, AttestationRecord.time)).all()
        minutes = {
            name: sorted(moment.minute for n, moment in rows if n == name) for name in ("aks-a", "aks-b")
        }
        assert minutes == {"aks-a": [2, 3, 4], "aks-b": [0, 1, 2, 3, 4]}


def test_due_nodes_on_demand_first_then_the_longest_unattested() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    fresh = Node(name="fresh", last_attested_at=now - timedelta(seconds=10))
    stale = Node(name="stale", last_attested_at=now - timedelta(seconds=400))
    never = Node(name="never", last_attested_at=None)
    asked = Node(name="asked", last_attested_at=now, attestation_requested_at=now - timedelta(seconds=1))
    assert [attestation_due(node, 300, now) for node in (fresh, stale, never, asked)] == [
        False,
        True,
        True,
        True,
    ]
    assert [attestation_due(node, 0, now) for node in (fresh, stale, never, asked)] == [
        False,
        False,
        False,
        True,
    ]
    assert [node.name for node in sorted((fresh, stale, never, asked), key=attestation_order)] == [
        "asked",
        "never",
        "stale",
        "fresh",
    ]


def add_alert(sessions: sessionmaker[Session], record_sessions_pool: AgentPool, tmp_path: Path) -> str:
    add_node(sessions, record_sessions_pool, tmp_path)
    hang_up = HangingUpAgentSocket(tmp_path)
    try:
        attest_unreachable(sessions, tmp_path, AttestationMonitor())
    finally:
        hang_up.close()
    with sessions() as session:
        return session.scalars(select(AlertRecord.id)).one()


def test_alerts_wait_for_a_webhook_then_are_delivered_with_retries(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    alert_id = add_alert(sessions, pool, tmp_path)
    delivery = AlertDelivery(sessions, max_attempts=3, base_delay=0.01, allowed_networks=LOOPBACK)
    assert delivery.deliver_pending() == 0
    with sessions() as session:
        assert session.get_one(AlertRecord, alert_id).delivery_state == "Pending"  # no webhook yet

    with AlertReceiver(answers=(503, 502)) as receiver:
        with sessions.begin() as session:
            session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
        assert delivery.deliver_pending() == 1
        with sessions() as session:
            alert = session.get_one(AlertRecord, alert_id)
            assert (alert.delivery_state, alert.delivery_attempts, alert.delivery_error) == (
                "Delivered",
                3,
                None,
            )
            assert receiver.received == [alert.document] * 3
        assert delivery.deliver_pending() == 0  # delivered once


def test_a_refused_or_unreachable_webhook_fails_the_delivery(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    alert_id = add_alert(sessions, pool, tmp_path)
    with AlertReceiver(answers=(410,)) as receiver:
        with sessions.begin() as session:
            session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
        AlertDelivery(sessions, max_attempts=3, base_delay=0.01, allowed_networks=LOOPBACK).deliver_pending()
    with sessions() as session:
        alert = session.get_one(AlertRecord, alert_id)
        assert (alert.delivery_state, alert.delivery_attempts) == ("Failed", 1)  # a 4xx is final
        assert alert.delivery_error == f"{receiver.url} answered HTTP 410"

    with sessions.begin() as session:
        session.get_one(AlertRecord, alert_id).delivery_state = "Pending"
    AlertDelivery(
        sessions, max_attempts=2, base_delay=0.01, allowed_networks=LOOPBACK
    ).deliver_pending()  # the receiver is closed now
    with sessions() as session:
        alert = session.get_one(AlertRecord, alert_id)
        assert (alert.delivery_state, alert.delivery_attempts) == ("Failed", 3)
        assert alert.delivery_error is not None and "ConnectError" in alert.delivery_error


def test_delivery_runs_in_its_own_thread_until_stopped(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    alert_id = add_alert(sessions, pool, tmp_path)
    stop = threading.Event()
    with AlertReceiver() as receiver:
        with sessions.begin() as session:
            session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
        thread = threading.Thread(
            target=AlertDelivery(sessions, poll_seconds=0.1, allowed_networks=LOOPBACK).run_forever,
            args=(stop,),
        )
        thread.start()
        try:
            wait_until(lambda: receiver.received, 30, "the alert at the webhook")
        finally:
            stop.set()
            thread.join(10)
    assert not thread.is_alive()
    assert [document["id"] for document in receiver.received] == [alert_id]


def test_kubernetes_quarantine_restore_and_an_unregistered_node(kube_apiserver: HostedControlPlane) -> None:
    with (
        admin_client(kube_apiserver) as client,
        KubernetesNodeAdapter(kube_apiserver.admin_kubeconfig) as adapter,
    ):
        register_node(client, "aks-known-0")
        monitor = AttestationMonitor(kubernetes=lambda _node: adapter)
        known = Node(name="aks-known-0", labels=dict(TRUSTED_LABELS), message="ready")
        monitor.sync_kubernetes(known)
        stored = read_node(client, "aks-known-0")
        assert stored["metadata"]["labels"] == {
            "kubernetes.io/hostname": "aks-known-0",
            LABEL_TRUSTED_LAUNCH: "true",
            LABEL_SECURE_BOOT: "true",
            LABEL_ATTESTATION: "Attested",
        }
        known.labels = {**known.labels, LABEL_ATTESTATION: "AttestationFailed"}  # the row's trusted labels
        monitor.sync_kubernetes(known, "node aks-known-0 failed attestation (AK)")  # never reach Kubernetes
        stored = read_node(client, "aks-known-0")
        assert stored["metadata"]["labels"] == {
            "kubernetes.io/hostname": "aks-known-0",
            LABEL_ATTESTATION: "AttestationFailed",
        }
        assert stored["metadata"]["annotations"][QUARANTINE_ANNOTATION].endswith("(AK)")
        assert taints_besides_the_node_lifecycle(stored) == [QUARANTINE_TAINT]
        assert stored["spec"]["unschedulable"] is True
        assert known.message == "ready"

        unknown = Node(name="aks-unknown-0", labels=dict(TRUSTED_LABELS), message="ready")
        monitor.sync_kubernetes(unknown)
        assert unknown.message == (
            "ready; not registered in Kubernetes (no kubelet registered it): labels not applied there"
        )
        client.delete(LightkubeNode, "aks-known-0")


def test_embedded_server_gives_its_reconciler_the_issuer_of_its_jwks(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'api.db'}"
    engine = make_engine(url)
    reconciler = Reconciler(session_factory(engine), tmp_path / "state", poll_seconds=0.2, auto_repair=False)
    try:
        with BackgroundServer(create_app(url, tmp_path / "admin-token"), reconciler=reconciler) as server:
            issuer = reconciler.monitor.token_issuer
            assert issuer is not None and issuer.key_dir == tmp_path / "attestation-keys"
            assert httpx.get(server.url + JWKS_PATH).json() == issuer.jwks()
    finally:
        engine.dispose()


def test_deleting_a_node_resolves_its_active_alerts(
    sessions: sessionmaker[Session], pool: AgentPool, tmp_path: Path
) -> None:
    run_dir = tmp_path / "vm"
    run_dir.mkdir()
    add_node(sessions, pool, run_dir)
    hang_up = HangingUpAgentSocket(run_dir)
    try:
        attest_unreachable(sessions, run_dir, AttestationMonitor())
    finally:
        hang_up.close()
    with sessions.begin() as session:
        session.get_one(AgentPool, pool.id).count = 0  # the pool's create operation now scales it to zero

    reconciler = Reconciler(sessions, tmp_path / "state", attestation_interval=0, auto_repair=False)
    try:
        while reconciler.run_once():
            pass
    finally:
        reconciler.release()
    with sessions() as session:
        assert session.scalars(select(Node)).all() == []
        alert = session.scalars(select(AlertRecord)).one()
        assert (alert.node_name, alert.status) == ("aks-n-0", "Resolved")
        assert alert.resolved_at is not None
        assert alert.document["properties"]["status"] == "Resolved"  # type: ignore[index]
