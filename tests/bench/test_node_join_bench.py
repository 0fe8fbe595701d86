"""The node join benchmark runs end to end with one node and its peer (real hosted control plane, real Secure
Boot + vTPM VM, attestation, kubelet, a pod): every step of the split is reported. The figures are
bench/node_join_bench.py's with more nodes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "node_join_bench.py"


@pytest.mark.slow
def test_node_join_bench_reports_the_split_of_one_node() -> None:
    command = [sys.executable, str(BENCH), "--nodes", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in (
        "firmware (OVMF + shim) to GRUB",
        "GRUB + LoadImage to the kernel's EFI stub",
        "agent ready",
        "attested",
        "containerd up",
        "kubelet started",
        "Node registered",
        "labelled",
        "Ready + attested + labelled",
    ):
        assert re.search(rf"^    {re.escape(step)} +[0-9.]+ s", out, re.MULTILINE), step
    assert re.search(r"median VM create -> Node Ready \+ attested \+ labelled [0-9.]+ s .* = [0-9.]+ x", out)
    guest_ram = re.search(
        r"guest RAM ([0-9]+) MiB \(([0-9]+) available once Ready\); QEMU RSS ([0-9]+) MiB", out
    )
    assert guest_ram, out
    total, available, rss = map(int, guest_ram.groups())
    assert 0 < available < total <= 1024 and rss > 0
