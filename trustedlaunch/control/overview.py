"""What the dashboard shows, read for one signed-in principal: clusters with their pools and nodes, each
node's latest attestation, a node's history, alerts and one attestation. A principal scoped to a
subscription or resource group gets only the rows inside its scope; a row outside it reads as missing."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, literal, select, true, union_all
from sqlalchemy.orm import Session, selectinload

from trustedlaunch.control.attestation_monitor import Trigger
from trustedlaunch.control.resources import cluster_resource_id
from trustedlaunch.control.tokens import Principal
from trustedlaunch.store.models import (
    AgentPool,
    AlertRecord,
    AttestationRecord,
    ManagedCluster,
    Node,
    UtcDateTime,
)
from trustedlaunch.store.vocabulary import OPEN_ALERT_STATUSES, AlertStatus, AttestationStatus

ALERT_STATUSES = tuple(AlertStatus)


def _covers(principal: Principal, subscription_id: str, resource_group: str, cluster_name: str) -> bool:
    return principal.covers(cluster_resource_id(subscription_id, resource_group, cluster_name))


def _sees(principal: Principal, cluster: ManagedCluster) -> bool:
    return _covers(principal, cluster.subscription_id, cluster.resource_group, cluster.name)


def visible_clusters(session: Session, principal: Principal) -> list[ManagedCluster]:
    """The clusters in the principal's scope (pools and nodes loaded), by subscription, group and name."""
    query = (
        select(ManagedCluster)
        .options(selectinload(ManagedCluster.agent_pools).selectinload(AgentPool.nodes))
        .order_by(ManagedCluster.subscription_id, ManagedCluster.resource_group, ManagedCluster.name)
    )
    return [cluster for cluster in session.scalars(query) if _sees(principal, cluster)]


def active_alert_counts(session: Session) -> dict[tuple[str, str, str], int]:
    """How many open (Active or acknowledged) alerts each cluster has, by (subscription, resource group,
    cluster name)."""
    rows = session.execute(
        select(
            AlertRecord.subscription_id, AlertRecord.resource_group, AlertRecord.cluster_name, func.count()
        )
        .where(AlertRecord.status.in_(OPEN_ALERT_STATUSES))
        .group_by(AlertRecord.subscription_id, AlertRecord.resource_group, AlertRecord.cluster_name)
    )
    return {(sub, group, name): count for sub, group, name, count in rows}


def open_alert_count(session: Session, principal: Principal) -> int:
    """How many open (Active or acknowledged) alerts the principal's scope holds."""
    return sum(
        count
        for (subscription_id, group, name), count in active_alert_counts(session).items()
        if _covers(principal, subscription_id, group, name)
    )


def attested_nodes(nodes: Iterable[Node]) -> int:
    """How many of `nodes` passed their latest attestation."""
    return sum(1 for node in nodes if node.attestation_status == AttestationStatus.ATTESTED)


def visible_cluster(session: Session, principal: Principal, cluster_id: int) -> ManagedCluster | None:
    """The cluster with row id `cluster_id` if it exists in the principal's scope."""
    cluster = session.get(ManagedCluster, cluster_id)
    return cluster if cluster is not None and _sees(principal, cluster) else None


def visible_pool(session: Session, principal: Principal, pool_id: int) -> AgentPool | None:
    """The agent pool with row id `pool_id` if its cluster is in the principal's scope."""
    pool = session.get(AgentPool, pool_id)
    return pool if pool is not None and _sees(principal, pool.cluster) else None


def pool_nodes_page(session: Session, pool: AgentPool, offset: int, limit: int) -> list[Node]:
    """At most `limit` of the pool's nodes by ordinal, from the `offset`th on."""
    query = select(Node).where(Node.pool_id == pool.id).order_by(Node.ordinal).offset(offset).limit(limit)
    return list(session.scalars(query))


def latest_attestation_ids(session: Session, pool_id: int, node_names: Iterable[str]) -> dict[str, int]:
    """The id of the latest attestation record of each of `node_names` in a pool, by node name."""
    rows = session.execute(
        select(AttestationRecord.node_name, func.max(AttestationRecord.id))
        .where(AttestationRecord.pool_id == pool_id, AttestationRecord.node_name.in_(list(node_names)))
        .group_by(AttestationRecord.node_name)
    )
    return {name: record_id for name, record_id in rows}


def node_history(
    session: Session, pool: AgentPool, node_name: str, limit: int
) -> Sequence[AttestationRecord] | None:
    """A node's attestations in `pool`, newest first (at most `limit`); None when the pool has no such
    node and never had (a deleted node's history stays readable)."""
    records = session.scalars(
        select(AttestationRecord)
        .where(AttestationRecord.pool_id == pool.id, AttestationRecord.node_name == node_name)
        .order_by(AttestationRecord.id.desc())
        .limit(limit)
    ).all()
    node = session.scalar(select(Node.id).where(Node.pool_id == pool.id, Node.name == node_name))
    return None if node is None and not records else records


def visible_alerts(
    session: Session, principal: Principal, status: str | None, limit: int
) -> list[AlertRecord]:
    """The alerts in the principal's scope, newest first, at most `limit`; only those of `status` when it
    is one of ALERT_STATUSES."""
    query = select(AlertRecord).order_by(AlertRecord.time.desc(), AlertRecord.id)
    if status in ALERT_STATUSES:
        query = query.where(AlertRecord.status == status)
    visible = (
        alert
        for alert in session.scalars(query.execution_options(yield_per=limit))
        if _covers(principal, alert.subscription_id, alert.resource_group, alert.cluster_name)
    )
    return list(itertools.islice(visible, limit))


def visible_alert(session: Session, principal: Principal, alert_id: str) -> AlertRecord | None:
    """The alert `alert_id` if it exists in the principal's scope."""
    alert = session.get(AlertRecord, alert_id)
    if alert is None or not _covers(
        principal, alert.subscription_id, alert.resource_group, alert.cluster_name
    ):
        return None
    return alert


def attestation_record(session: Session, record_id: int) -> AttestationRecord | None:
    """The attestation record with id `record_id`; check its pool with `visible_pool` before showing it."""
    return session.get(AttestationRecord, record_id)


def alert_places(
    session: Session, alerts: Iterable[AlertRecord]
) -> dict[tuple[str, str, str, str], tuple[int, int | None]]:
    """The cluster row id and the pool row id (None once the pool is gone) the `alerts` are about, by their
    (subscription, resource group, cluster name, pool name); alerts of a deleted cluster are missing."""
    wanted = {(a.subscription_id, a.resource_group, a.cluster_name, a.pool_name) for a in alerts}
    clusters = {(sub, group, name) for sub, group, name, _ in wanted}
    places: dict[tuple[str, str, str, str], tuple[int, int | None]] = {}
    for cluster in session.scalars(
        select(ManagedCluster).where(ManagedCluster.name.in_({name for _, _, name in clusters}))
    ):
        if (cluster.subscription_id, cluster.resource_group, cluster.name) not in clusters:
            continue
        pools = {pool.name: pool.id for pool in cluster.agent_pools}
        for sub, group, name, pool_name in wanted:
            if (sub, group, name) == (cluster.subscription_id, cluster.resource_group, cluster.name):
                places[(sub, group, name, pool_name)] = (cluster.id, pools.get(pool_name))
    return places


def fleet_attested(
    session: Session, pool_ids: Iterable[int], bucket_ends: Sequence[datetime]
) -> list[tuple[int, int]]:
    """(attested, total) at each of `bucket_ends`: of the nodes the pools hold now that had been attested by
    then, how many passed their latest attestation by then (by time, then record id).

    Counted in the database: a node's latest record at a bucket's end is one seek in the
    ix_attestations_node_time index, the verdicts are counted per bucket; at most three rows per bucket
    (passed, failed, not attested yet) come back, however many attestations the window holds."""
    pool_ids = list(pool_ids)
    if not pool_ids or not bucket_ends:
        return [(0, 0)] * len(bucket_ends)
    ends = union_all(
        *(
            select(literal(number).label("number"), literal(end, UtcDateTime).label("bucket_end"))
            for number, end in enumerate(bucket_ends)
        )
    ).subquery("ends")
    record = AttestationRecord
    latest_ok = (
        select(record.ok)
        .where(
            record.pool_id == Node.pool_id, record.node_name == Node.name, record.time <= ends.c.bucket_end
        )
        .order_by(record.time.desc(), record.id.desc())
        .limit(1)
        .correlate(Node, ends)
        .scalar_subquery()
    )
    states = (
        select(ends.c.number, latest_ok.label("ok"))
        .select_from(Node)
        .join(ends, true())
        .where(Node.pool_id.in_(pool_ids))
        .subquery("states")
    )
    attested: dict[int, int] = {}
    total: dict[int, int] = {}
    # grouped by the verdict itself (the seek is evaluated once per node and bucket, not per aggregate)
    for number, ok, nodes in session.execute(
        select(states.c.number, states.c.ok, func.count()).group_by(states.c.number, states.c.ok)
    ):
        if ok is not None:
            total[number] = total.get(number, 0) + nodes
            attested[number] = attested.get(number, 0) + (nodes if ok else 0)
    return [(attested.get(number, 0), total.get(number, 0)) for number in range(len(bucket_ends))]


def current_vm_policy(session: Session, record: AttestationRecord) -> str | None:
    """The predicted policy (JSON) `record` was checked against, when its node still runs the VM it was
    taken on (no provisioning attestation of the node came after it): `Node.attestation_policy`; else None."""
    node = session.scalar(select(Node).where(Node.pool_id == record.pool_id, Node.name == record.node_name))
    if node is None:
        return None
    reprovisioned = session.scalar(
        select(AttestationRecord.id).where(
            AttestationRecord.pool_id == record.pool_id,
            AttestationRecord.node_name == record.node_name,
            AttestationRecord.trigger == Trigger.PROVISIONING,
            AttestationRecord.id > record.id,
        )
    )
    return node.attestation_policy if reprovisioned is None else None
