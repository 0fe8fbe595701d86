"""The fleet chart's buckets counted by the database (control.overview.fleet_attested) on SQLite and on a real
PostgreSQL server, against the stored attestations counted one by one."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from web_helpers import Verdicts, attestation_record, seed_store

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.overview import fleet_attested
from trustedlaunch.store.models import AttestationRecord, Node
from trustedlaunch.web.charts import FLEET_BUCKETS, FLEET_WINDOW, bucket_ends


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated store on SQLite and on a throwaway PostgreSQL server."""
    url = (
        f"sqlite:///{tmp_path / 'control.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgresql_url")
    )
    engine, factory = open_store(url, tmp_path / "admin-token")
    yield factory
    engine.dispose()


def _counted_one_by_one(session: Session, pool_id: int, ends: list[datetime]) -> list[tuple[int, int]]:
    """(attested, total) at each end from every stored record: each present node's latest record by then."""
    present = set(session.scalars(select(Node.name).where(Node.pool_id == pool_id)))
    records = session.execute(
        select(
            AttestationRecord.node_name, AttestationRecord.id, AttestationRecord.time, AttestationRecord.ok
        ).where(AttestationRecord.pool_id == pool_id)
    ).all()
    counts = []
    for end in ends:
        latest: dict[str, bool] = {}
        for name, _, time, ok in sorted(records, key=lambda row: (row.time, row.id)):
            if name in present and time <= end:
                latest[name] = ok
        counts.append((sum(latest.values()), len(latest)))
    return counts


def test_the_database_counts_each_bucket_as_the_records_say(
    sessions: sessionmaker[Session], verdicts: Verdicts
) -> None:
    """Seeded: three nodes passed an hour ago; now one passes, two fail. Added: old records before the
    window (only each node's latest counts), several records per bucket (the latest wins), a record exactly
    at a bucket's end (it counts in that bucket), a node attested only from the middle of the window on, a
    record after the window (not counted) and the history of a deleted node (not counted)."""
    seeded = seed_store(sessions, verdicts)
    now = datetime.now(UTC)
    since, ends = now - FLEET_WINDOW, bucket_ends(now)
    generator = random.Random(17)

    def record(name: str, passed: bool, when: datetime) -> AttestationRecord:
        result = verdicts.passed if passed else verdicts.grub_failed
        return attestation_record(seeded.pool_id, name, result, verdicts.evidence, when)

    rows = [
        record("aks-tlpool-0", False, since - timedelta(days=3)),
        record("aks-tlpool-0", True, since - timedelta(days=2)),  # node 0's state as the window opens
        record("aks-tlpool-1", True, since - timedelta(days=2)),
        record("aks-tlpool-1", False, since - timedelta(minutes=1)),
        record("aks-tlpool-2", True, ends[5]),  # exactly at the end of bucket 5
        record("aks-tlpool-2", False, ends[5] + timedelta(microseconds=1)),  # bucket 6
        record("aks-tlpool-0", True, now + timedelta(hours=1)),  # after the window
        record("aks-gone-0", True, ends[3]),  # a node deleted since
    ]
    rows += [
        record(f"aks-tlpool-{generator.randrange(3)}", generator.random() < 0.6, since + timedelta(seconds=s))
        for s in generator.sample(range(int(FLEET_WINDOW.total_seconds()) - 1), 200)
    ]  # written out of time order: the latest by time counts, whatever its id
    with sessions.begin() as session:
        session.add_all(rows)
        pool = session.get_one(Node, session.scalar(select(Node.id).where(Node.name == "aks-tlpool-2"))).pool
        pool.nodes.append(
            Node(ordinal=3, name="aks-tlpool-3", node_image_version=pool.node_image_version, state="Ready")
        )
        session.add(record("aks-tlpool-3", True, ends[11] - timedelta(minutes=5)))
    with sessions() as session:
        counted = fleet_attested(session, [seeded.pool_id], ends)
        assert len(counted) == FLEET_BUCKETS
        assert counted == _counted_one_by_one(session, seeded.pool_id, ends)
    assert counted[0][1] == 3 and counted[11][1] == 4  # node 3 counts from its first attestation on
    assert counted[-1] == (2, 4)  # now: nodes 0 and 3 passed, 1 and 2 failed (seeded)

    # a node's history does not count once the node is deleted; a pool without nodes counts nothing
    with sessions.begin() as session:
        session.execute(delete(Node).where(Node.name == "aks-tlpool-3"))
    with sessions() as session:
        assert fleet_attested(session, [seeded.pool_id], ends)[-1] == (1, 3)
        assert fleet_attested(session, [], ends) == [(0, 0)] * FLEET_BUCKETS
