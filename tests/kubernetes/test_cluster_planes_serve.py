"""Each managed cluster's own control plane, through a real `tl serve` (TL_HOSTED_CONTROL_PLANES=1): a
cluster (with one plain node VM: AKS needs a System pool) is Succeeded once its kube-apiserver answers
/readyz and its node is ready; the kubeconfigs of `tl
aks get-credentials` (admin and user) work with the cached kubectl and with lightkube; a kill -9 of `tl
serve` is followed by a serve that adopts the running processes and starts the dead one again with etcd's
data kept; two clusters refuse each other's credentials; delete leaves no process and no data."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from cached_kubectl import kubectl
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.resources.core_v1 import Node as KubernetesNode
from serve_process import start_serve
from sqlalchemy import select

from trustedlaunch.control.cluster_planes import (
    CLUSTER_USER_GROUP,
    HOSTED_CONTROL_PLANES_ENV,
    SUPERVISE_SECONDS,
)
from trustedlaunch.control.features import DELAY_ENV
from trustedlaunch.control.hosted_control_plane import (
    COMPONENTS,
    control_plane_processes,
    stop_control_plane_processes,
)
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION, KubernetesRelease, cache_root
from trustedlaunch.control.node_join import JOIN_TAINT_KEYS
from trustedlaunch.control.node_processes import kill_node_processes, node_processes
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import AgentPool, ClusterControlPlane, ManagedCluster, Node

pytestmark = pytest.mark.slow

SUB = "00000000-0000-0000-0000-000000000000"
GROUP = f"/subscriptions/{SUB}/resourceGroups/rg-cp/providers/Microsoft.ContainerService/managedClusters"
API = {"api-version": "2024-09-01"}
OPERATION_TIMEOUT = 400.0
# AKS needs a System pool of at least one node: one plain VM (no Secure Boot, no vTPM: no attestation).
ONE_NODE_POOL = {"name": "nodepool1", "count": 1, "vmSize": "Standard_D2s_v3"}
T = TypeVar("T")


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while (value := probe()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return value


@dataclass
class Serve:
    """A `tl serve` on a store of its own, which a test may kill and start again."""

    base: Path
    env: dict[str, str]
    process: subprocess.Popen[str] | None = None
    url: str = ""
    kubeconfigs: dict[str, Path] = field(default_factory=dict)

    def start(self) -> None:
        self.process, self.url, _ = start_serve(self.env, "--attestation-interval", "0", "--no-auto-repair")

    @property
    def token(self) -> str:
        return (self.base / "config" / "trustedlaunch" / "admin-token").read_text().strip()

    def client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.Client(base_url=self.url, headers=headers, params=API, timeout=60)

    @property
    def state_dir(self) -> Path:
        return self.base / "data" / "trustedlaunch" / "nodes"

    def control_plane(self, cluster: str) -> ClusterControlPlane:
        record = self.find_control_plane(cluster)
        assert record is not None, f"cluster {cluster} has no control plane record"
        return record

    def find_control_plane(self, cluster: str) -> ClusterControlPlane | None:
        engine = make_engine(self.env["TL_DATABASE_URL"])
        try:
            with session_factory(engine)() as session:
                record = session.scalar(
                    select(ClusterControlPlane).join(ManagedCluster).where(ManagedCluster.name == cluster)
                )
                if record is not None:
                    session.expunge(record)
                return record
        finally:
            engine.dispose()

    def tl(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "TL_ENDPOINT": self.url, "TL_TOKEN": self.token}
        return subprocess.run(
            [str(Path(sys.executable).parent / "tl"), *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, kubernetes_release: KubernetesRelease) -> Iterator[Serve]:
    base = tmp_path_factory.mktemp("cp-serve")
    env = {
        **os.environ,
        "HOME": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "XDG_CACHE_HOME": str(cache_root().parent.parent),  # the release `make setup` built
        "TL_DATABASE_URL": f"sqlite:///{base / 'serve.db'}",
        HOSTED_CONTROL_PLANES_ENV: "1",
        DELAY_ENV: "0",
    }
    running = Serve(base, env)
    running.start()
    try:
        with running.client() as client:  # the group the tests' clusters live in
            client.put(
                f"/subscriptions/{SUB}/resourceGroups/rg-cp",
                json={"location": "eastus"},
                params={"api-version": "2025-04-01"},
            ).raise_for_status()
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.process.terminate()
            running.process.wait(timeout=60)
        for directory in (running.state_dir / "clusters").glob("c*"):  # whatever a failed test left
            stop_control_plane_processes(directory)
        kill_node_processes(running.state_dir)


def finish(serve: Serve, response: httpx.Response) -> dict[str, object]:
    assert response.status_code in (200, 201, 202), response.text
    current = httpx.URL(serve.url)  # the serve now running (it may have been started again since)
    url = httpx.URL(response.headers["Azure-AsyncOperation"]).copy_with(port=current.port)
    with serve.client() as client:

        def ended() -> dict[str, object] | None:
            status: dict[str, object] = client.get(url).json()
            return status if status["status"] != "InProgress" else None

        return wait_until(ended, OPERATION_TIMEOUT, f"operation {url}")


def create_cluster(serve: Serve, name: str) -> float:
    """PUT a cluster with one node, wait for its operation; the seconds it took."""
    started = time.monotonic()
    body = {"location": "eastus", "properties": {"agentPoolProfiles": [ONE_NODE_POOL]}}
    with serve.client() as client:
        response = client.put(f"{GROUP}/{name}", json=body)
    status = finish(serve, response)
    assert status["status"] == "Succeeded", status
    return time.monotonic() - started


def get_credentials(serve: Serve, cluster: str, *options: str) -> Path:
    target = serve.base / f"{cluster}{''.join(options)}.kubeconfig"
    serve.tl("aks", "get-credentials", "-g", "rg-cp", "-n", cluster, "-f", str(target), *options)
    return target


def whoami(release: KubernetesRelease, kubeconfig: Path) -> dict[str, object]:
    review = json.loads(kubectl(release, kubeconfig, "auth", "whoami", "-o", "json").stdout)
    user: dict[str, object] = review["status"]["userInfo"]
    return user


CONFIG_MAP = """apiVersion: v1
kind: ConfigMap
metadata: {name: kept, namespace: default}
data: {written: before-the-kill}
"""


def test_a_created_cluster_is_ready_and_its_credentials_work(
    serve: Serve, kubernetes_release: KubernetesRelease
) -> None:
    seconds = create_cluster(serve, "cpa")
    record = serve.control_plane("cpa")
    assert record.phase == "Running" and record.ready_seconds is not None
    print(f"\ncluster cpa: create to Succeeded {seconds:.1f} s, to /readyz {record.ready_seconds:.1f} s")
    assert sorted(control_plane_processes(Path(record.data_dir)).values()) == sorted(COMPONENTS)
    with serve.client() as client:
        properties = client.get(f"{GROUP}/cpa").json()["properties"]
    assert record.server_version == KUBERNETES_VERSION  # what its kube-apiserver answered on /version
    assert properties["currentKubernetesVersion"] == KUBERNETES_VERSION.removeprefix("v")

    admin = get_credentials(serve, "cpa", "--admin")
    config = yaml.safe_load(admin.read_text())
    assert config["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{record.apiserver_port}"
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).startswith(
        b"-----BEGIN CERTIFICATE-----"
    )
    names = kubectl(kubernetes_release, admin, "get", "ns", "-o", "name").stdout.split()
    assert {"namespace/default", "namespace/kube-system"} <= set(names)
    user = whoami(kubernetes_release, admin)
    assert user["username"] == "clusterAdmin" and "system:masters" in user["groups"]  # type: ignore[operator]
    applied = kubectl(kubernetes_release, admin, "apply", "-f", "-", stdin=CONFIG_MAP)
    assert "configmap/kept created" in applied.stdout
    nodes = json.loads(kubectl(kubernetes_release, admin, "get", "nodes", "-o", "json").stdout)["items"]
    [node] = nodes  # the pool's one node joined before the cluster was Succeeded
    assert node["metadata"]["labels"]["kubernetes.azure.com/agentpool"] == "nodepool1"
    conditions = {condition["type"]: condition["status"] for condition in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"

    with Client(KubeConfig.from_file(admin)) as client:
        assert "kube-system" in {ns.metadata.name for ns in client.list(Namespace) if ns.metadata}
        assert client.get(ConfigMap, "kept", namespace="default").data == {"written": "before-the-kill"}

    user_config = get_credentials(serve, "cpa")
    cluster_user = whoami(kubernetes_release, user_config)
    assert cluster_user["username"] == "clusterUser"
    assert CLUSTER_USER_GROUP in cluster_user["groups"]  # type: ignore[operator]
    kubectl(kubernetes_release, user_config, "get", "ns")  # the `edit` role reads namespaces
    created = kubectl(kubernetes_release, user_config, "create", "configmap", "by-user", "-n", "default")
    assert "configmap/by-user created" in created.stdout
    refused = kubectl(kubernetes_release, user_config, "get", "nodes", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr  # `edit` is namespaced only
    serve.kubeconfigs["cpa"] = admin


def test_kill_9_of_serve_adopts_running_processes_and_restarts_dead_ones(
    serve: Serve, kubernetes_release: KubernetesRelease
) -> None:
    record = serve.control_plane("cpa")
    data_dir = Path(record.data_dir)
    before = {name: pid for pid, name in control_plane_processes(data_dir).items()}
    assert serve.process is not None
    serve.process.send_signal(signal.SIGKILL)
    serve.process.wait(timeout=30)
    os.kill(before["kube-scheduler"], signal.SIGKILL)  # one component dies while no reconciler runs
    wait_until(
        lambda: "kube-scheduler" not in control_plane_processes(data_dir).values() or None,
        10,
        "kube-scheduler gone",
    )

    serve.start()

    def restarted() -> dict[str, int] | None:
        found = {name: pid for pid, name in control_plane_processes(data_dir).items()}
        return found if sorted(found) == sorted(COMPONENTS) else None

    after = wait_until(restarted, 60, "kube-scheduler started again")
    for component in ("etcd", "kube-apiserver", "kube-controller-manager"):
        assert after[component] == before[component], f"{component} was not adopted"
    assert after["kube-scheduler"] != before["kube-scheduler"]
    assert len(control_plane_processes(data_dir)) == len(COMPONENTS)  # no orphan, no duplicate
    with serve.client() as client:
        cluster = client.get(f"{GROUP}/cpa").json()
    assert cluster["properties"]["provisioningState"] == "Succeeded"
    kept = kubectl(kubernetes_release, serve.kubeconfigs["cpa"], "get", "configmap", "kept", "-o", "json")
    assert json.loads(kept.stdout)["data"] == {"written": "before-the-kill"}  # etcd's data kept


def test_a_component_that_dies_under_serve_is_started_again(
    serve: Serve, kubernetes_release: KubernetesRelease
) -> None:
    data_dir = Path(serve.control_plane("cpa").data_dir)
    before = {name: pid for pid, name in control_plane_processes(data_dir).items()}
    os.kill(before["kube-apiserver"], signal.SIGKILL)

    def replaced() -> int | None:
        found = {name: pid for pid, name in control_plane_processes(data_dir).items()}
        new = found.get("kube-apiserver")
        return new if new not in (None, before["kube-apiserver"]) else None

    wait_until(replaced, 3 * SUPERVISE_SECONDS, "kube-apiserver started again")
    deadline = time.monotonic() + 60
    while (
        kept := kubectl(kubernetes_release, serve.kubeconfigs["cpa"], "get", "cm", "kept", check=False)
    ).returncode:
        assert time.monotonic() < deadline, kept.stderr
        time.sleep(1)
    assert len(control_plane_processes(data_dir)) == len(COMPONENTS)


def test_kill_9_of_serve_while_a_control_plane_starts(
    serve: Serve, kubernetes_release: KubernetesRelease
) -> None:
    body = {"location": "eastus", "properties": {"agentPoolProfiles": [ONE_NODE_POOL]}}
    with serve.client() as client:
        response = client.put(f"{GROUP}/cpc", json=body)
    assert response.status_code == 201, response.text
    record = wait_until(lambda: serve.find_control_plane("cpc"), 30, "the write-ahead record of cpc")
    data_dir = Path(record.data_dir)
    wait_until(lambda: control_plane_processes(data_dir) or None, 30, "a process of cpc")
    assert serve.process is not None
    serve.process.send_signal(signal.SIGKILL)  # while the control plane is starting
    serve.process.wait(timeout=30)
    serve.start()
    assert finish(serve, response)["status"] == "Succeeded"
    assert sorted(control_plane_processes(data_dir).values()) == sorted(COMPONENTS)  # one of each
    assert serve.control_plane("cpc").phase == "Running"
    admin = get_credentials(serve, "cpc", "--admin")
    assert whoami(kubernetes_release, admin)["username"] == "clusterAdmin"


def test_two_clusters_refuse_each_others_credentials(
    serve: Serve, kubernetes_release: KubernetesRelease
) -> None:
    create_cluster(serve, "cpb")
    admin_b = get_credentials(serve, "cpb", "--admin")
    assert whoami(kubernetes_release, admin_b)["username"] == "clusterAdmin"
    a_for_b = yaml.safe_load(serve.kubeconfigs["cpa"].read_text())
    b = yaml.safe_load(admin_b.read_text())
    a_for_b["clusters"] = b["clusters"]  # B's server and CA, A's client certificate
    a_for_b["contexts"][0]["context"]["cluster"] = b["clusters"][0]["name"]
    foreign = serve.base / "a-for-b.kubeconfig"
    foreign.write_text(yaml.safe_dump(a_for_b))
    refused = kubectl(kubernetes_release, foreign, "get", "ns", check=False)
    assert refused.returncode != 0 and "You must be logged in to the server" in refused.stderr
    kubectl(kubernetes_release, serve.kubeconfigs["cpa"], "get", "ns")  # A's kubeconfig still works on A
    a = yaml.safe_load(serve.kubeconfigs["cpa"].read_text())
    a["clusters"][0]["cluster"]["server"] = b["clusters"][0]["cluster"]["server"]
    wrong_ca = serve.base / "a-ca-for-b.kubeconfig"
    wrong_ca.write_text(yaml.safe_dump(a))
    untrusted = kubectl(kubernetes_release, wrong_ca, "get", "ns", check=False)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr  # B's serving cert: not A's CA


def find_node(serve: Serve, cluster: str) -> Node | None:
    """The store's one node of `cluster` (its pool's only node), if it has one yet."""
    engine = make_engine(serve.env["TL_DATABASE_URL"])
    try:
        with session_factory(engine)() as session:
            node = session.scalar(
                select(Node).join(AgentPool).join(ManagedCluster).where(ManagedCluster.name == cluster)
            )
            if node is not None:
                session.expunge(node)
            return node
    finally:
        engine.dispose()


def registered_nodes(data_dir: Path) -> list[dict[str, Any]]:
    """The Node objects of the cluster whose control plane lives in `data_dir` (its admin credential)."""
    with Client(KubeConfig.from_file(data_dir / "admin.kubeconfig"), trust_env=False) as client:
        return [node.to_dict() for node in client.list(KubernetesNode)]


def test_kill_9_of_serve_mid_join_leaves_no_orphan_vm_node_or_credential(
    serve: Serve, kubernetes_release: KubernetesRelease
) -> None:
    """`tl serve` dies (SIGKILL) after the node's kubelet registered its Node, before the join finished:
    the next serve adopts the same VM and finishes the join; the cluster then has exactly that one Node,
    labelled and untainted, and the run directory holds exactly one VM (no second VM, no leftover)."""
    body = {"location": "eastus", "properties": {"agentPoolProfiles": [ONE_NODE_POOL]}}
    with serve.client() as client:
        response = client.put(f"{GROUP}/cpj", json=body)
    assert response.status_code == 201, response.text
    data_dir = Path(
        wait_until(lambda: serve.find_control_plane("cpj"), 30, "the write-ahead record of cpj").data_dir
    )
    wait_until(lambda: (data_dir / "admin.kubeconfig").exists() or None, OPERATION_TIMEOUT, "cpj's PKI")
    registered = wait_until(
        lambda: registered_nodes(data_dir) or None if serve.control_plane("cpj").phase == "Running" else None,
        OPERATION_TIMEOUT,
        "cpj's node registering itself",
    )
    joining = find_node(serve, "cpj")
    assert joining is not None and joining.message == "joining its cluster", joining and joining.message
    assert [node["metadata"]["name"] for node in registered] == [joining.name]
    assert serve.process is not None
    serve.process.send_signal(signal.SIGKILL)  # mid-join: the Node exists, its labels and Ready do not yet
    serve.process.wait(timeout=30)
    serve.start()
    assert finish(serve, response)["status"] == "Succeeded"
    joined = find_node(serve, "cpj")
    assert joined is not None and joined.state == "Ready", joined and joined.message
    assert joined.handle == joining.handle and joined.run_dir == joining.run_dir  # adopted, not rebooted
    assert "adopted while booting" in joined.message and "joined its cluster" in joined.message
    [node] = registered_nodes(data_dir)
    assert node["metadata"]["name"] == joined.name
    assert node["metadata"]["labels"]["kubernetes.azure.com/agentpool"] == "nodepool1"
    assert not [taint for taint in node["spec"].get("taints") or [] if taint["key"] in JOIN_TAINT_KEYS]
    running = sorted(node_processes(Path(str(joined.run_dir))).values())
    assert running.count("qemu-system-x86_64") == 1, running
    pool_vms = [
        path
        for path in (serve.state_dir / "vm").iterdir()
        if path.name.startswith(f"n{joined.pool_id}-") and node_processes(path)
    ]
    assert pool_vms == [Path(str(joined.run_dir))]  # the killed serve's VM is the one; no second one


def test_delete_leaves_no_process_and_no_data(serve: Serve) -> None:
    names = ("cpa", "cpb", "cpc", "cpj")
    data_dirs = [Path(serve.control_plane(name).data_dir) for name in names]
    for name in names:
        with serve.client() as client:
            response = client.delete(f"{GROUP}/{name}")
        assert finish(serve, response)["status"] == "Succeeded"
    for data_dir in data_dirs:
        assert control_plane_processes(data_dir) == {}
        assert not data_dir.exists()
    assert list((serve.state_dir / "clusters").iterdir()) == []
