"""Several processes opening the same fresh store at once (uvicorn workers, parallel `tl` commands): the
migrations run once, every process ends up with the full schema and the same admin token file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect

from trustedlaunch.store.db import make_engine

PROCESSES = 6
OPEN_STORE = (
    "import sys; from pathlib import Path; from trustedlaunch.control.bootstrap import open_store; "
    "engine, _ = open_store(sys.argv[1], Path(sys.argv[2])); engine.dispose()"
)


def _open_concurrently(url: str, token_file: Path) -> None:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_STORE, url, str(token_file)], stderr=subprocess.PIPE, text=True
        )
        for _ in range(PROCESSES)
    ]
    failures = [process.communicate(timeout=120)[1] for process in processes if process.wait(timeout=120)]
    assert failures == []


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_processes_opening_a_fresh_store_together_all_succeed(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'control.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgresql_url")
    )
    _open_concurrently(url, tmp_path / "admin-token")
    assert {"managed_clusters", "agent_pools", "nodes", "attestations", "alerts"} <= _tables(url)
    assert (tmp_path / "admin-token").read_text().startswith("tl_")
