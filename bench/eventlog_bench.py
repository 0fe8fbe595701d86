"""Event-log benchmark: our parse+replay vs `tpm2_eventlog`, and our parse+replay+summarize rate.

Run: python bench/eventlog_bench.py [iterations]. Prints results, asserts nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

from trustedlaunch.eventlog.model import EventLogError
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"
LOG_FOLDERS = ("go-tpm-tools/eventlogs", "go-attestation", "keylime", "tpm2-tools", "qemu-ovmf")


def shared_logs() -> dict[Path, bytes]:
    """Every shared test log that both parses with our code and is a binary log."""
    logs: dict[Path, bytes] = {}
    for folder in LOG_FOLDERS:
        for path in sorted((TESTDATA / folder).iterdir()):
            if not path.is_file() or path.suffix in {".json", ".yaml", ".ref", ".warn", ".b64"}:
                continue
            data = path.read_bytes()
            try:
                parse_event_log(data)
            except EventLogError:
                continue
            logs[path] = data
    return logs


def time_ours(logs: dict[Path, bytes], iterations: int) -> float:
    """Wall time of `iterations` parse+replay passes over every log."""
    start = time.perf_counter()
    for _ in range(iterations):
        for data in logs.values():
            replay(parse_event_log(data))
    return time.perf_counter() - start


def time_tpm2_eventlog(logs: dict[Path, bytes], iterations: int) -> tuple[float, list[Path]]:
    """Wall time of `iterations` tpm2_eventlog runs (one process per log) and the logs it accepted."""
    accepted = [
        path
        for path in logs
        if subprocess.run(["tpm2_eventlog", str(path)], capture_output=True).returncode == 0
    ]
    start = time.perf_counter()
    for _ in range(iterations):
        for path in accepted:
            subprocess.run(["tpm2_eventlog", str(path)], capture_output=True, check=False)
    return time.perf_counter() - start, accepted


def full_rate(logs: dict[Path, bytes], iterations: int) -> float:
    """Logs per second through parse + replay + summarize."""
    start = time.perf_counter()
    for _ in range(iterations):
        for data in logs.values():
            log = parse_event_log(data)
            replay(log)
            summarize(log)
    return iterations * len(logs) / (time.perf_counter() - start)


def main(iterations: int = 20) -> None:
    """Print the comparison and the rates."""
    warnings.simplefilter("ignore")  # cryptography warns about some vendor certificates in the logs
    logs = shared_logs()
    print(f"{len(logs)} logs, {sum(map(len, logs.values())) // 1024} KiB, {iterations} iterations")
    if shutil.which("tpm2_eventlog") is None:
        print("tpm2_eventlog not installed: comparison skipped")
    else:
        theirs, accepted = time_tpm2_eventlog(logs, iterations)
        ours = time_ours({path: logs[path] for path in accepted}, iterations)
        print(f"tpm2_eventlog parse+replay: {theirs / (iterations * len(accepted)) * 1e3:.2f} ms/log")
        print(f"ours          parse+replay: {ours / (iterations * len(accepted)) * 1e3:.3f} ms/log")
        print(f"ours is {theirs / ours:.0f}x faster ({len(accepted)} logs both accept)")
    print(f"ours parse+replay: {iterations * len(logs) / time_ours(logs, iterations):.0f} logs/s")
    print(f"ours parse+replay+summarize: {full_rate(logs, iterations):.0f} logs/s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
