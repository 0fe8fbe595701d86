"""Node VMs outlive the terminal of the `tl` that started them (real `tl` in a real pseudo-terminal, real
VMs): Ctrl-C during `tl aks create`, Ctrl-C on `tl serve` and a hang-up of the terminal after a create leave
QEMU, its supervisor, swtpm and the bank proxy running, and the next `tl` adopts them (same QEMU, still
Ready and Attested). SIGKILL of an adopted QEMU is recorded by its supervisor and named on the lost node;
a hang-up of `tl serve`'s terminal stops it in order. One VM boot per test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from terminal_session import Terminal

from trustedlaunch.control.node_processes import kill_node_processes, node_processes
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import Node

pytestmark = pytest.mark.slow
TL = str(Path(sys.executable).parent / "tl")
CLUSTER = ["-g", "rg", "-n", "c1"]
CREATE = [
    TL,
    "aks",
    "create",
    *CLUSTER,
    "--node-count",
    "1",
    "--node-vm-size",
    "Standard_D4s_v3",
    "--enable-secure-boot",
    "--enable-vtpm",
    "--generate-ssh-keys",
    "-o",
    "table",
]
NODE_PROGRAMS = ["bankproxy", "qemu-system-x86_64", "supervisor", "swtpm"]
BOOT_SECONDS = 400.0


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A `tl` user with private HOME, config, data (node VMs) and store; no VM of it may be left behind.
    The data dir is a short one of its own: the node's vTPM socket path must fit a unix socket address
    (107 bytes), which pytest's per-test directories under a long temp root need not."""
    data = Path(tempfile.mkdtemp(prefix="tl-term-"))
    environment = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "c"),
        "XDG_DATA_HOME": str(data),
        "TL_DATABASE_URL": f"sqlite:///{tmp_path / 'tl.db'}",
        "TERM": "xterm",
    }
    for variable in ("TL_ENDPOINT", "TL_TOKEN", "TL_SUBSCRIPTION"):
        environment.pop(variable, None)
    tl(
        environment,
        "feature",
        "register",
        "--namespace",
        "Microsoft.ContainerService",
        "--name",
        "TrustedLaunchPreview",
    )
    tl(environment, "provider", "register", "--namespace", "Microsoft.ContainerService")
    tl(environment, "group", "create", "-n", "rg", "-l", "eastus")
    yield environment
    leftovers = node_processes(data)
    kill_node_processes(data)
    shutil.rmtree(data, ignore_errors=True)
    assert not leftovers, f"node processes left running: {leftovers}"


def tl(env: dict[str, str], *arguments: str, timeout: float = BOOT_SECONDS) -> str:
    """Run `tl ARGUMENTS` (embedded server and reconciler) to its end; its stdout."""
    done = subprocess.run(
        [TL, *arguments], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def the_node(env: dict[str, str]) -> Node | None:
    """The one node row of the store (None before it exists)."""
    engine = make_engine(env["TL_DATABASE_URL"])
    try:
        with session_factory(engine)() as session:
            return session.scalars(select(Node)).one_or_none()
    finally:
        engine.dispose()


def wait_for_node(env: dict[str, str], condition: str, timeout: float, check: Callable[[Node], bool]) -> Node:
    """The node once `check` holds for it."""
    deadline = time.monotonic() + timeout
    while True:
        node = the_node(env)
        if node is not None and check(node):
            return node
        assert time.monotonic() < deadline, f"timed out waiting for the node to be {condition}: {node}"
        time.sleep(0.5)


def node_programs(node: Node) -> dict[int, str]:
    """The running processes of the node's VM: pid -> program."""
    return node_processes(Path(str(node.run_dir)))


def assert_vm_untouched(node: Node) -> None:
    """The node's processes all run (the same QEMU) and nothing ended or signalled QEMU."""
    time.sleep(2)  # a signal would have ended them by now
    programs = node_programs(node)
    assert sorted(programs.values()) == NODE_PROGRAMS, programs
    assert programs.get(int(node.handle or -1)) == "qemu-system-x86_64"
    run_dir = Path(str(node.run_dir))
    assert not (run_dir / "vm-exit").exists()
    assert "terminating on signal" not in (run_dir / "qemu.log").read_text(errors="replace")


def start_serve(env: dict[str, str]) -> Terminal:
    """`tl serve` in a terminal of its own, once it announced its URL."""
    serve = Terminal([TL, "serve", "--port", "0", "--attestation-interval", "0"], env)
    serve.wait_for_output("Use it with", 60)
    return serve


def test_ctrl_c_during_create_and_on_serve_leaves_the_vm_to_adopt(env: dict[str, str]) -> None:
    create = Terminal(CREATE, env)
    try:
        booting = wait_for_node(env, "booting", 300, lambda node: node.handle is not None)
        create.interrupt()
        assert create.process.wait(60) != 0, create.output
    finally:
        create.close()
    assert booting.state == "Provisioning"
    assert_vm_untouched(booting)

    serve = start_serve(env)  # resumes the create: adopts the booting VM instead of booting another
    try:
        ready = wait_for_node(env, "Ready", BOOT_SECONDS, lambda node: node.state != "Provisioning")
        assert (ready.state, ready.attestation_status) == ("Ready", "Attested"), (ready.message, serve.output)
        assert (ready.handle, ready.run_dir) == (booting.handle, booting.run_dir)
        assert "adopting its booting VM" in serve.output
        serve.interrupt()
        assert serve.process.wait(60) == 0, serve.output
        assert "SIGINT: stopping" in serve.output
    finally:
        serve.close()
    assert_vm_untouched(ready)

    serve = start_serve(env)  # restarted: adopts the running VM
    try:
        serve.wait_for_output(f"adopted node {ready.name}", 60)
        adopted = the_node(env)
        assert adopted is not None
        assert (adopted.state, adopted.attestation_status, adopted.handle) == (
            "Ready",
            "Attested",
            ready.handle,
        )
        assert ready.handle is not None
        os.kill(int(ready.handle), signal.SIGKILL)  # the supervisor records it, the reconciler names it
        lost = wait_for_node(env, "lost", 60, lambda node: node.state != "Ready")
        assert lost.state == "Unhealthy", lost.message
        assert lost.message == "unhealthy: VM exited: the VM process (QEMU) was killed by signal 9 (SIGKILL)"
        serve.hang_up()  # its terminal closed: `tl serve` stops in order (exit 0), not killed by SIGHUP
        assert serve.process.wait(60) == 0, serve.output
    finally:
        serve.close()
    tl(env, "aks", "delete", *CLUSTER, "--yes")
    assert the_node(env) is None and node_programs(ready) == {}


def test_hang_up_after_create_leaves_the_vm_to_adopt(env: dict[str, str]) -> None:
    """A shell script in a terminal runs `tl aks create` in the foreground; the terminal is then closed."""
    command = " ".join(CREATE)
    shell = Terminal(["bash", "-c", f"{command}; echo create ended: $?; exec sleep 600"], env)
    try:
        shell.wait_for_output("create ended: 0", BOOT_SECONDS)
        created = the_node(env)
        assert created is not None and (created.state, created.attestation_status) == ("Ready", "Attested")
        shell.hang_up()
        assert shell.process.wait(30) == -signal.SIGHUP
    finally:
        shell.close()
    assert_vm_untouched(created)

    machines = json.loads(
        tl(env, "aks", "machine", "list", "--cluster-name", "c1", "--nodepool-name", "nodepool1", "-g", "rg")
    )
    assert [machine["properties"]["attestationStatus"] for machine in machines] == ["Attested"]
    adopted = the_node(env)
    assert adopted is not None
    assert (adopted.state, adopted.handle, adopted.run_dir) == ("Ready", created.handle, created.run_dir)
    tl(env, "aks", "delete", *CLUSTER, "--yes")
    assert the_node(env) is None and node_programs(created) == {}
