"""The store on a real PostgreSQL server (Debian's binaries): migrations up and down, models in step with
the migration, and the column types that differ from SQLite (JSON, aware datetimes, booleans, sequences)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text
from store_schema import HEAD_REVISION, TABLES

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.node_images import node_images
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, list_clusters, put_cluster
from trustedlaunch.control.tokens import create_token, token_is_valid
from trustedlaunch.store.db import alembic_config, make_engine, migrate, session_factory
from trustedlaunch.store.models import OPERATION_NOTE_LENGTH, Base, Node, NodeImage, Operation


def test_migrations_up_down_and_up_again_on_postgresql(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url)
    assert engine.dialect.name == "postgresql"
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION
    migrate(engine)  # idempotent
    command.downgrade(alembic_config(engine), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    migrate(engine)
    assert set(inspect(engine).get_table_names()) == TABLES
    engine.dispose()


def test_models_match_the_migration_on_postgresql(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url)
    migrate(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    engine.dispose()


def test_rows_round_trip_on_postgresql(postgresql_url: str, tmp_path: Path) -> None:
    engine, sessions = open_store(postgresql_url, tmp_path / "admin-token")
    with sessions() as session:
        assert session.query(NodeImage).count() == len(node_images())
        assert token_is_valid(session, (tmp_path / "admin-token").read_text().strip())
    with sessions.begin() as session:
        extra = create_token(session, "ci")
        started = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
        session.add(
            Operation(
                id="00000000-0000-0000-0000-000000000001",
                subscription_id="s",
                location="eastus",
                resource_id="/subscriptions/s/x",
                kind="Create",
                status="Failed",
                error={"code": "Bad", "details": [{"message": "ünïcode"}]},
                start_time=started,
                note="draining node aks-x: waiting for pod " + "p" * 2000,  # longer than its column
            )
        )
    with sessions() as session:
        assert token_is_valid(session, extra)
        stored = session.get_one(Operation, "00000000-0000-0000-0000-000000000001")
        assert stored.start_time == started and stored.start_time.tzinfo is not None
        assert stored.error == {"code": "Bad", "details": [{"message": "ünïcode"}]}
        assert stored.note.startswith("draining node aks-x: waiting for pod ppp")
        assert len(stored.note) == OPERATION_NOTE_LENGTH  # cut to fit (PostgreSQL refuses longer values)
        assert session.scalars(select(Node)).all() == []
    engine.dispose()


def test_session_factory_sees_other_connections_commits(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url)
    migrate(engine)
    writer, reader = session_factory(engine), session_factory(make_engine(postgresql_url))
    with writer.begin() as session:
        session.add(
            NodeImage(
                version="v-test",
                os_type="Linux",
                os_sku="Ubuntu",
                hyper_v_generation="V2",
                architecture="x86_64",
                trusted_launch_capable=True,
            )
        )
    with reader() as session:
        image = session.get_one(NodeImage, "v-test")
        assert (image.trusted_launch_capable, image.fips) == (True, False)
    engine.dispose()
    reader.kw["bind"].dispose()


def test_a_url_without_driver_uses_psycopg(postgresql_url: str) -> None:
    engine = make_engine(postgresql_url.replace("postgresql+psycopg://", "postgresql://"))
    assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg")
    migrate(engine)
    assert "nodes" in inspect(engine).get_table_names()
    engine.dispose()


def test_concurrent_creates_cannot_pass_the_quota_together_on_postgresql(
    postgresql_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL lets concurrent transactions insert side by side: the per-subscription advisory lock
    counts racing creates (as from several API workers) one after another."""
    monkeypatch.setenv("TL_QUOTA_CLUSTERS", "2")
    engine, sessions = open_store(postgresql_url, tmp_path / "admin-token")
    subscription = "77777777-0000-4000-8000-000000000007"
    start = threading.Barrier(6)
    outcomes: list[str] = []

    def create(index: int) -> None:
        spec = ClusterSpec(location="eastus", agent_pools=[PoolSpec(name="nodepool1", count=1)])
        start.wait()
        try:
            with sessions.begin() as session:
                put_cluster(session, ResourcePath(subscription, f"group{index}", "racer"), spec)
            outcomes.append("created")
        except ArmError as error:
            outcomes.append(error.code)

    threads = [threading.Thread(target=create, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["QuotaExceeded"] * 4 + ["created"] * 2
    with sessions() as session:
        assert len(list_clusters(session, subscription)) == 2
    engine.dispose()
