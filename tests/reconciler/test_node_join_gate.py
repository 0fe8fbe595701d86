"""The reconciler joins attested nodes to their cluster's hosted control plane (control.node_join): a real
Secure Boot + vTPM node VM booting the rootfs image gets its kubelet credentials over its agent channel
right after it passed attestation, its kubelet registers with the pending taint, the control plane labels
the Node as AKS does and lifts the taints; a pod selecting kubernetes.azure.com/secure-boot runs there and
`kubectl logs` shows its output; deleting the cluster leaves no VM, no Node and no control plane. A node
whose attestation fails never gets a credential; a node without vTPM has its credentials renewed while
Ready."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cached_kubectl import kubectl
from cryptography import x509
from lightkube import Client
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.resources.core_v1 import Pod
from monitoring_helpers import create_trusted_cluster, node_name
from reconciler_helpers import SUB, cluster_admin, nodes, processes_under, run_until_finished
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.policy import Policy
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import PoolSpec, ResourcePath, delete_cluster, put_pool
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version
from trustedlaunch.node.image import BUSYBOX, NodeImage
from trustedlaunch.node.kubelet import ATTESTATION_PENDING_TAINT, CLOUD_UNINITIALIZED_TAINT_KEY
from trustedlaunch.store.models import AgentPool, AttestationRecord, Node

pytestmark = pytest.mark.slow
CLUSTER = "gatecluster"
CREATE_SECONDS = 1200.0  # control plane, then a node booted, attested and joined under TCG on 2 busy cores


def the_node(sessions: sessionmaker[Session]) -> Node:
    with sessions() as session:
        return session.scalars(select(Node)).one()


@pytest.fixture(scope="module")
def gate(reconciler_base: Path) -> Iterator[tuple[sessionmaker[Session], Reconciler, Path, dict[str, float]]]:
    """A store with one Secure Boot + vTPM cluster created by a reconciler with hosted control planes
    (its own state dir, where it builds the release image with the root filesystem); deleted at the end."""
    state_dir = reconciler_base / "gate"
    engine, sessions = open_store(f"sqlite:///{reconciler_base / 'gate.db'}", reconciler_base / "gate-token")
    _, create = create_trusted_cluster(sessions, CLUSTER)
    reconciler = Reconciler(
        sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), attestation_interval=0, boot_timeout=300
    )
    figures: dict[str, float] = {}
    try:
        started = time.monotonic()
        created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
        figures["create operation s"] = time.monotonic() - started
        assert created.status == "Succeeded", created.error
        yield sessions, reconciler, state_dir, figures
    finally:
        with sessions.begin() as session:
            deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
        engine.dispose()


def test_an_attested_node_joins_ready_labelled_and_untainted(
    gate: tuple[sessionmaker[Session], Reconciler, Path, dict[str, float]],
) -> None:
    sessions, _, _, figures = gate
    node = the_node(sessions)
    assert (node.state, node.attestation_status) == ("Ready", "Attested")
    assert node.kubelet_port is not None
    with sessions() as session:
        [attestation] = session.scalars(select(AttestationRecord)).all()
    # "ready after N s; joined its cluster: kubelet started in K s, Node Ready and labelled R s later"
    print(f"node message: {node.message}; attestation took {attestation.duration_ms / 1000:.1f} s")
    client, _ = cluster_admin(sessions)
    try:
        stored = client.get(KubernetesNode, node.name).to_dict()
    finally:
        client.close()
    labels = stored["metadata"]["labels"]
    with sessions() as session:
        pool = session.scalars(select(AgentPool)).one()
        expected = {
            "kubernetes.azure.com/agentpool": pool.name,
            "kubernetes.azure.com/mode": pool.mode.lower(),
            "kubernetes.azure.com/node-image-version": pool.node_image_version,
            "kubernetes.azure.com/os-sku": pool.os_sku,
            "node.kubernetes.io/instance-type": pool.vm_size,
            "kubernetes.io/os": "linux",
            "kubernetes.azure.com/attestation-status": "Attested",
            "kubernetes.azure.com/trusted-launch": "true",
            "kubernetes.azure.com/secure-boot": "true",
        }
    assert {key: labels.get(key) for key in expected} == expected
    taints = [taint["key"] for taint in stored["spec"].get("taints") or []]
    assert ATTESTATION_PENDING_TAINT["key"] not in taints and CLOUD_UNINITIALIZED_TAINT_KEY not in taints
    ready = [c for c in stored["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True"
    assert stored["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert stored["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == node.kubelet_port
    print(f"gate figures: {figures}")


def serving_serial(port: int) -> int:
    """The serial number of the certificate the kubelet serves on 127.0.0.1:<port>."""
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=20)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def pod_phase(client: Client, name: str) -> str:
    status = client.get(Pod, name, namespace="default").status
    return (status.phase if status is not None else None) or "Pending"


def test_a_secure_boot_pod_runs_on_the_node_and_kubectl_logs_shows_its_output(
    gate: tuple[sessionmaker[Session], Reconciler, Path, dict[str, float]],
    kubernetes_release: KubernetesRelease,
) -> None:
    sessions, _, _, figures = gate
    client, kubeconfig = cluster_admin(sessions)
    pod = Pod(
        metadata=ObjectMeta(name="secure", namespace="default"),
        spec=PodSpec(
            nodeSelector={"kubernetes.azure.com/secure-boot": "true"},
            restartPolicy="Never",
            automountServiceAccountToken=False,
            terminationGracePeriodSeconds=0,
            containers=[
                Container(
                    name="secure",
                    image=f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}",
                    imagePullPolicy="IfNotPresent",
                    command=["sh", "-c", "echo hello from a secure boot node"],
                )
            ],
        ),
    )
    try:
        created = time.monotonic()
        client.create(pod)
        deadline = time.monotonic() + 300
        while (phase := pod_phase(client, "secure")) not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, f"pod secure still {phase}"
            time.sleep(1.0)
        figures["pod create -> succeeded s"] = time.monotonic() - created
        assert phase == "Succeeded"
        assert (
            client.get(Pod, "secure", namespace="default").to_dict()["spec"]["nodeName"]
            == the_node(sessions).name
        )
    finally:
        client.close()
    logs = kubectl(kubernetes_release, kubeconfig, "logs", "-n", "default", "secure")
    assert logs.stdout == "hello from a secure boot node\n"


def test_a_node_without_vtpm_joins_after_boot_without_the_trusted_launch_label(
    gate: tuple[sessionmaker[Session], Reconciler, Path, dict[str, float]],
) -> None:
    """A Secure Boot only pool: its node is not attested (no vTPM), joins right after boot with a
    credential bound to no TPM, and is labelled secure-boot but not trusted-launch."""
    sessions, reconciler, _, figures = gate
    spec = PoolSpec("nosec", count=1, vm_size="Standard_D2s_v3", enable_secure_boot=True, enable_vtpm=False)
    with sessions.begin() as session:
        pool, create, _ = put_pool(session, ResourcePath(SUB, "rg", CLUSTER), spec)
        name = node_name(pool)
    started = time.monotonic()
    created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
    figures["secure boot only pool create s"] = time.monotonic() - started
    assert created.status == "Succeeded", created.error
    with sessions() as session:
        node = session.scalars(select(Node).where(Node.name == name)).one()
        assert (node.state, node.attestation_status) == ("Ready", "NotApplicable")
        print(f"secure boot only node message: {node.message}")
    client, _ = cluster_admin(sessions)
    try:
        stored = client.get(KubernetesNode, name).to_dict()
    finally:
        client.close()
    labels = stored["metadata"]["labels"]
    assert labels["kubernetes.azure.com/secure-boot"] == "true"
    assert "kubernetes.azure.com/trusted-launch" not in labels
    assert labels["kubernetes.azure.com/attestation-status"] == "NotApplicable"
    assert labels["kubernetes.azure.com/agentpool"] == "nosec"
    assert labels["node.kubernetes.io/instance-type"] == "Standard_D2s_v3"
    assert not [t for t in stored["spec"].get("taints") or [] if t["key"] == ATTESTATION_PENDING_TAINT["key"]]

    # nothing to attest: its kubelet certificates are renewed every interval while it is Ready
    with sessions() as session:
        port = session.scalars(select(Node.kubelet_port).where(Node.name == name)).one()
    assert port is not None
    before = serving_serial(port)
    reconciler.attestation_interval = 1
    try:
        time.sleep(1.0)
        reconciler.run_once()
    finally:
        reconciler.attestation_interval = 0
    started = time.monotonic()
    while serving_serial(port) == before:
        assert time.monotonic() - started < 150, "kubelet did not serve its renewed certificate"
        time.sleep(2.0)
    figures["secure boot only node: renewed serving certificate served after s"] = time.monotonic() - started


def test_a_node_failing_attestation_gets_no_credential(
    gate: tuple[sessionmaker[Session], Reconciler, Path, dict[str, float]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scaled to 2 nodes with a verifier policy the new node's boot does not match (Secure Boot expected
    off): the node fails attestation; its agent, asked as the node is failed (VM still running), has no
    kubelet; its Node was never registered; the operation fails naming the node."""
    sessions, reconciler, _, _ = gate
    policy_of = reconciler._policy
    fail = reconciler._fail
    kubelet_states: dict[str, str] = {}

    def mismatched(session: Session, node: Node, image: NodeImage) -> Policy:
        return replace(policy_of(session, node, image), secure_boot=False)

    def failing(session: Session, node: Node, code: str, message: str, **kwargs: Any) -> Any:
        vm = reconciler._vms.get(node.id)
        if vm is not None and vm.running:
            kubelet_states[node.name] = vm.kubelet_status().kubelet
        return fail(session, node, code, message, **kwargs)

    monkeypatch.setattr(reconciler, "_policy", mismatched)
    monkeypatch.setattr(reconciler, "_fail", failing)
    with sessions.begin() as session:
        pool, scale, _ = put_pool(session, ResourcePath(SUB, "rg", CLUSTER), PoolSpec("nodepool1", count=2))
        first = node_name(pool, 0)
        second = node_name(pool, 1)
    scaled = run_until_finished(reconciler, sessions, scale.id, CREATE_SECONDS)
    assert scaled.status == "Failed"
    assert scaled.error is not None and second in str(scaled.error)
    assert "NodeAttestationFailed" in str(scaled.error)
    assert kubelet_states == {second: "absent"}
    client, _ = cluster_admin(sessions)
    try:
        names = [item.metadata.name for item in client.list(KubernetesNode) if item.metadata]
    finally:
        client.close()
    assert second not in names and first in names


def test_deleting_the_cluster_deletes_the_nodes_first_and_leaves_no_vm_no_plane(
    gate: tuple[sessionmaker[Session], Reconciler, Path, dict[str, float]],
) -> None:
    sessions, reconciler, state_dir, _ = gate
    client, _ = cluster_admin(sessions)
    with sessions() as session:
        names = [node.name for node in session.scalars(select(Node))]
    with sessions.begin() as session:
        deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
    assert deletion is not None
    try:
        for _ in names:  # one node deleted per pass: its Node object first, then its VM
            reconciler.run_once()
        assert nodes(sessions) == []
        assert [item.metadata.name for item in client.list(KubernetesNode) if item.metadata] == []
    finally:
        client.close()
    done = run_until_finished(reconciler, sessions, deletion.id, 300.0)
    assert done.status == "Succeeded", done.error
    assert processes_under(state_dir) == []
    assert not any((state_dir / "clusters").iterdir())
