"""Auto-repair of a node that joined its cluster: a real Secure Boot + vTPM node VM, joined to its cluster's
hosted control plane, is killed (SIGKILL of QEMU); the liveness checks find it Unhealthy and its Node is
quarantined (the trusted-launch and secure-boot labels off, the quarantine taint on, cordoned); the
auto-repair reboots it (same vTPM, enrolled again), it is attested again, its new kubelet gets a new
credential and reports the new boot's id on the same Node, which is Ready, labelled and untainted again."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Node as KubernetesNode
from monitoring_helpers import create_trusted_cluster
from reconciler_helpers import SUB, cluster_admin, nodes, processes_under, run_until_finished, wait_until
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.cluster_planes import ClusterPlanes
from trustedlaunch.control.kubernetes import QUARANTINE_TAINT
from trustedlaunch.control.labels import LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.reconciler import Reconciler, ReconcilerThread
from trustedlaunch.control.resources import ResourcePath, delete_cluster
from trustedlaunch.store.models import Node

pytestmark = pytest.mark.slow
CLUSTER = "repaircluster"
CREATE_SECONDS = 1200.0  # control plane, then a node booted, attested and joined under TCG on 2 busy cores
LIVENESS_INTERVAL = 3.0


@pytest.fixture
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    database = f"sqlite:///{reconciler_base / 'repair.db'}"
    engine, factory = open_store(database, reconciler_base / "repair-token")
    try:
        yield factory
    finally:
        engine.dispose()


def the_node(sessions: sessionmaker[Session]) -> Node:
    [node] = nodes(sessions)
    return node


def stored_node(client: Client, name: str) -> dict[str, Any] | None:
    try:
        return client.get(KubernetesNode, name).to_dict()
    except ApiError as exc:
        if exc.status.code == 404:
            return None
        raise


def quarantined(stored: dict[str, Any] | None) -> bool:
    if stored is None:
        return False
    taints = {(taint["key"], taint["effect"]) for taint in stored["spec"].get("taints") or []}
    labels = stored["metadata"].get("labels") or {}
    return (
        (QUARANTINE_TAINT.key, QUARANTINE_TAINT.effect) in taints
        and bool(stored["spec"].get("unschedulable"))
        and LABEL_TRUSTED_LAUNCH not in labels
        and LABEL_SECURE_BOOT not in labels
    )


def ready_condition(stored: dict[str, Any]) -> str | None:
    conditions = stored.get("status", {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), None)


def test_a_killed_joined_node_is_quarantined_rebooted_and_joins_again(
    sessions: sessionmaker[Session], reconciler_base: Path
) -> None:
    state_dir = reconciler_base / "repair"
    _, create = create_trusted_cluster(sessions, CLUSTER)
    settings: dict[str, Any] = {
        "attestation_interval": 0,
        "liveness_interval": LIVENESS_INTERVAL,
        "boot_timeout": 300,
        "auto_repair": True,
    }
    reconciler = Reconciler(sessions, state_dir, cluster_planes=ClusterPlanes(state_dir), **settings)
    loop: ReconcilerThread | None = None
    client: Client | None = None
    try:
        created = run_until_finished(reconciler, sessions, create.id, CREATE_SECONDS)
        assert created.status == "Succeeded", created.error
        joined = the_node(sessions)
        assert "joined its cluster" in joined.message and joined.handle is not None
        client, _ = cluster_admin(sessions)
        before = stored_node(client, joined.name)
        assert before is not None and ready_condition(before) == "True" and not quarantined(before)
        first_boot = before["status"]["nodeInfo"]["bootID"]

        loop = ReconcilerThread(reconciler)
        loop.start()
        os.kill(int(joined.handle), signal.SIGKILL)
        wait_until(lambda: quarantined(stored_node(client, joined.name)), 120, "the lost node's quarantine")

        rebooted = wait_until(  # Ready is committed before the repair's outcome: wait for both
            lambda: (
                (node := the_node(sessions)).state == "Ready"
                and node.repairs
                and node.repairs[-1]["outcome"]
                and node
            ),
            CREATE_SECONDS,
            "the reboot",
        )
        [repair] = rebooted.repairs
        assert repair["action"] == "Reboot" and repair["outcome"].startswith("done: "), repair
        assert "joined its cluster" in rebooted.message, rebooted.message
        assert rebooted.run_dir == joined.run_dir and rebooted.handle not in (None, joined.handle)
        assert rebooted.kubelet_port == joined.kubelet_port
        after = stored_node(client, joined.name)
        assert after is not None
        assert after["metadata"]["uid"] == before["metadata"]["uid"]  # the same Node object
        assert after["status"]["nodeInfo"]["bootID"] != first_boot  # reported by the new boot's kubelet
        assert ready_condition(after) == "True"
        labels = after["metadata"]["labels"]
        assert labels[LABEL_TRUSTED_LAUNCH] == "true" and labels[LABEL_SECURE_BOOT] == "true"
        assert not after["spec"].get("taints") and not after["spec"].get("unschedulable")
    finally:
        if client is not None:
            client.close()
        if loop is not None:
            loop.stop()
        with sessions.begin() as session:
            deletion = delete_cluster(session, ResourcePath(SUB, "rg", CLUSTER))
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 300.0)
        reconciler.release()
    assert processes_under(state_dir) == []
    assert not any((state_dir / "clusters").iterdir())
