"""Node health rules (control/node_health.py) on a real store, SQLite and PostgreSQL: when a node turns
Unhealthy, its one alert per cause, its labels, its recovery, and the auto-repair schedule (reboot after 3
failed checks, reimage 5 minutes after a reboot that did not help, at most 3 repairs per hour)."""

from __future__ import annotations

from datetime import timedelta

from monitoring_rows import add_node
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.labels import LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH, node_labels
from trustedlaunch.control.node_health import (
    FAILED_CHECKS,
    LivenessCheck,
    RepairAction,
    finish_repair,
    next_repair,
    record_check,
    rolled_up_health,
    start_repair,
)
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import AgentPool, AlertRecord, Node, NodeHost, utc_now
from trustedlaunch.store.vocabulary import HostState

SUB = "11111111-2222-3333-4444-555555555555"
UNANSWERED = "the agent did not answer a PING within 5 s"


def _pool(session: Session) -> AgentPool:
    register_feature(session, SUB, "Microsoft.ContainerService", "TrustedLaunchPreview")
    register_provider(session, SUB, "Microsoft.ContainerService")
    spec = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    path = ResourcePath(SUB, "rg", "health")
    cluster, _, _ = put_cluster(session, path, ClusterSpec("eastus", agent_pools=[spec]))
    [pool] = cluster.agent_pools
    return pool


def _ready_node(session: Session) -> Node:
    pool = _pool(session)
    node = add_node(session, pool, 0)
    node.labels = node_labels(pool.name, True, True, "Attested")
    return node


def _alerts(session: Session) -> list[AlertRecord]:
    return list(session.scalars(select(AlertRecord).order_by(AlertRecord.time)))


def test_an_unanswered_agent_makes_the_node_unhealthy_on_the_third_check(
    store: sessionmaker[Session],
) -> None:
    with store.begin() as session:
        node = _ready_node(session)
        check = LivenessCheck(node.id, node.name, UNANSWERED)
        changes = [record_check(session, node, check) for _ in range(FAILED_CHECKS)]
        assert changes == [False, False, True]
        assert node.state == "Unhealthy" and node.failed_checks == FAILED_CHECKS
        assert node.health_cause == f"agent unreachable for 3 checks: {UNANSWERED}"
        assert LABEL_TRUSTED_LAUNCH not in node.labels and LABEL_SECURE_BOOT not in node.labels
        assert (
            node.labels["kubernetes.azure.com/attestation-status"] == "Attested"
        )  # not an attestation verdict
        assert rolled_up_health(node.pool.nodes) == "Degraded"
        [alert] = _alerts(session)
        properties = alert.document["properties"]
        assert (alert.alert_type, alert.status, alert.count) == ("VM_NodeUnhealthy", "Active", 1)
        assert properties["alertDisplayName"] == "Node VM unhealthy"  # type: ignore[index]
        assert "agent unreachable for 3 checks" in str(properties["description"])  # type: ignore[index]

        assert record_check(session, node, check) is False  # still unhealthy: the same alert, counted
        [alert] = _alerts(session)
        assert alert.count == 2 and node.failed_checks == 4


def test_a_gone_vm_is_unhealthy_at_once_and_recovery_resolves_and_reattests(
    store: sessionmaker[Session],
) -> None:
    cause = "VM exited: the VM process (QEMU) was killed by signal 2 (SIGINT)"
    with store.begin() as session:
        node = _ready_node(session)
        assert record_check(session, node, LivenessCheck(node.id, node.name, cause, certain=True))
        assert (node.state, node.health_cause, node.failed_checks) == ("Unhealthy", cause, 1)
        assert node.message == f"unhealthy: {cause}"
        assert node.unhealthy_since is not None

        assert record_check(session, node, LivenessCheck(node.id, node.name))  # it answers again
        assert (node.state, node.failed_checks, node.health_cause, node.unhealthy_since) == (
            "Ready",
            0,
            None,
            None,
        )
        assert node.attestation_requested_at is not None  # its labels come back with the next attestation
        assert LABEL_TRUSTED_LAUNCH not in node.labels
        assert rolled_up_health(node.pool.nodes) == "Healthy"
        [alert] = _alerts(session)
        assert alert.status == "Resolved"


def test_the_repair_schedule(store: sessionmaker[Session]) -> None:
    with store.begin() as session:
        node = _ready_node(session)
        check = LivenessCheck(node.id, node.name, "VM paused: its QEMU process is stopped", certain=True)
        record_check(session, node, check)
        now = utc_now()
        assert next_repair(node, now) is None  # unhealthy at once, repaired only after 3 failed checks
        for _ in range(FAILED_CHECKS - 1):
            record_check(session, node, check)
        assert next_repair(node, now) == RepairAction.REBOOT
        assert next_repair(node, now, enabled=False) is None  # auto-repair off

        start_repair(session, node, RepairAction.REBOOT)
        assert node.state == "Repairing" and next_repair(node, now) is None
        finish_repair(session, node, "failed: the node did not boot")
        node.state = "Unhealthy"  # as the reconciler leaves a node whose repair failed
        [alert] = _alerts(session)
        steps = [str(step) for step in alert.document["properties"]["remediationSteps"]]  # type: ignore[index]
        assert steps[-2].endswith("reboot started after 3 failed checks.")
        assert steps[-1].endswith("reboot failed: the node did not boot.")
        assert [(r["action"], r["outcome"]) for r in node.repairs] == [
            ("Reboot", "failed: the node did not boot")
        ]
        assert next_repair(node, utc_now()) is None  # a reboot gets 5 minutes
        later = utc_now() + timedelta(minutes=5, seconds=1)
        assert next_repair(node, later) == RepairAction.REIMAGE
        assert next_repair(node, utc_now(), reimage_after=timedelta(0)) == RepairAction.REIMAGE

        for _ in range(2):
            start_repair(session, node, RepairAction.REIMAGE)
            finish_repair(session, node, "failed: the node did not boot")
            node.state = "Unhealthy"
        # three repairs within the hour: no more until the oldest is an hour old
        assert next_repair(node, later + timedelta(minutes=10)) is None
        assert next_repair(node, utc_now() + timedelta(minutes=61)) == RepairAction.REIMAGE


def test_a_node_whose_host_is_lost_is_reimaged_at_once(store: sessionmaker[Session]) -> None:
    """Its VM went with its host: it is made again where placement puts it (a reimage), not rebooted there,
    from its first failed check on; the repair schedule still spaces and caps the retries."""
    with store.begin() as session:
        node = _ready_node(session)
        host = NodeHost(name="a", uri="qemu+tcp://a/system", memory_mib=4096, vcpus=4)
        node.driver, node.host = "libvirt", host
        session.flush()
        record_check(
            session, node, LivenessCheck(node.id, node.name, "VM lost: its host a is Lost", certain=True)
        )
        assert next_repair(node, utc_now()) is None  # a Ready host: reboot after 3 failed checks
        host.state = HostState.LOST
        assert next_repair(node, utc_now()) == RepairAction.REIMAGE
        assert next_repair(node, utc_now(), enabled=False) is None
        start_repair(session, node, RepairAction.REIMAGE)
        finish_repair(session, node, "failed: Allocation failed")
        node.state = "Unhealthy"
        assert next_repair(node, utc_now()) is None  # tried again 5 minutes later
        assert next_repair(node, utc_now() + timedelta(minutes=5, seconds=1)) == RepairAction.REIMAGE
