"""A hosted control plane that does not come up (kube-apiserver's port is taken): the step fails with an
ARM error naming the component and the end of its log, no process is left, the data stays, and the next
attempt (the port free again) brings it up with the same data. Credentials: 409 before the PKI exists.
Once up: its version from /version, the Kubernetes adapter of its nodes, and the restart back-off."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from kube_apiserver import read_node, register_node
from lightkube import Client, KubeConfig

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_pki import ClusterPki, apiserver_ip_addresses
from trustedlaunch.control.cluster_planes import (
    RESTART_BACKOFF_SECONDS,
    ClusterPlanes,
    ControlPlaneFailedError,
    current_kubernetes_version,
    hosted_credential,
)
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.hosted_control_plane import (
    NODE_NETWORK_ADDRESS_ENV,
    ControlPlanePorts,
    control_plane_processes,
    stop_control_plane_processes,
)
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION, KubernetesRelease
from trustedlaunch.control.node_join import node_network
from trustedlaunch.node.kubelet import NodeNetwork
from trustedlaunch.store.models import ClusterControlPlane, ManagedCluster, Node

pytestmark = pytest.mark.slow


def test_a_component_that_fails_fails_the_step_by_name_and_leaves_no_process(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    planes = ClusterPlanes(tmp_path / "state", release=lambda: kubernetes_release, ready_timeout=60)
    ports = ControlPlanePorts.free()
    taken = socket.socket()
    taken.bind(("127.0.0.1", ports.apiserver))
    taken.listen()
    try:
        with sessions() as session:
            cluster = ManagedCluster(
                subscription_id="00000000-0000-0000-0000-000000000000",
                resource_group="rg",
                name="failing",
                display_name="failing",
                location="eastus",
                kubernetes_version="1.36.3",
                dns_prefix="failing",
                fqdn="failing-rg-000000.hcp.eastus.trustedlaunch.internal",
                kube_token="unused",
                provisioning_state="Creating",
            )
            cluster.control_plane = ClusterControlPlane(
                data_dir=str(planes.root / "c1-test"),
                phase="Provisioning",
                apiserver_port=ports.apiserver,
                etcd_client_port=ports.etcd_client,
                etcd_peer_port=ports.etcd_peer,
                controller_manager_port=ports.controller_manager,
                scheduler_port=ports.scheduler,
                message="provisioning",
            )
            session.add(cluster)
            session.commit()
            with pytest.raises(ArmError) as not_ready:  # recorded, no PKI yet
                hosted_credential(cluster, admin=True)
            assert (not_ready.value.status, not_ready.value.code) == (409, "ControlPlaneNotReady")
            with pytest.raises(ControlPlaneFailedError) as failed:
                planes.ensure(session, cluster)
            error = failed.value.error
            assert error.code == "ControlPlaneProvisioningFailed" and error.target == "failing"
            assert "kube-apiserver of failing-rg-000000" in error.message
            assert "address already in use" in error.message  # the end of kube-apiserver's log
            data_dir = planes.root / "c1-test"
            assert control_plane_processes(data_dir) == {}
            assert (data_dir / "etcd").is_dir() and (data_dir / "pki" / "ca.crt").is_file()
            assert cluster.control_plane is not None and cluster.control_plane.phase == "Failed"

            taken.close()
            ca = (data_dir / "pki" / "ca.crt").read_bytes()
            assert planes.ensure(session, cluster)  # the next attempt, on the same data
            assert cluster.control_plane.phase == "Running"
            assert (data_dir / "pki" / "ca.crt").read_bytes() == ca
            assert not planes.ensure(session, cluster)  # Running and serving: nothing to do
            credential = hosted_credential(cluster, admin=False)
            assert credential is not None
            assert credential.api_server.server == f"https://127.0.0.1:{ports.apiserver}"
            assert set(credential.user) == {"client-certificate-data", "client-key-data"}
            assert cluster.control_plane.server_version == KUBERNETES_VERSION  # its /version
            assert current_kubernetes_version(cluster) == KUBERNETES_VERSION.removeprefix("v")

            # the verdicts of the cluster's nodes go to its own kube-apiserver, with its admin credential
            node = cast(Node, SimpleNamespace(pool=SimpleNamespace(cluster=cluster)))
            adapter = planes.node_adapter(node)
            assert adapter is not None and planes.node_adapter(node) is adapter
            with Client(KubeConfig.from_file(data_dir / "admin.kubeconfig"), trust_env=False) as admin:
                register_node(admin, "aks-failing-0")
                assert adapter.quarantine("aks-failing-0", "Secure Boot disabled")
                assert read_node(admin, "aks-failing-0")["spec"]["unschedulable"] is True

            # a component that keeps dying is restarted with a growing back-off
            def kill(component: str) -> None:
                [pid] = [pid for pid, name in control_plane_processes(data_dir).items() if name == component]
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while component in control_plane_processes(data_dir).values():
                    assert time.monotonic() < deadline, f"{component} still running"
                    time.sleep(0.1)

            kill("kube-scheduler")
            assert planes.supervise(session) == {"failing": ["kube-scheduler"]}
            kill("kube-scheduler")
            assert planes.supervise(session) == {}  # within its back-off
            assert "kube-scheduler" not in control_plane_processes(data_dir).values()
            time.sleep(RESTART_BACKOFF_SECONDS[0])
            assert planes.supervise(session) == {"failing": ["kube-scheduler"]}
            assert cluster.control_plane.message == "restarted kube-scheduler (restart 2 in a row)"

            assert planes.remove(session, cluster)
            assert control_plane_processes(data_dir) == {} and not data_dir.exists()
            assert planes.node_adapter(node) is None
    finally:
        taken.close()
        engine.dispose()


def test_a_node_network_address_moves_a_running_plane_there(
    kubernetes_release: KubernetesRelease, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TL_NODE_NETWORK_ADDRESS (here 127.0.0.2, another loopback address): a plane made without it is
    restarted listening there only, its serving certificate names it, and credentials and the nodes' network
    point there."""
    monkeypatch.delenv(NODE_NETWORK_ADDRESS_ENV, raising=False)
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", None)
    try:
        with sessions() as session:
            cluster = ManagedCluster(
                subscription_id="00000000-0000-0000-0000-000000000000",
                resource_group="rg",
                name="moved",
                display_name="moved",
                location="eastus",
                kubernetes_version="1.36.3",
                dns_prefix="moved",
                fqdn="moved-rg-000000.hcp.eastus.trustedlaunch.internal",
                kube_token="unused",
                provisioning_state="Creating",
            )
            session.add(cluster)
            session.commit()
            state = tmp_path / "state"
            assert ClusterPlanes(state, release=lambda: kubernetes_release).ensure(session, cluster)
            record = cluster.control_plane
            assert record is not None and record.phase == "Running"
            data_dir, port = Path(record.data_dir), record.apiserver_port
            assert apiserver_ip_addresses(ClusterPki(data_dir / "pki")) == ["127.0.0.1", "10.0.0.1"]

            before = {name: pid for pid, name in control_plane_processes(data_dir).items()}

            monkeypatch.setenv(NODE_NETWORK_ADDRESS_ENV, "127.0.0.2")
            planes = ClusterPlanes(state, release=lambda: kubernetes_release)
            assert planes.ensure(session, cluster)  # not serving at the new address: restarted there
            assert record.phase == "Running" and not planes.ensure(session, cluster)
            after = {name: pid for pid, name in control_plane_processes(data_dir).items()}
            # etcd kept; kube-apiserver (its flags) and the controllers (their kubeconfigs) restarted
            assert [name for name in after if after[name] == before[name]] == ["etcd"]
            assert "127.0.0.2" in apiserver_ip_addresses(ClusterPki(data_dir / "pki"))
            credential = hosted_credential(cluster, admin=True)
            assert credential is not None and credential.api_server.server == f"https://127.0.0.2:{port}"
            with pytest.raises(ConnectionRefusedError):  # no longer on 127.0.0.1
                socket.create_connection(("127.0.0.1", port), 5).close()
            with Client(KubeConfig.from_file(data_dir / "admin.kubeconfig"), trust_env=False) as admin:
                register_node(admin, "aks-moved-0")  # over TLS to 127.0.0.2, verified with the cluster CA
            pool = SimpleNamespace(cluster=cluster)
            node = cast(Node, SimpleNamespace(name="aks-moved-0", kubelet_port=40123, host=None, pool=pool))
            assert node_network(node) == NodeNetwork(port, 40123, apiserver_address="127.0.0.2")
            assert planes.remove(session, cluster)
    finally:
        for data_dir in (tmp_path / "state" / "clusters").glob("c*"):  # a failed assertion's plane
            stop_control_plane_processes(data_dir)
        engine.dispose()
