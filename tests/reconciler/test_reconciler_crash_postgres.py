"""kill -9 of the standalone reconciler with its store on PostgreSQL: killed while the node boots (and its VM
with it), the next reconciler redoes the node; killed while the node is torn down on cluster delete (its QEMU
frozen so that the teardown waits on QMP), the next one finishes the delete. One VM boot and one cut short."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import PostgresServer
from reconciler_helpers import (
    SUB,
    nodes,
    processes_under,
    qemu_pid,
    trusted_launch_store,
    vm_pids,
    wait_succeeded,
    wait_until,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from test_reconciler_crash import NO_INTERVAL, StandaloneReconciler

from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.store.models import AgentPool, ManagedCluster, Operation

pytestmark = pytest.mark.slow
STEP_TIMEOUT = 900.0  # a VM boot takes minutes under TCG on a loaded machine
PATH = ResourcePath(SUB, "rg", "pgcluster")


@pytest.fixture(scope="module")
def store_url(postgres: PostgresServer) -> Iterator[str]:
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="module")
def sessions(store_url: str) -> Iterator[sessionmaker[Session]]:
    """The crash tests' store on PostgreSQL."""
    with trusted_launch_store(store_url) as factory:
        yield factory


@pytest.fixture(scope="module")
def reconciler(
    store_url: str, reconciler_base: Path, state_dir: Path, sessions: sessionmaker[Session]
) -> Iterator[StandaloneReconciler]:
    standalone = StandaloneReconciler(
        store_url, state_dir, reconciler_base / "reconciler-pg.log", *NO_INTERVAL
    )
    yield standalone
    standalone.kill()


def test_kill_9_during_create_and_delete_with_the_store_on_postgresql(
    sessions: sessionmaker[Session], reconciler: StandaloneReconciler, state_dir: Path
) -> None:
    assert sessions.kw["bind"].dialect.name == "postgresql"
    pool = PoolSpec("pgpool", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True)
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
    reconciler.start()
    booting = wait_until(
        lambda: next((node for node in nodes(sessions) if node.handle), None),
        STEP_TIMEOUT,
        "the node's VM to start",
    )
    reconciler.kill()
    assert booting.state == "Provisioning" and len(processes_under(Path(str(booting.run_dir)))) == 2
    assert booting.handle is not None
    os.kill(qemu_pid(booting), signal.SIGKILL)  # the booting VM dies too (else it would be adopted): redone
    reconciler.start()
    wait_succeeded(sessions, create.id, STEP_TIMEOUT, reconciler.log)
    (node,) = nodes(sessions)
    assert (node.id, node.state, node.attestation_status) == (booting.id, "Ready", "Attested")
    assert node.labels["kubernetes.azure.com/secure-boot"] == "true"
    assert node.updated_at.tzinfo is not None  # PostgreSQL keeps the time zone
    assert not Path(str(booting.run_dir)).exists()
    running = {int(line.split()[0]) for line in processes_under(state_dir)}
    assert running == vm_pids(node)

    assert node.handle is not None
    os.kill(qemu_pid(node), signal.SIGSTOP)  # booted by this reconciler: its teardown starts with QMP
    with sessions.begin() as session:
        deletion = delete_cluster(session, PATH)
    assert deletion is not None
    wait_until(
        lambda: any(n.state == "Deleting" for n in nodes(sessions)),
        STEP_TIMEOUT,
        "the node to be Deleting",
    )
    reconciler.kill()
    assert len(processes_under(Path(str(node.run_dir)))) == 2  # frozen qemu + swtpm, orphaned
    reconciler.start()
    wait_succeeded(sessions, deletion.id, STEP_TIMEOUT, reconciler.log)
    assert nodes(sessions) == []
    assert processes_under(state_dir) == []
    with sessions() as session:
        assert session.scalars(select(ManagedCluster)).all() == []
        assert session.scalars(select(AgentPool)).all() == []
        statuses = {op.id: op.status for op in session.scalars(select(Operation))}
    assert statuses == {create.id: "Succeeded", deletion.id: "Succeeded"}
