"""NodeAgent (the host's TSS over the agent's TPM relay) on a real swtpm behind a relaying guest: a TPM
request the guest leaves unanswered past the timeout fails that operation only; its late answer is skipped
and the next operations start on a fresh TSS context (the failed one is left mid-command: "Esys called in
bad sequence" and the old timeout for every later command)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.node.agent_client import NodeAgent
from trustedlaunch.node.channel import AgentChannel, AgentError
from trustedlaunch.tpm.ekca import create_ek_ca
from trustedlaunch.tpm.swtpm import HOST, Swtpm
from trustedlaunch.tpm.vtpm import Vtpm

TPM2_CC_START_AUTH_SESSION = 0x176
TPM2_CC_GET_CAPABILITY = 0x17A


def framed(fields: dict[str, str]) -> bytes:
    line = json.dumps(fields).encode()
    return line + b"\nEND " + hashlib.sha256(line + b"\n").hexdigest().encode() + b"\n"


class RelayGuest:
    """The guest's end of the link, relaying TPM requests to a swtpm; the next TPM request of command code
    `hold` (any while 0) is left unanswered until `release` is set, then answered late."""

    def __init__(self, tpm: Swtpm) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = AgentChannel(theirs)
        self._tpm = socket.create_connection((HOST, tpm.port))
        self.hold: int | None = None
        self.release, self.held = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _tpm_command(self, command: bytes) -> bytes:
        self._tpm.sendall(command)
        response = b""
        while len(response) < 6 or len(response) < int.from_bytes(response[2:6], "big"):
            response += self._tpm.recv(4096)
        return response

    def _serve(self) -> None:
        with self.sock.makefile("rb") as lines, contextlib.suppress(OSError):  # OSError: the host closed
            for raw in lines:
                command, request_id, argument = (*raw.decode().rstrip("\n").split(" "), "", "")[:3]
                if command == "EVENTLOG":
                    self.sock.sendall(framed({"reply": "EVENTLOG", "id": request_id, "eventLog": ""}))
                elif command == "TPM":
                    tpm_command = bytes.fromhex(argument.replace("\\x", ""))
                    if self.hold in (0, int.from_bytes(tpm_command[6:10], "big")):
                        self.hold = None
                        self.held.set()
                        self.release.wait(30)
                    response = self._tpm_command(tpm_command)
                    encoded = base64.b64encode(response).decode()
                    self.sock.sendall(framed({"reply": "TPM", "id": request_id, "response": encoded}))

    def close(self) -> None:
        self.release.set()
        self.channel.close()
        self._thread.join(5)
        self.sock.close()
        self._tpm.close()


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[RelayGuest]:
    state = Vtpm.create(tmp_path / "vtpm", ek_ca=create_ek_ca(tmp_path / "ek-ca")).state_dir
    with Swtpm(state) as tpm:
        relay = RelayGuest(tpm)
        yield relay
        relay.close()


def test_an_unanswered_tpm_request_fails_once_then_the_tss_starts_clean(guest: RelayGuest) -> None:
    agent = NodeAgent(guest.channel, timeout=1.0)
    before = agent.request_quote(b"before")  # the AK is made and persisted

    guest.hold = 0
    with pytest.raises(AgentError, match="did not answer TPM within 1 s"):
        agent.request_quote(b"during")
    assert guest.held.is_set()
    guest.release.set()  # the late answer reaches the host and is skipped

    for nonce in (b"after", b"again"):
        after = agent.request_quote(nonce)
        assert after.ak_name == before.ak_name and nonce in after.quote
    assert agent.ek_certificate()


def loaded_handles(channel: AgentChannel) -> list[int]:
    """The transient objects and sessions loaded in the node's TPM (TPM2_GetCapability, sent raw)."""
    handles: list[int] = []
    for first in (0x80000000, 0x02000000, 0x03000000):
        command = struct.pack(">HIIIII", 0x8001, 22, TPM2_CC_GET_CAPABILITY, 1, first, 64)  # TPM_CAP_HANDLES
        response = channel.tpm_command(command, 5.0)
        assert int.from_bytes(response[6:10], "big") == 0, response.hex()
        count = int.from_bytes(response[15:19], "big")
        handles += [int.from_bytes(response[19 + 4 * i : 23 + 4 * i], "big") for i in range(count)]
    return handles


def test_what_an_interrupted_operation_left_loaded_is_flushed(guest: RelayGuest) -> None:
    """A policy session started by a StartAuthSession whose answer came too late (the TSS never learned its
    handle) is flushed by the next operation: three such hangs would fill the TPM's session slots."""
    agent = NodeAgent(guest.channel, timeout=1.0)
    agent.request_quote(b"before")
    guest.hold = TPM2_CC_START_AUTH_SESSION
    with pytest.raises(AgentError, match="did not answer TPM within 1 s"):
        agent.activate(b"\x00" * 16, b"\x00" * 16)
    assert guest.held.is_set()
    guest.release.set()
    agent.request_quote(b"after")
    assert loaded_handles(guest.channel) == []
