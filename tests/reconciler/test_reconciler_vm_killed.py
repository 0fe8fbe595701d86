"""SIGKILL of a node's QEMU while it boots: the reconciler records the node Failed and fails the operation
with a diagnosis naming the signal (from the VM's supervisor), not the firmware or the guest; nothing is left
running. One VM boot, cut short."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import SUB, nodes, run_until_finished, trusted_launch_store, wait_until
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.node_processes import node_processes
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "killedcluster")


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'killed.db'}") as factory:
        yield factory


def test_sigkill_of_a_booting_vm_is_the_diagnosis(sessions: sessionmaker[Session], state_dir: Path) -> None:
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
    killed: list[str] = []

    def kill_qemu_once_started() -> None:
        booting = wait_until(
            lambda: next((node for node in nodes(sessions) if node.handle), None), 300, "the VM to start"
        )
        assert booting.handle is not None
        os.kill(int(booting.handle), signal.SIGKILL)
        killed.append(booting.handle)

    killer = threading.Thread(target=kill_qemu_once_started, daemon=True)
    killer.start()
    reconciler = Reconciler(sessions, state_dir, boot_timeout=180)
    try:
        failed = run_until_finished(reconciler, sessions, create.id, 400)
    finally:
        reconciler.release()
    killer.join(10)
    assert killed, "the VM was never started"
    assert failed.status == "Failed" and failed.error is not None
    message = str(failed.error["message"])
    assert failed.error["code"] == "NodeBootFailed", message
    assert (
        "did not boot: the VM process (QEMU) was killed by signal 9 (SIGKILL) before the node booted: not a "
        "firmware or guest failure" in message
    ), message
    assert "accepts every stage" not in message
    (node,) = nodes(sessions)
    assert node.state == "Failed" and node.handle is None
    assert node_processes(Path(str(node.run_dir))) == {}
