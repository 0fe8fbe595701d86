"""What an upgrade does with a node it could not drain (Reconciler._undrainable, the pool's
upgradeSettings.undrainableNodeBehavior), against the session's real kube-apiserver with a Node registered as
its kubelet would and a pod no kubelet ends (its eviction is accepted, it stays terminating: the drain fails
at its timeout). Schedule (AKS's default) makes the node schedulable again and fails the operation
(UpgradeFailed); Cordon keeps it cordoned, labels it kubernetes.azure.com/upgrade-status=Quarantined and
records the operation that quarantined it (the operation goes on beside its surge node), or, reimaged in
place (no surge node can take its place), cancels the operation as AKS does."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from kube_apiserver import admin_client, read_node, register_node, running_plane_record
from lightkube import Client
from lightkube.resources.core_v1 import Namespace, Pod, ServiceAccount
from reconciler_helpers import SUB, wait_until
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes import KubernetesNodeAdapter, upgrade_release_patch
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.labels import LABEL_UPGRADE_STATUS, QUARANTINE_ANNOTATION
from trustedlaunch.control.node_drain import NodeDrainer, NodeDrainFailedError
from trustedlaunch.control.node_plan import NodePhase
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.reconciler import NodeProvisioningError, Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster, put_pool
from trustedlaunch.store.models import AgentPool, Node, Operation, utc_now

pytestmark = pytest.mark.slow


@pytest.fixture
def client(kube_apiserver: HostedControlPlane) -> Iterator[Client]:
    with admin_client(kube_apiserver) as admin:
        yield admin


def store(tmp_path: Path, behaviour: str | None) -> tuple[sessionmaker[Session], Reconciler, str]:
    """A store with a 1-node pool of `behaviour` under an Update-like operation; the reconciler and the
    operation's id."""
    _, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec("pool", count=1, vm_size="Standard_D4s_v3", undrainable_node_behavior=behaviour)
        _, operation, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "k"), ClusterSpec("eastus", agent_pools=[spec])
        )
        operation_id = operation.id
    return sessions, Reconciler(sessions, tmp_path / "state"), operation_id


def failed_drain(client: Client, name: str) -> tuple[NodeDrainer, NodeDrainFailedError]:
    """The Node `name` (schedulable) with a pod no kubelet ends: its drain fails at its 1 s timeout."""
    client.create(Namespace.from_dict({"metadata": {"name": name}}))
    wait_until(lambda: list(client.list(ServiceAccount, namespace=name)), 60.0, "default service account")
    register_node(client, name)
    pod = {
        "metadata": {"name": "stuck", "namespace": name},
        "spec": {"nodeName": name, "containers": [{"name": "main", "image": "busybox:local"}]},
    }
    client.create(Pod.from_dict(pod))
    drainer = NodeDrainer(client, 1.0, lambda note: None, poll_seconds=0.5)
    with pytest.raises(NodeDrainFailedError) as failed:
        drainer.drain(name)
    return drainer, failed.value


def the_node(session: Session, name: str) -> tuple[AgentPool, Node]:
    pool = session.scalars(select(AgentPool)).one()
    node = Node(pool=pool, ordinal=0, name=name, node_image_version=pool.node_image_version)
    node.state, node.labels = NodePhase.READY, {}
    session.add(node)
    session.commit()
    return pool, node


def test_schedule_makes_the_node_schedulable_again_and_fails(client: Client, tmp_path: Path) -> None:
    name = "undrainable-schedule"
    drainer, failure = failed_drain(client, name)
    assert read_node(client, name)["spec"]["unschedulable"] is True
    sessions, reconciler, operation_id = store(tmp_path, None)  # unset: Schedule
    with sessions() as session:
        pool, node = the_node(session, name)
        operation = session.get_one(Operation, operation_id)
        with pytest.raises(NodeProvisioningError) as failed:
            reconciler._undrainable(session, pool, node, drainer, failure, operation, in_place=False)
        assert (failed.value.status, failed.value.error.code) == ("Failed", "UpgradeFailed")
        assert str(failure) in failed.value.error.message
        assert "The node is schedulable again and was not upgraded" in failed.value.error.message
        assert node.message.startswith(f"not upgraded: Drain node {name} failed within the drain timeout")
        assert node.quarantined_by_operation is None
    assert not read_node(client, name)["spec"].get("unschedulable")


def test_cordon_quarantines_the_node_and_goes_on(client: Client, tmp_path: Path) -> None:
    name = "undrainable-cordon"
    drainer, failure = failed_drain(client, name)
    sessions, reconciler, operation_id = store(tmp_path, "Cordon")
    with sessions() as session:
        pool, node = the_node(session, name)
        operation = session.get_one(Operation, operation_id)
        reconciler._undrainable(session, pool, node, drainer, failure, operation, in_place=False)
        assert node.quarantined_by_operation == operation_id
        assert node.message.startswith(f"quarantined: Drain node {name}")
    stored = read_node(client, name)
    assert stored["spec"]["unschedulable"] is True
    assert stored["metadata"]["labels"][LABEL_UPGRADE_STATUS] == "Quarantined"


def test_cordon_of_a_node_reimaged_in_place_cancels_the_operation(client: Client, tmp_path: Path) -> None:
    name = "undrainable-in-place"
    drainer, failure = failed_drain(client, name)
    sessions, reconciler, operation_id = store(tmp_path, "Cordon")
    with sessions() as session:
        pool, node = the_node(session, name)
        operation = session.get_one(Operation, operation_id)
        with pytest.raises(NodeProvisioningError) as failed:
            reconciler._undrainable(session, pool, node, drainer, failure, operation, in_place=True)
        assert (failed.value.status, failed.value.error.code) == ("Canceled", "UpgradeFailed")
        assert node.quarantined_by_operation == operation_id
    assert read_node(client, name)["metadata"]["labels"][LABEL_UPGRADE_STATUS] == "Quarantined"


def test_the_release_of_an_upgrade_hold_never_lifts_an_attestation_cordon() -> None:
    """kubernetes.upgrade_release_patch: the upgrade-status label goes; the cordon goes unless the
    attestation verdict made one (its annotation); nothing to do, no patch."""
    held = {
        "metadata": {"labels": {LABEL_UPGRADE_STATUS: "Quarantined", "team": "a"}, "resourceVersion": "7"},
        "spec": {"unschedulable": True},
    }
    assert upgrade_release_patch(held) == {
        "metadata": {"labels": {LABEL_UPGRADE_STATUS: None}, "resourceVersion": "7"},
        "spec": {"unschedulable": None},
    }
    attested_out = {**held, "metadata": {**held["metadata"], "annotations": {QUARANTINE_ANNOTATION: "PCR 7"}}}
    assert upgrade_release_patch(attested_out) == {
        "metadata": {"labels": {LABEL_UPGRADE_STATUS: None}, "resourceVersion": "7"}
    }
    assert upgrade_release_patch({"metadata": {"labels": {}}, "spec": {}}) is None


def test_schedule_keeps_the_cordon_of_an_attestation_quarantine_made_during_the_drain(
    client: Client, kube_apiserver: HostedControlPlane, tmp_path: Path
) -> None:
    """The drain cordoned the node; meanwhile its attestation failed and quarantined it: Schedule's uncordon
    must not make it schedulable again (the verdict's cordon wins), and a passing attestation later does
    not lift an upgrade's hold either."""
    name = "undrainable-attested-out"
    drainer, failure = failed_drain(client, name)
    with KubernetesNodeAdapter(kube_apiserver.admin_kubeconfig) as adapter:
        adapter.quarantine(name, "PCR 7 differs from the policy")
        sessions, reconciler, operation_id = store(tmp_path, None)  # Schedule
        with sessions() as session:
            pool, node = the_node(session, name)
            operation = session.get_one(Operation, operation_id)
            with pytest.raises(NodeProvisioningError):
                reconciler._undrainable(session, pool, node, drainer, failure, operation, in_place=False)
        stored = read_node(client, name)
        assert stored["spec"]["unschedulable"] is True
        assert LABEL_UPGRADE_STATUS not in stored["metadata"]["labels"]
        drainer.quarantine(
            name
        )  # now an upgrade holds it (Cordon) too: a passing attestation keeps it cordoned
        adapter.restore(name, {})
        stored = read_node(client, name)
        assert stored["spec"]["unschedulable"] is True
        assert QUARANTINE_ANNOTATION not in (stored["metadata"].get("annotations") or {})


def test_a_node_held_by_an_upgrade_is_released_when_its_pool_is_reverted(
    client: Client, kube_apiserver: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """An upgrade quarantined the node (Cordon) and failed; the pool's settings are then reverted: the node is
    current again, so no drain will take it, and the next operation uncordons and unlabels its Node and
    releases its row before it succeeds."""
    name = "undrainable-reverted"
    register_node(client, name)
    NodeDrainer(client, 1.0, lambda note: None).quarantine(name)
    sessions, _, operation_id = store(tmp_path, "Cordon")
    planes = ClusterPlanes(tmp_path / "planes", release=lambda: kubernetes_release)
    reconciler = Reconciler(sessions, tmp_path / "state", cluster_planes=planes)
    try:
        with sessions() as session:
            pool, node = the_node(session, name)
            node.kubelet_port, node.quarantined_by_operation = 1, "an-earlier-upgrade"
            finish_operation(session, session.get_one(Operation, operation_id), "Failed")
            pool.cluster.control_plane = running_plane_record(kube_apiserver)
            _, revert, _ = put_pool(session, ResourcePath(SUB, "rg", "k"), PoolSpec("pool", count=1))
            session.commit()
            revert_id = revert.id
        assert reconciler._advance(revert_id) is True  # the release
        stored = read_node(client, name)
        assert not stored["spec"].get("unschedulable")
        assert LABEL_UPGRADE_STATUS not in stored["metadata"]["labels"]
        assert reconciler._advance(revert_id) is True  # then done
        with sessions() as session:
            assert session.get_one(Operation, revert_id).status == "Succeeded"
            node = session.scalars(select(Node).where(Node.name == name)).one()
            assert node.quarantined_by_operation is None and node.message.startswith("released")
    finally:
        reconciler.release()
        planes.close()


def test_a_node_whose_upgrade_ended_during_its_soak_is_released_when_its_pool_is_reverted(
    client: Client, kube_apiserver: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """An upgrade drained the node (cordoned) and failed while it soaked; the pool's settings are then
    reverted: the next operation uncordons its Node and clears its soak before it succeeds."""
    name = "soaked-reverted"
    register_node(client, name)
    NodeDrainer(client, 1.0, lambda note: None).cordon(name)
    sessions, _, operation_id = store(tmp_path, None)
    planes = ClusterPlanes(tmp_path / "planes", release=lambda: kubernetes_release)
    reconciler = Reconciler(sessions, tmp_path / "state", cluster_planes=planes)
    try:
        with sessions() as session:
            pool, node = the_node(session, name)
            node.kubelet_port, node.soaked_by_operation = 1, operation_id
            node.soak_until = utc_now() + timedelta(hours=1)
            finish_operation(session, session.get_one(Operation, operation_id), "Failed")  # during the soak
            pool.cluster.control_plane = running_plane_record(kube_apiserver)
            _, revert, _ = put_pool(session, ResourcePath(SUB, "rg", "k"), PoolSpec("pool", count=1))
            session.commit()
            revert_id = revert.id
        assert reconciler._advance(revert_id) is True  # the release
        assert not read_node(client, name)["spec"].get("unschedulable")
        assert reconciler._advance(revert_id) is True  # then done
        with sessions() as session:
            assert session.get_one(Operation, revert_id).status == "Succeeded"
            node = session.scalars(select(Node).where(Node.name == name)).one()
            assert (node.soaked_by_operation, node.soak_until) == (None, None)
            assert node.message.startswith("released")
    finally:
        reconciler.release()
        planes.close()


def test_a_held_joined_node_whose_plane_cannot_be_reached_stays_held(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """The release of a joined node's hold needs its cluster's apiserver: without one (no control plane
    recorded), the operation fails and the row keeps the hold, for a later operation to release."""
    sessions, _, operation_id = store(tmp_path, "Cordon")
    planes = ClusterPlanes(tmp_path / "planes", release=lambda: kubernetes_release)
    reconciler = Reconciler(sessions, tmp_path / "state", cluster_planes=planes)
    try:
        with sessions() as session:
            _, node = the_node(session, "held-unreachable")
            node.kubelet_port, node.quarantined_by_operation = 1, "an-earlier-upgrade"
            finish_operation(session, session.get_one(Operation, operation_id), "Failed")
            _, revert, _ = put_pool(session, ResourcePath(SUB, "rg", "k"), PoolSpec("pool", count=1))
            session.commit()
            revert_id = revert.id
        assert reconciler._advance(revert_id) is True
        with sessions() as session:
            revert = session.get_one(Operation, revert_id)
            assert revert.status == "Failed" and revert.error is not None
            assert revert.error["code"] == "NodeReleaseFailed"
            assert "control plane cannot be reached" in str(revert.error["message"])
            node = session.scalars(select(Node).where(Node.name == "held-unreachable")).one()
            assert node.quarantined_by_operation == "an-earlier-upgrade"
    finally:
        reconciler.release()
        planes.close()
