"""The attestation load benchmark runs end to end at a small rate (real API workers, real swtpm quotes):
every request passes and the report is printed. The 1,000/s x 60 s run is bench/attest_load_bench.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "attest_load_bench.py"


def test_attest_load_bench_small_run_has_no_errors() -> None:
    command = [sys.executable, str(BENCH), "--rate", "50", "--duration", "2", "--swtpm-count", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "pre-made 100 quotes (ecc AK, 2 swtpm)" in out
    assert "= 100 requests, open loop" in out
    assert "errors: 0\n" in out
    for row in ("client latency from scheduled send", "server handler time", "of which verify()"):
        line = next(line for line in out.splitlines() if line.startswith(row.strip()) or row in line)
        p50, p90, p99, maximum = map(float, line.split()[-4:])
        assert 0 < p50 <= p90 <= p99 <= maximum, line
