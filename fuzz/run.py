"""Run one atheris fuzz target (or all) over its corpus and report executions and crashes.

    .venv/bin/python fuzz/run.py --target eventlog --runs 100000 [--max-time 600] [--timeout 10] [--merge]
    .venv/bin/python fuzz/run.py --target all --runs 20000

A crash is any exception other than the target's own TrustedLaunchError subclass, a hang longer than
--timeout seconds on one input, or running out of memory; its input is written to fuzz/crashes/<target>/
(turn it into a regression test, then delete it). New inputs the fuzzer generates go to a scratch folder;
--merge keeps those that add coverage (libFuzzer -merge=1, up to --merge-max-len bytes each) in
fuzz/corpus/<target>/. Exit status: 0 no crash, 1 a crash or hang, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
CRASH_DIR = FUZZ_DIR / "crashes"
TARGET_NAMES = (
    "eventlog",
    "tpm",
    "pe",
    "siglist",
    "sbat",
    "varstore",
    "evidence",
    "policy",
    "gce",
    "verifier",
)
_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass(frozen=True)
class RunResult:
    target: str
    executions: int
    seconds: float
    crashes: tuple[str, ...]  # artifact paths (crash-*, timeout-*, oom-*, leak-*)
    returncode: int
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.crashes


def run_target(
    target: str,
    *,
    runs: int,
    max_time: int,
    timeout: int,
    merge: bool = False,
    merge_max_len: int = 4096,
    rss_limit_mb: int = 2048,
    crash_dir: Path = CRASH_DIR,
    harness: Path | None = None,
    corpus: Path | None = None,
) -> RunResult:
    """Fuzz `target` for `runs` inputs (or `max_time` seconds) in a subprocess; never raises on a crash.
    `harness` and `corpus` default to fuzz/fuzz_<target>.py and fuzz/corpus/<target>/."""
    harness = harness or FUZZ_DIR / f"fuzz_{target}.py"
    corpus = corpus or CORPUS_DIR / target
    corpus.mkdir(parents=True, exist_ok=True)
    artifacts = crash_dir / target
    artifacts.mkdir(parents=True, exist_ok=True)
    # -merge=1 re-runs the harness as a program (its "#!/usr/bin/env python3" must find this Python)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join([str(FUZZ_DIR), os.environ.get("PYTHONPATH", "")]),
    }
    with tempfile.TemporaryDirectory(prefix=f"tl-fuzz-{target}-") as scratch:
        command = [
            sys.executable,
            str(harness),
            f"-runs={runs}",
            f"-max_total_time={max_time}",
            f"-timeout={timeout}",
            f"-rss_limit_mb={rss_limit_mb}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            scratch,
            str(corpus),
        ]
        started = time.monotonic()
        try:
            process = subprocess.run(
                command,
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                timeout=max_time + 120,
                check=False,
            )
            log, returncode = process.stdout + process.stderr, process.returncode
        except subprocess.TimeoutExpired as exc:
            output = [
                part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                for part in (exc.stdout, exc.stderr)
            ]
            log = f"{''.join(output)}\nrun.py: the fuzzer ran past {max_time + 120}s"
            returncode = -1
        seconds = time.monotonic() - started
        if merge and returncode == 0:
            subprocess.run(
                [sys.executable, str(harness), "-merge=1", f"-max_len={merge_max_len}", str(corpus), scratch],
                capture_output=True,
                env=env,
                timeout=max_time + 120,
                check=False,
            )
    stats = {name: int(value) for name, value in _STAT.findall(log)}
    crashes = tuple(path for path in _ARTIFACT.findall(log) if Path(path).exists())
    return RunResult(target, stats.get("number_of_executed_units", 0), seconds, crashes, returncode, log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", required=True, choices=[*TARGET_NAMES, "all"])
    parser.add_argument("--runs", type=int, required=True, help="inputs to execute (libFuzzer -runs)")
    parser.add_argument("--max-time", type=int, default=600, help="seconds per target (-max_total_time)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (a hang above)")
    parser.add_argument("--merge", action="store_true", help="keep new coverage-increasing inputs")
    parser.add_argument("--merge-max-len", type=int, default=4096, help="largest input --merge keeps")
    parser.add_argument("--log", type=Path, help="write the fuzzer output to this file")
    args = parser.parse_args(argv)
    targets = TARGET_NAMES if args.target == "all" else (args.target,)
    failed = False
    total = 0
    for target in targets:
        result = run_target(
            target,
            runs=args.runs,
            max_time=args.max_time,
            timeout=args.timeout,
            merge=args.merge,
            merge_max_len=args.merge_max_len,
        )
        if args.log:
            with args.log.open("a") as handle:
                handle.write(f"===== {target}\n{result.log}\n")
        total += result.executions
        rate = result.executions / result.seconds if result.seconds else 0.0
        print(
            f"{target}: executions={result.executions} seconds={result.seconds:.1f} ({rate:.0f}/s) "
            f"crashes={len(result.crashes)} returncode={result.returncode}",
            flush=True,
        )
        for crash in result.crashes:
            print(f"  crash input: {crash}")
        if not result.ok:
            failed = True
            if not result.crashes:
                print(result.log[-3000:])
    if len(targets) > 1:
        print(f"total: executions={total} crashes={'yes' if failed else 0}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
