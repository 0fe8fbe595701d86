"""kill -9 of the standalone reconciler during scale and rolling reimage, on one 2-node vTPM pool, then
restart: each operation completes with the right nodes (same rows, unique ordinals and names, one qemu +
one swtpm per row, nothing else running), the killed step's processes and run dir are gone, and no pool or
operation row is lost.

Kill points: scale 1 -> 2 while the new node boots (Provisioning; its orphaned QEMU is killed too, else the
next reconciler would adopt the booting VM, see test_reconciler_crash); enabling Secure Boot while the second
node is being torn down for its reimage (Reimaging); scale 2 -> 1 while the surplus node is being torn
down (Deleting). The teardown windows are short, so the test freezes (SIGSTOP) the victim's QEMU first:
the reconciler's QMP "quit" then waits 5 s for an answer with the row already Reimaging / Deleting, and
the reconciler is killed in that window. Five full VM boots and one cut short."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
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

from trustedlaunch.control.resources import (
    ClusterSpec,
    PoolSpec,
    ResourcePath,
    delete_cluster,
    put_cluster,
    put_pool,
)
from trustedlaunch.store.models import AgentPool, Node, Operation

pytestmark = pytest.mark.slow
STEP_TIMEOUT = 900.0  # up to two VM boots (a few minutes each under TCG on a loaded machine)
PATH = ResourcePath(SUB, "rg", "scalecluster")
POOL = "scalepool"


@pytest.fixture(scope="module")
def store_url(reconciler_base: Path) -> str:
    return f"sqlite:///{reconciler_base / 'crash-scale.db'}"


@pytest.fixture(scope="module")
def sessions(store_url: str) -> Iterator[sessionmaker[Session]]:
    """The crash tests' store."""
    with trusted_launch_store(store_url) as factory:
        yield factory


@pytest.fixture(scope="module")
def reconciler(
    store_url: str, reconciler_base: Path, state_dir: Path, sessions: sessionmaker[Session]
) -> Iterator[StandaloneReconciler]:
    standalone = StandaloneReconciler(
        store_url, state_dir, reconciler_base / "reconciler-scale.log", *NO_INTERVAL
    )
    yield standalone
    standalone.kill()


def update_pool(sessions: sessionmaker[Session], spec: PoolSpec) -> str:
    with sessions.begin() as session:
        _, update, _ = put_pool(session, PATH, spec)
        return update.id


def node_at(sessions: sessionmaker[Session], ordinal: int) -> Node | None:
    return next((node for node in nodes(sessions) if node.ordinal == ordinal), None)


def freeze(pid: int | None) -> None:
    """SIGSTOP a VM's QEMU: it no longer answers QMP, so its teardown takes the QMP timeout (5 s)."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)


def killed_during(
    sessions: sessionmaker[Session], reconciler: StandaloneReconciler, ordinal: int, state: str
) -> Node:
    """Wait until the node at `ordinal` is in `state`, SIGKILL the reconciler; the node row as it was."""
    caught = wait_until(
        lambda: (node := node_at(sessions, ordinal)) is not None and node.state == state and node,
        STEP_TIMEOUT,
        f"node {ordinal} to be {state}",
    )
    reconciler.kill()
    assert node_at(sessions, ordinal).state == state  # type: ignore[union-attr]
    return caught


def assert_converged(
    sessions: sessionmaker[Session], state_dir: Path, count: int, secure_boot: bool
) -> list[Node]:
    """The pool has `count` Ready, attested nodes with the wanted settings at ordinals 0..count-1, and the
    only qemu/swtpm processes under the state dir are one of each per row, at the row's pids."""
    rows = nodes(sessions)
    assert [node.ordinal for node in rows] == list(range(count)), rows
    assert len({node.name for node in rows}) == count and len({node.run_dir for node in rows}) == count
    for node in rows:
        assert (node.state, node.attestation_status) == ("Ready", "Attested"), (node.name, node.message)
        assert (node.enable_secure_boot, node.enable_vtpm) == (secure_boot, True)
        assert len(processes_under(Path(str(node.run_dir)))) == 2, node.name
    running = {int(line.split()[0]) for line in processes_under(state_dir)}
    assert running == {pid for node in rows for pid in vm_pids(node)}
    return rows


def test_kill_9_during_scale_up_reimage_and_scale_down(
    sessions: sessionmaker[Session], reconciler: StandaloneReconciler, state_dir: Path
) -> None:
    spec = PoolSpec(POOL, count=1, vm_size="Standard_D4s_v3", enable_secure_boot=False, enable_vtpm=True)
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[spec]))
    reconciler.start()
    wait_succeeded(sessions, create.id, STEP_TIMEOUT, reconciler.log)
    (first,) = assert_converged(sessions, state_dir, 1, secure_boot=False)

    # Scale up 1 -> 2, killed while the new node boots: its VM is redone, the first node is adopted.
    scale_up = update_pool(sessions, PoolSpec(POOL, count=2))
    booting = wait_until(
        lambda: (node := node_at(sessions, 1)) is not None and node.handle and node,
        STEP_TIMEOUT,
        "the new node's VM to start",
    )
    reconciler.kill()
    assert booting.state == "Provisioning"
    assert len(processes_under(Path(str(booting.run_dir)))) == 2  # qemu + swtpm outlive the reconciler
    assert booting.handle is not None
    os.kill(qemu_pid(booting), signal.SIGKILL)  # gone as well: the node is booted again, by this reconciler
    reconciler.start()
    wait_succeeded(sessions, scale_up, STEP_TIMEOUT, reconciler.log)
    adopted, second = assert_converged(sessions, state_dir, 2, secure_boot=False)
    assert (adopted.id, adopted.handle, adopted.run_dir) == (first.id, first.handle, first.run_dir)
    assert second.id == booting.id and second.run_dir != booting.run_dir
    assert not Path(str(booting.run_dir)).exists()

    # Enable Secure Boot (rolling reimage), killed while node 1 is being torn down: node 0 (reimaged before
    # the kill) is adopted, node 1 is reimaged again from scratch.
    reimage = update_pool(sessions, PoolSpec(POOL, enable_secure_boot=True))
    freeze(qemu_pid(second))  # node 1 was booted by the running reconciler: its teardown starts with QMP
    reimaging = killed_during(sessions, reconciler, 1, "Reimaging")
    assert len(processes_under(Path(str(second.run_dir)))) == 2  # frozen qemu + swtpm, orphaned
    reimaged_first = node_at(sessions, 0)
    assert reimaged_first is not None and reimaged_first.enable_secure_boot
    assert reimaging.run_dir == second.run_dir
    reconciler.start()
    wait_succeeded(sessions, reimage, STEP_TIMEOUT, reconciler.log)
    zero, one = assert_converged(sessions, state_dir, 2, secure_boot=True)
    assert (zero.id, one.id) == (first.id, second.id)  # reimaged in place: same rows, names, ordinals
    assert (zero.name, one.name) == (first.name, second.name)
    assert zero.handle == reimaged_first.handle  # adopted, not booted again
    assert not Path(str(second.run_dir)).exists() and not Path(str(first.run_dir)).exists()

    # Scale down 2 -> 1, killed while the surplus node is being torn down: it is deleted on restart.
    scale_down = update_pool(sessions, PoolSpec(POOL, count=1))
    freeze(qemu_pid(one))
    deleting = killed_during(sessions, reconciler, 1, "Deleting")
    assert deleting.id == one.id
    assert len(processes_under(Path(str(one.run_dir)))) == 2
    reconciler.start()
    wait_succeeded(sessions, scale_down, STEP_TIMEOUT, reconciler.log)
    (kept,) = assert_converged(sessions, state_dir, 1, secure_boot=True)
    assert (kept.id, kept.handle) == (zero.id, zero.handle)
    assert not Path(str(one.run_dir)).exists()

    # No row lost: the pool with its final settings and every operation, all Succeeded.
    with sessions() as session:
        (pool,) = session.scalars(select(AgentPool).where(AgentPool.name == POOL))
        assert (pool.count, pool.enable_secure_boot, pool.enable_vtpm) == (1, True, True)
        statuses = {op.id: op.status for op in session.scalars(select(Operation))}
    assert statuses == dict.fromkeys([create.id, scale_up, reimage, scale_down], "Succeeded")

    with sessions.begin() as session:
        deletion = delete_cluster(session, PATH)
    assert deletion is not None
    wait_succeeded(sessions, deletion.id, STEP_TIMEOUT, reconciler.log)
    assert nodes(sessions) == []
    assert processes_under(state_dir) == []
