"""A pool's nodeLabels and nodeTaints on its joined Nodes, against a real kube-apiserver (the session's
hosted control plane; Node objects without a kubelet): an update of the pool sets the new ones and removes
those the control plane set before that the pool dropped (as AKS, without a reimage), and never touches
the labels and taints of others (kubelet's, an operator's, the attestation verdict's, the join's)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_apiserver import (
    add_joined_node_row,
    admin_client,
    read_node,
    register_node,
    running_plane_record,
    taints_besides_the_node_lifecycle,
)
from lightkube import Client
from lightkube.resources.core_v1 import Node as KubernetesNode
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes import QUARANTINE_TAINT, node_settings_patch
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.labels import LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.node_join import NodeJoiner, pool_taints
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster, put_pool
from trustedlaunch.node.kubelet import ATTESTATION_PENDING_TAINT
from trustedlaunch.store.models import AgentPool, Node, Operation

pytestmark = pytest.mark.slow
VERDICT = {LABEL_SECURE_BOOT: "true", LABEL_TRUSTED_LAUNCH: "true"}
OPERATOR_LABEL = {"team": "payments"}
OPERATOR_TAINT = {"key": "maintenance", "value": "soon", "effect": "PreferNoSchedule"}


@pytest.fixture
def client(kube_apiserver: HostedControlPlane) -> Iterator[Client]:
    with admin_client(kube_apiserver) as admin:
        yield admin


def test_the_patch_sets_the_pools_settings_and_removes_only_those_it_set_before() -> None:
    node = {
        "metadata": {
            "labels": {"dept": "HR", "costcenter": "5000", **OPERATOR_LABEL},
            "resourceVersion": "9",
        },
        "spec": {"taints": [{"key": "sku", "value": "gpu", "effect": "NoSchedule"}, OPERATOR_TAINT]},
    }
    patch = node_settings_patch(
        node,
        {"dept": "IT"},
        pool_taints(["dedicated:NoExecute"]),
        {"dept": "HR", "costcenter": "5000"},
        pool_taints(["sku=gpu:NoSchedule"]),
    )
    assert patch == {
        "metadata": {"labels": {"costcenter": None, "dept": "IT"}, "resourceVersion": "9"},
        "spec": {"taints": [OPERATOR_TAINT, {"key": "dedicated", "effect": "NoExecute"}]},
    }
    settled = {
        "metadata": {"labels": {"dept": "IT", **OPERATOR_LABEL}},
        "spec": {"taints": [{"key": "dedicated", "effect": "NoExecute"}, OPERATOR_TAINT]},
    }
    assert node_settings_patch(settled, {"dept": "IT"}, pool_taints(["dedicated:NoExecute"]), {}, []) is None


def test_the_joiner_brings_a_pool_update_to_its_joined_node(
    client: Client, kube_apiserver: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """A node joined with the pool's labels and taints (its kubelet registered with the taints, the join
    set the labels): the pool's update replaces them on the Node, keeping everything else; a second call
    changes nothing; the row records what was set."""
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    planes = ClusterPlanes(tmp_path / "state", release=lambda: kubernetes_release)
    joined_labels = {"dept": "HR", "costcenter": "5000"}
    joined_taints = ["sku=gpu:NoSchedule"]
    try:
        with sessions.begin() as session:
            path = ResourcePath("00000000-0000-0000-0000-000000000000", "rg", "nodeprops")
            pools = [
                PoolSpec(name="sys", mode="System", node_labels=joined_labels, node_taints=joined_taints)
            ]
            cluster, _, _ = put_cluster(session, path, ClusterSpec(location="eastus", agent_pools=pools))
            cluster.control_plane = running_plane_record(kube_apiserver)
            pool = session.scalars(select(AgentPool)).one()
            name = add_joined_node_row(session, pool, joined_labels, joined_taints)
        register_node(
            client,
            name,
            {**joined_labels, **OPERATOR_LABEL, **VERDICT},
            [*pool_taints(joined_taints), OPERATOR_TAINT, QUARANTINE_TAINT.to_dict()],
        )
        try:
            with sessions.begin() as session:  # the update: one label changed, one dropped, new taints
                pool = session.scalars(select(AgentPool)).one()
                pool.node_labels = {"dept": "IT", "tier": "web"}
                pool.node_taints = ["dedicated=web:NoExecute"]
            joiner = NodeJoiner(planes)
            with sessions.begin() as session:
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert joiner.bring_node_settings(node) is True
                assert node.applied_node_labels == {"dept": "IT", "tier": "web"}
                assert node.applied_node_taints == ["dedicated=web:NoExecute"]
            stored = read_node(client, name)
            assert stored["metadata"]["labels"] == {
                "kubernetes.io/hostname": name,
                "dept": "IT",
                "tier": "web",
                **OPERATOR_LABEL,
                **VERDICT,
            }
            taints = taints_besides_the_node_lifecycle(stored)
            assert sorted(taints, key=lambda t: t["key"]) == sorted(
                [
                    OPERATOR_TAINT,
                    QUARANTINE_TAINT.to_dict(),
                    {"key": "dedicated", "value": "web", "effect": "NoExecute"},
                ],
                key=lambda t: t["key"],
            )
            with sessions.begin() as session:
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert joiner.bring_node_settings(node) is False  # nothing left to change
                node.pool.node_labels, node.pool.node_taints = {}, []
                assert joiner.bring_node_settings(node) is True  # cleared: all of the pool's go
            stored = read_node(client, name)
            assert set(stored["metadata"]["labels"]) == {"kubernetes.io/hostname", *OPERATOR_LABEL, *VERDICT}
            assert ATTESTATION_PENDING_TAINT not in taints_besides_the_node_lifecycle(stored)
            assert {t["key"] for t in taints_besides_the_node_lifecycle(stored)} == {
                OPERATOR_TAINT["key"],
                QUARANTINE_TAINT.key,
            }
        finally:
            client.delete(KubernetesNode, name)
    finally:
        planes.close()
        engine.dispose()


def test_a_pool_update_of_labels_and_taints_reaches_the_joined_nodes_without_a_reimage(
    client: Client, kube_apiserver: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """The reconciler's Update operation of a pool whose nodes are all current (a labels and taints change
    needs no reimage): it sets the new labels and taints on each joined Ready node's Node, then succeeds;
    the node keeps its VM (its row is never Reimaging)."""
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    planes = ClusterPlanes(tmp_path / "state", release=lambda: kubernetes_release)
    path = ResourcePath("00000000-0000-0000-0000-000000000000", "rg", "nodeprops")
    try:
        with sessions.begin() as session:
            pools = [PoolSpec(name="sys", mode="System", count=1, node_labels={"dept": "HR"})]
            spec = ClusterSpec(location="eastus", agent_pools=pools)
            cluster, created, _ = put_cluster(session, path, spec)
            finish_operation(session, created, "Succeeded")
            cluster.control_plane = running_plane_record(kube_apiserver)
            pool = session.scalars(select(AgentPool)).one()
            name = add_joined_node_row(session, pool, {"dept": "HR"}, [])
        register_node(client, name, {"dept": "HR", **VERDICT})
        try:
            with sessions.begin() as session:
                spec = PoolSpec(name="sys", node_labels={"dept": "IT"}, node_taints=["sku=gpu:NoSchedule"])
                _, operation, _ = put_pool(session, path, spec)
                operation_id = operation.id
            reconciler = Reconciler(sessions, tmp_path / "reconciler", cluster_planes=planes)
            try:
                assert reconciler._advance(operation_id) is True  # the Node's labels and taints
                assert reconciler._advance(operation_id) is True  # then done
            finally:
                reconciler.release()
            with sessions() as session:
                operation = session.get_one(Operation, operation_id)
                assert (operation.status, operation.note) == ("Succeeded", "all nodes ready")
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert (node.state, node.applied_node_labels) == ("Ready", {"dept": "IT"})
            stored = read_node(client, name)
            assert stored["metadata"]["labels"] == {"kubernetes.io/hostname": name, "dept": "IT", **VERDICT}
            assert taints_besides_the_node_lifecycle(stored) == [
                {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
            ]
        finally:
            client.delete(KubernetesNode, name)
    finally:
        planes.close()
        engine.dispose()


class CheckedJoiner(NodeJoiner):
    """The reconciler's joiner, recording how many store connections were in use (a transaction open)
    whenever it went to the apiserver for a node's settings."""

    def __init__(self, planes: ClusterPlanes, engine: Engine) -> None:
        super().__init__(planes)
        self.engine = engine
        self.connections_in_use: list[int] = []

    def bring_node_settings(self, node: Node) -> bool:
        pool = self.engine.pool
        assert isinstance(pool, QueuePool)
        self.connections_in_use.append(pool.checkedout())
        return super().bring_node_settings(node)


def joined_node(sessions: sessionmaker[Session], path: ResourcePath) -> str:
    """A cluster whose pool's update failed to set its labels on its joined Ready node (no control plane
    recorded: unreachable); the node's name."""
    with sessions.begin() as session:
        pools = [PoolSpec(name="sys", mode="System", count=1, node_labels={"dept": "IT"})]
        _, created, _ = put_cluster(session, path, ClusterSpec(location="eastus", agent_pools=pools))
        finish_operation(session, created, "Succeeded")
        pool = session.scalars(select(AgentPool)).one()
        name = add_joined_node_row(session, pool, {"dept": "HR"}, [])  # set by the join before the update
    return name


def test_settings_that_failed_to_reach_a_node_are_retried_each_pass_until_they_hold(
    client: Client, kube_apiserver: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """The pool's update failed on a Node (its plane could not be reached; the operation failed): without a
    new operation, the reconciler's passes try it again, once per retry interval while it fails (no busy
    loop, no scan of the nodes meanwhile), and set it once the plane answers, with no store transaction
    open while the apiserver answers."""
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    planes = ClusterPlanes(tmp_path / "state", release=lambda: kubernetes_release)
    path = ResourcePath("00000000-0000-0000-0000-000000000000", "rg", "nodeprops")
    try:
        name = joined_node(sessions, path)
        register_node(client, name, {"dept": "HR", **VERDICT})
        reconciler = Reconciler(sessions, tmp_path / "reconciler", cluster_planes=planes)
        reconciler.joiner = joiner = CheckedJoiner(planes, engine)
        reconciler.node_settings_retry = 3.0
        try:
            reconciler._bring_node_settings_if_due()
            retry_due = time.monotonic() + 3.0
            with sessions() as session:
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert node.applied_node_labels == {"dept": "HR"}
                assert node.message.startswith("pool labels and taints not set: its cluster's control plane")
                assert node.message.endswith("tried again every 3 s")
                node.pool.cluster.control_plane = running_plane_record(kube_apiserver)
                session.commit()
            reconciler._bring_node_settings_if_due()  # within the retry interval: not tried
            assert len(joiner.connections_in_use) == 1
            assert read_node(client, name)["metadata"]["labels"]["dept"] == "HR"
            time.sleep(max(0.0, retry_due - time.monotonic()) + 0.1)
            reconciler._bring_node_settings_if_due()
            assert joiner.connections_in_use == [0, 0]  # the apiserver called with no transaction open
            with sessions() as session:
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert node.applied_node_labels == {"dept": "IT"}
            assert read_node(client, name)["metadata"]["labels"]["dept"] == "IT"
            assert reconciler._settings_retry_after == {}
        finally:
            reconciler.release()
            client.delete(KubernetesNode, name)
    finally:
        planes.close()
        engine.dispose()


def test_a_node_torn_down_is_no_longer_retried(kubernetes_release: KubernetesRelease, tmp_path: Path) -> None:
    """A node whose settings failed to reach it and that then goes (deleted, reimaged) leaves no retry."""
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    planes = ClusterPlanes(tmp_path / "state", release=lambda: kubernetes_release)
    try:
        name = joined_node(sessions, ResourcePath("00000000-0000-0000-0000-000000000000", "rg", "gone"))
        reconciler = Reconciler(sessions, tmp_path / "reconciler", cluster_planes=planes)
        try:
            reconciler._bring_node_settings_if_due()
            with sessions() as session:
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert list(reconciler._settings_retry_after) == [node.id]
                reconciler._teardown(node)
            assert reconciler._settings_retry_after == {}
        finally:
            reconciler.release()
    finally:
        planes.close()
        engine.dispose()
