"""Liveness checks of nodes on a libvirt host (control/reconciler.py check_liveness) against a real private
libvirtd, no VM: on a host that answers, a node whose domain is gone has certainly exited (Unhealthy at
once, its handle cleared, later causes naming no empty handle); while the host does not answer (its libvirtd
killed, not yet Lost by the host checks) a node gets no verdict: Ready still, its handle kept, nothing
repaired on a host that may come back; once the host checks find it Lost, its node is Unhealthy at once
("VM lost"), to be made again elsewhere. A host whose latest check failed is not contacted by the liveness
checks at all (a hung host would hold them), and a host that hangs before any check of it failed holds them
for one connection's open timeout at most (the nodes on it get no verdict)."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from monitoring_rows import add_node
from reconciler_helpers import trusted_launch_store
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.libvirt_driver import OPEN_TIMEOUT
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.store.models import Node, NodeHost
from trustedlaunch.store.vocabulary import HostState

pytestmark = pytest.mark.slow  # a private libvirtd
SUB = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{tmp_path / 'liveness.db'}") as factory:
        yield factory


@pytest.fixture
def host() -> Iterator[LibvirtHost]:
    base = Path(tempfile.mkdtemp(prefix="tl-lvs-"))  # short: libvirtd's unix socket
    with LibvirtHost(base) as started:
        yield started
    shutil.rmtree(base, ignore_errors=True)


def nodes_on(sessions: sessionmaker[Session], host: LibvirtHost, tmp_path: Path) -> None:
    """Two Ready nodes of a finished cluster, recorded on `host` with handles naming no domain there."""
    with sessions.begin() as session:
        row = NodeHost(name="h", uri=host.uri, memory_mib=2048, vcpus=2)
        session.add(row)
        pool = PoolSpec("nodepool1", count=2, vm_size="Standard_D4s_v3")
        path = ResourcePath(SUB, "rg", "c1")
        cluster, create, _ = put_cluster(session, path, ClusterSpec("eastus", agent_pools=[pool]))
        create.status = "Succeeded"  # no operation keeps the liveness checks away
        for ordinal in range(2):
            node = add_node(session, cluster.agent_pools[0], ordinal)
            node.driver, node.host, node.handle = "libvirt", row, str(uuid.uuid4())
            node.run_dir = str(tmp_path / f"vm{ordinal}")


def rows(sessions: sessionmaker[Session]) -> list[tuple[str, str | None, str | None, int]]:
    """(state, health cause, handle, failed checks) of each node."""
    with sessions() as session:
        return [
            (node.state, node.health_cause, node.handle, node.failed_checks)
            for node in session.scalars(select(Node).order_by(Node.ordinal))
        ]


def test_a_silent_host_gives_no_verdict_until_it_is_lost(
    sessions: sessionmaker[Session], host: LibvirtHost, tmp_path: Path
) -> None:
    nodes_on(sessions, host, tmp_path)
    [(_, _, gone, _), (_, _, kept, _)] = rows(sessions)
    with sessions.begin() as session:  # node 1 is checked only once its host stops answering
        session.scalars(select(Node).where(Node.ordinal == 1)).one().state = "Creating"
    reconciler = Reconciler(sessions, tmp_path / "state")
    try:
        reconciler.check_liveness()  # the host answers: node 0's domain is not there
        exited = f"VM exited: its libvirt domain {gone} on host h is gone or stopped"
        assert rows(sessions)[0] == ("Unhealthy", exited, None, 1)
        reconciler.check_liveness()
        assert rows(sessions)[0] == (
            "Unhealthy",
            "VM exited: its libvirt domain on host h is gone or stopped",
            None,
            2,
        )

        with sessions.begin() as session:  # a host whose latest check failed is not contacted at all
            session.scalars(select(Node).where(Node.ordinal == 1)).one().state = "Ready"
            session.scalars(select(NodeHost)).one().failed_checks = 1
        reconciler.check_liveness()  # (contacted, the host would say node 1's domain is not there)
        assert rows(sessions)[1] == ("Ready", None, kept, 0)
        with sessions.begin() as session:
            session.scalars(select(NodeHost)).one().failed_checks = 0
        assert host.pid is not None
        hung = host.pid
        os.kill(hung, signal.SIGSTOP)  # it accepts connections and never answers; no host check failed yet
        try:  # a restarted control plane (no connection yet) gets no verdict, within one open's timeout
            checking = threading.Thread(target=Reconciler(sessions, tmp_path / "state").check_liveness)
            checking.start()
            checking.join(2 * OPEN_TIMEOUT)
            assert not checking.is_alive(), "the hung host held the liveness checks"
            assert rows(sessions)[1] == ("Ready", None, kept, 0)
        finally:
            os.kill(hung, signal.SIGCONT)
        host.kill()  # libvirtd dies; the host checks have not found it Lost yet
        for _ in range(3):
            reconciler.check_liveness()
            assert rows(sessions)[1] == ("Ready", None, kept, 0)  # no verdict: its VM may run on there

        with sessions.begin() as session:  # as the host checks mark it after 3 failed checks
            lost = session.scalars(select(NodeHost)).one()
            lost.state, lost.state_cause = HostState.LOST, "no answer to 3 checks in a row"
        reconciler.check_liveness()
        assert rows(sessions)[1] == ("Unhealthy", "VM lost: its host h is Lost", None, 1)
    finally:
        reconciler.release()
