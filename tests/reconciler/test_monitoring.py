"""Integrity monitoring of one real node (QEMU + OVMF Secure Boot + swtpm vTPM), reused across the steps:
provisioning stores an attestation whose evidence re-verifies and whose token verifies from the JWKS with
PyJWT; the cluster's own hosted kube-apiserver is up before the node, and the attested node joins it (its
kubelet registers the Node, the control plane labels it); an on-demand request re-attests; a node whose
enrolled AK (kept by the verifier) is not the AK it quotes with fails: an alert naming the AK reaches the
webhook, the node loses its trusted launch labels (its attestation-status label says AttestationFailed) and
is tainted and cordoned; once it attests again its labels come back and the alert is Resolved; the
interval re-attests too. One VM boot."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from kube_apiserver import read_node, taints_besides_the_node_lifecycle
from lightkube import Client, KubeConfig
from monitoring_helpers import AlertReceiver, create_trusted_cluster, node_name
from reconciler_helpers import SUB, operation, processes_under, wait_until
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.destinations import ALLOWED_NETWORKS_ENV
from trustedlaunch.attest.evidence import Evidence
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.attest.verifier import verify
from trustedlaunch.control import pool_policies
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION
from trustedlaunch.control.labels import (
    LABEL_ATTESTATION,
    LABEL_SECURE_BOOT,
    LABEL_TRUSTED_LAUNCH,
    QUARANTINE_ANNOTATION,
    QUARANTINE_TAINT_KEY,
)
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resource_id import AGENT_POOLS, ResourceId
from trustedlaunch.control.resources import ResourcePath, delete_cluster, pool_resource_id
from trustedlaunch.control.tokens import Principal
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.store.models import AgentPool, AlertRecord, AlertWebhook, AttestationRecord, Node
from trustedlaunch.tpm.structures import parse_tpm2b_public

pytestmark = pytest.mark.slow
ISSUER = "urn:trustedlaunch:test-monitoring"
TL_LABEL = "kubernetes.azure.com/trusted-launch"
SB_LABEL = "kubernetes.azure.com/secure-boot"
QUARANTINE_TAINT = {"key": QUARANTINE_TAINT_KEY, "value": "true", "effect": "NoExecute"}


def run_until(reconciler: Reconciler, condition: Any, what: str, timeout: float = 400) -> Any:
    """Run reconciler passes until `condition()` is truthy. A pass that raises fails the test with its
    traceback: `Reconciler.run_forever` would log and retry it, which would hide a bug here."""

    def step() -> Any:
        reconciler.run_once()
        return condition()

    return wait_until(step, timeout, what)


def the_node(sessions: sessionmaker[Session]) -> Node:
    with sessions() as session:
        return session.scalars(select(Node)).one()


def records(sessions: sessionmaker[Session]) -> list[AttestationRecord]:
    with sessions() as session:
        return list(session.scalars(select(AttestationRecord).order_by(AttestationRecord.id)))


def alerts(sessions: sessionmaker[Session]) -> list[AlertRecord]:
    with sessions() as session:
        return list(session.scalars(select(AlertRecord).order_by(AlertRecord.time)))


def request_attestation(
    sessions: sessionmaker[Session], attestation_state: dict[str, Any] | None = None
) -> None:
    """What `tl aks nodepool attest` does (and, with `attestation_state`, what the verifier remembers)."""
    with sessions.begin() as session:
        node = session.scalars(select(Node)).one()
        node.attestation_requested_at = datetime.now(UTC)
        if attestation_state is not None:
            node.attestation_state = attestation_state


def cluster_admin(sessions: sessionmaker[Session]) -> Client:
    """A client of the cluster's own kube-apiserver with its admin credential."""
    with sessions() as session:
        pool = session.scalars(select(AgentPool)).one()
        plane = pool.cluster.control_plane
        assert plane is not None and plane.phase == "Running" and plane.server_version == KUBERNETES_VERSION
        kubeconfig = Path(plane.data_dir) / "admin.kubeconfig"
    return Client(KubeConfig.from_file(kubeconfig), field_manager="tests", trust_env=False)


def pool_policy(state_dir: Path, image_version: str) -> Policy:
    """The policy the reconciler attests the pool's Secure Boot nodes against."""
    esp = state_dir / "images" / image_version / "esp"
    return replace(policy_for_image(esp, FIRMWARE[True][1], node_image=image_version), secure_boot=True)


def reverify(record: AttestationRecord, policy: Policy) -> bool:
    """Verify a stored attestation's evidence again, offline."""
    assert record.ak_public and record.quote and record.signature and record.event_log and record.nonce
    assert record.pcrs is not None
    pcr_values = {
        bank: {int(index): bytes.fromhex(value) for index, value in values.items()}
        for bank, values in record.pcrs.items()
    }
    evidence = Evidence(
        parse_tpm2b_public(record.ak_public).raw, record.quote, record.signature, record.event_log, pcr_values
    )
    return verify(evidence, nonce=bytes.fromhex(record.nonce), policy=policy).ok


@pytest.mark.asyncio
async def test_attestation_history_alerts_tokens_and_quarantine_of_a_real_node(
    reconciler_base: Path,
    state_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine, sessions = open_store(
        f"sqlite:///{reconciler_base / 'monitor.db'}", reconciler_base / "mon-token"
    )
    pool, create = create_trusted_cluster(sessions, "moncluster")
    name = node_name(pool)
    issuer = TokenIssuer(tmp_path / "attestation-keys", issuer=ISSUER)
    receiver = AlertReceiver()
    with sessions.begin() as session:
        session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
    monkeypatch.setenv(ALLOWED_NETWORKS_ENV, "127.0.0.1/32")  # the operator allows the local receiver
    reconciler = Reconciler(
        sessions,
        state_dir,
        token_issuer=issuer,
        cluster_planes=ClusterPlanes(state_dir),
        attestation_interval=0,
        boot_timeout=300,
    )
    stop_delivery = threading.Event()
    delivery = threading.Thread(target=reconciler.alert_delivery.run_forever, args=(stop_delivery,))
    delivery.start()
    kube: Client | None = None
    try:
        # -- provisioning: attested, recorded with evidence, token, labels in Kubernetes ------------------
        await asyncio.to_thread(
            run_until,
            reconciler,
            lambda: operation(sessions, create.id).status != "InProgress",
            "the cluster's creation",
        )
        created = operation(sessions, create.id)
        assert created.status == "Succeeded", created.error
        node = the_node(sessions)
        assert (node.name, node.state, node.attestation_status) == (name, "Ready", "Attested")
        assert node.labels[TL_LABEL] == node.labels[SB_LABEL] == "true"
        assert node.last_attested_at is not None
        [provisioned] = records(sessions)
        assert (provisioned.trigger, provisioned.status, provisioned.ok, provisioned.findings) == (
            "Provisioning",
            "Attested",
            True,
            [],
        )
        assert provisioned.secure_boot is True and provisioned.duration_ms > 0
        assert set(provisioned.pcrs or {}) >= {"sha256"} and "7" in (provisioned.pcrs or {})["sha256"]
        policy = pool_policy(state_dir, node.node_image_version)
        assert reverify(provisioned, policy)
        with sessions() as session:  # kept for the verifier API's poolId
            pool_row = session.get_one(AgentPool, pool.id)
            pool_id = pool_resource_id(pool_row.cluster, pool_row.name)
            stored = pool_policies.pool_policy(session, pool_id, Principal("admin", None))
        assert (stored.pool_name, Policy.from_json(stored.document)) == ("nodepool1", policy)
        assert provisioned.token is not None
        key = jwt.PyJWKSet.from_dict(issuer.jwks())[jwt.get_unverified_header(provisioned.token)["kid"]]
        claims = jwt.decode(provisioned.token, key.key, algorithms=["ES256"], issuer=ISSUER)
        assert (claims["sub"], claims["x-tl-node-pool"], claims["secureboot"]) == (name, "nodepool1", True)
        assert 7 in claims["x-ms-azurevm-attested-pcrs"]
        assert "joined its cluster" in node.message  # attested, then its kubelet got a credential
        kube = cluster_admin(sessions)
        labelled = read_node(kube, name)  # registered by the node's kubelet, labelled by the control plane
        labels = labelled["metadata"]["labels"]
        assert labels[LABEL_TRUSTED_LAUNCH] == labels[LABEL_SECURE_BOOT] == "true"
        assert labels["kubernetes.io/hostname"] == name
        assert not labelled["spec"].get("unschedulable") and not taints_besides_the_node_lifecycle(labelled)

        # -- on demand: attested again ------------------------------------------------------------------
        assert not await asyncio.to_thread(reconciler.run_once)  # interval 0: nothing due
        request_attestation(sessions)
        assert await asyncio.to_thread(reconciler.run_once)
        assert read_node(kube, name)["metadata"]["labels"] == labels
        on_demand = records(sessions)[-1]
        assert (on_demand.trigger, on_demand.status, on_demand.ok) == ("OnDemand", "Attested", True)
        assert on_demand.nonce != provisioned.nonce and reverify(on_demand, policy)
        node = the_node(sessions)
        assert node.attestation_requested_at is None
        assert node.message == "attested (OnDemand); kubelet credentials renewed"  # it joined its cluster
        assert node.last_attested_at is not None
        assert provisioned.time.replace(tzinfo=None) < node.last_attested_at.replace(tzinfo=None)  # both UTC

        # -- a node quoting with another AK than the one enrolled fails and is quarantined ----------------
        enrolled = dict(node.attestation_state or {})
        ak_name = str(enrolled["akName"])
        impostor = ak_name[:-2] + format(int(ak_name[-2:], 16) ^ 0xFF, "02x")
        request_attestation(sessions, {**enrolled, "akName": impostor})
        assert await asyncio.to_thread(reconciler.run_once)
        failed = records(sessions)[-1]
        assert (failed.trigger, failed.status, failed.ok, failed.token) == (
            "OnDemand",
            "AttestationFailed",
            False,
            None,
        )
        assert [finding["component"] for finding in failed.findings] == ["AK"]
        assert failed.quote is not None  # the evidence the node sent is kept
        node = the_node(sessions)
        assert node.state == "Ready" and node.attestation_status == "AttestationFailed"
        assert TL_LABEL not in node.labels and SB_LABEL not in node.labels
        assert node.labels["kubernetes.azure.com/attestation-status"] == "AttestationFailed"
        assert node.message.startswith(f"quarantined: node {name} failed attestation (AK): ")
        [alert] = alerts(sessions)
        assert (alert.status, alert.node_name, alert.pool_name, alert.attestation_id) == (
            "Active",
            name,
            "nodepool1",
            failed.id,
        )
        properties: Any = alert.document["properties"]
        assert properties["extendedProperties"]["failedComponents"] == "AK"
        with sessions() as session:
            cluster = session.get_one(AgentPool, pool.id).cluster
            pool_id = ResourceId.of(cluster).child(AGENT_POOLS, "nodepool1").path()  # as created
            assert properties["resourceIdentifiers"][0]["azureResourceId"] == pool_id
        quarantined = read_node(kube, name)
        kept = {
            key: value
            for key, value in labels.items()
            if key not in (LABEL_TRUSTED_LAUNCH, LABEL_SECURE_BOOT)
        }
        assert quarantined["metadata"]["labels"] == {**kept, LABEL_ATTESTATION: "AttestationFailed"}
        assert taints_besides_the_node_lifecycle(quarantined) == [QUARANTINE_TAINT]
        assert quarantined["spec"]["unschedulable"] is True
        assert "failed attestation (AK)" in quarantined["metadata"]["annotations"][QUARANTINE_ANNOTATION]
        await asyncio.to_thread(wait_until, lambda: receiver.received, 60, "the alert at the webhook")
        assert [document["id"] for document in receiver.received] == [alert.id]
        assert receiver.received[0]["properties"]["alertDisplayName"] == "VM attestation failure"
        delivered = await asyncio.to_thread(
            wait_until,
            lambda: alerts(sessions)[0].delivery_state == "Delivered",
            30,
            "the alert's delivery state",
        )
        assert delivered

        # -- attested again: labels back, quarantine lifted, alert resolved --------------------------------
        request_attestation(sessions, enrolled)
        assert await asyncio.to_thread(reconciler.run_once)
        again = records(sessions)[-1]
        assert (again.status, again.ok) == ("Attested", True) and again.token is not None
        node = the_node(sessions)
        assert (
            node.attestation_status == "Attested" and node.labels[TL_LABEL] == node.labels[SB_LABEL] == "true"
        )
        [resolved] = alerts(sessions)
        assert resolved.status == "Resolved" and resolved.resolved_at is not None
        assert resolved.document["properties"]["status"] == "Resolved"  # type: ignore[index]
        restored = read_node(kube, name)
        assert restored["metadata"]["labels"] == labelled["metadata"]["labels"]
        assert not restored["spec"].get("unschedulable") and not taints_besides_the_node_lifecycle(restored)
        assert QUARANTINE_ANNOTATION not in (restored["metadata"].get("annotations") or {})

        # -- on the interval ----------------------------------------------------------------------------
        reconciler.attestation_interval = 1
        await asyncio.to_thread(
            run_until,
            reconciler,
            lambda: records(sessions)[-1].trigger == "Interval",
            "an interval attestation",
        )
        assert records(sessions)[-1].status == "Attested"
        assert len(records(sessions)) == 5
    finally:
        stop_delivery.set()
        await asyncio.to_thread(delivery.join, 30)
        with sessions.begin() as session:
            deletion = delete_cluster(session, ResourcePath(SUB, "rg", "moncluster"))
        if deletion is not None:
            await asyncio.to_thread(
                run_until,
                reconciler,
                lambda: operation(sessions, deletion.id).status != "InProgress",
                "the cluster's deletion",
            )
        reconciler.release()
        if kube is not None:
            kube.close()
        receiver.close()
        engine.dispose()
    assert processes_under(state_dir / "vm") == []
    assert list((state_dir / "clusters").iterdir()) == []  # the control plane went with the cluster
