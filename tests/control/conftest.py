"""A real, migrated SQLite store in a temporary folder for each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine, factory = open_store(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "admin-token")
    yield factory
    engine.dispose()
