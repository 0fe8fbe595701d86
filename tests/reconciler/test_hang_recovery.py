"""A node that hangs past the attestation time limit (its QEMU stopped with SIGSTOP) is recorded Unreachable
with an alert; once it runs again (SIGCONT) the next attestation starts clean on the same reconciler (no
stale TSS state, no stale failure) and the node is Attested again, its alert Resolved. One VM boot."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from reconciler_helpers import SUB, nodes, processes_under, run_until_finished, trusted_launch_store
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.store.models import AlertRecord, AttestationRecord, Node

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "hangcluster")
TIME_LIMIT = 8.0  # seconds a re-attestation may take (180 in `tl serve`)


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'hang.db'}") as factory:
        yield factory


def attest_on_demand(reconciler: Reconciler, sessions: sessionmaker[Session]) -> AttestationRecord:
    """Request an attestation as `tl aks nodepool attest` does, run one pass; the record it made."""
    with sessions.begin() as session:
        session.scalars(select(Node)).one().attestation_requested_at = datetime.now(UTC)
    assert reconciler.run_once()  # waits for the attestation it started
    with sessions() as session:
        return session.scalars(select(AttestationRecord).order_by(AttestationRecord.id.desc())).first()


def node_alerts(sessions: sessionmaker[Session]) -> list[AlertRecord]:
    with sessions() as session:
        return list(session.scalars(select(AlertRecord).order_by(AlertRecord.time)))


def test_a_node_paused_past_the_time_limit_attests_again(
    sessions: sessionmaker[Session], state_dir: Path
) -> None:
    pool = PoolSpec(
        "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    with sessions.begin() as session:
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
    reconciler = Reconciler(  # no liveness checks: this is about the attestation (test_liveness_repair)
        sessions,
        state_dir,
        attestation_interval=0,
        boot_timeout=300,
        attestation_time_limit=TIME_LIMIT,
        liveness_interval=0,
    )
    qemu_pid: int | None = None
    try:
        created = run_until_finished(reconciler, sessions, create.id, 400)
        assert created.status == "Succeeded", created.error
        [node] = nodes(sessions)
        assert node.attestation_status == "Attested" and node.handle is not None
        qemu_pid = int(node.handle)

        os.kill(qemu_pid, signal.SIGSTOP)
        started = time.monotonic()
        hung = attest_on_demand(reconciler, sessions)
        assert hung.status == "Unreachable", hung.findings
        assert TIME_LIMIT - 1 <= time.monotonic() - started < TIME_LIMIT + 30
        assert "did not answer" in str(hung.findings)
        [active] = node_alerts(sessions)
        assert active.status == "Active"

        os.kill(qemu_pid, signal.SIGCONT)
        for _ in range(2):  # every later attestation starts clean, not only the first
            healed = attest_on_demand(reconciler, sessions)
            assert (healed.status, healed.ok) == ("Attested", True), (
                [finding["message"] for finding in healed.findings],
                healed.duration_ms,
            )
        [node] = nodes(sessions)
        assert (node.state, node.attestation_status) == ("Ready", "Attested")
        assert node.message == "attested (OnDemand)"
        [resolved] = node_alerts(sessions)
        assert resolved.id == active.id and resolved.status == "Resolved"
    finally:
        if qemu_pid is not None:
            os.kill(qemu_pid, signal.SIGCONT)
        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        if deletion is not None:
            run_until_finished(reconciler, sessions, deletion.id, 120)
        reconciler.release()
    assert processes_under(state_dir / "vm") == []
