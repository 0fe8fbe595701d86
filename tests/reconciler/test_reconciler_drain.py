"""A rolling reimage cordons and drains the outdated node through the Eviction API and respects a
PodDisruptionBudget (control.node_drain): a 1-node pool (neither Secure Boot nor vTPM: no attestation, the
shortest join) runs a Deployment's pod guarded by a PodDisruptionBudget minAvailable=1; Secure Boot is
turned on with maxSurge 1 and undrainableNodeBehavior Cordon. The surge node joins first; the old node is
cordoned, its eviction refused until the drain timeout (Reconciler(drain_timeout=) in seconds: the API takes
whole minutes); the old node is quarantined (kept cordoned, labelled kubernetes.azure.com/upgrade-status=
Quarantined, its VM running and its pod there), the surge node stays in its place, and the operation fails
naming the node, the pod and the budget. With the budget relaxed (maxUnavailable 1) the retried update
(drainTimeoutInMinutes RETRY_DRAIN_MINUTES, nodeSoakDurationInMinutes 1: Reconciler(node_soak_duration=)
shortens it) evicts the pod, which the Deployment reschedules on the surge node, soaks the old node (the
operation's note counts the soak down), deletes the old Node, then its VM, and succeeds. Two VMs in all."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.resources.core_v1 import Pod
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType
from monitoring_helpers import node_name
from reconciler_helpers import SUB, cluster_admin, nodes, operation, processes_under, run_until_finished
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.labels import LABEL_UPGRADE_STATUS
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
from trustedlaunch.store.models import AgentPool, Operation

pytestmark = pytest.mark.slow
CLUSTER = "draincluster"
POOL = "drainpool"
PATH = ResourcePath(SUB, "rg", CLUSTER)
CREATE_SECONDS = 1200.0  # control plane, then a node booted and joined under TCG on 2 busy cores
DRAIN_TIMEOUT = 20.0  # seconds the refused eviction is retried before the operation fails
# upgradeSettings.drainTimeoutInMinutes of the retry: the evicted pod's end on its emulated node. In a guest
# starved by a loaded host, containerd's handling of the container's TaskExit (deleting the task through the
# shim and runc) can exceed its 10 s deadline; containerd then retries the event with a backoff doubling from
# 1 s up to 5 minutes, and the pod stays Terminating until one retry succeeds: more than 5 minutes, then.
RETRY_DRAIN_MINUTES = 8
SOAK_SECONDS = 15.0  # Reconciler(node_soak_duration=): the retry's soak (the pool's 1 minute, shortened)
APP = "sleeper"
BUDGET = "sleeper-budget"


@pytest.fixture(scope="module")
def drained(
    reconciler_base: Path,
) -> Iterator[tuple[sessionmaker[Session], Reconciler, Client, dict[str, float]]]:
    """A store with a 1-node pool of neither Secure Boot nor vTPM (maxSurge 1) created by a reconciler with
    hosted control planes and a short drain timeout, and its cluster's admin client; deleted at the end."""
    state_dir = reconciler_base / "drain"
    engine, sessions = open_store(
        f"sqlite:///{reconciler_base / 'drain.db'}", reconciler_base / "drain-token"
    )
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec(POOL, count=1, vm_size="Standard_D4s_v3", max_surge="1")
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[spec]))
    reconciler = Reconciler(
        sessions,
        state_dir,
        cluster_planes=ClusterPlanes(state_dir),
        attestation_interval=0,
        boot_timeout=300,
        drain_timeout=DRAIN_TIMEOUT,
    )
    figures: dict[str, float] = {}
    client: Client | None = None
    try:
        started = time.monotonic()
        created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
        figures["create operation s"] = time.monotonic() - started
        assert created.status == "Succeeded", created.error
        client, _ = cluster_admin(sessions)
        yield sessions, reconciler, client, figures
    finally:
        if client is not None:
            client.close()
        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
        engine.dispose()


def the_pool(sessions: sessionmaker[Session]) -> AgentPool:
    with sessions() as session:
        return session.scalars(select(AgentPool).where(AgentPool.name == POOL)).one()


def app_pods(client: Client) -> list[dict[str, Any]]:
    return [pod.to_dict() for pod in client.list(Pod, namespace="default", labels={"app": APP})]


def wait_for_running_pod(client: Client, timeout: float) -> dict[str, Any]:
    """The app's one Running pod not being deleted."""
    deadline = time.monotonic() + timeout
    while True:
        running = [
            pod
            for pod in app_pods(client)
            if pod.get("status", {}).get("phase") == "Running"
            and not pod["metadata"].get("deletionTimestamp")
        ]
        if running:
            return running[0]
        assert time.monotonic() < deadline, f"no running {APP} pod: {app_pods(client)}"
        time.sleep(1.0)


def deploy_guarded_app(client: Client) -> None:
    """A Deployment of 1 busybox `sleep` pod and a PodDisruptionBudget minAvailable=1 selecting it."""
    labels = {"app": APP}
    container = {
        "name": APP,
        "image": f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["sleep", "100000"],
    }
    pod_spec = {
        "containers": [container],
        "terminationGracePeriodSeconds": 1,
        "automountServiceAccountToken": False,
    }
    client.create(
        Deployment.from_dict(
            {
                "metadata": {"name": APP, "namespace": "default"},
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                },
            }
        )
    )
    client.create(
        PodDisruptionBudget.from_dict(
            {
                "metadata": {"name": BUDGET, "namespace": "default"},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
            }
        )
    )


def node_objects(client: Client) -> list[str]:
    return sorted(
        item.metadata.name for item in client.list(KubernetesNode) if item.metadata and item.metadata.name
    )


def running_vms(sessions: sessionmaker[Session], reconciler: Reconciler) -> list[str]:
    """The names of the nodes whose VM runs."""
    return sorted(node.name for node in nodes(sessions) if reconciler._vm_alive(node))


def what_holds_the_drain(client: Client, reconciler: Reconciler, node_id: int) -> str:
    """The app's pods and the end of the old node's kubelet log (a drain that did not end)."""
    pods = [
        (pod["metadata"]["name"], pod["spec"].get("nodeName"), pod.get("status")) for pod in app_pods(client)
    ]
    vm = reconciler._vms.get(node_id)
    if vm is None or not vm.running:
        return f"pods: {pods}; no VM"
    status = vm.kubelet_status()
    return f"pods: {pods}; kubelet: {status.kubelet_log[-3000:]}; containerd: {status.containerd_log[-2000:]}"


def reimage_with_secure_boot(
    sessions: sessionmaker[Session],
    undrainable_node_behavior: str | None = None,
    drain_timeout_in_minutes: int | None = None,
    node_soak_duration_in_minutes: int | None = None,
) -> Operation:
    spec = PoolSpec(
        POOL,
        enable_secure_boot=True,
        undrainable_node_behavior=undrainable_node_behavior,
        drain_timeout_in_minutes=drain_timeout_in_minutes,
        node_soak_duration_in_minutes=node_soak_duration_in_minutes,
    )
    with sessions.begin() as session:
        _, update, _ = put_pool(session, PATH, spec)
    return update


class NoteWatcher(threading.Thread):
    """Collects the distinct notes of an operation while it runs (the reconciler runs in the test's
    thread)."""

    def __init__(self, sessions: sessionmaker[Session], operation_id: str) -> None:
        super().__init__(daemon=True)
        self.sessions, self.operation_id = sessions, operation_id
        self.notes: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            note = operation(self.sessions, self.operation_id).note
            if not self.notes or self.notes[-1] != note:
                self.notes.append(note)


def test_a_budget_refusing_eviction_fails_the_reimage_then_a_relaxed_one_lets_it_drain(
    drained: tuple[sessionmaker[Session], Reconciler, Client, dict[str, float]],
) -> None:
    sessions, reconciler, client, figures = drained
    pool = the_pool(sessions)
    old, surge = node_name(pool, 0), node_name(pool, 1)
    deploy_guarded_app(client)
    pod = wait_for_running_pod(client, 300)
    pod_name = pod["metadata"]["name"]
    assert pod["spec"]["nodeName"] == old

    started = time.monotonic()
    update = reimage_with_secure_boot(sessions, undrainable_node_behavior="Cordon")
    failed = run_until_finished(reconciler, sessions, update.id, CREATE_SECONDS)
    figures["surge node + refused drain s"] = time.monotonic() - started
    print(f"failed operation: {failed.error}; note: {failed.note}")
    assert failed.status == "Failed"
    assert failed.error is not None and failed.error["code"] == "UpgradeFailed"
    message = str(failed.error["message"])
    assert message.startswith(f"Drain node {old} failed when evicting pod default/{pod_name}")
    assert f"PodDisruptionBudget: default/{BUDGET}" in message and "429" in message
    assert f"labelled {LABEL_UPGRADE_STATUS}=Quarantined" in message
    assert failed.note == f"nodes not upgraded: {old}"
    # the surge node joined before the old node was drained; nothing was deleted: Nodes match the VMs
    assert node_objects(client) == running_vms(sessions, reconciler) == [old, surge]
    rows = {node.name: node for node in nodes(sessions)}
    assert rows[old].state == "Ready" and rows[old].message.startswith(f"quarantined: Drain node {old}")
    assert rows[old].quarantined_by_operation == update.id
    assert (rows[surge].state, rows[surge].enable_secure_boot) == ("Ready", True)
    old_node = client.get(KubernetesNode, old).to_dict()
    assert old_node["spec"].get("unschedulable") is True
    assert old_node["metadata"]["labels"][LABEL_UPGRADE_STATUS] == "Quarantined"
    still = wait_for_running_pod(client, 10)
    assert (still["metadata"]["name"], still["spec"]["nodeName"]) == (pod_name, old)

    client.patch(
        PodDisruptionBudget,
        BUDGET,
        {"spec": {"minAvailable": None, "maxUnavailable": 1}},
        namespace="default",
        patch_type=PatchType.MERGE,
    )
    old_run_dir = rows[old].run_dir
    assert old_run_dir is not None
    # the retry also gives the evicted pod time to end on its (emulated) node: the pool's own timeout
    reconciler.drain_timeout = None
    reconciler.node_soak_duration = SOAK_SECONDS
    started = time.monotonic()
    retry = reimage_with_secure_boot(
        sessions, drain_timeout_in_minutes=RETRY_DRAIN_MINUTES, node_soak_duration_in_minutes=1
    )
    watcher = NoteWatcher(sessions, retry.id)
    watcher.start()
    try:
        retried = run_until_finished(reconciler, sessions, retry.id, CREATE_SECONDS)
    finally:
        watcher.done.set()
        watcher.join()
    figures["relaxed drain + soak + delete s"] = time.monotonic() - started
    assert retried.status == "Succeeded", (
        retried.error,
        what_holds_the_drain(client, reconciler, rows[old].id),
    )
    print(f"retry notes: {watcher.notes}")
    assert f"agent pool {POOL}: soaking node {old} (1 min left)" in watcher.notes
    assert figures["relaxed drain + soak + delete s"] >= SOAK_SECONDS
    moved = wait_for_running_pod(client, 300)
    assert moved["metadata"]["name"] != pod_name and moved["spec"]["nodeName"] == surge
    assert node_objects(client) == running_vms(sessions, reconciler) == [surge]
    assert [node.name for node in nodes(sessions)] == [surge]
    assert not processes_under(Path(old_run_dir))
    print(f"drain figures: {figures}")
