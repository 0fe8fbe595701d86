"""The VM supervisor as a real process around a real command (no VM): it runs in a session of its own, reports
its child's pid, records how the child ended ("exited with code N", "killed by signal N") and passes the
signals it gets on to the child; `vm_end` reads that record and QEMU's own signal line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from trustedlaunch.control.node_processes import kill_node_processes, node_processes
from trustedlaunch.node.supervisor import EXIT_FILE, MODULE, QEMU_LOG, vm_end


def start_supervisor(run_dir: Path, *command: str) -> tuple[subprocess.Popen[bytes], int]:
    """The supervisor of `command` (in a new session, as NodeVM starts it) and its child's pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    supervisor = subprocess.Popen(
        [sys.executable, "-m", MODULE, str(run_dir / EXIT_FILE), str(run_dir / QEMU_LOG), "--", *command],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert supervisor.stdout is not None
    child_pid = int(supervisor.stdout.readline())
    return supervisor, child_pid


def test_the_exit_code_is_recorded(tmp_path: Path) -> None:
    supervisor, _ = start_supervisor(tmp_path / "n1", "sh", "-c", "echo failing; exit 3")
    assert supervisor.wait(10) == 0
    assert (tmp_path / "n1" / EXIT_FILE).read_text() == "exited with code 3\n"
    assert (tmp_path / "n1" / QEMU_LOG).read_text() == "failing\n"
    ended = vm_end(tmp_path / "n1")
    assert ended.process_failure and ended.describe() == "the VM process (QEMU) exited with code 3"


def test_sigkill_of_the_child_is_recorded_and_the_session_is_its_own(tmp_path: Path) -> None:
    run_dir = tmp_path / "n2"
    supervisor, child_pid = start_supervisor(run_dir, "sleep", "60")
    try:
        assert os.getsid(supervisor.pid) == supervisor.pid != os.getsid(0)
        assert os.getsid(child_pid) == supervisor.pid and os.getpgid(child_pid) == supervisor.pid
        assert vm_end(run_dir).status is None  # still running: nothing recorded
        os.kill(child_pid, signal.SIGKILL)
        assert supervisor.wait(10) == 0
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
    assert (run_dir / EXIT_FILE).read_text() == "killed by signal 9 (SIGKILL)\n"
    assert vm_end(run_dir).describe() == "the VM process (QEMU) was killed by signal 9 (SIGKILL)"


def test_signals_to_the_supervisor_reach_the_child(tmp_path: Path) -> None:
    """SIGTERM to the supervisor ends the child with it (never an unsupervised child), and is recorded."""
    supervisor, child_pid = start_supervisor(tmp_path / "n3", "sleep", "60")
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(10) == 0
    assert (tmp_path / "n3" / EXIT_FILE).read_text() == "killed by signal 15 (SIGTERM)\n"
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)


def test_the_supervisor_is_a_node_process_and_is_killed_with_the_node(tmp_path: Path) -> None:
    run_dir = tmp_path / "n4"
    supervisor, child_pid = start_supervisor(run_dir, "sleep", "60")
    try:
        assert node_processes(run_dir) == {supervisor.pid: "supervisor"}
        assert node_processes(tmp_path / "n") == {}  # a sibling prefix is not this node
        assert kill_node_processes(run_dir) == [supervisor.pid]
        assert supervisor.poll() is not None
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        os.kill(child_pid, signal.SIGKILL)  # `sleep` carries no run-dir marker: not a node program


def test_qemus_own_signal_line_names_the_signal(tmp_path: Path) -> None:
    """QEMU that catches SIGINT logs "terminating on signal 2" and exits 0: still the VM process stopped from
    outside, not a guest that powered off."""
    (tmp_path / QEMU_LOG).write_text("qemu-system-x86_64: terminating on signal 2 from pid 4242 (tl)\n")
    (tmp_path / EXIT_FILE).write_text("exited with code 0\n")
    ended = vm_end(tmp_path)
    assert ended.process_failure and ended.qemu_signal == 2
    assert ended.describe().startswith("the VM process (QEMU) was stopped by signal 2 (SIGINT)")
    (tmp_path / QEMU_LOG).write_text("")
    assert not vm_end(tmp_path).process_failure  # the guest ended QEMU itself (-no-reboot)
    (tmp_path / EXIT_FILE).write_text("anything a hostile guest might want shown\n")
    assert vm_end(tmp_path).status is None


def test_a_child_that_cannot_start_leaves_no_supervisor(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            MODULE,
            str(tmp_path / EXIT_FILE),
            str(tmp_path / QEMU_LOG),
            "--",
            "/nonexistent",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = supervisor.communicate(timeout=10)
    assert supervisor.returncode != 0 and out == b"" and b"nonexistent" in err


def test_the_child_starts_with_no_forwarded_signal_blocked(tmp_path: Path) -> None:
    """The supervisor blocks the signals it forwards while its child starts (so none is lost before it knows
    the child); the child itself must not inherit that mask, or SIGTERM would never reach QEMU."""
    supervisor, _ = start_supervisor(tmp_path / "n5", "grep", "^SigBlk:", "/proc/self/status")
    assert supervisor.wait(10) == 0
    blocked = int((tmp_path / "n5" / QEMU_LOG).read_text().split()[1], 16)
    forwarded = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    assert not [signum for signum in forwarded if blocked & (1 << (signum - 1))], hex(blocked)
