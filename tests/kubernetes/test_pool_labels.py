"""A joined Node's pool labels (agentpool, mode, node-image-version, os-sku, instance type, os) are brought
back to what its node row says when they differ, against a real kube-apiserver (the session's hosted
control plane): a Node that joined before the image's rename (migration 0014) still carries the older
`kubernetes.azure.com/node-image-version` until then. Other labels (kubelet's, an operator's, the
attestation verdict's) stay as they are."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_apiserver import (
    add_joined_node_row,
    admin_client,
    labels_besides_the_node_lifecycle,
    read_node,
    register_node,
    running_plane_record,
)
from lightkube import Client
from lightkube.resources.core_v1 import Node as KubernetesNode
from sqlalchemy import select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes import KubernetesNodeAdapter, pool_labels_patch
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.labels import (
    LABEL_AGENT_POOL,
    LABEL_NODE_IMAGE_VERSION,
    LABEL_OS_SKU,
    LABEL_SECURE_BOOT,
    LABEL_TRUSTED_LAUNCH,
    pool_labels,
)
from trustedlaunch.control.node_join import NodeJoiner
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import AgentPool, Node

pytestmark = pytest.mark.slow
PRE_0014_NAME = "AKSUbuntu-2204gen2TLcontainerd-202411.12.0"  # what an earlier release labelled Nodes with
OPERATOR_LABEL = {"team": "payments"}
VERDICT = {LABEL_SECURE_BOOT: "true", LABEL_TRUSTED_LAUNCH: "true"}
ORDINALS = itertools.count()


@pytest.fixture
def client(kube_apiserver: HostedControlPlane) -> Iterator[Client]:
    with admin_client(kube_apiserver) as admin:
        yield admin


def test_the_patch_touches_only_pool_labels_that_differ() -> None:
    wanted = pool_labels(
        "pool1", "System", "TLDebian12gen2TLcontainerd-202612.06.0", "Ubuntu", "Standard_D2s_v3"
    )
    node = {
        "metadata": {"labels": {**wanted, LABEL_NODE_IMAGE_VERSION: PRE_0014_NAME}, "resourceVersion": "7"}
    }
    assert pool_labels_patch(node, wanted) == {
        "metadata": {
            "labels": {LABEL_NODE_IMAGE_VERSION: wanted[LABEL_NODE_IMAGE_VERSION]},
            "resourceVersion": "7",
        }
    }
    assert pool_labels_patch({"metadata": {"labels": wanted}}, wanted) is None
    with pytest.raises(ValueError, match="not a pool label"):
        pool_labels_patch(node, VERDICT)


def test_the_adapter_sets_the_pool_labels_that_differ_and_keeps_the_others(
    client: Client, kube_apiserver: HostedControlPlane
) -> None:
    name = f"aks-labels-{next(ORDINALS)}"
    wanted = pool_labels(
        "pool1", "User", "TLDebian12gen2TLcontainerd-202612.06.0", "AzureLinux", "Standard_D2s_v3"
    )
    register_node(
        client, name, {**wanted, LABEL_NODE_IMAGE_VERSION: PRE_0014_NAME, **OPERATOR_LABEL, **VERDICT}
    )
    try:
        with KubernetesNodeAdapter(kube_apiserver.admin_kubeconfig) as adapter:
            assert adapter.set_pool_labels(name, wanted) == {LABEL_NODE_IMAGE_VERSION: PRE_0014_NAME}
            labels = labels_besides_the_node_lifecycle(read_node(client, name))
            assert labels == {"kubernetes.io/hostname": name, **wanted, **OPERATOR_LABEL, **VERDICT}
            assert adapter.set_pool_labels(name, wanted) == {}  # nothing to change: no patch
    finally:
        client.delete(KubernetesNode, name)


def test_the_joiner_brings_a_joined_nodes_labels_back_to_its_row(
    client: Client, kube_apiserver: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """A node row whose image was renamed by migration 0014, whose Node (joined before) still carries the
    older name and lacks the os-sku label: NodeJoiner.bring_pool_labels, which the reconciler calls after
    each passing re-attestation (or renewal without vTPM), corrects both, through the cluster's own
    control plane record (its admin kubeconfig)."""
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    planes = ClusterPlanes(tmp_path / "state", release=lambda: kubernetes_release)
    try:
        with sessions.begin() as session:
            path = ResourcePath("00000000-0000-0000-0000-000000000000", "rg", "labels")
            pools = [PoolSpec(name="sys", mode="System", os_sku="Ubuntu2204")]
            cluster, _, _ = put_cluster(session, path, ClusterSpec(location="eastus", agent_pools=pools))
            cluster.control_plane = running_plane_record(kube_apiserver)
            pool = session.scalars(select(AgentPool)).one()
            name = add_joined_node_row(session, pool)
        row_labels = pool_labels(pool.name, "System", pool.node_image_version, "Ubuntu2204", pool.vm_size)
        joined_before = {**row_labels, LABEL_NODE_IMAGE_VERSION: PRE_0014_NAME}
        del joined_before[LABEL_OS_SKU]
        register_node(client, name, {**joined_before, **VERDICT})
        try:
            joiner = NodeJoiner(planes)
            with sessions() as session:
                node = session.scalars(select(Node).where(Node.name == name)).one()
                assert joiner.bring_pool_labels(node) == [
                    f"{LABEL_NODE_IMAGE_VERSION}: {PRE_0014_NAME} -> {pool.node_image_version}",
                    f"{LABEL_OS_SKU}: (none) -> Ubuntu2204",
                ]
                labels = labels_besides_the_node_lifecycle(read_node(client, name))
                assert labels == {"kubernetes.io/hostname": name, **row_labels, **VERDICT}
                assert labels[LABEL_AGENT_POOL] == "sys"
                assert joiner.bring_pool_labels(node) == []
        finally:
            client.delete(KubernetesNode, name)
    finally:
        planes.close()
        engine.dispose()
