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


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated store on SQLite and on a throwaway PostgreSQL server (the `postgresql_url` fixture)."""
    url = (
        f"sqlite:///{tmp_path / 'control.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgresql_url")
    )
    engine, factory = open_store(url, tmp_path / "admin-token")
    yield factory
    engine.dispose()
