"""A real hosted control plane from the cached release: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler with the cluster's PKI on loopback, checked with the cached kubectl, then stopped with no
process left behind."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cached_kubectl import kubectl
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Namespace

from trustedlaunch.control.cluster_pki import create_cluster_pki
from trustedlaunch.control.hosted_control_plane import (
    COMPONENTS,
    STOP_GRACE_SECONDS,
    ControlPlaneError,
    ControlPlanePorts,
    HostedControlPlane,
    client_kubeconfig,
    control_plane_processes,
    stop_control_plane_processes,
)
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION, KubernetesRelease
from trustedlaunch.control.node_processes import command_line

pytestmark = pytest.mark.slow

FQDN = "aks1-rg1-0a1b2c.hcp.eastus.trustedlaunch.internal"


@pytest.fixture(scope="module")
def control_plane(
    kubernetes_release: KubernetesRelease, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HostedControlPlane]:
    plane = HostedControlPlane(
        kubernetes_release, tmp_path_factory.mktemp("cluster") / "aks1", FQDN, ControlPlanePorts.free()
    )
    try:
        plane.start()
        seconds = plane.wait_ready()
        memory = plane.resident_memory()
        print(
            f"\n/readyz after {seconds:.1f} s; RSS MiB: "
            + ", ".join(f"{c} {b >> 20}" for c, b in memory.items())
        )
        yield plane
    finally:
        plane.stop()


def test_kubectl_lists_namespaces_as_the_cluster_admin(
    control_plane: HostedControlPlane, kubernetes_release: KubernetesRelease
) -> None:
    names = kubectl(
        kubernetes_release, control_plane.admin_kubeconfig, "get", "ns", "-o", "name"
    ).stdout.split()
    assert {"namespace/default", "namespace/kube-system", "namespace/kube-public"} <= set(names)


def test_auth_whoami_names_the_admin_client_certificate(
    control_plane: HostedControlPlane, kubernetes_release: KubernetesRelease
) -> None:
    review = json.loads(
        kubectl(kubernetes_release, control_plane.admin_kubeconfig, "auth", "whoami", "-o", "json").stdout
    )
    user = review["status"]["userInfo"]
    assert user["username"] == "clusterAdmin"
    assert "system:masters" in user["groups"]


def test_the_api_server_reports_the_pinned_version(control_plane: HostedControlPlane) -> None:
    version = httpx.get(f"{control_plane.server}/version", verify=control_plane.tls_context(None)).json()
    assert version["gitVersion"] == KUBERNETES_VERSION


def test_a_client_certificate_of_another_cluster_ca_is_refused(
    control_plane: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    other = create_cluster_pki(tmp_path / "other-pki", "other.hcp.eastus.trustedlaunch.internal")
    cert, key = other.pair("admin")  # same subject (clusterAdmin, system:masters), another cluster's CA
    kubeconfig = tmp_path / "foreign.kubeconfig"
    kubeconfig.write_text(
        client_kubeconfig(control_plane.server, control_plane.pki.ca_cert, cert, key, "foreign")
    )
    result = kubectl(kubernetes_release, kubeconfig, "get", "ns", check=False)
    assert result.returncode != 0
    assert "You must be logged in to the server" in result.stderr
    foreign = ssl.create_default_context(cafile=control_plane.pki.ca_cert)
    foreign.load_cert_chain(cert, key)
    assert httpx.get(f"{control_plane.server}/api", verify=foreign).status_code == 401


def test_the_controllers_are_healthy(control_plane: HostedControlPlane) -> None:
    for port in (control_plane.ports.controller_manager, control_plane.ports.scheduler):
        # their serving certificates are self-signed in --cert-dir: only /healthz is fetched unverified
        answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=False, timeout=10)
        assert answer.text == "ok"
    control_plane.check_running()


def test_stop_leaves_no_process_behind_and_a_restart_keeps_the_data(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    plane = HostedControlPlane(kubernetes_release, tmp_path / "aks2", FQDN, ControlPlanePorts.free())
    plane.start()
    try:
        plane.wait_ready()
        running = control_plane_processes(plane.data_dir)
        assert sorted(running.values()) == sorted(COMPONENTS)  # binaries are named as the components
        assert all(process.pid in running for process in plane.processes.values())
        kubectl(kubernetes_release, plane.admin_kubeconfig, "create", "namespace", "tl-kept")
    finally:
        stopping = time.monotonic()
        plane.stop()
    assert time.monotonic() - stopping < STOP_GRACE_SECONDS  # each stopped on SIGTERM, none needed SIGKILL
    assert control_plane_processes(plane.data_dir) == {}
    assert plane.processes == {}

    ca_before = plane.pki.ca_cert.read_bytes()
    plane.start()
    try:
        plane.wait_ready()
        assert plane.pki.ca_cert.read_bytes() == ca_before  # the same PKI: handed-out kubeconfigs stay valid
        kubectl(kubernetes_release, plane.admin_kubeconfig, "get", "namespace", "tl-kept")
    finally:
        plane.stop()
    assert control_plane_processes(plane.data_dir) == {}


def test_kubectl_apply_is_stored_and_the_controllers_act_on_it(
    control_plane: HostedControlPlane, kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """A namespace and a pod applied as admin: the controller-manager gives the namespace its default
    service account and CA bundle, and the scheduler reports that no node can take the pod (none joined)."""
    manifest = tmp_path / "objects.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: tl-proof}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waiting, namespace: tl-proof}\n"
        "spec: {containers: [{name: c, image: registry.invalid/pause:1}]}\n"
    )
    admin = control_plane.admin_kubeconfig
    applied = kubectl(kubernetes_release, admin, "apply", "-f", str(manifest)).stdout
    assert "namespace/tl-proof created" in applied and "pod/waiting created" in applied
    deadline = time.monotonic() + 60
    while True:
        names = kubectl(
            kubernetes_release, admin, "-n", "tl-proof", "get", "sa,cm,events", "-o", "name"
        ).stdout
        reasons = kubectl(
            kubernetes_release, admin, "-n", "tl-proof", "get", "events", "-o", "jsonpath={.items[*].reason}"
        ).stdout
        if {"serviceaccount/default", "configmap/kube-root-ca.crt"} <= set(names.split()) and (
            "FailedScheduling" in reasons
        ):
            break
        assert time.monotonic() < deadline, names + reasons
        time.sleep(1)


def test_a_process_that_dies_at_start_is_named_with_its_log(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    ports = ControlPlanePorts.free()
    with socket.socket() as squatter:  # something else already listens on etcd's client port
        squatter.bind(("127.0.0.1", ports.etcd_client))
        squatter.listen()
        plane = HostedControlPlane(kubernetes_release, tmp_path / "aks3", FQDN, ports)
        try:
            plane.start()
            with pytest.raises(
                ControlPlaneError, match=r"(?s)etcd of .* exited with code 1.*address already in use"
            ):
                plane.wait_ready(timeout=60)
        finally:
            plane.stop()
    assert control_plane_processes(plane.data_dir) == {}


LAUNCHER = """
import sys
from pathlib import Path
from trustedlaunch.control.hosted_control_plane import ControlPlanePorts, HostedControlPlane
from trustedlaunch.control.kubernetes_release import verified_release
plane = HostedControlPlane(verified_release(), Path(sys.argv[1]), sys.argv[2], ControlPlanePorts.free())
plane.start()
plane.wait_ready()
print(plane.server, flush=True)
sys.stdin.read()
"""


def test_the_processes_outlive_a_killed_launcher_and_are_found_and_stopped(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """kill -9 of the process that started the control plane (as of `tl serve`) leaves it serving; the
    processes are found by their data directory and stopped, none left."""
    data_dir = tmp_path / "aks4"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(data_dir), FQDN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert launcher.stdout is not None
        server = launcher.stdout.readline().strip()
        assert server.startswith("https://127.0.0.1:"), "the launcher did not report a ready control plane"
        launcher.kill()
        launcher.wait()
        running = control_plane_processes(data_dir)
        assert sorted(running.values()) == sorted(COMPONENTS)
        admin = data_dir / "admin.kubeconfig"
        assert "namespace/default" in kubectl(kubernetes_release, admin, "get", "ns", "-o", "name").stdout
    finally:
        launcher.kill()
        stopped = stop_control_plane_processes(data_dir)
    assert sorted(stopped) == sorted(running)
    assert control_plane_processes(data_dir) == {}
    assert (data_dir / "etcd" / "member").is_dir()  # the data stays for a later start


class PlaneOfAnOlderRelease(HostedControlPlane):
    """A control plane as an older trustedlaunch started it: its scheduler with another command line."""

    def command(self, component: str) -> list[str]:
        command = super().command(component)
        return [*command, "--v=1"] if component == "kube-scheduler" else command


def test_a_process_with_an_older_command_line_is_replaced_when_adopted(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    """Adopting a running plane (as the next `tl serve` does) replaces a process started with another
    command line than this release's (an upgrade's new flags reach running planes) and keeps the others."""
    data_dir = tmp_path / "aks5"
    ports = ControlPlanePorts.free()
    try:
        older = PlaneOfAnOlderRelease(kubernetes_release, data_dir, FQDN, ports)
        assert sorted(older.start()) == sorted(COMPONENTS)
        older.wait_ready()
        before = {component: pid for pid, component in control_plane_processes(data_dir).items()}
        current = HostedControlPlane(kubernetes_release, data_dir, FQDN, ports)
        assert current.start() == ["kube-scheduler"]
        current.wait_ready()
        after = {component: pid for pid, component in control_plane_processes(data_dir).items()}
        assert after["kube-scheduler"] != before["kube-scheduler"]
        assert command_line(after["kube-scheduler"]) == current.command("kube-scheduler")
        kept = [component for component in COMPONENTS if component != "kube-scheduler"]
        assert [after[component] for component in kept] == [before[component] for component in kept]
        assert current.start() == []  # its command lines are this release's now: adopted as they are
    finally:
        stop_control_plane_processes(data_dir)
    assert control_plane_processes(data_dir) == {}


def test_lightkube_reads_the_admin_kubeconfig(control_plane: HostedControlPlane) -> None:
    """The client library of the Kubernetes adapter accepts the kubeconfig (embedded CA and client cert)."""
    config = KubeConfig.from_file(control_plane.admin_kubeconfig)
    client = Client(config=config)
    try:
        names = {namespace.metadata.name for namespace in client.list(Namespace) if namespace.metadata}
    finally:
        client.close()
    assert {"default", "kube-system"} <= names
