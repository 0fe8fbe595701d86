"""Host side of the agent protocol spoken over the node VM's second serial port (see agent/init.sh).

A request is one line; an answer is one JSON line followed by `END <sha256 hex of that line and its
newline>`, so lines damaged or left over on the serial link (e.g. answers to PINGs sent before the agent
started) are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
from typing import Any

from trustedlaunch.errors import TrustedLaunchError


class AgentError(TrustedLaunchError):
    """The in-guest agent did not answer, answered garbage, or reported a failure."""


def _b64(answer: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(answer[key], validate=True)
    except (KeyError, TypeError, ValueError) as error:
        raise AgentError(
            f"agent answer to {answer.get('reply')}: field {key!r} missing or not base64"
        ) from error


class AgentChannel:
    """A connection to the agent's serial port (QEMU exposes it as a unix socket)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = b""

    def close(self) -> None:
        """Close the connection (the agent keeps running)."""
        self._sock.close()

    def _read_line(self, deadline: float) -> bytes | None:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:  # e.g. reset by QEMU exiting mid-read: the same as a closed port
                raise AgentError(f"the agent's serial port failed ({exc}): the VM stopped") from exc
            if not chunk:
                raise AgentError("the agent's serial port was closed (the VM stopped)")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def _read_answer(self, deadline: float) -> dict[str, Any] | None:
        previous: bytes | None = None
        while (line := self._read_line(deadline)) is not None:
            if (
                previous is not None
                and line == b"END " + hashlib.sha256(previous + b"\n").hexdigest().encode()
            ):
                try:
                    answer = json.loads(previous)
                except ValueError:
                    answer = None
                if isinstance(answer, dict):
                    return answer
            previous = line
        return None

    def request(self, line: str, reply: str, timeout: float, token: str | None = None) -> dict[str, Any]:
        """Send one request line; return the answer whose `reply` is `reply` (and `token`, if given)."""
        self._sock.settimeout(timeout)  # not the last read's remaining time
        try:
            self._sock.sendall(line.encode() + b"\n")
        except OSError as exc:  # reset, or a full buffer the serial port does not drain (guest not reading)
            raise AgentError(f"the agent's serial port takes no input ({exc})") from exc
        deadline = time.monotonic() + timeout
        while (answer := self._read_answer(deadline)) is not None:
            if answer.get("reply") == reply and (token is None or answer.get("token") == token):
                return answer
            if answer.get("reply") == "UNKNOWN":
                raise AgentError(
                    f"the node's agent does not know the {line.split()[0]} request: the node runs an older "
                    "agent, reimage it to the current node image"
                )
        raise AgentError(f"the agent did not answer {line.split()[0]} within {timeout:.0f} s")

    def ping(self, token: str, timeout: float) -> bool:
        """True if the agent answered PING with this token in time."""
        try:
            self.request(f"PING {token}", "PONG", timeout, token)
        except AgentError:
            return False
        return True

    @staticmethod
    def _check(answer: dict[str, Any]) -> dict[str, Any]:
        if "error" in answer:
            detail = base64.b64decode(answer.get("detail") or "").decode(errors="replace").strip()
            raise AgentError(
                f"agent: {answer['reply']} failed: {answer['error']}" + (f" ({detail})" if detail else "")
            )
        return answer

    def tpm_command(self, command: bytes, timeout: float) -> bytes:
        """Relay one TPM command (a whole TPM2 command buffer) to the node's TPM; return its response."""
        request = "TPM " + "".join(f"\\x{byte:02x}" for byte in command)
        return _b64(self._check(self.request(request, "TPM", timeout)), "response")

    def event_log(self, timeout: float) -> bytes | None:
        """The kernel's TCG event log (binary_bios_measurements); None when the kernel exposes none."""
        return _b64(self._check(self.request("EVENTLOG", "EVENTLOG", timeout)), "eventLog") or None
