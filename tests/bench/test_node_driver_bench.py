"""The node driver benchmark runs end to end once per driver: a Secure Boot + vTPM node booted and attested by
the direct QEMU driver and by the libvirt driver on a private libvirtd (with our swtpm, and with libvirt's
own swtpm certified by the host's EK CA), with their ratios reported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "node_driver_bench.py"


@pytest.mark.slow
def test_node_driver_bench_boots_and_attests_with_both_drivers() -> None:
    result = subprocess.run([sys.executable, str(BENCH), "1"], capture_output=True, text=True, timeout=1800)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for driver in ("direct", "libvirt", "libvirt-swtpm"):
        assert re.search(rf"^run 1: {driver} +start to agent ready +[0-9.]+ s .* to attested", out, re.M), out
    ratios = r"libvirt [0-9.]+ s = [0-9.]+ x, libvirt-swtpm [0-9.]+ s = [0-9.]+ x"
    for what in ("start to agent ready", "start to attested", "QEMU CPU to agent ready"):
        assert re.search(rf"^median {what}: direct [0-9.]+ s, {ratios}", out, re.M), out
