"""Migration 0027_node_handle_only: the direct driver's QEMU pid lives only in a node's `handle`; rows keep
it across an upgrade and a downgrade (no row is lost to a table copy)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import inspect, text

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.db import alembic_config, migrate
from trustedlaunch.store.models import Node

SUB = "00000000-0000-0000-0000-0000000e0a27"


def test_qemu_pid_moves_into_the_handle_and_back(tmp_path: Path) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        spec = ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1", count=2)])
        cluster, _, _ = put_cluster(session, ResourcePath(SUB, "rg", "c"), spec)
        pool = cluster.agent_pools[0]
        for ordinal, handle in ((0, "4242"), (1, None)):
            session.add(
                Node(
                    pool_id=pool.id,
                    ordinal=ordinal,
                    name=f"aks-nodepool1-{ordinal}",
                    node_image_version=pool.node_image_version,
                    state="Ready",
                    labels={},
                    handle=handle,
                )
            )
    command.downgrade(alembic_config(engine), "0026_node_hosts")
    with engine.begin() as connection:
        rows = connection.execute(text("SELECT name, qemu_pid, handle FROM nodes ORDER BY name")).all()
        assert [tuple(row) for row in rows] == [
            ("aks-nodepool1-0", 4242, "4242"),
            ("aks-nodepool1-1", None, None),
        ]
        connection.execute(
            text("UPDATE nodes SET handle = NULL, qemu_pid = 77 WHERE name = 'aks-nodepool1-1'")
        )
    migrate(engine)
    columns = {column["name"] for column in inspect(engine).get_columns("nodes")}
    assert "handle" in columns and not columns & {"qemu_pid", "swtpm_pid"}
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT name, handle FROM nodes ORDER BY name")).all()
        assert [tuple(row) for row in rows] == [("aks-nodepool1-0", "4242"), ("aks-nodepool1-1", "77")]
    engine.dispose()
