"""The agent's start on a real VM: of the PINGs that queued up in the serial port while the node booted, it
answers only the newest one (the one the host still waits for), then serves requests as usual."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest

from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import NodeVM

pytestmark = pytest.mark.slow

BOOT_DEADLINE = 300.0
# Written once the firmware is done (the kernel's EFI stub runs): the agent starts seconds later.
KERNEL_STARTING = b"EFI stub: Loaded initrd"


def _answers(sock: socket.socket, buffer: bytearray, until: str, deadline: float) -> list[dict[str, object]]:
    """Read agent answers (a JSON line, then "END <sha256 of that line>") until one has id `until`."""
    answers: list[dict[str, object]] = []
    previous: bytes | None = None
    while time.monotonic() < deadline:
        while b"\n" not in buffer:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(65536)
            assert chunk, "the agent's serial port was closed"
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\n")
        buffer[:] = rest
        line = line.rstrip(b"\r")
        if previous is not None and line == b"END " + hashlib.sha256(previous + b"\n").hexdigest().encode():
            answers.append(json.loads(previous))
            if answers[-1].get("id") == until:
                return answers
        previous = line
    raise AssertionError(f"no answer with id {until!r} before the deadline; got {answers}")


def test_agent_answers_only_the_newest_ping_of_the_boot_backlog(
    node_image: NodeImage, node_base: Path
) -> None:
    deadline = time.monotonic() + BOOT_DEADLINE
    with NodeVM(node_image, node_base / "vm-ping-backlog", secure_boot=False) as vm:
        sock = socket.socket(socket.AF_UNIX)
        while True:
            try:
                sock.connect(str(vm.run_dir / "agent.sock"))
                break
            except OSError:
                assert vm.running and time.monotonic() < deadline, "QEMU did not open the agent's socket"
                time.sleep(0.1)
        with sock:
            while KERNEL_STARTING not in vm.console_log.read_bytes():
                assert vm.running and time.monotonic() < deadline, "the node did not start its kernel"
                time.sleep(0.1)
            # Empty lines first: the UART driver clears its receive FIFO (16 bytes) when the agent opens it.
            sock.sendall(b"\n" * 32 + b"".join(b"PING stale%d\n" % number for number in range(5)))
            sock.sendall(b"PING newest\n")
            buffer = bytearray()
            pongs = [a["id"] for a in _answers(sock, buffer, "newest", deadline) if a.get("reply") == "PONG"]
            # The backlog's first line is always drained: the agent reads it as soon as it opens the port.
            assert pongs[-1] == "newest" and "stale0" not in pongs, pongs
            sock.sendall(b"PING after-boot\n")
            answers = _answers(sock, buffer, "after-boot", time.monotonic() + 60)
            assert [answer.get("id") for answer in answers] == ["after-boot"]
