"""Each managed cluster's own hosted Kubernetes control plane, as durable reconciler steps.

A cluster's Create (or Update) operation first records the control plane (`ClusterControlPlane`: a data
directory `{state_dir}/clusters/c{cluster id}-{random}` and five free loopback ports, phase Provisioning)
before anything starts (write-ahead), then makes the cluster PKI, starts etcd, kube-apiserver,
kube-controller-manager and kube-scheduler (hosted_control_plane) and waits for `/readyz`; once ready it
binds the clusterUser credential's group to the built-in `edit` ClusterRole and records the plane Running.
Only then do the pools' nodes follow, and the operation is Succeeded once they are ready. A control plane
that does not come up fails the operation with `ControlPlaneProvisioningFailed`, naming the component and
the end of its log; its processes are stopped, its data kept for the next attempt.

The processes run in sessions of their own and outlive the reconciler (like node VMs): in the embedded mode
the `tl` command that created the cluster exits and leaves them running; the next reconciler (`tl serve`,
`tl reconciler run`, or the next embedded `tl` command) adopts the running ones (found by their command
lines naming the data directory) and starts the dead ones again on the recorded ports, with their data (etcd
included) kept. While a reconciler runs it checks every SUPERVISE_SECONDS, restarting a crash-looping plane
with a growing back-off (RESTART_BACKOFF_SECONDS). A data directory under
`clusters/` that no record names is an orphan: its processes are stopped and the directory removed. A
cluster's Delete operation, once its nodes are gone, stops the processes and removes the data directory.

The attestation verdict of a cluster's nodes is applied to the Node objects of that cluster's own
kube-apiserver, with its admin credential (`node_adapter`); the cluster's currentKubernetesVersion is what
that kube-apiserver answers on /version.
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields
from enum import StrEnum
from pathlib import Path

import httpx
import httpx2
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.rbac_authorization_v1 import ClusterRoleBinding
from sqlalchemy import select
from sqlalchemy.orm import Session

from trustedlaunch.control.cluster_pki import CLUSTER_USER_SUBJECT, ClusterPki
from trustedlaunch.control.errors import ArmError, conflict
from trustedlaunch.control.hosted_control_plane import (
    COMPONENTS,
    ControlPlanePorts,
    HostedControlPlane,
    control_plane_processes,
    node_network_address,
    stop_control_plane_processes,
)
from trustedlaunch.control.kubeconfig import ApiServer
from trustedlaunch.control.kubernetes import KubernetesAdapterError, KubernetesNodeAdapter
from trustedlaunch.control.kubernetes_release import KubernetesRelease, verified_release
from trustedlaunch.control.limits import running_kubernetes_version
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.store.models import ClusterControlPlane, ManagedCluster, Node, utc_now

CLUSTERS_DIR = "clusters"
HOSTED_CONTROL_PLANES_ENV = "TL_HOSTED_CONTROL_PLANES"
READY_TIMEOUT = 120.0
SUPERVISE_SECONDS = 5.0
# A control plane whose components keep dying is restarted at once, then after 5 s, 10 s, 20 s, ... up to
# 5 minutes between restarts (as kubelet's CrashLoopBackOff); once up for 10 minutes the count starts over.
RESTART_BACKOFF_SECONDS = (5.0, 300.0)
RESTART_FORGIVEN_AFTER = 600.0
READYZ_TIMEOUT = 5.0
# What the clusterUser credential may do: the built-in `edit` ClusterRole, in every namespace.
CLUSTER_USER_GROUP = CLUSTER_USER_SUBJECT[1]
CLUSTER_USER_ROLE = "edit"
CLUSTER_USER_BINDING = "trustedlaunch:cluster-users"
FIELD_MANAGER = "trustedlaunch"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

log = logging.getLogger(__name__)


class ControlPlanePhase(StrEnum):
    """Where a cluster's control plane stands (`ClusterControlPlane.phase`)."""

    PROVISIONING = "Provisioning"
    RUNNING = "Running"
    FAILED = "Failed"
    DELETING = "Deleting"


class ControlPlaneFailedError(TrustedLaunchError):
    """A cluster's control plane did not come up; `error` is the ARM error its operation fails with."""

    def __init__(self, error: ArmError) -> None:
        super().__init__(error.message)
        self.error = error


def hosted_control_planes_enabled() -> bool:
    """Whether reconcilers give each cluster a hosted control plane: yes unless TL_HOSTED_CONTROL_PLANES=0
    (then clusters use the external API server of `--kubeconfig`, or none)."""
    return os.environ.get(HOSTED_CONTROL_PLANES_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


# The ClusterControlPlane column of each port of ControlPlanePorts (`apiserver` -> `apiserver_port`, ...).
PORT_COLUMNS = {field.name: f"{field.name}_port" for field in fields(ControlPlanePorts)}


def recorded_ports(record: ClusterControlPlane) -> ControlPlanePorts:
    """The loopback ports a control plane was given when it was recorded."""
    return ControlPlanePorts(**{name: getattr(record, column) for name, column in PORT_COLUMNS.items()})


def recorded_plane_ports(session: Session) -> set[int]:
    """Every loopback port some control plane was given (a stopped one keeps its ports)."""
    columns = [getattr(ClusterControlPlane, column) for column in PORT_COLUMNS.values()]
    return {port for row in session.execute(select(*columns)) for port in row}


def server_url(record: ClusterControlPlane) -> str:
    """The URL of the cluster's kube-apiserver (at the node network address: node_network_address)."""
    return f"https://{node_network_address()}:{record.apiserver_port}"


class ClusterPlanes:
    """The hosted control planes of the clusters, their data under `state_dir/clusters`, run from the
    release `release()` gives (default: the verified cached one)."""

    def __init__(
        self,
        state_dir: Path,
        release: Callable[[], KubernetesRelease] = verified_release,
        ready_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.root = state_dir.resolve() / CLUSTERS_DIR  # command lines name it: found from any directory
        self.release = release
        self.ready_timeout = ready_timeout
        self.listen_address = node_network_address()  # a bad TL_NODE_NETWORK_ADDRESS fails here
        self._adapters: dict[str, KubernetesNodeAdapter] = {}  # data dir -> adapter (admin credential)
        self._adapters_lock = threading.Lock()
        self._restarts: dict[str, tuple[int, float]] = {}  # data dir -> (restarts in a row, next at)

    def _plane(self, record: ClusterControlPlane, fqdn: str) -> HostedControlPlane:
        return HostedControlPlane(
            self.release(),
            Path(record.data_dir),
            fqdn,
            recorded_ports(record),
            listen_address=self.listen_address,
        )

    @staticmethod
    def _unrecorded_ports(session: Session) -> ControlPlanePorts:
        """Free loopback ports that no other control plane was given (a stopped one keeps its ports)."""
        recorded = recorded_plane_ports(session)
        while True:
            ports = ControlPlanePorts.free()
            if recorded.isdisjoint(astuple(ports)):
                return ports

    def _owned(self, data_dir: Path) -> bool:
        return data_dir.parent == self.root and data_dir.name.startswith("c")

    # -- the operation steps -----------------------------------------------------------------------------

    def ensure(self, session: Session, cluster: ManagedCluster) -> bool:
        """Bring `cluster`'s control plane to Running (recorded first, then started or adopted, /readyz
        waited for); True if a step was taken, False if it was Running and serving already. Raises
        ControlPlaneFailedError (the plane then Failed, its processes stopped, its data kept)."""
        record = cluster.control_plane
        if record is None:
            ports = self._unrecorded_ports(session)
            record = ClusterControlPlane(
                cluster_id=cluster.id,
                data_dir=str(self.root / f"c{cluster.id}-{secrets.token_hex(4)}"),
                phase=ControlPlanePhase.PROVISIONING,
                message="provisioning",
                **{column: getattr(ports, name) for name, column in PORT_COLUMNS.items()},
            )
            cluster.control_plane = record
            session.commit()  # write-ahead: the data directory and ports are known before any process
        elif record.phase == ControlPlanePhase.RUNNING and self._serving(record, cluster.fqdn):
            return False
        record.phase = ControlPlanePhase.PROVISIONING
        session.commit()
        data_dir = Path(record.data_dir)
        try:
            plane = self._plane(record, cluster.fqdn)
            started = plane.start()
            log.info("cluster %s: control plane: started %s", cluster.name, ", ".join(started) or "nothing")
            seconds = plane.wait_ready(self.ready_timeout)
            self._grant_cluster_users(plane)
            version = plane.server_version()
        except TrustedLaunchError as exc:
            stop_control_plane_processes(data_dir)  # no process left behind; the data stays for a retry
            record.phase = ControlPlanePhase.FAILED
            record.message = f"control plane of cluster {cluster.name} failed: {exc}"[:4000]
            record.updated_at = utc_now()
            session.commit()
            raise ControlPlaneFailedError(
                ArmError(500, "ControlPlaneProvisioningFailed", record.message, cluster.name)
            ) from exc
        record.phase = ControlPlanePhase.RUNNING
        record.ready_seconds = seconds
        record.server_version = version
        record.message = f"ready after {seconds:.1f} s"
        record.updated_at = utc_now()
        session.commit()
        log.info("cluster %s: control plane ready on %s", cluster.name, server_url(record))
        return True

    def remove(self, session: Session, cluster: ManagedCluster) -> bool:
        """Stop `cluster`'s control-plane processes and remove its data; True if there was one."""
        record = cluster.control_plane
        if record is None:
            return False
        record.phase = ControlPlanePhase.DELETING
        session.commit()
        data_dir = Path(record.data_dir)
        self._close_adapter(data_dir)
        self._restarts.pop(record.data_dir, None)
        stop_control_plane_processes(data_dir)
        if self._owned(data_dir):
            shutil.rmtree(data_dir, ignore_errors=True)
        cluster.control_plane = None
        session.commit()
        log.info("cluster %s: control plane stopped and its data removed", cluster.name)
        return True

    # -- adoption and supervision ------------------------------------------------------------------------

    def supervise(self, session: Session) -> dict[str, list[str]]:
        """Start again, with their data kept, the dead components of every Running control plane (the
        running ones are adopted as they are); cluster name -> components started."""
        restarted = {}
        records = session.scalars(
            select(ClusterControlPlane).where(ClusterControlPlane.phase == ControlPlanePhase.RUNNING)
        )
        now = time.monotonic()
        for record in records:
            running = set(control_plane_processes(Path(record.data_dir)).values())
            in_a_row, next_at = self._restarts.get(record.data_dir, (0, 0.0))
            if running >= set(COMPONENTS):
                if in_a_row and now >= next_at + RESTART_FORGIVEN_AFTER:
                    del self._restarts[record.data_dir]  # it stayed up: the back-off starts over
                continue
            if now < next_at:
                continue  # crash-looping: wait out the back-off
            name = record.cluster.name
            delay = min(RESTART_BACKOFF_SECONDS[0] * 2**in_a_row, RESTART_BACKOFF_SECONDS[1])
            self._restarts[record.data_dir] = (in_a_row + 1, now + delay)
            try:
                started = self._plane(record, record.cluster.fqdn).start()
            except TrustedLaunchError as exc:
                log.error("cluster %s: control plane: cannot restart: %s", name, exc)
                record.message = f"cannot restart: {exc}"[:4000]
                continue
            log.warning("cluster %s: control plane: restarted %s", name, ", ".join(started))
            record.message = f"restarted {', '.join(started)} (restart {in_a_row + 1} in a row)"
            record.updated_at = utc_now()
            restarted[name] = started
        session.commit()
        return restarted

    def remove_orphans(self, session: Session) -> list[Path]:
        """Stop the processes of, and remove, every data directory under `clusters/` that no control plane
        record names (a cluster deleted while its reconciler was killed); the directories removed."""
        if not self.root.is_dir():
            return []
        recorded = set(session.scalars(select(ClusterControlPlane.data_dir)))
        orphans = [path for path in self.root.iterdir() if str(path) not in recorded and self._owned(path)]
        for path in orphans:
            log.warning("removing orphan control plane %s", path)
            stop_control_plane_processes(path)
            shutil.rmtree(path, ignore_errors=True)
        return orphans

    # -- Kubernetes ----------------------------------------------------------------------------------------

    def node_adapter(self, node: Node) -> KubernetesNodeAdapter | None:
        """The Kubernetes adapter of the kube-apiserver of `node`'s cluster (its admin credential), made once
        and kept while the control plane exists; None while it has no control plane or no credential yet."""
        cluster = node.pool.cluster
        record = cluster.control_plane
        if record is None:
            return None
        with self._adapters_lock:
            adapter = self._adapters.get(record.data_dir)
            if adapter is None:
                kubeconfig = Path(record.data_dir) / "admin.kubeconfig"
                if not kubeconfig.is_file():
                    return None
                try:
                    adapter = KubernetesNodeAdapter(kubeconfig)
                except KubernetesAdapterError as exc:
                    log.error("cluster %s: %s", cluster.name, exc)
                    return None
                self._adapters[record.data_dir] = adapter
            return adapter

    def _close_adapter(self, data_dir: Path) -> None:
        with self._adapters_lock:
            adapter = self._adapters.pop(str(data_dir), None)
        if adapter is not None:
            adapter.close()

    def close(self) -> None:
        """Close the Kubernetes adapters' connections (the control planes keep running)."""
        with self._adapters_lock:
            adapters, self._adapters = list(self._adapters.values()), {}
        for adapter in adapters:
            adapter.close()

    @staticmethod
    def _serving(record: ClusterControlPlane, fqdn: str) -> bool:
        if set(control_plane_processes(Path(record.data_dir)).values()) < set(COMPONENTS):
            return False
        ca = ClusterPki(Path(record.data_dir) / "pki")
        try:
            with httpx.Client(verify=_tls_context(ca), timeout=READYZ_TIMEOUT) as client:
                return client.get(f"{server_url(record)}/readyz").text == "ok"
        except (httpx.HTTPError, OSError):
            return False

    @staticmethod
    def _grant_cluster_users(plane: HostedControlPlane) -> None:
        """Bind the clusterUser credential's group to the `edit` ClusterRole (server-side apply)."""
        binding = ClusterRoleBinding(
            metadata=ObjectMeta(name=CLUSTER_USER_BINDING, labels={MANAGED_BY_LABEL: FIELD_MANAGER}),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=CLUSTER_USER_ROLE),
            subjects=[Subject(apiGroup="rbac.authorization.k8s.io", kind="Group", name=CLUSTER_USER_GROUP)],
        )
        try:
            client = Client(KubeConfig.from_file(plane.admin_kubeconfig), field_manager=FIELD_MANAGER)
            try:
                client.apply(binding, force=True)
            finally:
                client.close()
        except (ApiError, ConfigError, httpx2.HTTPError, OSError) as exc:
            raise TrustedLaunchError(
                f"kube-apiserver refused the ClusterRoleBinding {CLUSTER_USER_BINDING}: {exc}"
            ) from exc


def _tls_context(pki: ClusterPki) -> ssl.SSLContext:
    """Trusting the cluster CA, presenting the admin client certificate."""
    context = ssl.create_default_context(cafile=pki.ca_cert)
    context.load_cert_chain(*pki.pair("admin"))
    return context


@dataclass(frozen=True)
class HostedCredential:
    """Where a cluster's kube-apiserver listens and the client certificate of one of its credentials
    (kubeconfig `user` entry)."""

    api_server: ApiServer
    user: dict[str, str]


def hosted_credential(cluster: ManagedCluster, admin: bool) -> HostedCredential | None:
    """The admin (system:masters) or clusterUser (`edit`) client certificate of `cluster`'s hosted control
    plane, None if it has none; 409 ControlPlaneNotReady while its PKI does not exist yet."""
    record = cluster.control_plane
    if record is None:
        return None
    pki = ClusterPki(Path(record.data_dir) / "pki")
    certificate, key = pki.pair("admin" if admin else "cluster-user")
    try:
        authority, cert_pem, key_pem = (path.read_bytes() for path in (pki.ca_cert, certificate, key))
    except OSError:
        raise conflict(
            "ControlPlaneNotReady",
            f"The control plane of cluster '{cluster.display_name}' is {record.phase}: "
            "it has no credentials yet.",
            cluster.name,
        ) from None
    return HostedCredential(
        ApiServer(server_url(record), base64.b64encode(authority).decode()),
        {
            "client-certificate-data": base64.b64encode(cert_pem).decode(),
            "client-key-data": base64.b64encode(key_pem).decode(),
        },
    )


def current_kubernetes_version(cluster: ManagedCluster) -> str:
    """The version `cluster` runs: what its kube-apiserver answered on /version once its control plane was
    ready, else (no hosted control plane) the installed release its kubernetesVersion names."""
    record = cluster.control_plane
    if record is not None and record.server_version:
        return record.server_version.removeprefix("v")
    return running_kubernetes_version(cluster.kubernetes_version)
