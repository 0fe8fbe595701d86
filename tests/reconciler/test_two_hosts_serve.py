"""Two libvirt hosts through a real `tl serve` (issue 18): each host a private libvirtd in a network namespace
of its own with its own address and its own EK CA (its libvirt makes the vTPMs); the control plane (`tl
serve`: API, reconciler, hosted control planes) runs in the client namespace, reaching the hosts over
qemu+tcp:// on namespace-only addresses, its kube-apiservers at the namespaces' control address
(`--node-network-address`). Only the CLI drives it: `tl host add ... --ek-ca-certificate`, `tl aks create
--enable-secure-boot --enable-vtpm` of a 2-node pool spread over both hosts (`tl host list`), then `tl aks
nodepool scale` to 3, during which host b is killed (its libvirtd, then its VMs). Afterwards host b is Lost
with its HostLost alert, every node of the pool runs on host a, attested (only host a's EK CA is accepted for
a node there) and joined (`kubectl get nodes`: Ready, trusted-launch labels), and nothing is lost: the same
node records, their earlier attestations and the alerts (HostLost, the lost node's). Four VM boots: the
pool's two nodes, the scaled-out node and the lost node made again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import HOSTED_CONTROL_PLANES_ENV
from trustedlaunch.control.features import DELAY_ENV
from trustedlaunch.control.hosted_control_plane import NODE_NETWORK_ADDRESS_ENV, stop_control_plane_processes
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.labels import LABEL_AGENT_POOL, LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.node_processes import kill_node_processes
from trustedlaunch.control.reconciler import VTPM_DIR, node_ek_cas
from trustedlaunch.node.libvirt_host import CONTROL_ADDRESS, LibvirtHost, NamespaceNetwork
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS
from trustedlaunch.store.models import AlertRecord, AttestationRecord, Node, NodeHost
from trustedlaunch.tpm.ekca import create_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
TL = str(Path(sys.executable).parent / "tl")
NODE_NETWORK = ("--node-network-address", CONTROL_ADDRESS)  # where the kube-apiservers listen
CLUSTER = "twohosts"
POOL = ["--cluster-name", CLUSTER, "-g", "rg", "--nodepool-name", "nodepool1"]
STEP_SECONDS = 1800.0  # TCG boots and joins on two cores shared with other VM tests
SERVE_START_SECONDS = 120.0
STOP_SECONDS = 60
T = TypeVar("T")


@dataclass
class TwoHosts:
    """The namespaces, hosts a and b (each in its own), and where their EK CA certificates are."""

    network: NamespaceNetwork
    a: LibvirtHost
    b: LibvirtHost
    ek_ca_files: dict[str, Path]

    def in_client(self) -> list[str]:
        """The prefix running a command in the control plane's (client) namespace."""
        return ["ip", "netns", "exec", self.network.client]


@dataclass
class Served:
    """The environment of the `tl serve` under test (its store, state directory and log)."""

    base: Path
    env: dict[str, str]
    sessions: sessionmaker[Session]
    log: Path  # kept after the test (pytest's folder)

    @property
    def state_dir(self) -> Path:
        return self.base / "data" / "trustedlaunch" / "nodes"


@pytest.fixture
def two_hosts() -> Iterator[TwoHosts]:
    base = Path(tempfile.mkdtemp(prefix="tl-2h-"))  # short: unix socket paths
    network = NamespaceNetwork(f"tl2h{os.getpid() % 100000}")
    hosts: list[LibvirtHost] = []
    try:
        files = {}
        for name in "ab":
            ca = create_ek_ca(base / f"ca-{name}", common_name=f"host {name} EK CA")
            files[name] = base / f"ca-{name}.pem"
            files[name].write_bytes(ca.certificate.public_bytes(Encoding.PEM))
            namespace, address = network.add_host()
            host = LibvirtHost(base / name, namespace=namespace, address=address, ek_ca=ca)
            hosts.append(host)
            host.start()
        yield TwoHosts(network, hosts[0], hosts[1], files)
    finally:
        for host in hosts:
            host.stop()
        network.remove()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    base = Path(tempfile.mkdtemp(prefix="tl-2hs-"))  # short: the node VMs' run directories
    env = {
        **os.environ,
        "HOME": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "TL_DATABASE_URL": f"sqlite:///{base / 'serve.db'}",
        HOSTED_CONTROL_PLANES_ENV: "1",
        DELAY_ENV: "0",
    }
    for variable in ("TL_ENDPOINT", "TL_TOKEN", "TL_SUBSCRIPTION", NODE_NETWORK_ADDRESS_ENV):
        env.pop(variable, None)
    token_file = base / "config" / "trustedlaunch" / "admin-token"
    engine, sessions = open_store(env["TL_DATABASE_URL"], token_file)
    env["TL_TOKEN"] = token_file.read_text().strip()
    served = Served(base, env, sessions, tmp_path / "serve.log")
    try:
        yield served
    finally:
        engine.dispose()
        for cluster in (served.state_dir / "clusters").glob("*"):
            stop_control_plane_processes(cluster)
        kill_node_processes(served.state_dir)
        shutil.rmtree(base, ignore_errors=True)


def start_serve(hosts: TwoHosts, served: Served) -> subprocess.Popen[bytes]:
    """`tl serve` in the client namespace (attestation on an interval off); returns once it announced its
    URL, which it sets as TL_ENDPOINT in the served environment."""
    with served.log.open("wb") as log:
        process = subprocess.Popen(
            [*hosts.in_client(), TL, "serve", "--port", "0", "--attestation-interval", "0", *NODE_NETWORK],
            env=served.env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + SERVE_START_SECONDS
    while "Use it with" not in (banner := served.log.read_text(errors="replace")):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_serve(process)
            raise AssertionError(f"tl serve did not start: {banner[-4000:]}")
        time.sleep(0.2)
    served.env["TL_ENDPOINT"] = banner.split("control plane on ", 1)[1].split(" ", 1)[0]
    return process


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def tl(hosts: TwoHosts, served: Served, *arguments: str, timeout: float = 120.0) -> Any:
    """`tl ARGUMENTS` in the client namespace against the serve: its JSON output (it must succeed)."""
    done = subprocess.run(
        [*hosts.in_client(), TL, *arguments],
        env=served.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"tl {' '.join(arguments)}: {done.stderr[-4000:]}"
    return json.loads(done.stdout) if done.stdout.strip() else None


def kubectl_nodes(hosts: TwoHosts, served: Served, release: KubernetesRelease) -> list[dict[str, Any]]:
    """The cluster's Nodes as `kubectl get nodes` reads them with the admin credential, in the client
    namespace (where the kube-apiserver listens)."""
    kubeconfig = served.base / "admin.kubeconfig"
    tl(hosts, served, "aks", "get-credentials", "-g", "rg", "-n", CLUSTER, "--admin", "-f", str(kubeconfig))
    done = subprocess.run(
        [
            *hosts.in_client(),
            str(release.binary("kubectl")),
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={served.base / 'kube-cache'}",
            "--request-timeout=30s",
            "get",
            "nodes",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    items: list[dict[str, Any]] = json.loads(done.stdout)["items"]
    return items


@dataclass(frozen=True)
class NodeView:
    """What the store says of one node of the pool."""

    id: int
    name: str
    ordinal: int
    state: str
    attestation_status: str | None
    host: str | None
    handle: str | None
    labels: dict[str, str]
    repairs: list[dict[str, str]]
    message: str | None
    run_dir: str | None


def pool_nodes(served: Served) -> list[NodeView]:
    with served.sessions() as session:
        hosts = {host.id: host.name for host in session.scalars(select(NodeHost))}
        return [
            NodeView(
                node.id,
                node.name,
                node.ordinal,
                node.state,
                node.attestation_status,
                hosts.get(node.host_id) if node.host_id is not None else None,
                node.handle,
                dict(node.labels or {}),
                list(node.repairs or []),
                node.message,
                node.run_dir,
            )
            for node in session.scalars(select(Node).order_by(Node.ordinal))
        ]


def attestations(served: Served) -> list[tuple[str, str, str]]:
    """(node name, trigger, status) of every attestation record, oldest first."""
    with served.sessions() as session:
        records = session.scalars(select(AttestationRecord).order_by(AttestationRecord.id))
        return [(record.node_name, record.trigger, record.status) for record in records]


def alerts(served: Served) -> list[tuple[str, str, str]]:
    """(alert type, node name, status) of every alert, oldest first."""
    with served.sessions() as session:
        records = session.scalars(select(AlertRecord).order_by(AlertRecord.time))
        return [(record.alert_type, record.node_name, record.status) for record in records]


def wait_until(condition: Callable[[], T | None], what: str, served: Served) -> T:
    deadline = time.monotonic() + STEP_SECONDS
    while (value := condition()) is None:
        if time.monotonic() > deadline:
            log = served.log.read_text(errors="replace")[-6000:]
            raise AssertionError(f"{what}: not within {STEP_SECONDS:.0f} s: {pool_nodes(served)}\n{log}")
        time.sleep(2.0)
    return value


def running_qemus(host: LibvirtHost) -> list[int]:
    """The QEMU processes of the host's domains that still run (a killed libvirtd leaves its pid files)."""
    running = []
    for pid in host.qemu_pids():
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/exe").startswith("/usr/bin/qemu-system"):
                running.append(pid)
    return running


def accepted_ek_cas(served: Served) -> list[list[x509.Certificate]]:
    """The EK CAs each node's attestations accept (control/reconciler.py node_ek_cas; the platform's a
    stand-in: no node here has a vTPM of ours)."""
    platform = create_ek_ca(served.base / "platform-stand-in").certificate
    with served.sessions() as session:
        return [node_ek_cas(node, platform) for node in session.scalars(select(Node).order_by(Node.ordinal))]


def is_ready(node: dict[str, Any]) -> bool:
    conditions = node["status"].get("conditions") or []
    return any(condition["type"] == "Ready" and condition["status"] == "True" for condition in conditions)


def test_a_pool_spread_over_two_hosts_survives_losing_one_mid_scale(
    two_hosts: TwoHosts, served: Served, kubernetes_release: KubernetesRelease
) -> None:
    started = time.monotonic()
    a, b = two_hosts.a, two_hosts.b
    process = start_serve(two_hosts, served)
    try:

        def run(*arguments: str, timeout: float = 120.0) -> Any:
            return tl(two_hosts, served, *arguments, timeout=timeout)

        run(
            "feature",
            "register",
            "--namespace",
            "Microsoft.ContainerService",
            "--name",
            "TrustedLaunchPreview",
        )
        run("provider", "register", "--namespace", "Microsoft.ContainerService")
        run("group", "create", "-n", "rg", "-l", "eastus")
        # a has room for the whole pool once b is gone; b for two nodes (fewer: the spread's tie goes to a)
        for name, host, room in (("a", a, 3), ("b", b, 2)):
            run(
                "host",
                "add",
                "-n",
                name,
                "--uri",
                host.tcp_uri,
                "--memory-mib",
                str(room * NODE_MEMORY_MIB),
                "--vcpus",
                str(room * NODE_VCPUS),
                "--ek-ca-certificate",
                str(two_hosts.ek_ca_files[name]),
            )
        create = [
            "aks",
            "create",
            "-g",
            "rg",
            "-n",
            CLUSTER,
            "--node-count",
            "2",
            "--node-vm-size",
            "Standard_D4s_v3",
            "--enable-secure-boot",
            "--enable-vtpm",
            "--generate-ssh-keys",
            "--timeout",
            str(int(STEP_SECONDS)),
        ]
        cluster = run(*create, timeout=STEP_SECONDS + 60)
        assert cluster["properties"]["provisioningState"] == "Succeeded", cluster
        created = time.monotonic()

        first = pool_nodes(served)
        assert [(n.ordinal, n.host, n.state, n.attestation_status) for n in first] == [
            (0, "a", "Ready", "Attested"),
            (1, "b", "Ready", "Attested"),
        ], first
        for node in first:  # their hosts' libvirt made their vTPMs: none was manufactured here
            assert node.run_dir is not None and not Vtpm(Path(node.run_dir) / VTPM_DIR).manufactured
        listed = {host["name"]: host["properties"] for host in run("host", "list")}
        assert listed["a"]["allocated"]["nodes"] == [first[0].name]  # the pool is spread over both hosts
        assert listed["b"]["allocated"]["nodes"] == [first[1].name]
        assert listed["a"]["state"] == listed["b"]["state"] == "Ready"
        machines = run("aks", "machine", "list", *POOL)
        assert sorted(machine["name"] for machine in machines) == [n.name for n in first]
        before = attestations(served)
        assert sorted(before) == [(n.name, "Provisioning", "Attested") for n in first], before

        run("aks", "nodepool", "scale", *POOL, "--node-count", "3", "--no-wait")

        def booting() -> NodeView | None:
            nodes = pool_nodes(served)
            new = [n for n in nodes if n.ordinal == 2 and n.handle is not None]
            return new[0] if new else None

        scaled_out = wait_until(booting, "the scaled-out node's VM started", served)
        assert scaled_out.host == "a" and scaled_out.state != "Ready"  # still booting: mid-operation
        b.kill()  # host b goes away: its daemon dies,
        b.stop()  # then its VMs
        killed = time.monotonic()

        def converged() -> list[NodeView] | None:
            nodes = pool_nodes(served)
            done = (
                len(nodes) == 3
                and all(
                    n.host == "a" and n.state == "Ready" and n.attestation_status == "Attested" for n in nodes
                )
                and all(r.get("outcome") for n in nodes for r in n.repairs)
            )
            return nodes if done else None

        after = wait_until(converged, "every node Ready and attested on host a", served)
        pool = run("aks", "nodepool", "show", *POOL)
        assert pool["properties"]["count"] == 3
        assert pool["properties"]["provisioningState"] == "Succeeded", pool
        recovered = time.monotonic()

        # the same node records: names, ids and ordinals kept; the lost node made again on host a
        assert [(n.id, n.name) for n in after[:2]] == [(n.id, n.name) for n in first]
        moved = after[1]
        assert moved.handle not in (None, first[1].handle)
        [repair] = moved.repairs
        assert repair["action"] == "Reimage" and repair["outcome"].startswith("done"), repair
        assert repair["cause"] == "VM lost: its host b is Lost", repair
        assert after[0].handle == first[0].handle and not after[0].repairs  # untouched on the live host
        listed = {host["name"]: host["properties"] for host in run("host", "list")}
        assert listed["b"]["state"] == "Lost" and listed["b"]["allocated"]["nodes"] == []
        assert sorted(listed["a"]["allocated"]["nodes"]) == sorted(n.name for n in after)
        # attestation history kept; the new VMs attested (on host a: only its EK CA is accepted there)
        history = attestations(served)
        assert history[: len(before)] == before
        assert sorted(history[len(before) :]) == sorted(
            [(after[1].name, "Provisioning", "Attested"), (after[2].name, "Provisioning", "Attested")]
        ), history
        host_a_ca = x509.load_pem_x509_certificate(two_hosts.ek_ca_files["a"].read_bytes())
        assert accepted_ek_cas(served) == [[host_a_ca]] * 3  # what their attestations passed against
        kept = alerts(served)
        assert ("Host_Lost", "host/b", "Active") in kept, kept
        assert ("VM_NodeUnhealthy", moved.name, "Resolved") in kept, kept
        listed_alerts = run("alerts", "list")
        assert any(alert["properties"]["alertType"] == "Host_Lost" for alert in listed_alerts), listed_alerts

        joined = {
            node["metadata"]["name"]: node for node in kubectl_nodes(two_hosts, served, kubernetes_release)
        }
        assert sorted(joined) == sorted(n.name for n in after)
        for name, node in joined.items():
            labels = node["metadata"]["labels"]
            assert is_ready(node), (name, node["status"].get("conditions"))
            assert labels[LABEL_TRUSTED_LAUNCH] == "true" and labels[LABEL_SECURE_BOOT] == "true", labels
            assert labels[LABEL_AGENT_POOL] == "nodepool1"
            internal = [
                entry["address"] for entry in node["status"]["addresses"] if entry["type"] == "InternalIP"
            ]
            assert internal == [a.address]  # its kubelet on host a
        assert running_qemus(b) == [] and len(running_qemus(a)) == 3
        print(
            f"\ntwo hosts through tl serve: created (2 nodes) {created - started:.0f} s, host b killed "
            f"{killed - created:.0f} s into the scale to 3, all 3 nodes attested and Ready on host a "
            f"{recovered - killed:.0f} s later, total {recovered - started:.0f} s; 4 VM boots"
        )
    finally:
        stop_serve(process)
