"""Benchmark: the overview's fleet "% attested over time" counted in the database (control.overview.
fleet_attested: each node's latest attestation at each bucket's end, one index seek each, counted per
bucket; at most 3 rows per bucket back) against loading every attestation of the window into Python and
bucketing there (what the dashboard did before), on the same store in the same run.

A fresh migrated store (SQLite in a temporary folder, or --database-url) gets one cluster with --pools pools
of --nodes nodes in all, each attested every --interval seconds over the last 24 hours plus a day before
it (90 % pass); PostgreSQL then ANALYZEs, as its autovacuum would. Each way is timed --repeat times (best
kept); both must give the same counts. Prints rows read by each way, their times and the ratio. Usage:

    .venv/bin/python bench/fleet_chart_bench.py [--nodes 2000] [--pools 3] [--interval 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.overview import fleet_attested
from trustedlaunch.store.models import AgentPool, AttestationRecord, ManagedCluster, Node, NodeImage
from trustedlaunch.web.charts import FLEET_WINDOW, bucket_ends

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
BATCH = 20_000


def seed(sessions: sessionmaker[Session], nodes: int, pools: int, interval: int, now: datetime) -> int:
    """The cluster, its pools and nodes, and their attestations; returns the number of records."""
    generator = random.Random(1)
    with sessions.begin() as session:
        image = session.scalars(select(NodeImage.version).where(NodeImage.trusted_launch_capable)).first()
        assert image is not None
        cluster = ManagedCluster(
            subscription_id=SUBSCRIPTION,
            resource_group="bench",
            name="fleet",
            display_name="fleet",
            location="eastus",
            kubernetes_version="1.36.3",
            dns_prefix="fleet",
            fqdn="fleet.example",
            kube_token="bench",
            provisioning_state="Succeeded",
        )
        for number in range(pools):
            pool = AgentPool(
                cluster=cluster,
                name=f"pool{number}",
                mode="System" if number == 0 else "User",
                count=nodes // pools,
                vm_size="Standard_D4s_v3",
                os_type="Linux",
                os_sku="Ubuntu",
                pool_type="VirtualMachineScaleSets",
                orchestrator_version="1.36.3",
                os_disk_type="Managed",
                os_disk_size_gb=30,
                enable_secure_boot=True,
                enable_vtpm=True,
                node_image_version=image,
                provisioning_state="Succeeded",
            )
            for ordinal in range(nodes // pools + (number < nodes % pools)):
                pool.nodes.append(
                    Node(
                        ordinal=ordinal,
                        name=f"aks-pool{number}-{ordinal}",
                        node_image_version=image,
                        enable_secure_boot=True,
                        enable_vtpm=True,
                        state="Ready",
                    )
                )
        session.add(cluster)
        session.flush()
        members = [(pool.id, node.name) for pool in cluster.agent_pools for node in pool.nodes]
    start = now - FLEET_WINDOW - timedelta(days=1)
    rounds = int((now - start).total_seconds()) // interval
    written = 0
    rows = []
    for number in range(rounds):  # in time order, as the reconciler writes them
        when = start + timedelta(seconds=number * interval)
        for pool_id, name in members:
            passed = generator.random() < 0.9
            rows.append(
                {
                    "pool_id": pool_id,
                    "node_name": name,
                    "time": when + timedelta(seconds=generator.randrange(interval)),
                    "trigger": "Interval",
                    "ok": passed,
                    "status": "Attested" if passed else "AttestationFailed",
                    "findings": [],
                    "duration_ms": 40.0,
                }
            )
        if len(rows) >= BATCH or number == rounds - 1:
            with sessions.begin() as session:
                session.execute(insert(AttestationRecord), rows)
            written += len(rows)
            rows = []
    return written


def python_bucketing(
    session: Session, pool_ids: list[int], since: datetime, ends: list[datetime]
) -> tuple[list[tuple[int, int]], int]:
    """The old way: every attestation of the window (and each node's latest before it) into Python, oldest
    first, replayed bucket by bucket; (counts, rows read)."""
    present = set(session.execute(select(Node.pool_id, Node.name).where(Node.pool_id.in_(pool_ids))))
    earlier = (
        select(func.max(AttestationRecord.id))
        .where(AttestationRecord.pool_id.in_(pool_ids), AttestationRecord.time < since)
        .group_by(AttestationRecord.pool_id, AttestationRecord.node_name)
    )
    rows = session.execute(
        select(
            AttestationRecord.pool_id,
            AttestationRecord.node_name,
            AttestationRecord.time,
            AttestationRecord.ok,
        )
        .where(
            AttestationRecord.pool_id.in_(pool_ids),
            (AttestationRecord.time >= since) | AttestationRecord.id.in_(earlier),
        )
        .order_by(AttestationRecord.time, AttestationRecord.id)
    ).all()
    verdicts = iter([row for row in rows if (row.pool_id, row.node_name) in present])
    latest: dict[tuple[int, str], bool] = {}
    upcoming = next(verdicts, None)
    counts = []
    for end in ends:
        while upcoming is not None and upcoming.time <= end:
            latest[(upcoming.pool_id, upcoming.node_name)] = upcoming.ok
            upcoming = next(verdicts, None)
        counts.append((sum(latest.values()), len(latest)))
    return counts, len(rows)


def best_of(repeat: int, run: Callable[[], object]) -> tuple[float, object]:
    """The shortest of `repeat` runs (seconds) and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> int:
    """Seed the store, time both ways, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--pools", type=int, default=3)
    parser.add_argument("--interval", type=int, default=300, help="seconds between a node's attestations")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", help="an empty database (default: SQLite in a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tl-fleet-bench-") as scratch:
        url = args.database_url or f"sqlite:///{Path(scratch) / 'control.db'}"
        engine, sessions = open_store(url, None)
        now = datetime.now(UTC)
        started = time.perf_counter()
        records = seed(sessions, args.nodes, args.pools, args.interval, now)
        print(
            f"{engine.dialect.name}: {args.nodes} nodes in {args.pools} pools, {records} attestations "
            f"(every {args.interval} s over 48 h) seeded in {time.perf_counter() - started:.1f} s"
        )
        if (
            engine.dialect.name == "postgresql"
        ):  # the statistics autovacuum keeps (a fresh bulk load has none)
            with engine.begin() as connection:
                connection.exec_driver_sql("ANALYZE")
        since, ends = now - FLEET_WINDOW, bucket_ends(now)
        with sessions() as session:
            pool_ids = list(session.scalars(select(AgentPool.id)))
            python_seconds, (python_counts, python_rows) = best_of(  # type: ignore[misc]
                args.repeat, lambda: python_bucketing(session, pool_ids, since, ends)
            )
            sql_seconds, sql_counts = best_of(args.repeat, lambda: fleet_attested(session, pool_ids, ends))
        engine.dispose()
    if sql_counts != python_counts:
        print(f"MISMATCH: database {sql_counts} != Python {python_counts}", file=sys.stderr)
        return 1
    print(f"Python bucketing:   {python_seconds * 1000:8.1f} ms ({python_rows} rows read)")
    print(
        f"database bucketing: {sql_seconds * 1000:8.1f} ms "
        f"({len(ends)} buckets, at most {3 * len(ends)} rows)"
    )
    print(f"ratio: the database way takes {sql_seconds / python_seconds:.2f}x the Python way's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
