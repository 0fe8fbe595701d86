"""A running installation upgrades cleanly: a Secure Boot + vTPM node that joined its cluster with an older
agent (its initramfs has no KUBELETCERTS request, as nodes provisioned before kubelet credential renewal)
passes re-attestation, its agent refuses the renewal, and instead of letting its kubelet credential expire
the reconciler reimages it onto the current image through an Update operation on its pool (drained through
the Eviction API, reimaged, rejoined), the reason on the node and the operation; the reimaged node's
credentials are renewed. Real VMs, kubelet and hosted control plane: two boots of one node."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lightkube.resources.core_v1 import Node as KubernetesNode
from monitoring_helpers import create_trusted_cluster
from older_agent import older_agent_initramfs
from reconciler_helpers import SUB, cluster_admin, run_until_finished
from sqlalchemy import select

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ResourcePath, delete_cluster
from trustedlaunch.store.models import Node, Operation

pytestmark = pytest.mark.slow
CLUSTER = "oldercluster"
CREATE_SECONDS = 1200.0  # control plane, then a node booted, attested and joined under TCG on 2 busy cores


def the_node(reconciler: Reconciler) -> Node:
    with reconciler.sessions() as session:
        return session.scalars(select(Node)).one()


def attest_on_demand(reconciler: Reconciler) -> Node:
    """What `tl aks nodepool attest` does, then one reconciler pass (it waits for the attestation)."""
    with reconciler.sessions.begin() as session:
        session.scalars(select(Node)).one().attestation_requested_at = datetime.now(UTC)
    assert reconciler.run_once()
    return the_node(reconciler)


def test_a_joined_node_with_an_older_agent_is_reimaged_before_its_credential_expires(
    reconciler_base: Path,
) -> None:
    state_dir = reconciler_base / "older"
    engine, sessions = open_store(f"sqlite:///{reconciler_base / 'older.db'}", None)
    pool, create = create_trusted_cluster(sessions, CLUSTER)
    reconciler = Reconciler(
        sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), attestation_interval=0, boot_timeout=300
    )
    try:
        # The node image as an earlier trustedlaunch left it running: its agent without KUBELETCERTS (the
        # recorded digest kept, so this reconciler boots it as it is, and predicts its policy from it).
        image = reconciler._image(pool.node_image_version)
        initrd = image.esp_dir / "initrd.gz"
        current = initrd.read_bytes()
        initrd.write_bytes(older_agent_initramfs(current))
        created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
        assert created.status == "Succeeded", created.error
        older = the_node(reconciler)
        initrd.write_bytes(current)  # this trustedlaunch's image (as _image refreshes an older build's agent)

        node = attest_on_demand(reconciler)
        assert node.attestation_status == "Attested", node.message
        assert "does not know the KUBELETCERTS request" in node.message, node.message
        assert "reimage scheduled" in node.message
        assert node.reimage_reason is not None and "older node image" in node.reimage_reason
        with sessions() as session:
            (update,) = session.scalars(select(Operation).where(Operation.status == "InProgress"))
        assert update.kind == "Update" and update.resource_id.endswith(f"/agentPools/{pool.name}")

        notes: list[str] = []  # the operation's progress notes, as a client polling it sees them
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                with sessions() as session:
                    note = session.get_one(Operation, update.id).note
                if not notes or notes[-1] != note:
                    notes.append(note)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            done = run_until_finished(reconciler, sessions, update.id, CREATE_SECONDS)
        finally:
            stop.set()
            watcher.join(10)
        assert done.status == "Succeeded", done.error
        reimaging = "reimaging node 1/1 (its agent (an older node image's initramfs) cannot renew"
        assert any(reimaging in note for note in notes), notes
        node = the_node(reconciler)
        assert node.state == "Ready" and node.reimage_reason is None
        assert node.run_dir != older.run_dir  # a new VM (and vTPM)
        assert "joined its cluster" in node.message

        client, _ = cluster_admin(sessions)
        with client:
            client.get(KubernetesNode, node.name)  # the Node of the reimaged VM
        node = attest_on_demand(reconciler)
        assert node.message == "attested (OnDemand); kubelet credentials renewed", node.message
        print(f"operation notes: {notes}")
    finally:
        with sessions.begin() as session:
            deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
        engine.dispose()
