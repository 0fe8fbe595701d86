"""Liveness and auto-repair on a real VM, under a running reconciler loop with attestation off (interval 0):
a paused VM (SIGSTOP) is Unhealthy within one liveness check, loses its labels and raises one NodeUnhealthy
alert; with auto-repair off it is Ready again once it runs (SIGCONT) and is attested again, and so is a hung
guest (QMP stop: QEMU runs, the agent is silent), Unhealthy after 3 failed checks; with auto-repair on, a VM
killed with SIGKILL is rebooted after 3 failed checks (same vTPM, enrolled again) and is Ready and
Attested again, the repair recorded on the node and in its resolved alert. One VM boot and one reboot."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import (
    SUB,
    nodes,
    processes_under,
    run_until_finished,
    trusted_launch_store,
    wait_until,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.labels import LABEL_SECURE_BOOT, LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.reconciler import Reconciler, ReconcilerThread
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.store.models import AlertRecord, Node

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "healcluster")
LIVENESS_INTERVAL = 3.0  # seconds (20 in `tl serve`: 3 failed checks within 60 s)


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'heal.db'}") as factory:
        yield factory


def the_node(sessions: sessionmaker[Session]) -> Node:
    [node] = nodes(sessions)
    return node


def unhealthy_alerts(sessions: sessionmaker[Session]) -> list[AlertRecord]:
    with sessions() as session:
        return list(
            session.scalars(
                select(AlertRecord)
                .where(AlertRecord.alert_type == "VM_NodeUnhealthy")
                .order_by(AlertRecord.time)
            )
        )


def qmp(run_dir: Path, command: str) -> None:
    """Run one QMP command on the node VM's monitor socket (`stop` pauses its vCPUs, `cont` resumes them)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(run_dir / "qmp.sock"))
        with sock.makefile("rwb") as stream:
            assert b"QMP" in stream.readline()
            for execute in ("qmp_capabilities", command):
                stream.write(json.dumps({"execute": execute}).encode() + b"\n")
                stream.flush()
                while b'"return"' not in (line := stream.readline()):
                    assert line and b'"error"' not in line, line


def looping(reconciler: Reconciler) -> ReconcilerThread:
    thread = ReconcilerThread(reconciler)
    thread.start()
    return thread


def test_a_paused_a_hung_and_a_killed_vm_heal(sessions: sessionmaker[Session], state_dir: Path) -> None:
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
    settings = {"attestation_interval": 0, "liveness_interval": LIVENESS_INTERVAL, "boot_timeout": 300}
    first = Reconciler(sessions, state_dir, auto_repair=False, **settings)
    loop: ReconcilerThread | None = None
    paused: int | None = None
    try:
        created = run_until_finished(first, sessions, create.id, 400)
        assert created.status == "Succeeded", created.error
        ready = the_node(sessions)
        assert ready.attestation_status == "Attested" and LABEL_TRUSTED_LAUNCH in ready.labels
        assert ready.handle is not None
        loop = looping(first)

        paused = int(ready.handle)
        os.kill(paused, signal.SIGSTOP)
        hung = wait_until(
            lambda: (node := the_node(sessions)).state == "Unhealthy" and node,
            2 * LIVENESS_INTERVAL + 10,
            "hang",
        )
        assert hung.health_cause == "VM paused: its QEMU process is stopped", hung.health_cause
        assert LABEL_TRUSTED_LAUNCH not in hung.labels and LABEL_SECURE_BOOT not in hung.labels
        [alert] = unhealthy_alerts(sessions)
        assert alert.status == "Active" and "VM paused" in str(alert.document["properties"])

        os.kill(paused, signal.SIGCONT)
        paused = None
        healed = wait_until(
            lambda: (node := the_node(sessions)).labels.get(LABEL_TRUSTED_LAUNCH) and node,
            120,
            "re-attestation",
        )
        assert (healed.state, healed.attestation_status, healed.handle) == (
            "Ready",
            "Attested",
            ready.handle,
        )
        assert healed.repairs == []  # auto-repair was off: it healed by itself
        [alert] = unhealthy_alerts(sessions)
        assert alert.status == "Resolved" and alert.count >= 1

        run_dir = Path(str(ready.run_dir))
        qmp(run_dir, "stop")  # the guest hangs, its QEMU process runs on: only the agent's silence tells
        hung = wait_until(
            lambda: (node := the_node(sessions)).state == "Unhealthy" and node,
            4 * (LIVENESS_INTERVAL + 5),
            "the hung guest",
        )
        assert (
            hung.health_cause == "agent unreachable for 3 checks: the agent did not answer a PING within 5 s"
        )
        assert hung.failed_checks == 3
        qmp(run_dir, "cont")
        wait_until(
            lambda: the_node(sessions).labels.get(LABEL_TRUSTED_LAUNCH), 120, "re-attestation after cont"
        )
        assert [alert.status for alert in unhealthy_alerts(sessions)] == ["Resolved", "Resolved"]
        loop.stop()
        loop = None
        first.release()

        repairing = Reconciler(sessions, state_dir, auto_repair=True, **settings)
        loop = looping(repairing)
        os.kill(int(ready.handle), signal.SIGKILL)
        lost = wait_until(
            lambda: (node := the_node(sessions)).state != "Ready" and node, 2 * LIVENESS_INTERVAL + 10, "loss"
        )
        assert lost.health_cause == "VM exited: the VM process (QEMU) was killed by signal 9 (SIGKILL)"
        rebooted = wait_until(  # Ready is committed before the repair's outcome: wait for both
            lambda: (
                (node := the_node(sessions)).state == "Ready"
                and node.repairs
                and node.repairs[-1]["outcome"]
                and node
            ),
            400,
            "reboot",
        )
        [repair] = rebooted.repairs
        assert repair["action"] == "Reboot" and repair["outcome"].startswith("done: ready after"), repair
        assert repair["cause"] == lost.health_cause
        assert rebooted.run_dir == ready.run_dir and rebooted.handle not in (None, ready.handle)
        assert rebooted.attestation_status == "Attested" and LABEL_TRUSTED_LAUNCH in rebooted.labels
        assert rebooted.enrolled_ak_name is not None  # the same vTPM, its AK enrolled again
        _, _, alert = unhealthy_alerts(sessions)  # paused, hung, killed: one alert each
        steps = [str(step) for step in alert.document["properties"]["remediationSteps"]]  # type: ignore[index]
        assert alert.status == "Resolved"
        assert steps[-2].endswith("reboot started after 3 failed checks."), steps
        assert "reboot done: ready after" in steps[-1], steps
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        if loop is not None:
            loop.stop()
        cleaner = Reconciler(sessions, state_dir, liveness_interval=0)
        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        if deletion is not None:
            run_until_finished(cleaner, sessions, deletion.id, 120)
        cleaner.release()
    assert processes_under(state_dir / "vm") == []
