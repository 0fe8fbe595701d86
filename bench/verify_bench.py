"""Benchmark: full `verify()` per second on one core, against `tpm2_checkquote` on the same quote.

The evidence is made once at start: a real swtpm has its PCRs extended with a real event log's events,
quotes them with a fresh RSA-2048 AK, and the policy is derived from the same log. Then N verifications
are timed in-process three times: "warm" (a node re-attesting the same boot: the parsed log is cached by
the verifier), "cold" (the log cache cleared before every call: a boot never seen before, of a known
firmware: its Secure Boot variables' decoding stays cached, as for every node of a pool) and "cold, new
firmware" (that cache cleared too). M runs of
`tpm2_checkquote` (a subprocess each, as a verifier using tpm2-tools would run it) verify the same
quote; it checks the signature, nonce and PCR digest only (no event log, no policy). Usage:

    .venv/bin/python bench/verify_bench.py [--log PATH] [--count N] [--checkquote-count M] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import collect_evidence, extend_event_log
from trustedlaunch.attest.machine_state import clear_boot_cache
from trustedlaunch.attest.verifier import verify
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import clear_variable_cache, summarize
from trustedlaunch.tpm.swtpm import Swtpm

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata"
DEFAULT_LOG = TESTDATA / "qemu-ovmf" / "shim_evlog.bin"  # a real OVMF + shim + GRUB + kernel boot
NONCE = bytes.fromhex("be11c0ffee5eed00")


def main() -> int:
    """Run the benchmark and print verifications/s for ours and for tpm2_checkquote."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG, help="binary event log to quote")
    parser.add_argument("--count", type=int, default=5000, help="timed verify() calls")
    parser.add_argument("--checkquote-count", type=int, default=100, help="timed tpm2_checkquote runs")
    parser.add_argument("--profile", action="store_true", help="print the top functions of verify()")
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core (children inherit it)
    raw_log = args.log.read_bytes()
    log = parse_event_log(raw_log)
    policy = policy_from_summary(summarize(log))
    pcrs = sorted(replay(log)["sha256"])
    with tempfile.TemporaryDirectory(prefix="tl-verify-bench-") as scratch:
        workdir = Path(scratch)
        with Swtpm() as tpm:
            extend_event_log(tpm, log, banks=("sha256",))
            evidence = collect_evidence(tpm, raw_log, nonce=NONCE, pcrs=pcrs, workdir=workdir)
        first = verify(evidence, nonce=NONCE, policy=policy)
        if not first.ok:
            print("evidence does not verify:", *map(str, first.findings), sep="\n  ", file=sys.stderr)
            return 1

        start = time.perf_counter()
        for _ in range(args.count):
            verify(evidence, nonce=NONCE, policy=policy)
        warm = args.count / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(args.count):
            clear_boot_cache()
            verify(evidence, nonce=NONCE, policy=policy)
        cold = args.count / (time.perf_counter() - start)
        start = time.perf_counter()
        for _ in range(args.count):
            clear_boot_cache()
            clear_variable_cache()
            verify(evidence, nonce=NONCE, policy=policy)
        new_firmware = args.count / (time.perf_counter() - start)

        checkquote = [
            "tpm2_checkquote", "-u", "ak.tpmt", "-m", "quote.attest", "-s", "quote.sig",
            "-f", "quote.pcrs", "-g", "sha256", "-q", NONCE.hex(),
        ]  # fmt: skip
        start = time.perf_counter()
        for _ in range(args.checkquote_count):
            subprocess.run(checkquote, cwd=workdir, check=True, capture_output=True)
        peer = args.checkquote_count / (time.perf_counter() - start)

    print(f"log: {args.log} ({len(raw_log)} bytes, {len(log.events)} events), quoted sha256 PCRs {pcrs}")
    print(f"ours (warm, known boot): {warm:,.0f}/s, tpm2_checkquote: {peer:,.0f}/s, ratio {warm / peer:.1f}")
    print(f"ours (cold, new boot):   {cold:,.0f}/s, tpm2_checkquote: {peer:,.0f}/s, ratio {cold / peer:.1f}")
    print(
        f"ours (cold, new firmware): {new_firmware:,.0f}/s, tpm2_checkquote: {peer:,.0f}/s, "
        f"ratio {new_firmware / peer:.1f}"
    )
    if args.profile:
        for label, clear in (("warm", False), ("cold", True)):
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.count):
                if clear:
                    clear_boot_cache()
                verify(evidence, nonce=NONCE, policy=policy)
            profiler.disable()
            print(f"--- profile of verify(), {label} ---")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
