"""The atheris entry point shared by the fuzz/fuzz_<target>.py harnesses (run them through fuzz/run.py)."""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

# Coverage feedback comes from our parsers and the third-party parsers they drive.
INSTRUMENTED = ["trustedlaunch", "pefile", "signify", "virt", "asn1crypto"]


def main(target_name: str) -> None:
    """Fuzz one target with libFuzzer's command line (corpus folders, -runs, -max_total_time, -timeout)."""
    with atheris.instrument_imports(include=INSTRUMENTED):
        from fuzz_targets import TARGETS

    target = TARGETS[target_name]
    check = target.check

    def test_one_input(data: bytes) -> None:
        check(data)

    argv = list(sys.argv)
    if not any(arg.startswith("-max_len=") for arg in argv):
        argv.append(f"-max_len={target.max_len}")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
