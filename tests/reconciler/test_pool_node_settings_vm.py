"""A pool's nodeLabels, nodeTaints and maxPods on a real node (one Secure Boot + vTPM node VM that joins
its cluster's hosted control plane): its Node carries the pool's label and taint beside the labels AKS
sets, its kubelet's maxPods is the Node's capacity.pods, a pod that tolerates the taint and selects the
label runs there; the pool's update of its labels reaches the Node without a reimage (same VM)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube.models.core_v1 import Container, PodSpec, Toleration
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.resources.core_v1 import Pod
from reconciler_helpers import SUB, cluster_admin, run_until_finished
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import (
    ClusterSpec,
    PoolSpec,
    ResourcePath,
    delete_cluster,
    put_cluster,
    put_pool,
)
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version
from trustedlaunch.node.image import BUSYBOX
from trustedlaunch.store.models import Node

pytestmark = pytest.mark.slow
CLUSTER = "propscluster"
CREATE_SECONDS = 1800.0  # control plane, then a node booted, attested and joined under TCG on 2 busy cores
TAINT = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}


@pytest.fixture(scope="module")
def cluster(reconciler_base: Path) -> Iterator[tuple[sessionmaker[Session], Reconciler]]:
    """One cluster whose Secure Boot + vTPM pool has nodeLabels dept=HR, nodeTaints sku=gpu:NoSchedule and
    maxPods 30, created by a reconciler with hosted control planes; deleted at the end."""
    state_dir = reconciler_base / "nodeprops"
    engine, sessions = open_store(f"sqlite:///{reconciler_base / 'props.db'}", reconciler_base / "props-tok")
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec(
            "nodepool1",
            count=1,
            vm_size="Standard_D4s_v3",
            enable_secure_boot=True,
            enable_vtpm=True,
            node_labels={"dept": "HR"},
            node_taints=["sku=gpu:NoSchedule"],
            max_pods=30,
        )
        _, create, _ = put_cluster(
            session, ResourcePath(SUB, "rg", CLUSTER), ClusterSpec("eastus", agent_pools=[spec])
        )
    reconciler = Reconciler(
        sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), attestation_interval=0, boot_timeout=600
    )
    try:
        started = time.monotonic()
        created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
        print(f"create operation: {time.monotonic() - started:.0f} s")
        assert created.status == "Succeeded", created.error
        yield sessions, reconciler
    finally:
        with sessions.begin() as session:
            deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
        engine.dispose()


def pod_phase(client: object, name: str) -> str:
    status = client.get(Pod, name, namespace="default").status  # type: ignore[attr-defined]
    return (status.phase if status is not None else None) or "Pending"


def test_the_node_has_the_pools_label_taint_and_max_pods_and_runs_a_tolerating_pod(
    cluster: tuple[sessionmaker[Session], Reconciler],
) -> None:
    sessions, reconciler = cluster
    with sessions() as session:
        node = session.scalars(select(Node)).one()
        name, node_id, qemu_pid = node.name, node.id, node.handle
        assert (node.state, node.attestation_status) == ("Ready", "Attested")
    client, _ = cluster_admin(sessions)
    try:
        stored = client.get(KubernetesNode, name).to_dict()
        labels = stored["metadata"]["labels"]
        assert labels["dept"] == "HR"
        assert labels["kubernetes.azure.com/secure-boot"] == "true"  # the verdict's, beside the pool's
        assert TAINT in [{k: t.get(k) for k in ("key", "value", "effect")} for t in stored["spec"]["taints"]]
        assert stored["status"]["capacity"]["pods"] == "30"  # the kubelet's maxPods

        pod = Pod(
            metadata=ObjectMeta(name="tolerating", namespace="default"),
            spec=PodSpec(
                nodeSelector={"dept": "HR"},
                tolerations=[Toleration(key="sku", operator="Equal", value="gpu", effect="NoSchedule")],
                restartPolicy="Never",
                automountServiceAccountToken=False,
                terminationGracePeriodSeconds=0,
                containers=[
                    Container(
                        name="tolerating",
                        image=f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}",
                        imagePullPolicy="IfNotPresent",
                        command=["sh", "-c", "echo tolerated"],
                    )
                ],
            ),
        )
        client.create(pod)
        deadline = time.monotonic() + 300
        while (phase := pod_phase(client, "tolerating")) not in ("Succeeded", "Failed"):
            assert time.monotonic() < deadline, f"pod tolerating still {phase}"
            time.sleep(1.0)
        assert phase == "Succeeded"
        assert client.get(Pod, "tolerating", namespace="default").to_dict()["spec"]["nodeName"] == name

        # the pool's update: labels replaced and taints cleared on the Node, the same VM (no reimage)
        with sessions.begin() as session:
            spec = PoolSpec("nodepool1", node_labels={"dept": "IT"}, node_taints=[])
            _, update, _ = put_pool(session, ResourcePath(SUB, "rg", CLUSTER), spec)
        updated = run_until_finished(reconciler, sessions, update.id, 300.0)
        assert updated.status == "Succeeded", updated.error
        stored = client.get(KubernetesNode, name).to_dict()
        assert stored["metadata"]["labels"]["dept"] == "IT"
        assert "sku" not in [t["key"] for t in stored["spec"].get("taints") or []]
        with sessions() as session:
            node = session.scalars(select(Node)).one()
            assert (node.id, node.handle, node.state) == (node_id, qemu_pid, "Ready")
    finally:
        client.close()
