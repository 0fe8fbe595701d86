"""Migration 0005_enrolled_aks: nodes enrolled before it keep their enrolled AK (read from the AK name in
their stored attestation state), so the verifier API keeps issuing their tokens after an upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.db import alembic_config, migrate
from trustedlaunch.store.models import Node

SUB = "00000000-0000-0000-0000-0000000e0a05"
AK_NAME = "000b" + "ab" * 32


def test_upgrade_fills_the_enrolled_ak_of_nodes_enrolled_before(tmp_path: Path) -> None:
    engine, sessions = open_store(f"sqlite:///{tmp_path / 'store.db'}", tmp_path / "token")
    with sessions.begin() as session:
        register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
        register_provider(session, SUB, "Microsoft.ContainerService")
        spec = PoolSpec(
            "nodepool1", count=2, vm_size="Standard_D2s_v3", enable_secure_boot=True, enable_vtpm=True
        )
        cluster, _, _ = put_cluster(
            session, ResourcePath(SUB, "rg", "c"), ClusterSpec("eastus", agent_pools=[spec])
        )
        pool = cluster.agent_pools[0]
        session.flush()
        for ordinal, state in enumerate(({"akName": AK_NAME.upper(), "clock": None}, None)):
            session.add(
                Node(
                    pool_id=pool.id,
                    ordinal=ordinal,
                    name=f"node{ordinal}",
                    node_image_version=pool.node_image_version,
                    state="Ready",
                    attestation_state=state,
                )
            )
    command.downgrade(alembic_config(engine), "0004_image_policies")
    migrate(engine)
    with sessions() as session:
        enrolled = {name: ak for name, ak in session.execute(select(Node.name, Node.enrolled_ak_name))}
    assert enrolled == {"node0": AK_NAME, "node1": None}
    engine.dispose()
