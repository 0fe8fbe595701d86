"""A real kube-apiserver for the tests of what the control plane does to Node objects: one hosted control
plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) from the cached Kubernetes release,
and helpers that register and read Nodes with its admin credential, as a kubelet and kubectl would.

kube-controller-manager's node lifecycle controller runs too: a Node that no kubelet keeps alive gets its
`node.kubernetes.io/...` taints after a grace period, which `taints_besides_the_node_lifecycle` leaves out.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightkube import Client, KubeConfig
from lightkube.models.core_v1 import NodeSpec, Taint
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node
from sqlalchemy.orm import Session

from trustedlaunch.control.cluster_planes import ControlPlanePhase
from trustedlaunch.control.hosted_control_plane import ControlPlanePorts, HostedControlPlane
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.store.models import AgentPool, ClusterControlPlane
from trustedlaunch.store.models import Node as NodeRow

FQDN = "tests-rg-000000.hcp.local.trustedlaunch.internal"
NODE_LIFECYCLE_PREFIX = "node.kubernetes.io/"


@contextmanager
def running_control_plane(release: KubernetesRelease) -> Iterator[HostedControlPlane]:
    """A hosted control plane in a short temporary folder, ready (/readyz), stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix="tl-kube-"))
    plane = HostedControlPlane(release, folder / "plane", FQDN, ControlPlanePorts.free())
    try:
        plane.start()
        plane.wait_ready()
        yield plane
    finally:
        plane.stop()
        shutil.rmtree(folder, ignore_errors=True)


def admin_client(plane: HostedControlPlane) -> Client:
    """A lightkube client with the cluster admin's credential (system:masters)."""
    return Client(KubeConfig.from_file(plane.admin_kubeconfig), field_manager="tests", trust_env=False)


def register_node(
    client: Client,
    name: str,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Create the Node `name` (as its kubelet registers it); its stored JSON form."""
    node = Node(
        metadata=ObjectMeta(name=name, labels={"kubernetes.io/hostname": name, **(labels or {})}),
        spec=NodeSpec(taints=[Taint.from_dict(taint) for taint in taints or []]),
    )
    created: dict[str, Any] = client.create(node).to_dict()
    return created


def read_node(client: Client, name: str) -> dict[str, Any]:
    """The stored Node `name` (JSON form)."""
    node: dict[str, Any] = client.get(Node, name).to_dict()
    return node


def labels_besides_the_node_lifecycle(node: dict[str, Any]) -> dict[str, str]:
    """The Node's labels without the beta.kubernetes.io/ copies of kubernetes.io/os and /arch that the node
    lifecycle controller adds a moment after it sees them."""
    labels: dict[str, str] = node["metadata"].get("labels") or {}
    return {key: value for key, value in labels.items() if not key.startswith("beta.kubernetes.io/")}


def taints_besides_the_node_lifecycle(node: dict[str, Any]) -> list[dict[str, Any]]:
    """The Node's taints without those the node lifecycle controller adds to a Node no kubelet keeps
    alive (and without their timeAdded)."""
    return [
        {key: value for key, value in taint.items() if key != "timeAdded"}
        for taint in node["spec"].get("taints") or []
        if not taint["key"].startswith(NODE_LIFECYCLE_PREFIX)
    ]


def running_plane_record(plane: HostedControlPlane) -> ClusterControlPlane:
    """The store's record of `plane` as a Running control plane of a cluster (its data directory holds the
    cluster CA and admin kubeconfig the control plane uses for that cluster's Nodes)."""
    ports = plane.ports
    return ClusterControlPlane(
        data_dir=str(plane.admin_kubeconfig.parent),
        phase=ControlPlanePhase.RUNNING,
        apiserver_port=ports.apiserver,
        etcd_client_port=ports.etcd_client,
        etcd_peer_port=ports.etcd_peer,
        controller_manager_port=ports.controller_manager,
        scheduler_port=ports.scheduler,
    )


_JOINED_ORDINALS = itertools.count()


def add_joined_node_row(
    session: Session,
    pool: AgentPool,
    applied_labels: dict[str, str] | None = None,
    applied_taints: list[str] | None = None,
) -> str:
    """Add a Ready node row of `pool` as if it had joined (a kubelet port, the pool settings the join set:
    `applied_labels`/`applied_taints`, None when none were recorded); its unique name."""
    name = f"aks-{pool.name}-{next(_JOINED_ORDINALS)}"
    session.add(
        NodeRow(
            pool=pool,
            ordinal=0,
            name=name,
            node_image_version=pool.node_image_version,
            state="Ready",
            labels={},
            kubelet_port=1,
            applied_node_labels=applied_labels,
            applied_node_taints=applied_taints,
        )
    )
    return name
