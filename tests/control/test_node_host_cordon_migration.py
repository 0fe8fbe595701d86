"""Migration 0028_node_host_cordon: hosts registered before it are not cordoned; a downgrade drops the
column and keeps the rows."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.store.db import alembic_config


def test_registered_hosts_are_not_cordoned_across_the_migration(tmp_path: Path) -> None:
    engine, _ = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    command.downgrade(alembic_config(engine), "0027_node_handle_only")
    assert "cordoned" not in {column["name"] for column in inspect(engine).get_columns("node_hosts")}
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO node_hosts (name, uri, memory_mib, vcpus, state, failed_checks, created_at) "
                "VALUES ('h1', 'qemu+tcp://h1/system', 4096, 4, 'Ready', 0, '2026-12-06 00:00:00')"
            )
        )
    command.upgrade(alembic_config(engine), "0028_node_host_cordon")
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT name, cordoned FROM node_hosts")).all()
        assert [tuple(row) for row in rows] == [("h1", 0)]
        connection.execute(text("UPDATE node_hosts SET cordoned = 1"))
    command.downgrade(alembic_config(engine), "0027_node_handle_only")
    with engine.begin() as connection:
        assert connection.execute(text("SELECT name FROM node_hosts")).scalars().all() == ["h1"]
    engine.dispose()
