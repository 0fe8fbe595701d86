"""The removal of stray node domains (control/node_hosts.py StrayDomainSweep) on libvirt's own test driver
(`test:///default`: libvirt's in-process hypervisor, shared by every connection of this process): a host
keeps the domains of the nodes placed on it and the domains of other control planes and others'
domains, and loses, running or not, the domains this control plane made for nodes that are gone or were
made again elsewhere; the host checks sweep a host that answers."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from monitoring_rows import add_node
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.node_hosts import HostMonitor, HostSpec, StrayDomainSweep, put_host
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import domain_xml, host_domains
from trustedlaunch.store.models import NodeHost

TEST_HOST = "test:///default"
SUB = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def folder() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="tl-stray-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def connection() -> Iterator[libvirt.virConnect]:
    connection = libvirt.open(TEST_HOST)
    before = {domain.name() for domain in connection.listAllDomains(0)}
    yield connection
    for domain in connection.listAllDomains(0):  # the test driver's state lives as long as this process
        if domain.name() not in before:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
    connection.close()


def define(connection: libvirt.virConnect, name: str, run_dir: Path, *, running: bool) -> None:
    esp = run_dir.parent / "image" / "esp"
    esp.mkdir(parents=True, exist_ok=True)
    image = NodeImage(
        esp_dir=esp, metadata_path=esp.parent / "image.json", version="1", kernel_cmdline="", files={}
    )
    domain = connection.defineXML(domain_xml(name, image, run_dir, secure_boot=False, tpm_socket=None))
    if running:
        domain.create()


def names(connection: libvirt.virConnect) -> set[str]:
    return {domain.name() for domain in connection.listAllDomains(0)}


def two_hosts_with_a_node_each(sessions: sessionmaker[Session], runs_dir: Path) -> tuple[int, Path, Path]:
    """Hosts `here` (the test host) and `there`, a node on each; the id of `here` and the run directories
    of the node on it and of the node on `there`."""
    with sessions.begin() as session:
        here, _ = put_host(session, HostSpec("here", "qemu+tcp://192.0.2.1/system", 8192, 4))
        there, _ = put_host(session, HostSpec("there", "qemu+tcp://192.0.2.2/system", 8192, 4))
        here.uri = TEST_HOST  # as the checks reach it (registration accepts QEMU URIs only)
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec("nodepool1", count=2, vm_size="Standard_D4s_v3")
        cluster, _, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[spec])
        )
        placed, moved = (add_node(session, cluster.agent_pools[0], ordinal) for ordinal in (0, 1))
        placed.host_id, placed.driver, placed.run_dir = here.id, "libvirt", str(runs_dir / "n1-aaaaaa")
        moved.host_id, moved.driver, moved.run_dir = there.id, "libvirt", str(runs_dir / "n1-bbbbbb")
        return here.id, Path(placed.run_dir), Path(moved.run_dir)


def test_a_sweep_removes_only_this_control_planes_domains_for_no_node_on_the_host(
    sessions: sessionmaker[Session], connection: libvirt.virConnect, folder: Path
) -> None:
    runs_dir = folder / "state" / "vm"
    here, placed, moved = two_hosts_with_a_node_each(sessions, runs_dir)
    define(connection, "tl-node-00000011", placed, running=True)  # the node placed here: kept
    define(connection, "tl-node-00000012", moved, running=True)  # its node was made again on `there`
    define(connection, "tl-node-00000013", runs_dir / "n1-cccccc", running=True)  # its node was deleted
    define(connection, "tl-node-00000014", runs_dir / "n1-dddddd", running=False)  # stopped, still defined
    define(connection, "tl-node-00000015", folder / "other-state" / "vm" / "n1-eeeeee", running=True)
    define(connection, "guest-1", runs_dir / "n1-ffffff", running=True)  # not a node domain's name
    sweep = StrayDomainSweep(sessions, runs_dir)
    removed = sweep(here, host_domains(connection))
    assert sorted(removed) == ["tl-node-00000012", "tl-node-00000013", "tl-node-00000014"]
    left = names(connection)
    assert {"tl-node-00000011", "tl-node-00000015", "guest-1", "test"} <= left
    assert not {"tl-node-00000012", "tl-node-00000013", "tl-node-00000014"} & left
    assert sweep(here, host_domains(connection)) == []  # nothing more to remove


def test_the_host_checks_sweep_a_host_that_answers(
    sessions: sessionmaker[Session], connection: libvirt.virConnect, folder: Path
) -> None:
    runs_dir = folder / "state" / "vm"
    here, placed, moved = two_hosts_with_a_node_each(sessions, runs_dir)
    with sessions.begin() as session:
        session.get_one(NodeHost, here).state = "Lost"  # as a host that was away
    define(connection, "tl-node-00000021", placed, running=True)
    define(connection, "tl-node-00000022", moved, running=True)
    monitor = HostMonitor(sessions, interval=0.2, timeout=5.0, runs_dir=runs_dir)

    def state() -> str:
        with sessions() as session:
            return session.get_one(NodeHost, here).state

    deadline = time.monotonic() + 30
    while "tl-node-00000022" in names(connection) or state() != "Ready":
        assert time.monotonic() < deadline, f"the stray domain is still there or the host is {state()}"
        monitor.check_hosts()
        time.sleep(0.1)
    assert "tl-node-00000021" in names(connection)
