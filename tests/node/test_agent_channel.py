"""The agent channel on a real socket pair: a serial port that takes no more input (the guest not reading
yet, QEMU's buffer full) is an unanswered PING, not an exception out of the boot wait."""

from __future__ import annotations

import hashlib
import socket

import pytest

from trustedlaunch.node.channel import AgentChannel, AgentError


def test_ping_into_a_full_serial_buffer_is_not_answered() -> None:
    ours, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    with pytest.raises(BlockingIOError):  # fill the buffer: the "guest" never reads
        while True:
            ours.send(b"PING 00000000\n")
    channel = AgentChannel(ours)
    try:
        assert channel.ping("12345678", 0.3) is False
        with pytest.raises(AgentError, match="takes no input"):
            channel.request("PING abcd", "PONG", 0.3, "abcd")
    finally:
        channel.close()
        guest.close()


def test_ping_answered_by_the_peer() -> None:
    ours, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = AgentChannel(ours)
    try:
        guest.settimeout(5)  # the answer is already waiting when the PING goes out
        answer = b'{"reply": "PONG", "token": "cafe0001"}'
        guest.sendall(answer + b"\nEND " + hashlib.sha256(answer + b"\n").hexdigest().encode() + b"\n")
        assert channel.ping("cafe0001", 5.0) is True
        assert guest.recv(100) == b"PING cafe0001\n"
    finally:
        channel.close()
        guest.close()


def test_an_agent_that_does_not_know_the_request_says_reimage() -> None:
    ours, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = AgentChannel(ours)
    try:
        answer = b'{"reply":"UNKNOWN","error":"unknown request","detail":""}'
        guest.sendall(answer + b"\nEND " + hashlib.sha256(answer + b"\n").hexdigest().encode() + b"\n")
        with pytest.raises(AgentError, match=r"does not know the TPM request.*reimage"):
            channel.tpm_command(b"\x80\x01", 5.0)
        assert guest.recv(100) == b"TPM \\x80\\x01\n"
    finally:
        channel.close()
        guest.close()
