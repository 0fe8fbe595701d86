"""One reconciler per state directory: a reconciler in another process that holds the directory's lock
keeps this one idle (a lost node stays as it is), this one takes over once the other releases the lock or
is killed, and then the other stays idle in turn. No VM: the observable work is marking a Ready node whose
VM is not running Failed, which the owner does when it takes the directory over."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from monitoring_helpers import create_trusted_cluster
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.reconciler import LOCK_FILE, Reconciler
from trustedlaunch.store.models import AgentPool, Node, Operation

LOST = "unhealthy: VM exited: "

# A reconciler in its own process, driven line by line: "run" -> run_once()'s result, "release" -> release().
OTHER_RECONCILER = """
import sys
from pathlib import Path
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.store.db import make_engine, session_factory

sessions = session_factory(make_engine(sys.argv[1]))
reconciler = Reconciler(sessions, Path(sys.argv[2]), attestation_interval=0, auto_repair=False)
for command in sys.stdin:
    if command.strip() == "run":
        print(reconciler.run_once(), flush=True)
    elif command.strip() == "release":
        reconciler.release()
        print("released", flush=True)
"""


class OtherReconciler:
    """The reconciler of another process on the same store and state directory."""

    def __init__(self, database_url: str, state_dir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", OTHER_RECONCILER, database_url, str(state_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, command: str) -> str:
        """Send a command; its answer line."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline().strip()
        assert answer, f"the other reconciler exited ({self.process.poll()})"
        return answer

    def kill(self) -> None:
        """SIGKILL: no release, the kernel drops the lock with the process."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def close(self) -> None:
        """End the process (stdin closed) if it still runs."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.wait(timeout=30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[str, sessionmaker[Session], AgentPool]]:
    """(URL, sessions, pool) of a store with one trusted launch pool whose creation is finished (so no
    reconciler pass boots anything)."""
    url = f"sqlite:///{tmp_path / 'control.db'}"
    engine, sessions = open_store(url, tmp_path / "admin-token")
    pool, creation = create_trusted_cluster(sessions, "lockcluster")
    with sessions.begin() as session:
        finish_operation(session, session.get_one(Operation, creation.id), "Succeeded")
    yield url, sessions, pool
    engine.dispose()


def add_lost_node(sessions: sessionmaker[Session], pool: AgentPool, ordinal: int, run_dir: Path) -> str:
    """A Ready node whose VM does not run (no qemu pid); its name."""
    name = f"aks-lock-{ordinal}"
    with sessions.begin() as session:
        session.add(
            Node(
                pool_id=pool.id,
                ordinal=ordinal,
                name=name,
                node_image_version=pool.node_image_version,
                enable_secure_boot=True,
                enable_vtpm=True,
                state="Ready",
                attestation_status="Attested",
                run_dir=str(run_dir / name),
            )
        )
    return name


def node_state(sessions: sessionmaker[Session], name: str) -> tuple[str, str]:
    with sessions() as session:
        node = session.scalars(select(Node).where(Node.name == name)).one()
        return node.state, node.message


def test_one_reconciler_per_state_directory(
    store: tuple[str, sessionmaker[Session], AgentPool], tmp_path: Path
) -> None:
    url, sessions, pool = store
    state_dir = tmp_path / "state"
    other = OtherReconciler(url, state_dir)
    ours = Reconciler(sessions, state_dir, attestation_interval=0, auto_repair=False)
    try:
        assert other.send("run") == "False"  # it owns the directory now (nothing to do yet)
        assert (state_dir / LOCK_FILE).is_file()

        first = add_lost_node(sessions, pool, 0, tmp_path)
        for _ in range(3):  # ours stays idle while the other holds the lock
            assert ours.run_once() is False
        assert node_state(sessions, first) == ("Ready", "")

        assert other.send("release") == "released"
        ours.run_once()  # takes over: the node it finds lost is marked Unhealthy
        state, message = node_state(sessions, first)
        assert state == "Unhealthy" and message.startswith(LOST), message

        second = add_lost_node(sessions, pool, 1, tmp_path)
        assert other.send("run") == "False"  # now the other one is idle
        assert node_state(sessions, second) == ("Ready", "")

        ours.release()
        other.send("run")  # the other takes over again ...
        assert node_state(sessions, second)[0] == "Unhealthy"
        other.kill()  # ... and dies without releasing: the lock goes with the process

        third = add_lost_node(sessions, pool, 2, tmp_path)
        ours.run_once()
        assert node_state(sessions, third)[0] == "Unhealthy"
    finally:
        ours.release()
        other.close()
