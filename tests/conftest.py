"""Shared fixtures: paths to the third-party test data beside the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The read-only shared test data folder (../shared/testdata); never written to."""
    if not TESTDATA.is_dir():
        pytest.fail(f"shared test data not found at {TESTDATA}: clone the repo beside ../shared")
    return TESTDATA
