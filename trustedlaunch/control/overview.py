"""What the dashboard shows, read for one signed-in principal: clusters with their pools and nodes, each
node's latest attestation, a node's history, alerts and one attestation. A principal scoped to a
subscription or resource group gets only the rows inside its scope; a row outside it reads as missing."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from trustedlaunch.control.resources import cluster_resource_id
from trustedlaunch.control.tokens import Principal
from trustedlaunch.store.models import AgentPool, AlertRecord, AttestationRecord, ManagedCluster, Node
from trustedlaunch.store.vocabulary import OPEN_ALERT_STATUSES, AlertStatus

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


def visible_cluster(session: Session, principal: Principal, cluster_id: int) -> ManagedCluster | None:
    """The cluster with row id `cluster_id` if it exists in the principal's scope."""
    cluster = session.get(ManagedCluster, cluster_id)
    return cluster if cluster is not None and _sees(principal, cluster) else None


def visible_pool(session: Session, principal: Principal, pool_id: int) -> AgentPool | None:
    """The agent pool with row id `pool_id` if its cluster is in the principal's scope."""
    pool = session.get(AgentPool, pool_id)
    return pool if pool is not None and _sees(principal, pool.cluster) else None


def latest_attestation_ids(session: Session, pool_id: int) -> dict[str, int]:
    """The id of each node's latest attestation record in a pool, by node name."""
    rows = session.execute(
        select(AttestationRecord.node_name, func.max(AttestationRecord.id))
        .where(AttestationRecord.pool_id == pool_id)
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
