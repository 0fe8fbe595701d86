"""kill -9 of the standalone reconciler (`tl reconciler run`) right after it
started a node's VM: the VM keeps booting and the restarted reconciler adopts it (same qemu pid, no second
boot), attests it and finishes the operation with exactly one node; killed again once the node is Ready, the
next reconciler adopts the running VM (same qemu pid, no reboot), marks the node Failed with the VM's end
("killed by signal 9") when that VM is killed, and removes it on cluster delete. One VM boot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import (
    SUB,
    nodes,
    operation,
    processes_under,
    qemu_pid,
    trusted_launch_store,
    vm_pids,
    wait_succeeded,
    wait_until,
)
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "crashcluster")
OPERATION_TIMEOUT = 400.0
# No re-attestation on the interval: a test that freezes a node's QEMU must not have it attested meanwhile.
NO_INTERVAL = ("--attestation-interval", "0")


class StandaloneReconciler:
    """`tl reconciler run` as a child process, killed with SIGKILL."""

    def __init__(self, database_url: str, state_dir: Path, log_path: Path, *options: str) -> None:
        self.command = [
            str(Path(sys.executable).parent / "tl"),
            "reconciler",
            "run",
            "--database-url",
            database_url,
            "--state-dir",
            str(state_dir),
            "--poll-seconds",
            "0.2",
            *options,
        ]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    """The crash tests' store on reconciler_base/crash.db."""
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'crash.db'}") as factory:
        yield factory


@pytest.fixture(scope="module")
def reconciler(reconciler_base: Path, state_dir: Path) -> Iterator[StandaloneReconciler]:
    standalone = StandaloneReconciler(
        f"sqlite:///{reconciler_base / 'crash.db'}", state_dir, reconciler_base / "reconciler.log"
    )
    yield standalone
    standalone.kill()


def test_kill_9_during_create_then_restart_and_adopt(
    sessions: sessionmaker[Session], reconciler: StandaloneReconciler, state_dir: Path
) -> None:
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
    reconciler.start()
    started = wait_until(
        lambda: next((node for node in nodes(sessions) if node.handle), None), 120, "the node's VM to start"
    )
    reconciler.kill()
    first_run_dir = Path(str(started.run_dir))
    orphans = processes_under(first_run_dir)
    assert len(orphans) == 2, orphans  # qemu + swtpm outlive the killed reconciler
    assert operation(sessions, create.id).status == "InProgress"

    reconciler.start()
    wait_succeeded(sessions, create.id, OPERATION_TIMEOUT, reconciler.log)
    (node,) = nodes(sessions)
    assert (node.id, node.state, node.attestation_status) == (started.id, "Ready", "Attested")
    assert (node.run_dir, node.handle) == (started.run_dir, started.handle)  # adopted, not booted again
    assert f"node {node.name}: adopting its booting VM" in reconciler.log()
    running = processes_under(state_dir)
    assert len(running) == 2 and all(str(node.run_dir) in line for line in running), running
    assert {int(line.split()[0]) for line in running} == vm_pids(node)

    reconciler.kill()  # the node is Ready: the next reconciler adopts its VM
    reconciler.start()
    wait_until(lambda: f"adopted node {node.name}" in reconciler.log(), 60, "the VM to be adopted")
    (adopted,) = nodes(sessions)
    assert (adopted.state, adopted.handle, adopted.run_dir) == ("Ready", node.handle, node.run_dir)

    assert adopted.handle is not None
    os.kill(qemu_pid(adopted), signal.SIGKILL)  # the VM dies under the idle reconciler: the node is lost
    lost = wait_until(lambda: next((n for n in nodes(sessions) if n.state != "Ready"), None), 60, "Unhealthy")
    assert lost.state == "Unhealthy", lost.message
    assert lost.health_cause == "VM exited: the VM process (QEMU) was killed by signal 9 (SIGKILL)"
    assert processes_under(state_dir) == []  # its swtpm too (auto-repair reboots it after 3 checks)

    with sessions.begin() as session:
        deletion = delete_cluster(session, PATH)
    assert deletion is not None
    wait_succeeded(sessions, deletion.id, OPERATION_TIMEOUT, reconciler.log)
    assert nodes(sessions) == []
    assert processes_under(state_dir) == []
