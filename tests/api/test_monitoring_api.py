"""Integrity monitoring routes: on-demand attestation, attestation history with evidence, attestation
tokens, Defender-shaped alerts and the alert webhook. The rows the reconciler writes in production are
written through the store here, with real evidence from a real swtpm and the real verifier's verdicts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from api_helpers import CLUSTER, RG_PATH, SUB, cluster_body, register_trusted_launch
from fastapi.testclient import TestClient
from monitoring_rows import (
    RealAttestation,
    add_alert,
    add_attestation,
    add_node,
    minutes_ago,
    real_attestation,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.store.models import AgentPool, Node

TL = {"securityProfile": {"enableSecureBoot": True, "enableVTPM": True}}
POOL = f"{CLUSTER}/agentPools/nodepool1"
MACHINES = f"{POOL}/machines"
PLAIN_CLUSTER = f"{RG_PATH}/managedClusters/plainCluster"
ALERTS = f"/subscriptions/{SUB}/providers/Microsoft.Security/alerts"
WEBHOOK = f"/subscriptions/{SUB}/providers/Microsoft.Security/alertWebhook"
OTHER_SUB = "99999999-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def attestation(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> RealAttestation:
    return real_attestation(testdata, tmp_path_factory.mktemp("quote"))


def assert_arm_error(response: object, status: int, code: str, target: str | None = None) -> str:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert set(error) == {"code", "message", "target", "details"}
    assert error["code"] == code, error
    if target is not None:
        assert error["target"] == target, error
    return str(error["message"])


def sessions(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.sessions  # type: ignore[attr-defined]
    return factory


def pool_row(session: Session) -> AgentPool:
    """The trusted launch pool (the first pool created)."""
    return session.scalars(select(AgentPool).order_by(AgentPool.id)).first()  # type: ignore[return-value]


def node_row(session: Session, name: str) -> Node:
    return session.scalars(select(Node).where(Node.name == name)).one()


@pytest.fixture
def cluster(client: TestClient) -> TestClient:
    """A trusted launch cluster whose pool has two Ready nodes and one still Provisioning, and a cluster
    without vTPM with one Ready node."""
    register_trusted_launch(client)
    assert client.put(CLUSTER, json=cluster_body(**TL)).status_code == 201
    assert client.put(PLAIN_CLUSTER, json=cluster_body()).status_code == 201
    with sessions(client).begin() as session:
        pools = session.scalars(select(AgentPool).order_by(AgentPool.id)).all()
        trusted, plain = pools
        for ordinal, state in enumerate(("Ready", "Ready", "Provisioning")):
            add_node(session, trusted, ordinal, state)
        add_node(session, plain, 7)
    return client


def test_attest_requests_every_ready_vtpm_node(cluster: TestClient) -> None:
    before = datetime.now(UTC)
    response = cluster.post(f"{POOL}/attest")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["machines"] == ["aks-nodepool1-0", "aks-nodepool1-1"]
    assert body["skipped"] == [{"name": "aks-nodepool1-2", "provisioningState": "Provisioning"}]
    requested = datetime.fromisoformat(body["requestedAt"].replace("Z", "+00:00"))
    assert before <= requested <= datetime.now(UTC)
    with sessions(cluster)() as session:
        stamps = {n.name: n.attestation_requested_at for n in pool_row(session).nodes}
    assert stamps["aks-nodepool1-2"] is None
    assert stamps["aks-nodepool1-0"] is not None and stamps["aks-nodepool1-1"] is not None
    machines = {m["name"]: m["properties"] for m in cluster.get(MACHINES).json()["value"]}
    assert machines["aks-nodepool1-0"]["attestationRequestedAt"] == body["requestedAt"]
    assert machines["aks-nodepool1-0"]["lastAttestedAt"] is None
    assert machines["aks-nodepool1-2"]["attestationRequestedAt"] is None


def test_attest_refusals_name_the_reason(cluster: TestClient) -> None:
    message = assert_arm_error(
        cluster.post(f"{PLAIN_CLUSTER}/agentPools/nodepool1/attest"), 409, "VTPMNotEnabled", "agentPoolName"
    )
    assert "--enable-vtpm" in message
    assert_arm_error(cluster.post(f"{CLUSTER}/agentPools/nopool/attest"), 404, "ResourceNotFound")
    with sessions(cluster).begin() as session:
        for node in pool_row(session).nodes:
            node.state = "Reimaging"
    message = assert_arm_error(cluster.post(f"{POOL}/attest"), 409, "NoReadyNodes")
    assert "aks-nodepool1-0: Reimaging" in message
    # ARM paths are case-insensitive, the new segments too
    assert cluster.get(ALERTS.replace("Microsoft.Security", "microsoft.security")).status_code == 200


def test_attestation_history_and_evidence(cluster: TestClient, attestation: RealAttestation) -> None:
    with sessions(cluster).begin() as session:
        node = node_row(session, "aks-nodepool1-0")
        old = add_attestation(session, node, attestation, ok=True, when=minutes_ago(30)).id
        failed = add_attestation(session, node, attestation, ok=False, when=minutes_ago(20)).id
        newest = add_attestation(
            session, node, attestation, ok=True, when=minutes_ago(10), trigger="OnDemand"
        ).id
        other = add_attestation(
            session, node_row(session, "aks-nodepool1-1"), attestation, ok=True, when=minutes_ago(5)
        ).id
    history = cluster.get(f"{MACHINES}/aks-nodepool1-0/attestations").json()["value"]
    assert [int(entry["name"]) for entry in history] == [newest, failed, old]
    assert history[0]["properties"]["trigger"] == "OnDemand" and history[0]["properties"]["passed"] is True
    assert history[1]["properties"]["status"] == "AttestationFailed"
    assert history[1]["properties"]["findings"][0]["check"] == "SecureBootStateMismatch"
    assert "evidence" not in history[0]["properties"]
    top = cluster.get(f"{MACHINES}/aks-nodepool1-0/attestations", params={"$top": "2"}).json()["value"]
    assert [int(entry["name"]) for entry in top] == [newest, failed]
    assert_arm_error(
        cluster.get(f"{MACHINES}/aks-nodepool1-0/attestations", params={"$top": "0"}),
        400,
        "InvalidParameter",
        "$top",
    )

    one = cluster.get(f"{MACHINES}/aks-nodepool1-0/attestations/{failed}")
    assert one.status_code == 200, one.text
    assert one.json()["id"].lower().endswith(f"/machines/aks-nodepool1-0/attestations/{failed}")
    properties = one.json()["properties"]
    evidence = properties["evidence"]
    assert base64.b64decode(evidence["quote"]) == attestation.evidence.quote
    assert base64.b64decode(evidence["eventLog"]) == attestation.evidence.event_log
    assert base64.b64decode(evidence["akPublic"]) == attestation.evidence.ak_public
    assert base64.b64decode(evidence["signature"]) == attestation.evidence.signature
    assert bytes.fromhex(evidence["nonce"]) == bytes.fromhex("0ddba11ca5cade00")
    expected_pcr7 = attestation.failed.replayed_pcrs["sha256"][7].hex()
    assert properties["pcrs"]["sha256"]["7"] == expected_pcr7
    assert properties["token"] is None

    assert_arm_error(
        cluster.get(f"{MACHINES}/aks-nodepool1-0/attestations/{other}"),
        404,
        "AttestationNotFound",
        "attestationId",
    )
    assert_arm_error(
        cluster.get(f"{MACHINES}/aks-nobody-9/attestations"), 404, "ResourceNotFound", "machineName"
    )
    # the history outlives the node (deleted or reimaged away)
    with sessions(cluster).begin() as session:
        session.delete(node_row(session, "aks-nodepool1-0"))
    after = cluster.get(f"{MACHINES}/aks-nodepool1-0/attestations").json()["value"]
    assert [int(entry["name"]) for entry in after] == [newest, failed, old]


def test_attestation_token(cluster: TestClient, attestation: RealAttestation, tmp_path: Path) -> None:
    issuer: TokenIssuer = cluster.app.state.token_issuer  # type: ignore[attr-defined]
    url = f"{MACHINES}/aks-nodepool1-0/getAttestationToken"
    assert_arm_error(cluster.post(url), 404, "AttestationNotFound", "machineName")
    with sessions(cluster).begin() as session:
        add_attestation(
            session,
            node_row(session, "aks-nodepool1-0"),
            attestation,
            ok=True,
            when=minutes_ago(9),
            issuer=issuer,
        )
    response = cluster.post(url)
    assert response.status_code == 200, response.text
    body = response.json()
    # a relying party verifies it with the published JWKS only
    jwks = cluster.get("/.well-known/jwks.json").json()
    key = jwt.PyJWK(
        next(k for k in jwks["keys"] if k["kid"] == jwt.get_unverified_header(body["token"])["kid"])
    )
    claims = jwt.decode(body["token"], key, algorithms=["ES256"], issuer=issuer.issuer)
    assert claims["sub"] == "aks-nodepool1-0" and claims["x-tl-node-pool"] == "nodepool1"
    assert body["expiresOn"] == claims["exp"]

    # the newest attestation failed: no token, even though the older one has not expired
    with sessions(cluster).begin() as session:
        add_attestation(
            session, node_row(session, "aks-nodepool1-0"), attestation, ok=False, when=minutes_ago(1)
        )
    message = assert_arm_error(cluster.post(url), 409, "NodeAttestationFailed")
    assert "Secure Boot" in message

    # a passed attestation whose token expired (issued 9 hours ago by the same keys)
    past = TokenIssuer(
        issuer.key_dir, issuer=issuer.issuer, clock=lambda: datetime.now(UTC) - timedelta(hours=9)
    )
    with sessions(cluster).begin() as session:
        node = node_row(session, "aks-nodepool1-1")
        add_attestation(session, node, attestation, ok=True, when=minutes_ago(1), issuer=past)
    message = assert_arm_error(
        cluster.post(f"{MACHINES}/aks-nodepool1-1/getAttestationToken"), 409, "AttestationTokenInvalid"
    )
    assert "expired" in message and "tl aks nodepool attest" in message


def test_alerts_list_filter_show_resolve(cluster: TestClient, attestation: RealAttestation) -> None:
    with sessions(cluster).begin() as session:
        first = add_alert(
            session,
            node_row(session, "aks-nodepool1-0"),
            attestation,
            subscription_id=SUB,
            when=minutes_ago(30),
        ).id
        second = add_alert(
            session,
            node_row(session, "aks-nodepool1-1"),
            attestation,
            subscription_id=SUB,
            when=minutes_ago(10),
        ).id
        plain = add_alert(
            session,
            node_row(session, "aks-nodepool1-7"),
            attestation,
            subscription_id=SUB,
            when=minutes_ago(20),
        ).id
        foreign = add_alert(
            session,
            node_row(session, "aks-nodepool1-7"),
            attestation,
            subscription_id=OTHER_SUB,
            when=minutes_ago(1),
        ).id
    alerts = cluster.get(ALERTS).json()["value"]
    assert [alert["name"] for alert in alerts] == [second, plain, first]
    newest = alerts[0]
    assert newest["id"] == f"/subscriptions/{SUB}/providers/Microsoft.Security/alerts/{second}"
    properties = newest["properties"]
    assert properties["alertDisplayName"] == "VM attestation failure" and properties["severity"] == "High"
    assert properties["status"] == "Active" and properties["compromisedEntity"] == "aks-nodepool1-1"
    assert properties["extendedProperties"]["webhookDelivery"] == "Pending"
    assert "Secure Boot" in properties["description"]

    by_cluster = cluster.get(ALERTS, params={"clusterName": "PLAINCLUSTER"}).json()["value"]
    assert [alert["name"] for alert in by_cluster] == [plain]
    by_group = cluster.get(ALERTS, params={"resourceGroup": "MyResourceGroup"}).json()["value"]
    assert len(by_group) == 3
    assert cluster.get(ALERTS, params={"resourceGroup": "otherGroup"}).json()["value"] == []
    assert len(cluster.get(ALERTS, params={"severity": "high"}).json()["value"]) == 3
    assert cluster.get(ALERTS, params={"severity": "Low"}).json()["value"] == []
    assert_arm_error(
        cluster.get(ALERTS, params={"severity": "Critical"}), 400, "InvalidParameter", "severity"
    )
    assert_arm_error(cluster.get(ALERTS, params={"status": "Dismissed"}), 400, "InvalidParameter", "status")

    shown = cluster.get(f"{ALERTS}/{first}").json()
    assert shown["name"] == first and shown["properties"]["compromisedEntity"] == "aks-nodepool1-0"
    assert_arm_error(cluster.get(f"{ALERTS}/{foreign}"), 404, "AlertNotFound", "alertName")
    assert_arm_error(cluster.post(f"{ALERTS}/{foreign}/resolve"), 404, "AlertNotFound")
    resolved = cluster.post(f"{ALERTS}/{first}/resolve")
    assert resolved.status_code == 204
    assert cluster.post(f"{ALERTS}/{first}/resolve").status_code == 204  # idempotent
    shown = cluster.get(f"{ALERTS}/{first}").json()["properties"]
    assert shown["status"] == "Resolved" and shown["resolvedTimeUtc"].endswith("Z")
    assert [a["name"] for a in cluster.get(ALERTS, params={"status": "Resolved"}).json()["value"]] == [first]
    assert [a["name"] for a in cluster.get(ALERTS, params={"status": "active"}).json()["value"]] == [
        second,
        plain,
    ]

    # acknowledge: Active -> InProgress (idempotent), a resolved alert cannot be acknowledged
    assert_arm_error(cluster.post(f"{ALERTS}/{foreign}/acknowledge"), 404, "AlertNotFound")
    assert cluster.post(f"{ALERTS}/{second}/acknowledge").status_code == 204
    assert cluster.post(f"{ALERTS}/{second}/acknowledge").status_code == 204
    shown = cluster.get(f"{ALERTS}/{second}").json()["properties"]
    assert shown["status"] == "InProgress"
    assert shown["extendedProperties"]["acknowledgedTimeUtc"].endswith("Z")
    assert shown["extendedProperties"]["webhookDelivery"] == "Pending"  # the new state is delivered once
    assert_arm_error(cluster.post(f"{ALERTS}/{first}/acknowledge"), 409, "AlertResolved")
    in_progress = cluster.get(ALERTS, params={"status": "inprogress"}).json()["value"]
    assert [alert["name"] for alert in in_progress] == [second]
    other = cluster.get(f"/subscriptions/{OTHER_SUB}/providers/Microsoft.Security/alerts").json()["value"]
    assert [alert["name"] for alert in other] == [foreign]


def test_alert_webhook_configuration(client: TestClient) -> None:
    assert_arm_error(client.get(WEBHOOK), 404, "WebhookNotFound")
    created = client.put(WEBHOOK, json={"properties": {"url": "https://hooks.example.com/tl?key=abc"}})
    assert created.status_code == 201, created.text
    assert created.json()["properties"]["url"] == "https://hooks.example.com/tl?key=abc"
    replaced = client.put(WEBHOOK, json={"properties": {"url": "http://93.184.215.14:9000/alerts"}})
    assert replaced.status_code == 200
    assert client.get(WEBHOOK).json()["properties"]["url"] == "http://93.184.215.14:9000/alerts"

    bad = {
        "ftp://example.com/x": "the scheme must be https or http",
        "https://user:secret@example.com/x": "credentials in the URL",
        "https://example.com/" + "a" * 2100: "the limit is 2048",
        "https:///path-only": "it has no host",
        "https://example.com/a b": "whitespace",
        "https://example.com:99999/": "Port out of range",
        "example.com/hook": "the scheme must be https or http",
    }
    for url, reason in bad.items():
        message = assert_arm_error(
            client.put(WEBHOOK, json={"properties": {"url": url}}), 400, "InvalidWebhookUrl", "properties.url"
        )
        assert reason in message, (url, message)
    assert_arm_error(client.put(WEBHOOK, json={"url": "https://example.com"}), 400, "InvalidRequestContent")
    assert client.get(WEBHOOK).json()["properties"]["url"] == "http://93.184.215.14:9000/alerts"

    assert client.delete(WEBHOOK).status_code == 200
    assert_arm_error(client.get(WEBHOOK), 404, "WebhookNotFound")
    assert client.delete(WEBHOOK).status_code == 204


def test_monitoring_routes_need_a_token(client: TestClient) -> None:
    for method, path in (("GET", ALERTS), ("PUT", WEBHOOK), ("POST", f"{POOL}/attest")):
        response = client.request(method, path, headers={"Authorization": ""})
        assert_arm_error(response, 401, "AuthenticationFailed")
