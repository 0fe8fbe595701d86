"""A real software TPM 2.0 (swtpm) on local TCP ports, and a runner for tpm2-tools against it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from trustedlaunch.errors import TrustedLaunchError

HOST = "127.0.0.1"
_START_ATTEMPTS = 5


class SwtpmError(TrustedLaunchError):
    """swtpm could not be started, or a tpm2-tools command against it failed."""


def _free_port_pair() -> int:
    """A port P such that P and P+1 were both free on 127.0.0.1 a moment ago."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as second:
            try:
                second.bind((HOST, port + 1))
            except OSError:
                continue
        return port
    raise SwtpmError("swtpm: could not find two consecutive free TCP ports on 127.0.0.1")


def _tail(log_file: Path, size: int = 2000) -> str:
    """The end of swtpm's log (its error output goes there too)."""
    try:
        text = log_file.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return "(no log)"
    return text or "(empty log)"


class Swtpm:
    """Context manager running `swtpm socket --tpm2` (already started up) with its state in a directory.

    Use `tcti` for TSS/tpm2-tools, or `run([...])` to run a tpm2-tools command against it.
    """

    def __init__(self, state_dir: Path | None = None, *, startup_timeout: float = 10.0):
        self._given_state_dir = state_dir
        self._startup_timeout = startup_timeout
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.state_dir = Path()
        self.port = 0

    @property
    def tcti(self) -> str:
        """The TCTI configuration string, e.g. "swtpm:host=127.0.0.1,port=2321"."""
        if self._process is None:
            raise SwtpmError("swtpm is not running (use it as a context manager)")
        return f"swtpm:host={HOST},port={self.port}"

    def __enter__(self) -> Swtpm:
        if shutil.which("swtpm") is None:
            raise SwtpmError("swtpm: the `swtpm` program is not installed (Debian package swtpm)")
        if self._given_state_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="tl-swtpm-")
            self.state_dir = Path(self._tempdir.name)
        else:
            self.state_dir = self._given_state_dir
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SwtpmError(
                    f"swtpm: cannot use state directory {self.state_dir}: {exc.strerror}"
                ) from None
        try:
            self._start()
        except BaseException:
            self._cleanup_dir()
            raise
        return self

    def _start(self) -> None:
        log_file = self.state_dir / "swtpm.log"
        last_error = ""
        for _ in range(_START_ATTEMPTS):
            port = _free_port_pair()
            with log_file.open("ab") as log:  # swtpm keeps its own descriptor; ours can close
                process = subprocess.Popen(
                    [
                        "swtpm",
                        "socket",
                        "--tpm2",
                        "--server",
                        f"type=tcp,port={port},bindaddr={HOST}",
                        "--ctrl",
                        f"type=tcp,port={port + 1},bindaddr={HOST}",
                        "--flags",
                        "not-need-init,startup-clear",
                        "--tpmstate",
                        f"dir={self.state_dir}",
                        "--log",
                        f"file={log_file},level=1",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(process, port):
                self._process = process
                self.port = port
                return
            self._stop(process)
            last_error = _tail(log_file)
        raise SwtpmError(
            f"swtpm: failed to start after {_START_ATTEMPTS} attempts (state {self.state_dir}): {last_error}"
        )

    def _wait_ready(self, process: subprocess.Popen[bytes], port: int) -> bool:
        """True once both the control and the TPM command sockets accept connections (swtpm opens them one
        after the other, so a client racing the second one would be refused)."""
        deadline = time.monotonic() + self._startup_timeout
        waiting = [port + 1, port]
        while waiting and time.monotonic() < deadline:
            if process.poll() is not None:
                return False
            try:
                with socket.create_connection((HOST, waiting[0]), timeout=0.5):
                    waiting.pop(0)
            except OSError:
                time.sleep(0.02)
        return not waiting

    @staticmethod
    def _stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _cleanup_dir(self) -> None:
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._process is not None:
            self._stop(self._process)
            self._process = None
        self._cleanup_dir()

    def run(
        self, args: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a tpm2-tools command against this TPM; a non-zero exit raises SwtpmError with its stderr."""
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        command = [os.fspath(a) for a in args]
        try:
            result = subprocess.run(
                command, cwd=cwd, env=env, capture_output=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SwtpmError(f"{command[0]}: could not run against swtpm port {self.port}: {exc}") from None
        if result.returncode != 0:
            raise SwtpmError(
                f"{' '.join(command)}: exit status {result.returncode} against swtpm port {self.port}: "
                f"{result.stderr.decode(errors='replace').strip()}"
            )
        return result

    def flush_transient_objects(self) -> None:
        """Flush all transient objects and sessions (swtpm has no resource manager, and tpm2-tools leaves
        loaded objects behind after each command)."""
        self.run(["tpm2_flushcontext", "--transient-object"])
        self.run(["tpm2_flushcontext", "--loaded-session"])
