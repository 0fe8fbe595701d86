"""The console tail both node drivers show (trustedlaunch.node.qemu.readable_tail): the end of the serial
console log without its escape sequences, read from the end of the file however large a guest made it."""

from __future__ import annotations

import time
from pathlib import Path

from trustedlaunch.node.qemu import CONSOLE_TAIL_CHARS, readable_tail

LARGE_LOG_BYTES = 512 * 1024 * 1024  # a guest that wrote its console for hours (sparse: no disk used)


def test_the_tail_of_a_large_console_log_reads_only_its_end(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    with log.open("wb") as output:
        output.truncate(LARGE_LOG_BYTES)
        output.seek(0, 2)
        output.write(b"\x1b[0;32m" + "é".encode() * 10 + b"\x1b[0m agent ready\r\n" + b"x" * 5000)
    started = time.monotonic()
    tail = readable_tail(log)
    assert time.monotonic() - started < 1.0  # reading 512 MiB would take seconds (and as much memory)
    assert tail == "x" * CONSOLE_TAIL_CHARS  # (CONSOLE_TAIL_CHARS < 5000)
    assert readable_tail(log, 5100).endswith("é" * 10 + " agent ready\n" + "x" * 5000)  # escapes removed


def test_a_missing_log_has_an_empty_tail(tmp_path: Path) -> None:
    assert readable_tail(tmp_path / "console.log") == ""
