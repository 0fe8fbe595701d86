"""The drain (control.node_drain.NodeDrainer) against a real kube-apiserver, kube-controller-manager (its
disruption and DaemonSet controllers) and kube-scheduler (the session's hosted control plane), with Nodes
registered as a kubelet would and the kubelet's part played by the test (pod status, the end of an evicted
pod): the Node is cordoned, an eviction its PodDisruptionBudget refuses fails the drain at the timeout naming
the pod and the budget (the pod stays), a DaemonSet's pod is left on the node, and an evicted pod is waited
for until it is gone. What an upgrade does with the node it could not drain (undrainableNodeBehavior): Cordon
quarantines it (cordoned, labelled kubernetes.azure.com/upgrade-status=Quarantined), Schedule uncordons it.
A drain ignoring PodDisruptionBudgets (a pool Delete's ignore-pod-disruption-budget=true) deletes the pod
its budget would have kept."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kube_apiserver import admin_client, read_node, register_node
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import DaemonSet
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.labels import LABEL_UPGRADE_STATUS
from trustedlaunch.control.node_drain import NodeDrainer, NodeDrainFailedError

pytestmark = pytest.mark.slow
IMAGE = "busybox:local"  # never pulled: no kubelet runs these pods


@pytest.fixture
def client(kube_apiserver: HostedControlPlane) -> Iterator[Client]:
    with admin_client(kube_apiserver) as admin:
        yield admin


def wait_for(what: str, found: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := found()):
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.5)
    return result


def namespace_and_node(client: Client, name: str) -> None:
    """A namespace and a Node of the test's own `name`, the Node with room for pods (as its kubelet says)."""
    client.create(Namespace.from_dict({"metadata": {"name": name}}))
    wait_for("default service account", lambda: list(client.list(ServiceAccount, namespace=name)))
    register_node(client, name, labels={"drain-test": name})
    room = {"pods": "10", "cpu": "2", "memory": "2Gi"}
    client.patch(
        KubernetesNode.Status,
        name,
        {"status": {"capacity": room, "allocatable": room}},
        patch_type=PatchType.MERGE,
    )


def bound_pod(client: Client, namespace: str, name: str, labels: dict[str, str]) -> None:
    """A pod bound to the Node `namespace`, Running and Ready as its kubelet would report it."""
    client.create(
        Pod.from_dict(
            {
                "metadata": {"name": name, "namespace": namespace, "labels": labels},
                "spec": {"nodeName": namespace, "containers": [{"name": "main", "image": IMAGE}]},
            }
        )
    )
    running = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    client.patch(Pod.Status, name, {"status": running}, namespace=namespace, patch_type=PatchType.MERGE)


def pod_or_none(client: Client, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        pod: dict[str, Any] = client.get(Pod, name, namespace=namespace).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise
    return pod


def guarded_pod(client: Client, name: str) -> None:
    """A pod bound to the Node `name` and a PodDisruptionBudget (minAvailable 1) that allows no eviction."""
    bound_pod(client, name, "guarded", {"app": "guarded"})
    budget = {
        "metadata": {"name": "guarded-budget", "namespace": name},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    }
    client.create(PodDisruptionBudget.from_dict(budget))
    wait_for(  # the disruption controller counted the healthy pod: no disruption allowed
        "budget status",
        lambda: (
            (
                client.get(PodDisruptionBudget, "guarded-budget", namespace=name).to_dict().get("status")
                or {}
            ).get("currentHealthy")
            == 1
        ),
    )


def test_a_budget_refusing_the_eviction_fails_the_drain_naming_pod_and_budget(client: Client) -> None:
    name = "drain-refused"
    namespace_and_node(client, name)
    guarded_pod(client, name)
    notes: list[str] = []
    with pytest.raises(NodeDrainFailedError) as failed:
        NodeDrainer(client, 3.0, notes.append, poll_seconds=0.5).drain(name)
    message = str(failed.value)
    assert message.startswith(
        f"Drain node {name} failed when evicting pod {name}/guarded within the drain timeout (3 s)"
    )
    assert "429" in message and f"PodDisruptionBudget: {name}/guarded-budget." in message
    assert (
        notes[-1]
        == f"draining node {name}: 1 pod left; waiting for PodDisruptionBudget {name}/guarded-budget"
    )
    assert read_node(client, name)["spec"]["unschedulable"] is True
    pod = pod_or_none(client, name, "guarded")
    assert pod is not None and pod["metadata"].get("deletionTimestamp") is None
    assert failed.value.cordoned_by_drain  # the Node was schedulable before


def test_an_undrainable_node_is_quarantined_or_made_schedulable_again(client: Client) -> None:
    """undrainableNodeBehavior Cordon: the node stays cordoned and is labelled Quarantined; a later drain
    sees it was cordoned before (not by that drain); Schedule: the node is schedulable again, unlabelled."""
    name = "drain-undrainable"
    namespace_and_node(client, name)
    guarded_pod(client, name)
    drainer = NodeDrainer(client, 1.0, lambda note: None, poll_seconds=0.5)
    with pytest.raises(NodeDrainFailedError):
        drainer.drain(name)
    drainer.quarantine(name)
    node = read_node(client, name)
    assert node["spec"]["unschedulable"] is True
    assert node["metadata"]["labels"][LABEL_UPGRADE_STATUS] == "Quarantined"
    assert node["metadata"]["labels"]["drain-test"] == name  # other labels stay
    with pytest.raises(NodeDrainFailedError) as again:
        drainer.drain(name)
    assert not again.value.cordoned_by_drain
    drainer.uncordon(name)
    node = read_node(client, name)
    assert not node["spec"].get("unschedulable")
    assert LABEL_UPGRADE_STATUS not in node["metadata"]["labels"]
    assert node["metadata"]["labels"]["drain-test"] == name
    assert pod_or_none(client, name, "guarded") is not None  # nothing was deleted


def test_a_drain_ignoring_budgets_deletes_the_pod_its_budget_would_keep(client: Client) -> None:
    name = "drain-ignoring"
    namespace_and_node(client, name)
    guarded_pod(client, name)
    notes: list[str] = []

    def kubelet(note: str) -> None:
        """The kubelet's part: the deleted pod's containers end and it is gone."""
        notes.append(note)
        pod = pod_or_none(client, name, "guarded")
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            client.delete(Pod, "guarded", namespace=name, grace_period=0)

    NodeDrainer(client, 60.0, kubelet, poll_seconds=0.5, ignore_pod_disruption_budget=True).drain(name)
    assert notes[0] == f"draining node {name}: 1 pod left; waiting for {name}/guarded to terminate"
    assert pod_or_none(client, name, "guarded") is None
    assert read_node(client, name)["spec"]["unschedulable"] is True


def test_a_drain_leaves_daemon_set_pods_and_waits_for_the_evicted_ones(client: Client) -> None:
    name = "drain-evicted"
    namespace_and_node(client, name)
    labels = {"app": "agent"}
    daemon_set = {
        "metadata": {"name": "agent", "namespace": name},
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {"drain-test": name},
                    "containers": [{"name": "agent", "image": IMAGE}],
                },
            },
        },
    }
    client.create(DaemonSet.from_dict(daemon_set))
    agent = wait_for(  # the DaemonSet controller made its pod and the scheduler bound it to the Node
        "bound DaemonSet pod",
        lambda: [
            pod.metadata.name
            for pod in client.list(Pod, namespace=name, labels=labels)
            if pod.metadata and pod.spec and pod.spec.nodeName == name
        ],
    )[0]
    bound_pod(client, name, "web", {"app": "web"})
    notes: list[str] = []

    def kubelet(note: str) -> None:
        """The kubelet's part: once the evicted pod is terminating, its containers end and it is gone."""
        notes.append(note)
        pod = pod_or_none(client, name, "web")
        if pod is not None and pod["metadata"].get("deletionTimestamp"):
            client.delete(Pod, "web", namespace=name, grace_period=0)

    NodeDrainer(client, 60.0, kubelet, poll_seconds=0.5).drain(name)
    # the DaemonSet's pod is neither evicted nor counted
    assert notes == [f"draining node {name}: 1 pod left; waiting for {name}/web to terminate"]
    assert pod_or_none(client, name, "web") is None
    assert pod_or_none(client, name, agent) is not None
    assert read_node(client, name)["spec"]["unschedulable"] is True
