"""A command run as a shell runs it in a terminal: a session of its own whose controlling terminal is a real
pseudo-terminal, so that Ctrl-C typed on it and a hang-up of it reach the session as they would in a shell."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time


def _take_terminal() -> None:
    """In the child (already a session leader): make its stdin, the pty, its controlling terminal, with the
    default handling of the terminal's signals, as a terminal emulator starts its shell (a test run under
    `nohup`, or in the background of a script, would otherwise pass on SIGHUP or SIGINT ignored)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    for terminal_signal in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        signal.signal(terminal_signal, signal.SIG_DFL)


class Terminal:
    """`command` in a new session on a pty (`columns` wide, as a terminal window: its programs read the width
    from the pty); its output (echoed Ctrl-C and Rich spinners included) is kept."""

    def __init__(self, command: list[str], env: dict[str, str], columns: int = 80) -> None:
        self._master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        self.process = subprocess.Popen(
            command,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
            preexec_fn=_take_terminal,
        )
        os.close(slave)
        self._output = bytearray()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)  # a full pty would block the command
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            if not select.select([self._master], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: every process of the session closed the terminal
                return
            if not chunk:
                return
            self._output += chunk

    @property
    def output(self) -> str:
        """Everything the session wrote to the terminal so far."""
        return self._output.decode(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> None:
        """Wait until `text` appeared on the terminal; fail with the output after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, (
                f"no {text!r} on the terminal after {timeout:.0f} s:\n{self.output}"
            )
            assert self.process.poll() is None or text in self.output, f"ended early:\n{self.output}"
            time.sleep(0.2)

    def interrupt(self) -> None:
        """Type Ctrl-C (the terminal sends SIGINT to its foreground process group)."""
        os.write(self._master, b"\x03")

    def wait(self, timeout: float) -> str:
        """Wait for the command to end (failing after `timeout` seconds); its output as the terminal showed
        it, with the terminal's CR LF line ends as LF."""
        self.process.wait(timeout)
        deadline = time.monotonic() + 5
        while self._reader.is_alive() and time.monotonic() < deadline:  # the rest of its output
            time.sleep(0.05)
        return self.output.replace("\r\n", "\n")

    def hang_up(self) -> None:
        """Close the terminal (as closing its window): the kernel hangs it up and signals the session."""
        self._closing.set()
        self._reader.join()
        os.close(self._master)
        self._master = -1

    def close(self) -> None:
        """Kill what is left of the session's command and close the terminal."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._master >= 0:
            self.hang_up()
