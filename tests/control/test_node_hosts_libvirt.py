"""Hypervisor hosts against real private libvirt daemons (node/libvirt_host.py): registration reads the
host's real memory and CPUs with getInfo (node VMs may take 75 % of the memory, 16 vCPUs per CPU); the health
checks, run from a client network namespace as a control plane on another machine would, find a daemon that
hangs (SIGSTOP: it accepts connections and never answers) Lost after 3 checks while a second host in its own
network namespace (qemu+tcp://) stays Ready and is checked on time; the hung host is Ready again once it
answers, its checks then remove the domain it holds for a node made again elsewhere (its node's stays), and
it is Lost again, with the cause, once its daemon is killed."""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import libvirt
import pytest
from monitoring_rows import add_node
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.node_hosts import (
    FAILED_CHECKS,
    HostCapacity,
    HostSpec,
    probe_host,
    put_host,
    resolve_capacity,
)
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import domain_xml
from trustedlaunch.node.libvirt_host import LibvirtHost, NamespaceNetwork
from trustedlaunch.store.models import AlertRecord, NodeHost

pytestmark = pytest.mark.slow

MONITOR_CLIENT = Path(__file__).with_name("host_monitor_client.py")
SUB = "11111111-2222-3333-4444-555555555555"
INTERVAL = 1.0  # seconds between two checks of a host (the control plane's: 20 s)
TIMEOUT = 3.0  # seconds a check may take (the control plane's: 10 s)
WAIT = 90.0  # seconds for a state change on the shared 2-core machine


def machine_capacity() -> HostCapacity:
    """This machine's memory (MiB) and online CPUs, as libvirt's getInfo reports them."""
    meminfo = Path("/proc/meminfo").read_text().split()
    memory_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    return HostCapacity(memory_kib // 1024, len(os.sched_getaffinity(0)))


def hosts(sessions: sessionmaker[Session]) -> dict[str, NodeHost]:
    with sessions() as session:
        rows = session.scalars(select(NodeHost)).all()
        session.expunge_all()
        return {host.name: host for host in rows}


def wait_for(
    sessions: sessionmaker[Session], condition: Callable[[dict[str, NodeHost]], bool], what: str
) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if condition(hosts(sessions)):
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{what} within {WAIT:.0f} s: {[(h.name, h.state, h.state_cause) for h in hosts(sessions).values()]}"
    )


def define_stopped_domain(uri: str, name: str, run_dir: Path) -> None:
    """A node domain as the libvirt driver defines it for `run_dir` (not started: no image is needed)."""
    esp = run_dir.parent / "image" / "esp"
    esp.mkdir(parents=True, exist_ok=True)
    image = NodeImage(
        esp_dir=esp, metadata_path=esp.parent / "image.json", version="1", kernel_cmdline="", files={}
    )
    connection = libvirt.open(uri)
    try:
        connection.defineXML(domain_xml(name, image, run_dir, secure_boot=False, tpm_socket=None))
    finally:
        connection.close()


def domain_names(uri: str) -> list[str]:
    connection = libvirt.open(uri)
    try:
        return sorted(domain.name() for domain in connection.listAllDomains(0))
    finally:
        connection.close()


def test_real_hosts_are_probed_and_a_hung_or_killed_daemon_is_lost_without_delaying_the_other(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    network = NamespaceNetwork(f"tl-{secrets.token_hex(3)}")
    namespace, address = network.add_host()
    local = LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvh-")))
    remote = LibvirtHost(Path(tempfile.mkdtemp(prefix="tl-lvh-")), namespace=namespace, address=address)
    stop_file = tmp_path / "stop-monitor"
    runs_dir = tmp_path / "state" / "vm"
    monitor: subprocess.Popen[bytes] | None = None
    stopped_pid = None
    try:
        local.start()
        remote.start()
        assert probe_host(local.uri) == machine_capacity()
        probed = resolve_capacity(HostSpec("local", local.uri))  # what node VMs may take of it
        machine = machine_capacity()
        assert (probed.memory_mib, probed.vcpus) == (int(0.75 * machine.memory_mib), 16 * machine.vcpus)
        with sessions.begin() as session:
            local_host, _ = put_host(session, probed)
            put_host(session, HostSpec("remote", remote.tcp_uri, 4096, 2))  # reachable from the client only
            register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
            register_provider(session, SUB, "Microsoft.ContainerService")
            spec = PoolSpec("nodepool1", count=1, vm_size="Standard_D4s_v3")
            cluster, _, _ = put_cluster(
                session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[spec])
            )
            node = add_node(session, cluster.agent_pools[0], 0)
            node.host_id, node.driver, node.run_dir = local_host.id, "libvirt", str(runs_dir / "n1-aaaaaa")
        # on the local host: the domain of its node, and one left for a node made again elsewhere
        define_stopped_domain(local.uri, "tl-node-000000a1", runs_dir / "n1-aaaaaa")
        define_stopped_domain(local.uri, "tl-node-000000a2", runs_dir / "n1-bbbbbb")

        database = f"sqlite:///{tmp_path / 'control.db'}"
        client = [
            sys.executable,
            str(MONITOR_CLIENT),
            database,
            str(INTERVAL),
            str(TIMEOUT),
            str(stop_file),
            "600",
            str(runs_dir),
        ]
        monitor = subprocess.Popen(["ip", "netns", "exec", network.client, *client])
        wait_for(
            sessions,
            lambda h: all(host.last_seen_at is not None for host in h.values()),
            "both hosts answered a check",
        )

        assert local.pid is not None
        stopped_pid = local.pid
        os.kill(stopped_pid, signal.SIGSTOP)  # accepts connections (the kernel's backlog), never answers
        remote_seen: list[datetime] = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            now = hosts(sessions)
            assert now["remote"].state == "Ready" and now["remote"].failed_checks == 0
            last_seen = now["remote"].last_seen_at
            if last_seen is not None and (not remote_seen or last_seen != remote_seen[-1]):
                remote_seen.append(last_seen)
            if now["local"].state == "Lost":
                break
            time.sleep(0.2)
        lost = hosts(sessions)["local"]
        assert lost.state == "Lost" and lost.failed_checks == FAILED_CHECKS
        assert str(lost.state_cause).startswith(f"no answer to 3 checks in a row: {local.uri}")
        # while the local daemon hung, the remote host was checked every interval, within its timeout
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(remote_seen)]
        assert len(gaps) >= 2 and max(gaps) < INTERVAL + TIMEOUT, gaps
        with sessions() as session:
            [alert] = session.scalars(select(AlertRecord)).all()
            assert (alert.alert_type, alert.status, alert.subscription_id) == ("Host_Lost", "Active", SUB)
            assert "aks-nodepool1-0" in str(alert.document["properties"]["description"])  # type: ignore[index]

        os.kill(stopped_pid, signal.SIGCONT)
        stopped_pid = None
        wait_for(sessions, lambda h: h["local"].state == "Ready", "the resumed host is Ready")
        deadline = time.monotonic() + WAIT
        while "tl-node-000000a2" in domain_names(local.uri):  # the checks remove it once the host answers
            assert time.monotonic() < deadline, "the stray domain was not removed"
            time.sleep(0.2)
        assert domain_names(local.uri) == ["tl-node-000000a1"]
        with sessions() as session:
            assert [alert.status for alert in session.scalars(select(AlertRecord))] == ["Resolved"]

        local.kill()  # the daemon crashes: its socket is left, nobody listens
        wait_for(sessions, lambda h: h["local"].state == "Lost", "the killed host is Lost")
        now = hosts(sessions)
        assert "Failed to connect socket" in str(now["local"].state_cause), now["local"].state_cause
        assert "Connection refused" in str(now["local"].state_cause)
        assert now["remote"].state == "Ready" and now["remote"].failed_checks == 0
    finally:
        if stopped_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped_pid, signal.SIGCONT)
        stop_file.touch()
        if monitor is not None:
            try:
                monitor.wait(30)
            except subprocess.TimeoutExpired:
                monitor.kill()
                monitor.wait(10)
        local.remove()
        remote.remove()
        network.remove()
