"""The agent channel on a real socket pair: a serial port that takes no more input (the guest not reading
yet, QEMU's buffer full) is an unanswered PING, not an exception out of the boot wait; answers are matched
to requests by the id they echo; whatever a hostile guest sends (wrong types, bad base64, deep JSON, endless
lines, oversized fields) is an AgentProtocolError of that channel, bounded in time and memory."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from trustedlaunch.eventlog.parser import MAX_EVENT_LOG_SIZE
from trustedlaunch.node.channel import (
    MAX_ANSWER_LINE,
    MAX_VERSION_SIZE,
    AgentChannel,
    AgentError,
    AgentOutdatedError,
    AgentProtocolError,
    KubeletStatus,
    RenewedCredentials,
    RootfsStatus,
)


def framed(line: bytes) -> bytes:
    """`line` as the agent sends it: the line, then END and its sha256."""
    return line + b"\nEND " + hashlib.sha256(line + b"\n").hexdigest().encode() + b"\n"


def answer(**fields: object) -> bytes:
    return framed(json.dumps(fields).encode())


class Guest:
    """The guest's end of the link: reads request lines and sends what `respond(command, id)` makes."""

    def __init__(self, respond: Callable[[str, str], bytes]) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel = AgentChannel(theirs)
        self.requests: list[str] = []
        self._respond = respond
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self.sock.makefile("rb") as lines, contextlib.suppress(OSError):  # OSError: the host closed
            for raw in lines:
                request = raw.decode().rstrip("\n")
                if not request:
                    continue  # the padding before each request
                self.requests.append(request)
                command, request_id, *_ = (*request.split(" "), "")
                self.sock.sendall(self._respond(command, request_id))

    def close(self) -> None:
        self.channel.close()
        self._thread.join(5)  # the host's end closed: the guest reads EOF
        self.sock.close()


@pytest.fixture
def guest() -> Iterator[Callable[[Callable[[str, str], bytes]], Guest]]:
    made: list[Guest] = []

    def make(respond: Callable[[str, str], bytes]) -> Guest:
        made.append(Guest(respond))
        return made[-1]

    yield make
    for each in made:
        each.close()


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
            channel.request("PING", "PONG", 0.3, request_id="abcd")
    finally:
        channel.close()
        guest.close()


def test_ping_answered_by_the_peer() -> None:
    ours, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = AgentChannel(ours)
    try:
        guest.settimeout(5)  # the answers are already waiting when the PING goes out: a stale one first
        guest.sendall(answer(id="cafe0000", reply="PONG") + answer(id="cafe0001", reply="PONG"))
        assert channel.ping("cafe0001", 5.0) is True
        assert guest.recv(100).lstrip(b"\n") == b"PING cafe0001\n"
    finally:
        channel.close()
        guest.close()


def test_an_agent_older_than_request_ids_answers_ping_and_is_told_to_reimage() -> None:
    ours, guest = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = AgentChannel(ours)
    try:
        guest.sendall(answer(reply="PONG", token="cafe0001"))
        assert channel.ping("cafe0001", 5.0) is True
        guest.sendall(answer(reply="UNKNOWN", error="unknown request", detail=""))
        with pytest.raises(AgentOutdatedError, match=r"does not know the TPM request.*reimage"):
            channel.tpm_command(b"\x80\x01", 5.0)
        lines = guest.makefile("rb")
        requests: list[bytes] = []  # without the padding before each request
        while len(requests) < 2:
            if (line := lines.readline()) != b"\n":
                requests.append(line)
        assert requests[0] == b"PING cafe0001\n"
        command, request_id, argument = requests[1].decode().split(" ")
        assert (command, argument) == ("TPM", "\\x80\\x01\n") and request_id.startswith("r")
    finally:
        channel.close()
        guest.close()


def test_a_stale_unknown_or_answer_on_the_link_does_not_fail_the_next_request(
    guest: Callable[..., Guest],
) -> None:
    """Answers to a line the link cut ("NG 1234" -> UNKNOWN) or to a request that timed out wait on the
    link: the next request skips them and takes the answer that echoes its own id."""

    def respond(command: str, request_id: str) -> bytes:
        if command == "PING":
            return answer(id=request_id, reply="PONG")
        stale = answer(id="1234", reply="UNKNOWN", error="unknown request", detail="")
        stale += answer(id="r000000000000", reply="TPM", response=base64.b64encode(b"stale").decode())
        return stale + answer(id=request_id, reply="TPM", response=base64.b64encode(b"fresh").decode())

    peer = guest(respond)
    assert peer.channel.tpm_command(b"\x80\x01", 5.0) == b"fresh"
    assert peer.channel.tpm_command(b"\x80\x02", 5.0) == b"fresh"
    tpm_ids = [request.split(" ")[1] for request in peer.requests if request.startswith("TPM ")]
    assert len(set(tpm_ids)) == 2  # each request sent once


def test_a_request_whose_start_the_link_lost_is_sent_again(guest: Callable[..., Guest]) -> None:
    """The guest's UART dropped the start of the TPM line: the agent answers UNKNOWN without an id and runs
    nothing. A PING sent behind it is answered first, so the request is sent again (once) and answered."""

    def respond(command: str, request_id: str) -> bytes:
        if command == "PING":
            return answer(id=request_id, reply="PONG")
        if sum(request.startswith("TPM ") for request in peer.requests) == 1:
            return answer(id="", reply="UNKNOWN", error="unknown request", detail="")
        return answer(id=request_id, reply="TPM", response=base64.b64encode(b"ran once").decode())

    peer = guest(respond)
    assert peer.channel.tpm_command(b"\x80\x01", 5.0) == b"ran once"
    assert [request.split(" ")[0] for request in peer.requests] == ["TPM", "PING", "TPM"]
    first, second = (request.split(" ")[1] for request in peer.requests if request.startswith("TPM "))
    assert first != second


@pytest.mark.parametrize(
    ("name", "hostile", "message"),
    [
        (
            "wrong types",
            '{{"id":"{id}","reply":"EVENTLOG","error":"x","detail":5}}',
            "flat JSON object of strings",
        ),
        ("a number for the log", '{{"id":"{id}","reply":"EVENTLOG","eventLog":12}}', "flat JSON object"),
        ("bad base64", '{{"id":"{id}","reply":"EVENTLOG","eventLog":"not base64!"}}', "not base64"),
        (
            "bad detail base64",
            '{{"id":"{id}","reply":"EVENTLOG","error":"x","detail":"%%%"}}',
            "EVENTLOG failed: x$",
        ),
        (
            "deep JSON",
            '{{"id":"{id}","reply":"EVENTLOG","x":' + "[" * 100_000 + "]" * 100_000 + "}}",
            "flat JSON",
        ),
        ("not JSON", '{{"id":"{id}","reply":"EVENTLOG","eventLog":"\\x"}}', "not valid JSON"),
        ("an array", '[["{id}"]]', "flat JSON object"),
        ("another answer", '{{"id":"{id}","reply":"PONG"}}', "answered EVENTLOG with a PONG answer"),
    ],
)
def test_hostile_answers_are_agent_protocol_errors(
    guest: Callable[..., Guest], name: str, hostile: str, message: str
) -> None:
    peer = guest(lambda command, request_id: framed(hostile.format(id=request_id).encode()))
    with pytest.raises(AgentError, match=message) as raised:
        peer.channel.event_log(5.0)
    assert isinstance(raised.value, AgentProtocolError) == (name != "bad detail base64")


@pytest.mark.timeout(120)
def test_a_line_of_blanks_is_refused_in_linear_time(guest: Callable[..., Guest]) -> None:
    """An answer of `{` and a line's worth of blanks (a well-framed line the guest hashed itself) is refused
    at once: the flat-object check must not backtrack quadratically over the blanks (it took ~25 min)."""
    hostile = b"{" + b" " * (MAX_ANSWER_LINE - 100) + b"x"
    peer = guest(lambda command, request_id: framed(hostile))
    started = time.monotonic()
    with pytest.raises(AgentProtocolError, match="flat JSON object"):
        peer.channel.event_log(5.0)
    assert time.monotonic() - started < 5


def test_an_event_log_over_the_cap_is_refused_and_the_link_recovers(guest: Callable[..., Guest]) -> None:
    """A 30 MB event log (an endless line) is refused once MAX_ANSWER_LINE bytes came; its rest is dropped
    as it arrives and the next request is answered. A log just over MAX_EVENT_LOG_SIZE is refused too."""
    huge = base64.b64encode(bytes(30 * 1024 * 1024))
    over = base64.b64encode(bytes(MAX_EVENT_LOG_SIZE + 1)).decode()

    def respond(command: str, request_id: str) -> bytes:
        if len(peer.requests) == 1:
            return b'{"id":"' + request_id.encode() + b'","reply":"EVENTLOG","eventLog":"' + huge + b'"}\n'
        if len(peer.requests) == 2:
            return answer(id=request_id, reply="EVENTLOG", eventLog=over)
        return answer(id=request_id, reply="EVENTLOG", eventLog=base64.b64encode(b"log").decode())

    peer = guest(respond)
    started = time.monotonic()
    with pytest.raises(AgentProtocolError, match=f"longer than {MAX_ANSWER_LINE} bytes"):
        peer.channel.event_log(30.0)
    with pytest.raises(AgentProtocolError, match=f"more than {MAX_EVENT_LOG_SIZE} bytes"):
        peer.channel.event_log(30.0)
    assert peer.channel.event_log(30.0) == b"log"
    assert time.monotonic() - started < 20


def test_a_silent_agent_is_an_agent_error_at_the_timeout(guest: Callable[..., Guest]) -> None:
    peer = guest(lambda command, request_id: b"")
    started = time.monotonic()
    with pytest.raises(AgentError, match="did not answer EVENTLOG within 1 s"):
        peer.channel.event_log(1.0)
    assert time.monotonic() - started < 3


def test_the_channel_deadline_bounds_every_request_whatever_its_timeout(guest: Callable[..., Guest]) -> None:
    """A whole attestation is bounded: past `deadline` no request waits, even with a long timeout."""
    peer = guest(lambda command, request_id: b"")
    peer.channel.deadline = time.monotonic() + 1.0
    started = time.monotonic()
    with pytest.raises(AgentError, match="did not answer TPM within 1 s"):
        peer.channel.tpm_command(b"\x80\x01", 60.0)
    with pytest.raises(AgentError, match="did not answer EVENTLOG within 0 s"):
        peer.channel.event_log(60.0)
    assert time.monotonic() - started < 3


def test_rootfs_status_is_checked(guest: Callable[[Callable[[str, str], bytes]], Guest]) -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    replies = iter(
        [
            {"state": "corrupted", "containerd": "", "detail": b64(b"device-mapper: verity: data block 9")},
            {"state": "mounted", "containerd": "", "detail": ""},
            {"state": "verified", "containerd": b64(b"v" * (MAX_VERSION_SIZE + 1)), "detail": ""},
        ]
    )
    link = guest(lambda command, request_id: answer(id=request_id, reply="ROOTFS", **next(replies)))
    status = link.channel.rootfs_status(5.0)
    assert status == RootfsStatus("corrupted", "", "device-mapper: verity: data block 9")
    with pytest.raises(AgentProtocolError, match="unknown state 'mounted'"):
        link.channel.rootfs_status(5.0)
    with pytest.raises(AgentProtocolError, match="'containerd' holds more than 1024 bytes"):
        link.channel.rootfs_status(5.0)


def test_kubelet_start_and_status_answers_are_checked(
    guest: Callable[[Callable[[str, str], bytes]], Guest],
) -> None:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    status = {
        "kubelet": "running",
        "containerd": "running",
        "kubeletLog": b64(b"I1206 ok"),
        "containerdLog": "",
    }
    replies = iter(
        [
            {"reply": "KUBELET", "state": "started", "detail": b64(b"kubelet started (pid 9)\n")},
            {"reply": "KUBELET", "error": "kubelet was already started", "detail": ""},
            {"reply": "KUBELET", "state": "joined", "detail": ""},
            {"reply": "KUBELETSTATUS", "memoryKiB": "497312,301200", **status},
            {"reply": "KUBELETSTATUS", "memoryKiB": "497312,301200", **status, "kubelet": "dead"},
            {"reply": "KUBELETSTATUS", "memoryKiB": "1e9,1", **status},
            {"reply": "KUBELETSTATUS", "memoryKiB": "1,1", **status, "kubeletLog": b64(bytes(2049))},
        ]
    )
    link = guest(lambda command, request_id: answer(id=request_id, **next(replies)))
    assert link.channel.start_kubelet(b"bundle", 5.0) == "kubelet started (pid 9)"
    assert link.requests[0].split(" ")[2] == b64(b"bundle")
    with pytest.raises(AgentError, match="KUBELET failed: kubelet was already started"):
        link.channel.start_kubelet(b"bundle", 5.0)
    with pytest.raises(AgentProtocolError, match="unknown state 'joined'"):
        link.channel.start_kubelet(b"bundle", 5.0)
    assert link.channel.kubelet_status(5.0) == KubeletStatus(
        "running", "running", 497312, 301200, "I1206 ok", ""
    )
    with pytest.raises(AgentProtocolError, match="unknown states"):
        link.channel.kubelet_status(5.0)
    with pytest.raises(AgentProtocolError, match="memory '1e9,1' is not total,available"):
        link.channel.kubelet_status(5.0)
    with pytest.raises(AgentProtocolError, match="'kubeletLog' holds more than 2048 bytes"):
        link.channel.kubelet_status(5.0)


def test_kubelet_credentials_renewal_answers_are_checked(
    guest: Callable[[Callable[[str, str], bytes]], Guest],
) -> None:
    files = "kubelet-client.crt kubelet-client.key kubelet-server.crt kubelet-server.key"
    client, serving = hashlib.sha256(b"client").hexdigest(), hashlib.sha256(b"serving").hexdigest()
    replies = iter(
        [
            {"reply": "KUBELETCERTS", "replaced": files, "clientSha256": client, "servingSha256": serving},
            {
                "reply": "KUBELETCERTS",
                "error": "kubelet was not started: there are no credentials to replace",
            },
            {
                "reply": "KUBELETCERTS",
                "replaced": "../etc/shadow",
                "clientSha256": client,
                "servingSha256": serving,
            },
            {"reply": "KUBELETCERTS", "replaced": files, "clientSha256": "00", "servingSha256": serving},
        ]
    )
    link = guest(lambda command, request_id: answer(id=request_id, **next(replies)))
    assert link.channel.renew_kubelet_credentials(b"bundle", 5.0) == RenewedCredentials(
        tuple(files.split()), client, serving
    )
    assert link.requests[0].split(" ")[::2] == ["KUBELETCERTS", base64.b64encode(b"bundle").decode()]
    with pytest.raises(AgentError, match="KUBELETCERTS failed: kubelet was not started") as failed:
        link.channel.renew_kubelet_credentials(b"bundle", 5.0)
    assert not isinstance(failed.value, AgentOutdatedError)  # a failure of an agent that knows the request
    with pytest.raises(AgentProtocolError, match="is no file list"):
        link.channel.renew_kubelet_credentials(b"bundle", 5.0)
    with pytest.raises(AgentProtocolError, match="are no sha256 digests"):
        link.channel.renew_kubelet_credentials(b"bundle", 5.0)


def test_an_agent_that_does_not_know_a_request_is_outdated(
    guest: Callable[[Callable[[str, str], bytes]], Guest],
) -> None:
    """The agent's answer to a request it does not know (agent/init.sh: UNKNOWN, with the request's id), as
    an agent older than KUBELETCERTS answers the renewal: AgentOutdatedError, telling to reimage the node."""
    link = guest(lambda command, request_id: answer(id=request_id, reply="UNKNOWN", error="unknown request"))
    with pytest.raises(AgentOutdatedError, match=r"does not know the KUBELETCERTS request.*reimage"):
        link.channel.renew_kubelet_credentials(b"bundle", 5.0)
