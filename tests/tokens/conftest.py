"""Session-wide real verdicts for the token tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from attested_results import Verdicts, verdicts_from_swtpm


@pytest.fixture(scope="session")
def verdicts(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Verdicts:
    return verdicts_from_swtpm(testdata, tmp_path_factory.mktemp("quote"))
