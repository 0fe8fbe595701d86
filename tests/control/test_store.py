"""Migrations on a fresh SQLite file, models in step with the migration, WAL mode, the bootstrap token."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text
from store_schema import HEAD_REVISION, TABLES

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.node_images import NODE_IMAGES
from trustedlaunch.control.tokens import BOOTSTRAP_TOKEN_NAME, create_token, token_is_valid
from trustedlaunch.store.db import (
    DATABASE_URL_ENV,
    alembic_config,
    default_database_url,
    make_engine,
    migrate,
)
from trustedlaunch.store.models import ApiToken, Base, NodeImage


def test_migrations_create_every_table_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}")
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
    migrate(engine)  # idempotent
    engine.dispose()


def test_migration_downgrades_to_an_empty_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'down.db'}")
    migrate(engine)
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


def test_models_match_the_migration(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'diff.db'}")
    migrate(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    engine.dispose()


def test_database_url_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+psycopg://tl@db/tl")
    assert default_database_url() == "postgresql+psycopg://tl@db/tl"
    monkeypatch.delenv(DATABASE_URL_ENV)
    assert default_database_url().startswith("sqlite:///") and default_database_url().endswith("control.db")


def test_open_store_seeds_images_and_writes_a_0600_admin_token(tmp_path: Path) -> None:
    token_file = tmp_path / "config" / "admin-token"
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'c.db'}", token_file)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    with sessions() as session:
        assert session.query(NodeImage).count() == len(NODE_IMAGES)
        assert token_is_valid(session, token)
        assert not token_is_valid(session, token + "x")
        stored = session.query(ApiToken).one()
        assert stored.name == BOOTSTRAP_TOKEN_NAME and token not in stored.token_sha256
    engine.dispose()

    # Restart: the same token stays valid; a lost file gets a fresh token and the old one stops working.
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'c.db'}", token_file)
    assert token_file.read_text().strip() == token
    token_file.unlink()
    engine.dispose()
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'c.db'}", token_file)
    new_token = token_file.read_text().strip()
    with sessions.begin() as session:
        assert token_is_valid(session, new_token) and not token_is_valid(session, token)
        extra = create_token(session, "ci")
    with sessions() as session:
        assert token_is_valid(session, extra)
    engine.dispose()
