"""Migration 0018_resource_groups: every resource group the clusters of an older store live in becomes a
resource group, so no cluster is lost or unreachable after the upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.operations import finish_operation, get_operation
from trustedlaunch.control.resource_groups import delete_group, list_groups
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, list_clusters, put_cluster
from trustedlaunch.store.db import alembic_config, migrate
from trustedlaunch.store.models import ResourceGroup
from trustedlaunch.store.vocabulary import OperationStatus

SUB = "00000000-0000-0000-0000-0000000e0a18"


def test_upgrade_makes_a_group_of_each_group_clusters_are_in(tmp_path: Path) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        for group, name, location in (
            ("Team-A", "c1", "eastus"),
            ("team-a", "c2", "eastus"),
            ("b", "c3", "westeurope"),
        ):
            spec = ClusterSpec(location, agent_pools=[PoolSpec("nodepool1", count=1)])
            put_cluster(session, ResourcePath(SUB, group, name), spec)
    command.downgrade(alembic_config(engine), "0015_node_attestation_policy")
    migrate(engine)
    with sessions.begin() as session:
        groups = {(g.name, g.location, g.display_name) for g in session.scalars(select(ResourceGroup))}
        assert groups == {("team-a", "eastus", "team-a"), ("b", "westeurope", "b")}
        assert [g.name for g in list_groups(session, SUB)] == ["b", "team-a"]
        operations = delete_group(session, SUB, "TEAM-A")  # cascades to both of its clusters
        assert operations is not None and len(operations) == 2
        operation_ids = [operation.id for operation in operations]
    with sessions.begin() as session:  # the group stays Deleting until its last cluster is deleted (ARM)
        states = [(g.name, g.provisioning_state) for g in list_groups(session, SUB)]
        assert states == [("b", "Succeeded"), ("team-a", "Deleting")]
        assert {c.provisioning_state for c in list_clusters(session, SUB, "team-a")} == {"Deleting"}
        finish_operation(session, get_operation(session, SUB, operation_ids[0]), OperationStatus.SUCCEEDED)
    with sessions.begin() as session:
        assert [g.name for g in list_groups(session, SUB)] == ["b", "team-a"]
        finish_operation(session, get_operation(session, SUB, operation_ids[1]), OperationStatus.SUCCEEDED)
    with sessions() as session:
        assert [g.name for g in list_groups(session, SUB)] == ["b"]
        assert list_clusters(session, SUB, "team-a") == []
    engine.dispose()
