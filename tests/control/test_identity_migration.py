"""Migration 0022_identity_system_data: clusters of an older store get a system-assigned and a kubelet
identity (new ids, the installation's tenant id), keep their times in systemData, and name no creator (it is
unknown); agent pools get no tags. Downgrading and upgrading again loses no cluster or pool."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import delete, select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.control.system_data import tenant_id
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.store.db import alembic_config, migrate
from trustedlaunch.store.models import AgentPool, Installation, ManagedCluster

SUB = "00000000-0000-0000-0000-0000000e0a22"


def test_upgrade_gives_older_clusters_identities(tmp_path: Path) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        for name in ("c1", "c2"):
            spec = ClusterSpec("eastus", agent_pools=[PoolSpec("nodepool1", count=1, tags={"a": "b"})])
            put_cluster(session, ResourcePath(SUB, "group", name), spec)
    command.downgrade(alembic_config(engine), "0020_pool_node_settings")
    migrate(engine)
    with sessions.begin() as session:
        (installation,) = session.scalars(select(Installation))
        assert tenant_id(session) == installation.tenant_id and uuid.UUID(installation.tenant_id)
        clusters = list(session.scalars(select(ManagedCluster).order_by(ManagedCluster.name)))
        assert [c.name for c in clusters] == ["c1", "c2"]
        ids = set()
        for cluster in clusters:
            assert cluster.identity_tenant_id == installation.tenant_id
            assert cluster.identity_principal_id and cluster.kubelet_client_id and cluster.kubelet_object_id
            ids |= {cluster.identity_principal_id, cluster.kubelet_client_id, cluster.kubelet_object_id}
            assert cluster.created_by is None and cluster.last_modified_at == cluster.updated_at
        assert len(ids) == 6  # each its own
        pools = list(session.scalars(select(AgentPool)))
        assert len(pools) == 2 and all(pool.tags is None and pool.created_by is None for pool in pools)
    engine.dispose()


def test_a_store_without_its_installation_row_fails_loudly(tmp_path: Path) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        session.execute(delete(Installation))
    with sessions.begin() as session, pytest.raises(TrustedLaunchError, match="no installation row"):
        tenant_id(session)
    with sessions.begin() as session:
        assert session.scalar(select(Installation)) is None  # none made up
    engine.dispose()
