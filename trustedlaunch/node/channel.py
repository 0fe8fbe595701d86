"""Host side of the agent protocol spoken over the node VM's second serial port (see agent/init.sh).

A request is one line, `COMMAND ID [ARGUMENT]`; an answer is one JSON line echoing the request's ID,
followed by `END <sha256 hex of that line and its newline>`, so lines damaged on the serial link are
skipped, and answers left over on it (to PINGs sent before the agent started, to a request that timed out,
to a line the link cut) are told from the answer to this request by their ID.

Everything the guest sends is hostile input: a line is at most MAX_ANSWER_LINE bytes, a framed answer must
be a flat JSON object of strings (no nesting, no other types), binary fields are strict base64 of bounded
size. Whatever breaks these rules is an AgentProtocolError (an AgentError) for this node only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import socket
import time
from dataclasses import dataclass

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.parser import MAX_EVENT_LOG_SIZE

MAX_TPM_RESPONSE_SIZE = 4096  # the vTPM's response buffer (TPM_PT_MAX_RESPONSE_SIZE)
MAX_DETAIL_SIZE = 4096  # the diagnostics of a failed request (a tool's stderr)
MAX_VERSION_SIZE = 1024  # a program's `--version` output
ROOTFS_STATES = ("absent", "verified", "corrupted", "failed")  # agent/init.sh: open_rootfs
PROCESS_STATES = ("absent", "running", "exited")  # agent/init.sh: process_state
MAX_LOG_TAIL_SIZE = 2048  # the end of kubelet's or containerd's log (KUBELETSTATUS)


def _base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


# The longest line an agent sends: the EVENTLOG answer with a log of the largest size attestation takes.
MAX_ANSWER_LINE = _base64_length(MAX_EVENT_LOG_SIZE) + 1024
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'  # a JSON string (unrolled: linear time on any input)
_PAIR = _STRING + rb"\s*:\s*" + _STRING
# (the whitespace before the closing brace sits inside the optional group: two adjacent `\s*` around an
# empty group would make a line of blanks quadratic to reject)
_FLAT_OBJECT = re.compile(rb"\{\s*(?:" + _PAIR + rb"(?:\s*,\s*" + _PAIR + rb")*\s*)?\}")
# Empty lines (which the agent ignores) before each request: the guest's UART may drop up to its receive
# FIFO (16 bytes) of what arrives first (a request that lost its start was answered UNKNOWN, without its id).
REQUEST_PADDING = b"\n" * 16
RESENDS = 3  # a request whose start the link lost is sent again (see AgentChannel.request)
_REQUEST_ID = re.compile(r"[0-9A-Za-z_-]{1,32}")  # what the agent echoes (init.sh: request_id)


@dataclass(frozen=True)
class RootfsStatus:
    """The node's root filesystem as the agent opened it at boot (a state of ROOTFS_STATES), the
    `containerd --version` it ran from it, and the tools' and kernel's messages."""

    state: str
    containerd_version: str
    detail: str


@dataclass(frozen=True)
class KubeletStatus:
    """kubelet and containerd on the node (each a state of PROCESS_STATES), the guest's memory (total and
    available, KiB) and the end of their logs."""

    kubelet: str
    containerd: str
    memory_total_kib: int
    memory_available_kib: int
    kubelet_log: str
    containerd_log: str


@dataclass(frozen=True)
class RenewedCredentials:
    """What the agent replaced on a KUBELETCERTS request (file names) and the sha256 (hex) of the client
    and serving certificates now in place."""

    replaced: tuple[str, ...]
    client_cert_sha256: str
    serving_cert_sha256: str


class AgentError(TrustedLaunchError):
    """The in-guest agent did not answer, answered garbage, or reported a failure."""


class AgentOutdatedError(AgentError):
    """The agent does not know a request (an older agent: the node booted an older node image's initramfs);
    the node must be reimaged onto the current image to be asked it."""


class AgentProtocolError(AgentError):
    """The agent sent something its protocol never produces: too long, not a flat JSON object of strings,
    bad base64, an answer of another kind to the request (a compromised or broken node)."""


def _parse_answer(line: bytes) -> dict[str, str]:
    """A framed answer line as a dict of strings; AgentProtocolError if it is anything else."""
    if _FLAT_OBJECT.fullmatch(line) is None:
        raise AgentProtocolError("the agent's answer is not a flat JSON object of strings")
    try:
        answer = json.loads(line)
    except ValueError as error:  # a bad escape, invalid UTF-8 (UnicodeDecodeError is a ValueError)
        raise AgentProtocolError(f"the agent's answer is not valid JSON ({error})") from None
    if not isinstance(answer, dict) or not all(isinstance(value, str) for value in answer.values()):
        raise AgentProtocolError("the agent's answer is not a flat JSON object of strings")
    return answer


def _b64(answer: dict[str, str], key: str, limit: int) -> bytes:
    """Field `key` of `answer`: strict base64 of at most `limit` bytes."""
    text = answer.get(key)
    if text is None:
        raise AgentProtocolError(f"agent answer to {answer.get('reply')}: field {key!r} missing")
    too_large = AgentProtocolError(
        f"agent answer to {answer.get('reply')}: field {key!r} holds more than {limit} bytes"
    )
    if len(text) > _base64_length(limit):  # before decoding it
        raise too_large
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AgentProtocolError(
            f"agent answer to {answer.get('reply')}: field {key!r} is not base64"
        ) from None
    if len(data) > limit:
        raise too_large
    return data


def new_request_id() -> str:
    """A fresh request id: 'r' and 12 hex digits (an agent older than request ids takes it for no command
    bytes, so a TPM request never reaches its TPM)."""
    return "r" + secrets.token_hex(6)


class AgentChannel:
    """A connection to the agent's serial port (QEMU exposes it as a unix socket)."""

    def __init__(self, sock: socket.socket):
        self._sock = sock
        self._buffer = b""
        self._skipping = False  # dropping the rest of an overlong line
        # time.monotonic() past which no request waits, whatever its timeout: bounds a whole attestation (a
        # hostile agent answering each request just before its timeout)
        self.deadline: float | None = None
        # time.monotonic() when the request in flight was sent (None between requests): how long the agent
        # has been silent, for a liveness check that must not interrupt an attestation
        self.waiting_since: float | None = None

    def close(self) -> None:
        """Close the connection (the agent keeps running)."""
        self._sock.close()

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line (at most MAX_ANSWER_LINE bytes), None at the deadline."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
                if self._skipping:
                    self._skipping = False
                    continue
                if len(line) > MAX_ANSWER_LINE:
                    raise AgentProtocolError(f"the agent sent a line longer than {MAX_ANSWER_LINE} bytes")
                return line.rstrip(b"\r")
            if len(self._buffer) > MAX_ANSWER_LINE:
                self._buffer = b""
                if not self._skipping:  # drop the rest of the line as it comes, report it once
                    self._skipping = True
                    raise AgentProtocolError(f"the agent sent a line longer than {MAX_ANSWER_LINE} bytes")
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

    def _read_answer(self, deadline: float) -> dict[str, str] | None:
        """The next framed answer (a line followed by its END line), None at the deadline."""
        previous: bytes | None = None
        while (line := self._read_line(deadline)) is not None:
            if (
                previous is not None
                and line == b"END " + hashlib.sha256(previous + b"\n").hexdigest().encode()
            ):
                return _parse_answer(previous)
            previous = line
        return None

    def _send(self, line: str) -> None:
        try:
            self._sock.sendall(REQUEST_PADDING + line.encode() + b"\n")
        except OSError as exc:  # reset, or a full buffer the serial port does not drain (guest not reading)
            raise AgentError(f"the agent's serial port takes no input ({exc})") from exc

    def request(
        self, command: str, reply: str, timeout: float, argument: str = "", request_id: str | None = None
    ) -> dict[str, str]:
        """Send `COMMAND ID [ARGUMENT]`; return the answer that echoes ID (a new one unless given), which
        must be a `reply` answer. Answers to other requests (stale ones) are skipped.

        An UNKNOWN answer to a line the host did not send may be this request with its start lost on the
        link: a PING sent behind it tells (the agent answers in order). If the PING is answered first, the
        request never reached the agent whole and is sent again (RESENDS times at most)."""
        request_id = request_id or new_request_id()
        if _REQUEST_ID.fullmatch(request_id) is None:
            raise ValueError(f"request id {request_id!r} is not 1-32 of [0-9A-Za-z_-]")
        started = self.waiting_since = time.monotonic()
        try:
            return self._request(command, reply, argument, request_id, started, timeout)
        finally:
            self.waiting_since = None

    def _request(
        self, command: str, reply: str, argument: str, request_id: str, started: float, timeout: float
    ) -> dict[str, str]:
        deadline = started + timeout if self.deadline is None else min(started + timeout, self.deadline)
        self._sock.settimeout(max(deadline - started, 0.001))  # not the last read's remaining time
        self._send(f"{command} {request_id} {argument}".rstrip())
        barrier: str | None = None  # the PING sent behind the request after a stray UNKNOWN
        resends = 0
        while (answer := self._read_answer(deadline)) is not None:
            answer_id = answer.get("id")
            if answer_id is None and answer.get("reply") == "PONG" and answer.get("token") == request_id:
                return answer  # an agent older than request ids still answers PING: adopted, then reimaged
            if answer_id is None:
                raise AgentOutdatedError(
                    f"the node's agent does not know the {command} request (its answers carry no request "
                    "id): the node runs an older agent, reimage it to the current node image"
                )
            if answer_id == barrier and resends < RESENDS:  # the request was lost: send it again
                request_id, barrier, resends = new_request_id(), None, resends + 1
                self._send(f"{command} {request_id} {argument}".rstrip())
                continue
            if answer_id != request_id:  # an answer to an earlier request, left on the link
                if answer.get("reply") == "UNKNOWN" and barrier is None and command != "PING":
                    barrier = new_request_id()
                    self._send(f"PING {barrier}")
                continue
            if answer.get("reply") == "UNKNOWN":
                raise AgentOutdatedError(
                    f"the node's agent does not know the {command} request: the node runs an older "
                    "agent, reimage it to the current node image"
                )
            if answer.get("reply") != reply:
                raise AgentProtocolError(f"the agent answered {command} with a {answer.get('reply')} answer")
            return answer
        raise AgentError(f"the agent did not answer {command} within {max(deadline - started, 0):.0f} s")

    def ping(self, token: str, timeout: float) -> bool:
        """True if the agent answered PING with this token (its request id) in time."""
        try:
            self.request("PING", "PONG", timeout, request_id=token)
        except AgentError:
            return False
        return True

    @staticmethod
    def _check(answer: dict[str, str]) -> dict[str, str]:
        if "error" in answer:
            try:
                detail = _b64(answer, "detail", MAX_DETAIL_SIZE).decode(errors="replace").strip()
            except AgentProtocolError:
                detail = ""
            raise AgentError(
                f"agent: {answer['reply']} failed: {answer['error'][:200]}"
                + (f" ({detail})" if detail else "")
            )
        return answer

    def tpm_command(self, command: bytes, timeout: float) -> bytes:
        """Relay one TPM command (a whole TPM2 command buffer) to the node's TPM; return its response."""
        argument = "".join(f"\\x{byte:02x}" for byte in command)
        return _b64(
            self._check(self.request("TPM", "TPM", timeout, argument)), "response", MAX_TPM_RESPONSE_SIZE
        )

    def event_log(self, timeout: float) -> bytes | None:
        """The kernel's TCG event log (binary_bios_measurements); None when the kernel exposes none."""
        answer = self._check(self.request("EVENTLOG", "EVENTLOG", timeout))
        return _b64(answer, "eventLog", MAX_EVENT_LOG_SIZE) or None

    def rootfs_status(self, timeout: float) -> RootfsStatus:
        """How the node's dm-verity root filesystem came up at boot (agent request ROOTFS)."""
        answer = self._check(self.request("ROOTFS", "ROOTFS", timeout))
        state = answer.get("state")
        if state not in ROOTFS_STATES:
            raise AgentProtocolError(f"agent answer to ROOTFS: unknown state {str(state)[:40]!r}")
        return RootfsStatus(
            state,
            _b64(answer, "containerd", MAX_VERSION_SIZE).decode(errors="replace").strip(),
            _b64(answer, "detail", MAX_DETAIL_SIZE).decode(errors="replace").strip(),
        )

    def start_kubelet(self, bundle: bytes, timeout: float) -> str:
        """Hand the node its join bundle (trustedlaunch.node.kubelet.KubeletJoin.bundle) and have it start
        containerd and kubelet from its root filesystem (agent request KUBELET); the agent's account of it."""
        argument = base64.b64encode(bundle).decode()
        answer = self._check(self.request("KUBELET", "KUBELET", timeout, argument))
        if answer.get("state") != "started":
            raise AgentProtocolError(
                f"agent answer to KUBELET: unknown state {str(answer.get('state'))[:40]!r}"
            )
        return _b64(answer, "detail", MAX_DETAIL_SIZE).decode(errors="replace").strip()

    def renew_kubelet_credentials(self, bundle: bytes, timeout: float) -> RenewedCredentials:
        """Have the node replace its kubelet's credential files with those of `bundle`
        (trustedlaunch.node.kubelet.KubeletCredentials.bundle; agent request KUBELETCERTS)."""
        argument = base64.b64encode(bundle).decode()
        answer = self._check(self.request("KUBELETCERTS", "KUBELETCERTS", timeout, argument))
        replaced = str(answer.get("replaced"))
        if re.fullmatch(r"[a-z.-]{1,40}( [a-z.-]{1,40}){0,7}", replaced) is None:
            raise AgentProtocolError(
                f"agent answer to KUBELETCERTS: replaced {replaced[:80]!r} is no file list"
            )
        digests = [str(answer.get(key)) for key in ("clientSha256", "servingSha256")]
        if any(re.fullmatch(r"[0-9a-f]{64}", digest) is None for digest in digests):
            raise AgentProtocolError(
                f"agent answer to KUBELETCERTS: {str(digests)[:160]} are no sha256 digests"
            )
        return RenewedCredentials(tuple(replaced.split()), *digests)

    def kubelet_status(self, timeout: float) -> KubeletStatus:
        """Whether kubelet and containerd run on the node, with the end of their logs (KUBELETSTATUS)."""
        answer = self._check(self.request("KUBELETSTATUS", "KUBELETSTATUS", timeout))
        states = answer.get("kubelet"), answer.get("containerd")
        if any(state not in PROCESS_STATES for state in states):
            raise AgentProtocolError(f"agent answer to KUBELETSTATUS: unknown states {str(states)[:80]}")
        memory = str(answer.get("memoryKiB"))
        if re.fullmatch(r"[0-9]{1,12},[0-9]{1,12}", memory) is None:
            raise AgentProtocolError(
                f"agent answer to KUBELETSTATUS: memory {memory[:40]!r} is not total,available"
            )
        total, available = (int(value) for value in memory.split(","))
        logs = (
            _b64(answer, key, MAX_LOG_TAIL_SIZE).decode(errors="replace")
            for key in ("kubeletLog", "containerdLog")
        )
        return KubeletStatus(str(states[0]), str(states[1]), total, available, *logs)
