"""A node VM joins its cluster's hosted control plane, gated by attestation.

Only a node whose image has a root filesystem (kubelet, containerd) and whose cluster's control plane is
Running joins (`joins_cluster`). Before its VM starts, the node gets a free kubelet port, recorded on its
row (write-ahead: an adopted VM keeps it), and the VM's network (`node_network`) forwards its cluster's
kube-apiserver into the guest (at the control plane's node network address: 127.0.0.1 unless
TL_NODE_NETWORK_ADDRESS names one the libvirt hosts reach) and that port on its host's address
(`node_kubelet_address`: 127.0.0.1 on this machine, the libvirt host's address for a remote one) to its
kubelet (trustedlaunch.node.kubelet).

The credentials (`hand_credential`): a kubelet client certificate `system:node:<name>` and a kubelet serving
certificate (the same name, SANs the node name and its kubelet address, which kube-apiserver verifies with the
cluster CA when it dials the kubelet), both of the cluster CA, issued only when the reconciler calls it and
handed over the node's own agent channel, never written into an image. The reconciler calls it for a vTPM
node only right after that node passed its provisioning attestation (which activated a credential with its
enrolled EK), so a node that fails attestation never gets one. A node without vTPM gets it right after
boot: that credential is bound to no TPM, only to the VM the reconciler started (whoever controls that VM's
agent channel receives it). No CSR is approved or signed by the controller-manager
(hosted_control_plane.CONTROLLERS): this is the only way to kubelet certificates.

Renewal (`renew_credential`), the one rule: both certificates are issued anew and replace the node's files
(agent request KUBELETCERTS) every renewal interval (the reconciler's attestation interval): on a vTPM node
right after each PASSING re-attestation and never after a failing one; on a node without vTPM (nothing to
attest) while it is Ready, every interval. Their validity (`node_credential_validity`) is
max(NODE_CLIENT_VALIDITY = 1 h, 3 x interval + KUBELET_CREDENTIAL_RELOAD): a node that fails attestation,
or whose renewals stop, loses the apiserver within that time; one that passes never runs on an expired
certificate, as kubelet's client-go picks up replaced files at its next TLS handshake or within
KUBELET_CREDENTIAL_RELOAD (5 min), and kubelet's serving certificate file within a minute.

The kubelet registers with ATTESTATION_PENDING_TAINT and the cloud provider's uninitialized taint; the
control plane then (`initialize`, as a cloud node manager) sets the Node's address, the labels AKS sets
(control.labels.join_labels) and removes both taints, and waits, bounded, for the Node to be Ready. The labels
that follow from the node's row are brought back to it later when they differ (`bring_pool_labels`: the
reconciler calls it after each re-attestation or renewal of a joined node).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.types import PatchType
from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.control.cluster_pki import (
    NODE_CLIENT_VALIDITY,
    ClusterPki,
    issue_node_client_certificate,
    issue_node_serving_certificate,
)
from trustedlaunch.control.cluster_planes import ClusterPlanes, ControlPlanePhase, recorded_plane_ports
from trustedlaunch.control.hosted_control_plane import free_loopback_port, node_network_address
from trustedlaunch.control.kubernetes import KubernetesAdapterError
from trustedlaunch.control.labels import pool_labels
from trustedlaunch.control.limits import DEFAULT_MAX_PODS, parse_taint
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.channel import AgentChannel, AgentError, AgentOutdatedError, RenewedCredentials
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.kubelet import (
    ATTESTATION_PENDING_TAINT,
    CLOUD_UNINITIALIZED_TAINT_KEY,
    NODE_INTERNAL_IP,
    KubeletCredentials,
    KubeletJoin,
    NodeJoinError,
    NodeNetwork,
    host_kubelet_address,
    node_addresses_patch,
)
from trustedlaunch.store.models import Node

JOIN_TIMEOUT = 600.0  # kubelet start -> Node Ready under software emulation on a loaded 2-core machine
# kubelet updates a Node it just registered often (status, annotations): a stale patch is recomputed.
LABEL_CONFLICT_RETRIES = 10
KUBELET_START_TIMEOUT = 300.0  # the agent's KUBELET request: containerd up, images imported, kubelet run
JOIN_TAINT_KEYS = (ATTESTATION_PENDING_TAINT["key"], CLOUD_UNINITIALIZED_TAINT_KEY)
ALREADY_STARTED = "kubelet was already started"
RENEW_TIMEOUT = 60.0  # the agent's KUBELETCERTS request: a few files written on its tmpfs
# The longest a running kubelet keeps using its old client certificate once the files were replaced:
# client-go (transport/cert_rotation.go, CertCallbackRefreshDuration) reloads them every 5 min, and on
# every new TLS handshake.
KUBELET_CREDENTIAL_RELOAD = datetime.timedelta(minutes=5)

log = logging.getLogger(__name__)


class NodeJoinFailedError(TrustedLaunchError):
    """A node did not join its cluster; the message names the node and what is missing."""


class NodeAgentOutdatedError(NodeJoinFailedError):
    """A joined node's agent does not know the KUBELETCERTS request (an older node image's initramfs): its
    kubelet credentials cannot be renewed; it must be reimaged onto the current image before they expire."""


def joins_cluster(node: Node, image: NodeImage) -> bool:
    """Whether `node` joins its cluster: its image has a root filesystem and its cluster's hosted control
    plane is Running."""
    record = node.pool.cluster.control_plane
    return image.rootfs is not None and record is not None and record.phase == ControlPlanePhase.RUNNING


def record_kubelet_port(session: Session, node: Node) -> int:
    """The node's kubelet port: the recorded one, else a free loopback port no node or control plane was
    given, set on the row (the caller commits it before the VM starts)."""
    if node.kubelet_port is None:
        taken = {port for port in session.scalars(select(Node.kubelet_port)) if port is not None}
        taken |= recorded_plane_ports(session)
        while (port := free_loopback_port()) in taken:
            pass
        node.kubelet_port = port
    return node.kubelet_port


def node_kubelet_address(node: Node) -> str:
    """Where the apiserver reaches `node`'s kubelet port: its host's address (127.0.0.1 on this machine or
    a local libvirtd; NodeJoinFailedError if its libvirt host's name has no address)."""
    try:
        return host_kubelet_address(node.host.uri if node.host is not None else None)
    except NodeJoinError as exc:
        raise NodeJoinFailedError(f"node {node.name}: {exc}") from exc


def node_network(node: Node) -> NodeNetwork:
    """The VM network of a joining `node` (its kubelet port recorded): its cluster's kube-apiserver at the
    node network address, its kubelet port on its host's address."""
    record = node.pool.cluster.control_plane
    if record is None or node.kubelet_port is None:
        raise NodeJoinFailedError(f"node {node.name}: no control plane or no kubelet port to join with")
    return NodeNetwork(
        record.apiserver_port,
        node.kubelet_port,
        apiserver_address=node_network_address(),
        kubelet_address=node_kubelet_address(node),
    )


def _boot_id(stored: dict[str, Any]) -> str | None:
    boot_id = stored.get("status", {}).get("nodeInfo", {}).get("bootID")
    return str(boot_id) if boot_id else None


def node_credential_validity(renewal_interval: float) -> datetime.timedelta:
    """How long a node's kubelet certificates are valid when they are renewed every `renewal_interval`
    seconds (0: never on an interval): max(NODE_CLIENT_VALIDITY, 3 x interval + KUBELET_CREDENTIAL_RELOAD),
    so that two missed renewals and the kubelet's reload lag still fit."""
    derived = datetime.timedelta(seconds=3 * max(renewal_interval, 0.0)) + KUBELET_CREDENTIAL_RELOAD
    return max(NODE_CLIENT_VALIDITY, derived)


def issue_kubelet_credentials(
    pki: ClusterPki, node_name: str, validity: datetime.timedelta, address: str = NODE_INTERNAL_IP
) -> KubeletCredentials:
    """New client and serving certificates (and keys) of the cluster CA for the kubelet of `node_name`,
    which the apiserver reaches at `address` (node_kubelet_address)."""
    client_cert, client_key = issue_node_client_certificate(pki, node_name, validity)
    serving_cert, serving_key = issue_node_serving_certificate(pki, node_name, address, validity)
    return KubeletCredentials(client_cert, client_key, serving_cert, serving_key)


def pool_taints(taints: list[str] | None) -> list[dict[str, str]]:
    """A pool's nodeTaints ("key=value:Effect", checked by control.limits) in Kubernetes JSON form."""
    parsed = [parse_taint(taint) for taint in taints or ()]
    return [taint.to_dict() for taint in parsed if taint is not None]


def _ready_condition(stored: dict[str, Any]) -> dict[str, Any] | None:
    conditions = stored.get("status", {}).get("conditions") or []
    return next((condition for condition in conditions if condition.get("type") == "Ready"), None)


class NodeJoiner:
    """Hands kubelet credentials to nodes, renews them, and initializes their Node objects in the clusters
    of `planes` (their admin credential); a join waits `timeout` seconds at most for registration and
    Ready; credentials are renewed every `renewal_interval` seconds (their validity follows from it)."""

    def __init__(
        self, planes: ClusterPlanes, timeout: float = JOIN_TIMEOUT, renewal_interval: float = 0.0
    ) -> None:
        self.planes = planes
        self.timeout = timeout
        self.validity = node_credential_validity(renewal_interval)

    @staticmethod
    def _pki(node: Node) -> ClusterPki:
        record = node.pool.cluster.control_plane
        if record is None or node.kubelet_port is None:
            raise NodeJoinFailedError(f"node {node.name}: no control plane or no kubelet port to join with")
        return ClusterPki(Path(record.data_dir) / "pki")

    def _client(self, node: Node) -> Client:
        adapter = self.planes.node_adapter(node)
        if adapter is None:
            raise NodeJoinFailedError(f"node {node.name}: its cluster's control plane has no credential")
        return adapter.client

    def hand_credential(self, node: Node, channel: AgentChannel) -> str:
        """Issue the node's kubelet certificates and hand its join bundle over `channel` (its agent):
        the agent starts containerd and kubelet; its account of what it did. Call it only once the node
        passed attestation (vTPM). An agent that had started kubelet already (a VM adopted mid-join) is
        left as it is."""
        pki = self._pki(node)
        assert node.kubelet_port is not None
        try:
            join = KubeletJoin(
                node.name,
                node.pool.cluster.fqdn,
                pki.ca_cert.read_bytes(),
                issue_kubelet_credentials(pki, node.name, self.validity, node_kubelet_address(node)),
                node.kubelet_port,
                taints=(ATTESTATION_PENDING_TAINT, *pool_taints(node.pool.node_taints)),
                max_pods=DEFAULT_MAX_PODS if node.pool.max_pods is None else node.pool.max_pods,
            )
            return channel.start_kubelet(join.bundle(), KUBELET_START_TIMEOUT)
        except AgentError as exc:
            if ALREADY_STARTED in str(exc):
                log.info("node %s: its kubelet runs already (adopted mid-join)", node.name)
                return ALREADY_STARTED
            raise NodeJoinFailedError(f"node {node.name}: its agent did not start kubelet: {exc}") from exc
        except (TrustedLaunchError, OSError) as exc:
            raise NodeJoinFailedError(f"node {node.name}: no join bundle: {exc}") from exc

    def renew_credential(self, node: Node, channel: AgentChannel) -> RenewedCredentials:
        """Issue the joined node's kubelet certificates anew and have its agent replace its credential files
        (kubelet reloads them); what the agent replaced, its client certificate checked to be the one
        issued. Call it only right after the node passed attestation (vTPM; see the module's rule)."""
        try:
            credentials = issue_kubelet_credentials(
                self._pki(node), node.name, self.validity, node_kubelet_address(node)
            )
            renewed = channel.renew_kubelet_credentials(credentials.bundle(), RENEW_TIMEOUT)
        except AgentOutdatedError as exc:
            raise NodeAgentOutdatedError(f"node {node.name}: kubelet credentials not renewed: {exc}") from exc
        except (TrustedLaunchError, OSError) as exc:
            raise NodeJoinFailedError(f"node {node.name}: kubelet credentials not renewed: {exc}") from exc
        if renewed.client_cert_sha256 != hashlib.sha256(credentials.client_cert_pem).hexdigest():
            raise NodeJoinFailedError(
                f"node {node.name}: its agent reports another client certificate than the one issued"
            )
        return renewed

    def boot_id(self, node: Node) -> str | None:
        """The boot id the kubelet of the node's Node object reported (None without one): a node rebooted
        by a repair keeps its Node, and its new kubelet reports a new boot id."""
        try:
            stored = self._client(node).get(KubernetesNode, node.name).to_dict()
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            reason = exc.status.message
            raise NodeJoinFailedError(f"node {node.name}: kube-apiserver failed: {reason}") from exc
        except httpx2.HTTPError as exc:
            raise NodeJoinFailedError(f"node {node.name}: kube-apiserver failed: {exc}") from exc
        return _boot_id(stored)

    def initialize(
        self,
        node: Node,
        labels: dict[str, str],
        channel: AgentChannel | None = None,
        previous_boot_id: str | None = None,
    ) -> float:
        """Wait for the node's kubelet to register its Node (one reporting another boot id than
        `previous_boot_id`: that of the Node a rebooted VM left), then (as a cloud node manager) set its
        address and `labels`, remove the join taints, and wait for it to be Ready; the seconds it took. Fails
        naming the node and what is missing (with the end of the kubelet's log from `channel`)."""
        client = self._client(node)
        started = time.monotonic()
        deadline = started + self.timeout

        def registered(found: dict[str, Any] | None) -> bool:
            return found is not None and (previous_boot_id is None or _boot_id(found) != previous_boot_id)

        try:
            stored = self._wait(client, node.name, deadline, registered)
            if stored is None:
                self._missing(node, "its kubelet did not register its Node", channel)
            assert stored is not None
            # a strategic merge patch: the Hostname address kubelet set stays
            client.patch(KubernetesNode.Status, node.name, node_addresses_patch(node_kubelet_address(node)))
            self._label_and_untaint(client, node.name, labels)
            ready = self._wait(client, node.name, deadline, lambda found: self._is_ready(found))
            if ready is None:
                condition = _ready_condition(client.get(KubernetesNode, node.name).to_dict()) or {}
                said = f"{condition.get('reason', 'no Ready condition')}: {condition.get('message', '')}"
                self._missing(node, f"its Node is not Ready ({said})", channel)
        except httpx2.HTTPError as exc:
            reason = exc.status.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            raise NodeJoinFailedError(f"node {node.name}: kube-apiserver failed: {reason}") from exc
        return time.monotonic() - started

    @staticmethod
    def _label_and_untaint(client: Client, name: str, labels: dict[str, str]) -> None:
        """Set `labels` and remove the join taints in one merge patch on the Node as read (its
        resourceVersion a precondition); recomputed on the fresh Node when kubelet changed it meanwhile
        (409), LABEL_CONFLICT_RETRIES times."""
        for attempt in range(LABEL_CONFLICT_RETRIES):
            current = client.get(KubernetesNode, name).to_dict()
            taints = [t for t in current["spec"].get("taints") or [] if t["key"] not in JOIN_TAINT_KEYS]
            patch = {
                "metadata": {"labels": labels, "resourceVersion": current["metadata"]["resourceVersion"]},
                "spec": {"taints": taints or None},
            }
            try:
                client.patch(KubernetesNode, name, patch, patch_type=PatchType.MERGE)
                return
            except ApiError as exc:
                if exc.status.code != 409 or attempt == LABEL_CONFLICT_RETRIES - 1:
                    raise

    @staticmethod
    def _is_ready(found: dict[str, Any] | None) -> bool:
        condition = _ready_condition(found or {})
        return condition is not None and condition.get("status") == "True"

    @staticmethod
    def _wait(client: Client, name: str, deadline: float, done: Any) -> dict[str, Any] | None:
        """The Node `name` once `done(it)` holds (None while it does not exist), None at `deadline`."""
        while True:
            try:
                found: dict[str, Any] | None = client.get(KubernetesNode, name).to_dict()
            except ApiError as exc:
                if exc.status.code != 404:
                    raise
                found = None
            if done(found):
                return found
            if time.monotonic() > deadline:
                return None
            time.sleep(1.0)

    def _missing(self, node: Node, what: str, channel: AgentChannel | None) -> None:
        detail = ""
        if channel is not None:
            try:
                status = channel.kubelet_status(30.0)
                detail = f"; kubelet {status.kubelet}: {status.kubelet_log[-1500:]}"
            except AgentError as exc:
                detail = f"; its agent did not report kubelet's status: {exc}"
        within = f"within {self.timeout:.0f} s"
        raise NodeJoinFailedError(f"node {node.name} did not join {within}: {what}{detail}")

    def bring_pool_labels(self, node: Node) -> list[str]:
        """Give joined `node`'s Node the labels its row and pool say (control.labels.pool_labels: pool, mode,
        node image version, OS SKU, instance type, OS) where they differ, e.g. a node-image-version label an
        earlier release set (before the image's rename, migration 0014) on a Node that has not rejoined since;
        each change as "key: old -> new". A cluster without control plane has nothing to change."""
        adapter = self.planes.node_adapter(node)
        if adapter is None:
            return []
        pool = node.pool
        wanted = pool_labels(pool.name, pool.mode, node.node_image_version, pool.os_sku, pool.vm_size)
        try:
            changed = adapter.set_pool_labels(node.name, wanted)
        except KubernetesAdapterError as exc:
            raise NodeJoinFailedError(f"node {node.name}: labels not brought back to its row: {exc}") from exc
        return [f"{key}: {old or '(none)'} -> {wanted[key]}" for key, old in sorted(changed.items())]

    def bring_node_settings(self, node: Node) -> bool:
        """Give joined `node`'s Node its pool's nodeLabels and nodeTaints as they are now, removing those the
        control plane set before (recorded on the row) that the pool dropped, as AKS updates a pool's nodes
        without reimaging them; records what it set on the row (the caller commits). True when the Node
        changed. Raises NodeJoinFailedError when the Node cannot be changed, its cluster's control plane
        unreachable included (nothing is recorded then: a later operation tries again)."""
        adapter = self.planes.node_adapter(node)
        if adapter is None:
            raise NodeJoinFailedError(
                f"node {node.name}: pool labels and taints not set: its cluster's control plane cannot be "
                "reached"
            )
        labels, taints = dict(node.pool.node_labels or {}), list(node.pool.node_taints or [])
        try:
            changed = adapter.set_node_settings(
                node.name,
                labels,
                pool_taints(taints),
                node.applied_node_labels or {},
                pool_taints(node.applied_node_taints),
            )
        except KubernetesAdapterError as exc:
            raise NodeJoinFailedError(f"node {node.name}: pool labels and taints not set: {exc}") from exc
        node.applied_node_labels, node.applied_node_taints = labels, taints
        return changed

    def forget(self, node: Node) -> bool:
        """Delete the node's Node object from its cluster (the reconciler drained it first: node_drain); True
        if there was one. A cluster without control plane has nothing to delete."""
        adapter = self.planes.node_adapter(node)
        if adapter is None:
            return False
        try:
            adapter.client.delete(KubernetesNode, node.name)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise NodeJoinFailedError(f"node {node.name}: Node not deleted: {exc.status.message}") from exc
        except httpx2.HTTPError as exc:
            raise NodeJoinFailedError(f"node {node.name}: Node not deleted: {exc}") from exc
        return True
