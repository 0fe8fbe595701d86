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
from trustedlaunch.control.node_images import node_images
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
        assert session.query(NodeImage).count() == len(node_images())
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


def test_subscription_ids_are_lowercased_by_the_migration(tmp_path: Path) -> None:
    """0005: rows an older version stored with an uppercase subscription id are found by the lowercase one
    the control plane now uses (also inside operation resource ids); a row whose lowercase twin exists
    already is left alone instead of failing the migration."""
    upper = "1111AAAA-2222-4333-8444-5555BBBB6666"
    cluster_id = (
        f"/subscriptions/{upper}/resourcegroups/rg/providers/Microsoft.ContainerService/managedClusters/c"
    )
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    command.upgrade(alembic_config(engine), "0004_image_policies")
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO managed_clusters (subscription_id, resource_group, name, display_name, "
                "location, kubernetes_version, dns_prefix, fqdn, virtual_nodes_enabled, tags, kube_token, "
                "provisioning_state, power_state, created_at, updated_at) VALUES (:sub, 'rg', 'c', 'c', "
                "'eastus', '1.30.6', 'c', 'c.example', 0, '{}', 't', 'Succeeded', 'Running', "
                "'2026-01-01', '2026-01-01')"
            ),
            {"sub": upper},
        )
        connection.execute(
            text(
                "INSERT INTO operations (id, subscription_id, location, resource_id, kind, status, note, "
                "start_time) VALUES ('op', :sub, 'eastus', :resource, 'Create', 'InProgress', '', "
                "'2026-01-01')"
            ),
            {"sub": upper, "resource": cluster_id},
        )
        for subscription, state in ((upper, "Registered"), (upper.lower(), "Registering")):
            connection.execute(
                text(
                    "INSERT INTO feature_registrations (subscription_id, namespace, name, state) "
                    "VALUES (:sub, 'Microsoft.ContainerService', 'TrustedLaunchPreview', :state)"
                ),
                {"sub": subscription, "state": state},
            )
    migrate(engine)
    with engine.connect() as connection:
        assert (
            connection.execute(text("SELECT subscription_id FROM managed_clusters")).scalar() == upper.lower()
        )
        operation = connection.execute(text("SELECT subscription_id, resource_id FROM operations")).one()
        assert tuple(operation) == (upper.lower(), cluster_id.replace(upper, upper.lower()))
        features = connection.execute(text("SELECT subscription_id, state FROM feature_registrations")).all()
        assert sorted(map(tuple, features)) == [(upper, "Registered"), (upper.lower(), "Registering")]
    engine.dispose()
