"""Helpers of the reconciler tests: processes started under a folder, node rows, waiting for operations."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from lightkube import Client, KubeConfig
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.node_images import seed_node_images
from trustedlaunch.control.node_processes import node_processes
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.store.db import make_engine, migrate, session_factory
from trustedlaunch.store.models import ManagedCluster, Node, Operation

SUB = "11111111-2222-3333-4444-555555555555"
T = TypeVar("T")


def qemu_pid(node: Node) -> int:
    """The QEMU pid of a direct-driver node's VM: its handle."""
    assert node.handle is not None and node.handle.isdigit(), (node.name, node.handle)
    return int(node.handle)


def vm_pids(node: Node) -> set[int]:
    """The pids of a direct-driver node's QEMU (its handle) and swtpm (found by its run directory)."""
    processes = node_processes(Path(str(node.run_dir)))
    return {qemu_pid(node), *(pid for pid, name in processes.items() if name == "swtpm")}


def processes_under(base: Path) -> list[str]:
    """qemu/swtpm processes ("pid command line", one per process) whose command line mentions `base`."""
    found: dict[str, str] = {}
    for program in ("^qemu-system", "^swtpm"):
        listing = subprocess.run(["pgrep", "-a", "-f", program], capture_output=True, text=True, check=False)
        found.update((line.split()[0], line) for line in listing.stdout.splitlines() if str(base) in line)
    return sorted(found.values())


def kill_processes(lines: list[str]) -> None:
    """SIGKILL the processes listed by `processes_under` (the clean-up after a failed test)."""
    for line in lines:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def nodes(sessions: sessionmaker[Session]) -> list[Node]:
    """Every node row, by pool and ordinal."""
    with sessions() as session:
        return list(session.scalars(select(Node).order_by(Node.pool_id, Node.ordinal)))


def operation(sessions: sessionmaker[Session], operation_id: str) -> Operation:
    """The operation row."""
    with sessions() as session:
        return session.get_one(Operation, operation_id)


@contextlib.contextmanager
def trusted_launch_store(url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated, seeded store at `url` with the trusted launch feature and the provider registered."""
    engine = make_engine(url)
    migrate(engine)
    factory = session_factory(engine)
    with factory.begin() as session:
        seed_node_images(session)
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
    try:
        yield factory
    finally:
        engine.dispose()


def run_until_finished(
    reconciler: Reconciler, sessions: sessionmaker[Session], operation_id: str, timeout: float
) -> Operation:
    """Run reconciler passes (in this thread) until the operation ends; return it."""

    def finished() -> Operation | None:
        reconciler.run_once()
        current = operation(sessions, operation_id)
        return current if current.status != "InProgress" else None

    return wait_until(finished, timeout, f"operation {operation_id}")


def wait_succeeded(
    sessions: sessionmaker[Session], operation_id: str, timeout: float, log: Callable[[], str]
) -> Operation:
    """Wait for the operation to end and require it Succeeded (else fail with its error and `log`'s tail)."""
    done = wait_until(
        lambda: (op := operation(sessions, operation_id)).status != "InProgress" and op,
        timeout,
        f"operation {operation_id} to end",
    )
    assert done.status == "Succeeded", (done.error, log()[-4000:])
    return done


def wait_until(condition: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `condition` every 0.2 s until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def unsigned_kernel(kernel: Path, output: Path) -> Path:
    """A copy of the PE image `kernel` with every Authenticode signature removed (sbattach --remove)."""
    shutil.copyfile(kernel, output)
    listing = ["sbverify", "--list", str(output)]
    while "signature" in subprocess.run(listing, capture_output=True, text=True, check=False).stdout:
        subprocess.run(["sbattach", "--remove", str(output)], check=True, capture_output=True)
    return output


def cluster_admin(sessions: sessionmaker[Session]) -> tuple[Client, Path]:
    """A lightkube client of the store's one cluster's hosted kube-apiserver, as its admin, and that admin
    kubeconfig."""
    with sessions() as session:
        plane = session.scalars(select(ManagedCluster)).one().control_plane
        assert plane is not None
        kubeconfig = Path(plane.data_dir) / "admin.kubeconfig"
    return Client(KubeConfig.from_file(kubeconfig), field_manager="tests", trust_env=False), kubeconfig
