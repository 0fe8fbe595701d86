"""A node image upgrade for real: a Secure Boot + vTPM pool whose node runs an older, genuinely different
build (the version built from linux-image-6.1.0-50-amd64 6.1.176-1, fetched from Debian, its row as an
earlier release would have left the pool) keeps passing re-attestation against its own recorded policy;
get-upgrades names the latest version (the installed 6.1.0-57 boot chain's); the node image upgrade reimages
the node through an Update operation on its pool (drained, reimaged, rejoined): the new VM boots the new
build and attests against that version's policy, predicted before it booted. Real VMs, kubelet and hosted
control plane: two boots of one node."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from debian_boot_packages import OTHER_KERNEL
from lightkube.resources.core_v1 import Node as KubernetesNode
from monitoring_helpers import create_trusted_cluster
from reconciler_helpers import SUB, cluster_admin, run_until_finished
from sqlalchemy import select

from trustedlaunch.attest.policy import Policy
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.labels import LABEL_NODE_IMAGE_VERSION
from trustedlaunch.control.node_image_upgrades import upgrade_node_image_version, upgrade_profile
from trustedlaunch.control.node_image_versions import boot_chain, build_image_version, plan_build
from trustedlaunch.control.node_images import IMAGE_RELEASE
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ResourcePath, delete_cluster
from trustedlaunch.store.models import AgentPool, ImagePolicy, Node

pytestmark = pytest.mark.slow
CLUSTER = "upgradecluster"
PATH = ResourcePath(SUB, "rg", CLUSTER)
OPERATION_SECONDS = 1500.0  # a node booted, attested and joined under TCG on 2 busy cores


def the_node(reconciler: Reconciler) -> Node:
    with reconciler.sessions() as session:
        return session.scalars(select(Node)).one()


def attest_on_demand(reconciler: Reconciler) -> Node:
    """What `tl aks nodepool attest` does, then one reconciler pass (it waits for the attestation)."""
    with reconciler.sessions.begin() as session:
        session.scalars(select(Node)).one().attestation_requested_at = datetime.now(UTC)
    assert reconciler.run_once()
    return the_node(reconciler)


def predicted_policy(reconciler: Reconciler, version: str) -> Policy:
    """The Secure Boot policy stored for `version` (predicted from its image)."""
    with reconciler.sessions() as session:
        return Policy.from_json(session.get_one(ImagePolicy, (version, True)).policy)


def pcr(policy: Policy, index: int) -> str:
    return next(g.value for g in policy.golden_pcrs if (g.bank, g.pcr) == ("sha256", index))


def test_node_image_upgrade_rolls_a_node_from_an_older_build_onto_the_latest(reconciler_base: Path) -> None:
    state_dir = reconciler_base / "upgrade"
    engine, sessions = open_store(f"sqlite:///{reconciler_base / 'upgrade.db'}", None)
    pool, create = create_trusted_cluster(sessions, CLUSTER)
    reconciler = Reconciler(
        sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), attestation_interval=0, boot_timeout=600
    )
    try:
        with sessions.begin() as session:  # the older version, built where the reconciler keeps its images
            chain = boot_chain(*OTHER_KERNEL)
            older = plan_build(session, chain).version()
            build_image_version(session, state_dir / "images" / older, chain)
            session.get_one(AgentPool, pool.id).node_image_version = older  # as an earlier release left it
        assert not older.endswith(IMAGE_RELEASE)
        created = run_until_finished(reconciler, sessions, create.id, OPERATION_SECONDS)
        assert created.status == "Succeeded", created.error
        first = the_node(reconciler)
        assert first.node_image_version == older and first.attestation_status == "Attested", first.message
        older_policy = predicted_policy(reconciler, older)
        assert Policy.from_json(first.attestation_policy or "") == older_policy

        node = attest_on_demand(reconciler)  # against its own recorded policy, before any upgrade
        assert node.attestation_status == "Attested", node.message

        with sessions.begin() as session:
            profile = upgrade_profile(session, PATH, pool.name)
        latest = profile.latest_node_image_version
        assert latest.endswith(IMAGE_RELEASE) and "TLcontainerd" in latest

        with sessions.begin() as session:
            _, upgrade = upgrade_node_image_version(session, PATH, pool.name)
            session.flush()
            upgrade_id = upgrade.id
        with sessions() as session:
            assert session.get_one(AgentPool, pool.id).provisioning_state == "UpgradingNodeImageVersion"
        done = run_until_finished(reconciler, sessions, upgrade_id, OPERATION_SECONDS)
        assert done.status == "Succeeded", done.error
        with sessions() as session:
            moved = session.get_one(AgentPool, pool.id)
            assert (moved.node_image_version, moved.provisioning_state) == (latest, "Succeeded")

        node = the_node(reconciler)
        assert node.state == "Ready" and node.node_image_version == latest, node.message
        assert node.run_dir != first.run_dir  # a new VM (and vTPM)
        assert "joined its cluster" in node.message, node.message
        latest_policy = predicted_policy(reconciler, latest)
        assert Policy.from_json(node.attestation_policy or "") == latest_policy
        assert pcr(latest_policy, 9) != pcr(older_policy, 9)  # another kernel booted
        node = attest_on_demand(reconciler)
        assert node.attestation_status == "Attested", node.message

        client, _ = cluster_admin(sessions)
        with client:
            joined = client.get(KubernetesNode, node.name)
        assert joined.metadata is not None and joined.metadata.labels is not None
        assert joined.metadata.labels[LABEL_NODE_IMAGE_VERSION] == latest
    finally:
        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
        engine.dispose()
