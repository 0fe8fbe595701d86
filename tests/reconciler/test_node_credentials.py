"""Continuous attestation drives Kubernetes, on one real Secure Boot + vTPM node joined to its cluster's
hosted control plane: the kubelet's serving certificate is the cluster CA's and kube-apiserver verifies it
(`kubectl logs` and `exec` work); a passing re-attestation renews the kubelet's client and serving
certificates (the agent replaced the files with those issued; the kubelet serves the new one) and brings
the Node's pool labels back to its row (a pre-0014 node-image-version label); a failing
re-attestation renews nothing, taints the Node NoExecute (its pod is evicted), cordons it and removes its
trusted-launch and secure-boot labels; attested again, the Node is restored and its credentials renewed.
One VM boot."""

from __future__ import annotations

import hashlib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cached_kubectl import kubectl
from cryptography import x509
from kube_apiserver import read_node, taints_besides_the_node_lifecycle
from lightkube import ApiError, Client
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType
from monitoring_helpers import create_trusted_cluster
from reconciler_helpers import SUB, cluster_admin, run_until_finished, wait_until
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control import node_join
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.kubernetes import QUARANTINE_TAINT
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.labels import LABEL_NODE_IMAGE_VERSION, LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ResourcePath, delete_cluster
from trustedlaunch.node.channel import RenewedCredentials
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version
from trustedlaunch.node.image import BUSYBOX
from trustedlaunch.node.kubelet import KubeletCredentials
from trustedlaunch.store.models import Node

pytestmark = pytest.mark.slow
CLUSTER = "credcluster"
CREATE_SECONDS = 1200.0  # control plane, then a node booted, attested and joined under TCG on 2 busy cores
SERVING_RELOAD_SECONDS = 150.0  # kubelet's serving certificate file: fsnotify, else its 1-minute poll
EVICTION_SECONDS = 180.0
PRE_0014_NAME = "AKSUbuntu-2204gen2TLcontainerd-202411.12.0"


@dataclass
class Credentials:
    """The cluster, its node and what the control plane issued and the agent replaced."""

    sessions: sessionmaker[Session]
    reconciler: Reconciler
    kubeconfig: Path
    client: Client
    issued: list[KubeletCredentials]
    renewed: list[RenewedCredentials]
    enrolled: dict[str, Any] = field(default_factory=dict)  # the verifier's state of the node's enrolled AK

    def node(self) -> Node:
        with self.sessions() as session:
            return session.scalars(select(Node)).one()


@pytest.fixture(scope="module")
def cluster(reconciler_base: Path) -> Iterator[Credentials]:
    """A store with one Secure Boot + vTPM cluster created by a reconciler with hosted control planes
    (attested on demand only), recording the kubelet credentials it issues and the agent's renewals."""
    state_dir = reconciler_base / "cred"
    engine, sessions = open_store(f"sqlite:///{reconciler_base / 'cred.db'}", reconciler_base / "cred-token")
    _, create = create_trusted_cluster(sessions, CLUSTER)
    reconciler = Reconciler(
        sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), attestation_interval=0, boot_timeout=300
    )
    assert reconciler.joiner is not None
    issue, renew = node_join.issue_kubelet_credentials, reconciler.joiner.renew_credential
    issued: list[KubeletCredentials] = []
    renewed: list[RenewedCredentials] = []
    with pytest.MonkeyPatch.context() as patch:

        def issuing(*args: Any) -> KubeletCredentials:
            issued.append(issue(*args))
            return issued[-1]

        def renewing(*args: Any) -> RenewedCredentials:
            renewed.append(renew(*args))
            return renewed[-1]

        patch.setattr(node_join, "issue_kubelet_credentials", issuing)
        patch.setattr(reconciler.joiner, "renew_credential", renewing)
        client: Client | None = None
        try:
            created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
            assert created.status == "Succeeded", created.error
            client, kubeconfig = cluster_admin(sessions)
            yield Credentials(sessions, reconciler, kubeconfig, client, issued, renewed)
        finally:
            if client is not None:
                client.close()
            with sessions.begin() as session:
                deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
            if deletion is not None:
                run_until_finished(reconciler, sessions, deletion.id, 300.0)
            reconciler.release()
            engine.dispose()


def serving_certificate(port: int) -> x509.Certificate:
    """The certificate the kubelet serves on 127.0.0.1:<port> (not verified here: read as presented)."""
    return x509.load_pem_x509_certificate(
        ssl.get_server_certificate(("127.0.0.1", port), timeout=20).encode()
    )


def request_attestation(credentials: Credentials, attestation_state: dict[str, Any] | None = None) -> None:
    """What `tl aks nodepool attest` does (and, with `attestation_state`, what the verifier remembers)."""
    with credentials.sessions.begin() as session:
        node = session.scalars(select(Node)).one()
        node.attestation_requested_at = datetime.now(UTC)
        if attestation_state is not None:
            node.attestation_state = attestation_state


def pod(name: str) -> Pod:
    """A busybox pod that prints a line, then sleeps; no tolerations."""
    return Pod(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=PodSpec(
            nodeSelector={LABEL_TRUSTED_LAUNCH: "true"},
            automountServiceAccountToken=False,
            terminationGracePeriodSeconds=0,
            containers=[
                Container(
                    name=name,
                    image=f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}",
                    imagePullPolicy="IfNotPresent",
                    command=["sh", "-c", "echo started; exec sleep 3600"],
                )
            ],
        ),
    )


def pod_or_none(client: Client, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.get(Pod, name, namespace="default").to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return found


def test_kubectl_logs_and_exec_verify_the_kubelet_serving_certificate_of_the_cluster_ca(
    cluster: Credentials, kubernetes_release: KubernetesRelease
) -> None:
    node = cluster.node()
    assert node.kubelet_port is not None
    [joined] = cluster.issued
    served = serving_certificate(node.kubelet_port)
    assert served == x509.load_pem_x509_certificate(joined.serving_cert_pem)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(address) for address in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == [node.name]
    assert served.subject.rfc4514_string() == f"CN=system:node:{node.name},O=system:nodes"
    lifetime = served.not_valid_after_utc - served.not_valid_before_utc
    print(f"kubelet certificates valid {lifetime} (issued with {node_join.node_credential_validity(0)})")

    cluster.client.create(pod("sleeper"))
    wait_until(
        lambda: (pod_or_none(cluster.client, "sleeper") or {}).get("status", {}).get("phase") == "Running",
        300,
        "pod sleeper Running",
    )
    logs = kubectl(kubernetes_release, cluster.kubeconfig, "logs", "-n", "default", "sleeper")
    assert logs.stdout == "started\n"
    executed = kubectl(
        kubernetes_release, cluster.kubeconfig, "exec", "-n", "default", "sleeper", "--", "echo", "hi"
    )
    assert executed.stdout == "hi\n"


def test_a_passing_reattestation_renews_the_kubelet_credentials(
    cluster: Credentials, kubernetes_release: KubernetesRelease
) -> None:
    node = cluster.node()
    assert node.kubelet_port is not None
    before = serving_certificate(node.kubelet_port)
    # the node-image-version label a Node joined with before migration 0014 renamed the image
    renamed = {"metadata": {"labels": {LABEL_NODE_IMAGE_VERSION: PRE_0014_NAME}}}
    cluster.client.patch(KubernetesNode, node.name, renamed, patch_type=PatchType.MERGE)
    request_attestation(cluster)
    assert cluster.reconciler.run_once()
    node = cluster.node()
    assert node.message == (
        "attested (OnDemand); kubelet credentials renewed; labels brought back to its row: "
        f"{LABEL_NODE_IMAGE_VERSION}: {PRE_0014_NAME} -> {node.node_image_version}"
    )
    labels = read_node(cluster.client, node.name)["metadata"]["labels"]
    assert labels[LABEL_NODE_IMAGE_VERSION] == node.node_image_version
    [renewed] = cluster.renewed
    issued = cluster.issued[-1]
    assert renewed.replaced == (
        "kubelet-client.crt",
        "kubelet-client.key",
        "kubelet-server.crt",
        "kubelet-server.key",
    )
    assert renewed.client_cert_sha256 == hashlib.sha256(issued.client_cert_pem).hexdigest()
    assert renewed.serving_cert_sha256 == hashlib.sha256(issued.serving_cert_pem).hexdigest()
    started = time.monotonic()
    new = x509.load_pem_x509_certificate(issued.serving_cert_pem)
    wait_until(
        lambda: serving_certificate(node.kubelet_port or 0) == new,
        SERVING_RELOAD_SECONDS,
        "the new serving cert",
    )
    print(f"kubelet serves its renewed certificate {time.monotonic() - started:.1f} s after the renewal")
    assert new.serial_number != before.serial_number
    logs = kubectl(kubernetes_release, cluster.kubeconfig, "logs", "-n", "default", "sleeper")
    assert logs.stdout == "started\n"  # the apiserver verifies the renewed certificate too


def test_a_failing_reattestation_evicts_the_pod_quarantines_the_node_and_renews_nothing(
    cluster: Credentials,
) -> None:
    node = cluster.node()
    assert node.kubelet_port is not None
    port = node.kubelet_port
    enrolled = dict(node.attestation_state or {})
    serving = serving_certificate(port)
    issued, renewed = len(cluster.issued), len(cluster.renewed)
    ak_name = str(enrolled["akName"])
    impostor = ak_name[:-2] + format(int(ak_name[-2:], 16) ^ 0xFF, "02x")
    request_attestation(cluster, {**enrolled, "akName": impostor})
    assert cluster.reconciler.run_once()
    node = cluster.node()
    assert node.attestation_status == "AttestationFailed" and node.message.startswith("quarantined: ")
    assert (len(cluster.issued), len(cluster.renewed)) == (issued, renewed)
    stored = read_node(cluster.client, node.name)
    assert QUARANTINE_TAINT.to_dict() in taints_besides_the_node_lifecycle(stored)
    assert stored["spec"]["unschedulable"] is True
    labels = stored["metadata"]["labels"]
    assert LABEL_TRUSTED_LAUNCH not in labels and LABEL_SECURE_BOOT not in labels
    started = time.monotonic()

    def evicted() -> bool:
        found = pod_or_none(cluster.client, "sleeper")
        return found is None or found["metadata"].get("deletionTimestamp") is not None

    wait_until(evicted, EVICTION_SECONDS, "the pod evicted by the NoExecute taint")
    print(f"pod evicted {time.monotonic() - started:.1f} s after the quarantine")
    wait_until(lambda: pod_or_none(cluster.client, "sleeper") is None, EVICTION_SECONDS, "the pod gone")
    assert serving_certificate(port) == serving  # nothing renewed
    cluster.enrolled = enrolled


def test_attested_again_the_node_is_restored_and_its_credentials_renewed(cluster: Credentials) -> None:
    assert cluster.enrolled, "runs after the failing re-attestation"
    renewed = len(cluster.renewed)
    request_attestation(cluster, cluster.enrolled)
    assert cluster.reconciler.run_once()
    node = cluster.node()
    assert node.attestation_status == "Attested", node.message
    assert node.message == "attested (OnDemand); kubelet credentials renewed"
    assert len(cluster.renewed) == renewed + 1
    stored = read_node(cluster.client, node.name)
    assert not taints_besides_the_node_lifecycle(stored) and not stored["spec"].get("unschedulable")
    labels = stored["metadata"]["labels"]
    assert labels[LABEL_TRUSTED_LAUNCH] == labels[LABEL_SECURE_BOOT] == "true"
