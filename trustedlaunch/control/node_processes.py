"""Find and stop the processes of a node VM (qemu, its supervisor, swtpm and the TPM bank proxy between them)
by the marker on their command lines (the node's run directory), whether this process started them or a
reconciler that was killed did."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from trustedlaunch.node.supervisor import MODULE as SUPERVISOR_MODULE
from trustedlaunch.tpm.vtpm import PROXY_MODULE

PROGRAMS = ("qemu-system", "swtpm")
PROXY_NAME = "bankproxy"  # how node_processes names `python -m PROXY_MODULE ...`
SUPERVISOR_NAME = "supervisor"  # and `python -m SUPERVISOR_MODULE ...`
PYTHON_MODULES = {PROXY_MODULE: PROXY_NAME, SUPERVISOR_MODULE: SUPERVISOR_NAME}
PROC = Path("/proc")


def command_line(pid: int) -> list[str] | None:
    """The arguments of process `pid`; None if it is gone or a zombie (zombies have no command line)."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _program(arguments: list[str]) -> str | None:
    """The node program a command line runs (qemu-system-*, swtpm, bankproxy, supervisor), or None."""
    program = Path(arguments[0]).name
    if program.startswith(PROGRAMS):
        return program
    return PYTHON_MODULES.get(arguments[2]) if len(arguments) > 2 and arguments[1] == "-m" else None


def _node_program(arguments: list[str], marker: str) -> str | None:
    """The node program of a command line naming a file under the run dir of `marker`, or None."""
    program = _program(arguments)
    return program if program is not None and any(marker in argument for argument in arguments[1:]) else None


def run_dir_marker(run_dir: Path) -> str:
    """The string every qemu/swtpm argument naming a file of `run_dir` contains (the dir plus a slash, so
    that `.../n1-abc` does not match `.../n1-abcd`)."""
    return f"{run_dir}/"


def node_processes(run_dir: Path) -> dict[int, str]:
    """Live qemu/supervisor/swtpm/bankproxy processes of the node VM in `run_dir`: pid -> program name."""
    marker = run_dir_marker(run_dir)
    found = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        arguments = command_line(int(entry.name))
        program = None if arguments is None else _node_program(arguments, marker)
        if program is not None:
            found[int(entry.name)] = program
    return found


def is_node_process(pid: int, run_dir: Path) -> bool:
    """True if `pid` is a live qemu/supervisor/swtpm/bankproxy process of the node VM in `run_dir` (not a
    reused pid)."""
    arguments = command_line(pid)
    return arguments is not None and _node_program(arguments, run_dir_marker(run_dir)) is not None


def is_stopped(pid: int) -> bool:
    """True if process `pid` is stopped (SIGSTOP, or a tracer's stop): a paused VM runs no guest code."""
    try:
        stat = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return False
    # pid (comm) state ...: comm may hold spaces and parentheses, the state follows the last ")"
    fields = stat[stat.rfind(b")") + 1 :].split()
    return bool(fields) and fields[0] in (b"T", b"t")


def _reap_if_child(pid: int) -> None:
    """Wait for `pid` (already sent SIGKILL) if it is a child of this process, so that it leaves no zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def kill_node_processes(run_dir: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every qemu/supervisor/swtpm/bankproxy process of the node VM in `run_dir` and wait until they
    are gone (reaping them when they are children of this process); return their pids."""
    pids = list(node_processes(run_dir))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            _reap_if_child(pid)
            if command_line(pid) is None:
                pending.discard(pid)
        if pending:
            time.sleep(0.05)
    if pending:
        raise OSError(f"node processes {sorted(pending)} of {run_dir} did not stop after SIGKILL")
    return pids
