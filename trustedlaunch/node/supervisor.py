"""The supervisor of one node VM: `python -m trustedlaunch.node.supervisor EXIT_FILE LOG -- COMMAND...` runs
COMMAND (QEMU) as its child with its output appended to LOG, prints the child's pid on stdout, waits for it,
writes how it ended ("exited with code N" / "killed by signal N (SIGNAME)") to EXIT_FILE and exits.

It is started in a session of its own (so no terminal signal reaches it or QEMU) and outlives the process that
started it, so that the end of an adopted VM can still be explained later (`vm_end`). SIGTERM, SIGINT and
SIGHUP sent to the supervisor itself are passed on to QEMU, so it never leaves QEMU behind unsupervised.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

MODULE = "trustedlaunch.node.supervisor"  # run with `python -m`
EXIT_FILE = "vm-exit"
QEMU_LOG = "qemu.log"
MAX_EXIT_FILE_BYTES = 200
QEMU_LOG_TAIL_BYTES = 8192
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_EXIT_STATUS = re.compile(r"(exited with code -?\d+|killed by signal \d+( \(\w+\))?)")
# QEMU's own line when it stops on a signal: "qemu-system-x86_64: terminating on signal 2 from pid 42 (tl)"
_QEMU_SIGNAL = re.compile(r"terminating on signal (\d+)[^\n]{0,200}")


def signal_name(number: int) -> str:
    """SIGKILL for 9; "signal N" for numbers Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_returncode(returncode: int) -> str:
    """A Popen return code in words: "exited with code 1", "killed by signal 9 (SIGKILL)"."""
    if returncode < 0:
        return f"killed by signal {-returncode} ({signal_name(-returncode)})"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class VmEnd:
    """How a node VM's process ended: the supervisor's `status` and QEMU's own "terminating on signal" line
    (either may be missing: a VM that is still running has neither)."""

    status: str | None
    qemu_signal: int | None
    qemu_signal_line: str | None

    @property
    def process_failure(self) -> bool:
        """True when the VM process was stopped by a signal or QEMU itself failed (non-zero exit): not a
        firmware or guest failure (a guest that powers off or resets ends QEMU with code 0)."""
        return self.qemu_signal is not None or (
            self.status is not None and self.status != "exited with code 0"
        )

    def describe(self) -> str:
        """One phrase for messages, e.g. "the VM process (QEMU) was killed by signal 9 (SIGKILL)"."""
        if self.qemu_signal is not None:
            number, then = self.qemu_signal, f", then {self.status}" if self.status else ""
            return (
                f"the VM process (QEMU) was stopped by signal {number} ({signal_name(number)}): QEMU logged "
                f'"{self.qemu_signal_line}"{then}'
            )
        if self.status is None:
            return "the VM process (QEMU) ended (how is unknown: its supervisor recorded nothing)"
        if self.status == "exited with code 0":
            return "the VM process (QEMU) exited with code 0 (its guest powered off or reset)"
        verb = "was " if self.status.startswith("killed") else ""
        return f"the VM process (QEMU) {verb}{self.status}"


def vm_end(run_dir: Path) -> VmEnd:
    """What the supervisor (exit file) and QEMU (its log) of the VM in `run_dir` recorded about its end."""
    try:
        with (run_dir / EXIT_FILE).open("rb") as exit_file:
            recorded = exit_file.read(MAX_EXIT_FILE_BYTES).decode(errors="replace").strip()
    except OSError:
        recorded = ""
    status = recorded if _EXIT_STATUS.fullmatch(recorded) else None
    try:
        with (run_dir / QEMU_LOG).open("rb") as qemu_log:
            qemu_log.seek(max(0, qemu_log.seek(0, os.SEEK_END) - QEMU_LOG_TAIL_BYTES))
            tail = qemu_log.read().decode(errors="replace")
    except OSError:
        tail = ""
    matches = list(_QEMU_SIGNAL.finditer(tail))
    last = matches[-1] if matches else None
    if last is None:
        return VmEnd(status, None, None)
    return VmEnd(status, int(last.group(1)), last.group(0).strip())


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(path.name + ".partial")
    scratch.write_text(text)
    os.replace(scratch, path)


def _unblock_forwarded_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)


def main(argv: list[str]) -> int:
    """Run the supervised command; return 0 once its end is recorded (2 on bad arguments)."""
    if len(argv) < 4 or argv[2] != "--":
        print(f"usage: python -m {MODULE} EXIT_FILE LOG -- COMMAND...", file=sys.stderr)
        return 2
    exit_file, log_path, command = Path(argv[0]), Path(argv[1]), argv[3:]
    exit_file.unlink(missing_ok=True)
    children: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            child.send_signal(signum)

    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, forward)
    # A signal that comes while the child starts waits until it is known (then it is forwarded to it); the
    # child itself starts with no signal blocked.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_unblock_forwarded_signals,
            )
        children.append(child)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    with contextlib.suppress(BrokenPipeError):  # the starter died meanwhile: supervise all the same
        print(child.pid, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # the starter read the pid: nothing else goes to its pipe
    os.close(devnull)
    _write_atomically(exit_file, describe_returncode(child.wait()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
