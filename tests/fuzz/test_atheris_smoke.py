"""A CI-sized atheris run of every fuzz target through fuzz/run.py (the runner the long runs use)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz_targets import TARGETS

pytest.importorskip("atheris")

SMOKE_RUNS = 20_000
SMOKE_SECONDS = 5  # per target, after the harness has started (instrumenting imports takes a few seconds)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_atheris_smoke_run_finds_no_crash(name: str, tmp_path: Path) -> None:
    from run import run_target  # fuzz/run.py, on sys.path through tests/fuzz/conftest.py

    result = run_target(
        name, runs=SMOKE_RUNS, max_time=SMOKE_SECONDS, timeout=10, crash_dir=tmp_path / "crashes"
    )
    assert result.ok, f"{name}: crash inputs {result.crashes}\n{result.log[-4000:]}"
    assert result.executions > 0, result.log[-2000:]


def test_runner_reports_a_crash(tmp_path: Path) -> None:
    """The runner on a harness with a planted bug: the crash is counted, its input kept, the run failed."""
    from run import run_target

    harness = tmp_path / "fuzz_planted.py"
    harness.write_text(
        "import sys\n\nimport atheris\n\n\n"
        "def test_one_input(data):\n    if len(data) > 3:\n        raise IndexError('planted bug')\n\n\n"
        "atheris.Setup(sys.argv, test_one_input)\natheris.Fuzz()\n"
    )
    result = run_target(
        "planted",
        runs=10_000,
        max_time=30,
        timeout=10,
        crash_dir=tmp_path,
        harness=harness,
        corpus=tmp_path / "c",
    )
    assert not result.ok and result.returncode != 0
    [crash] = result.crashes
    assert Path(crash).parent == tmp_path / "planted" and len(Path(crash).read_bytes()) > 3
    assert "planted bug" in result.log
