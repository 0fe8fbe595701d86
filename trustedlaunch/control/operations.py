"""Long-running operations: recorded InProgress by PUT/DELETE and finished by the reconciler."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from trustedlaunch.control.errors import ArmError, bad_request, not_found
from trustedlaunch.control.resource_id import (
    AGENT_POOLS,
    CONTAINER_SERVICE,
    MANAGED_CLUSTERS,
    ResourceId,
    stored_name,
)
from trustedlaunch.store.models import AgentPool, ManagedCluster, Node, Operation, utc_now
from trustedlaunch.store.vocabulary import TERMINAL_OPERATION_STATUSES, OperationStatus, ProvisioningState

RECONCILER_NOTE = (
    "Recorded; the operation stays InProgress until the node reconciler drives the nodes to the desired "
    "state and finishes it."
)


def start_operation(
    session: Session, subscription_id: str, location: str, resource_id: str, kind: str
) -> Operation:
    """Record a new InProgress operation on `resource_id` (kind: Create, Update or Delete)."""
    operation = Operation(
        id=str(uuid.uuid4()),
        subscription_id=subscription_id,
        location=location,
        resource_id=resource_id,
        kind=kind,
        status=OperationStatus.IN_PROGRESS,
        note=RECONCILER_NOTE,
        start_time=utc_now(),
    )
    session.add(operation)
    return operation


def start_node_reimage(session: Session, node: Node, reason: str) -> Operation | None:
    """Have Ready `node` reimaged onto its pool's current image for `reason` (recorded on the node: the
    reconciler's plan then treats it as outdated, control.node_plan), through the rolling reimage of an
    Update operation on its pool (drained first, surge per maxSurge), started unless one is in progress on
    the pool or its cluster (that one reimages it), nor for a node an upgrade could not drain and left
    quarantined (undrainableNodeBehavior Cordon: the operator's next operation drains it again; starting
    one here at every renewal would drain it again and again); the operation started, if any.

    Two nodes of a pool found at once (renewals in threads of their own) start one operation: the check and
    the insert happen under the pool's row lock (PostgreSQL), the write lock of SQLite taken by the node's
    update, each held to the caller's commit."""
    node.reimage_reason = reason[:1024]
    if node.quarantined_by_operation is not None:
        return None
    session.flush()
    session.execute(select(AgentPool.id).where(AgentPool.id == node.pool_id).with_for_update())
    pool = node.pool
    if pool_operation_in_progress(session, pool) is not None:
        return None
    cluster = pool.cluster
    cluster_id = ResourceId.cluster(cluster.subscription_id, cluster.resource_group, cluster.name)
    pool_id = cluster_id.child(AGENT_POOLS, pool.name).canonical
    pool.provisioning_state = ProvisioningState.UPDATING
    operation = start_operation(session, cluster.subscription_id, cluster.location, pool_id, "Update")
    operation.note = f"agent pool {pool.name}: reimaging node {node.name}: {reason}"
    return operation


def pool_operation_in_progress(session: Session, pool: AgentPool) -> Operation | None:
    """The InProgress operation on `pool` or, if none, on its cluster (either drives the pool's nodes)."""
    cluster = pool.cluster
    cluster_id = ResourceId.cluster(cluster.subscription_id, cluster.resource_group, cluster.name)
    pool_id = cluster_id.child(AGENT_POOLS, pool.name).canonical
    return in_progress_operation(session, pool_id) or in_progress_operation(session, cluster_id.canonical)


def get_operation(session: Session, subscription_id: str, operation_id: str) -> Operation:
    """The operation, or a 404 ArmError (also when it belongs to another subscription: ids in any case)."""
    operation = session.get(Operation, operation_id)
    if operation is None or ResourceId(operation.subscription_id) != ResourceId(subscription_id):
        raise not_found("OperationNotFound", f"Operation '{operation_id}' does not exist.", "operationId")
    return operation


def in_progress_operation(session: Session, resource_id: str) -> Operation | None:
    """The InProgress operation on exactly `resource_id`, if any."""
    return session.scalar(
        select(Operation).where(
            Operation.resource_id == resource_id, Operation.status == OperationStatus.IN_PROGRESS
        )
    )


def finish_operation(
    session: Session, operation: Operation, status: str, error: ArmError | None = None
) -> None:
    """Finish `operation` (the reconciler's call): the resource's provisioningState becomes `status` (also for
    the pools a cluster operation created or updated); a Succeeded Delete removes the resource."""
    if status not in TERMINAL_OPERATION_STATUSES:
        raise bad_request(
            "InvalidOperationStatus", f"'{status}' is not one of {', '.join(TERMINAL_OPERATION_STATUSES)}."
        )
    operation.status = status
    operation.end_time = utc_now()
    operation.error = error.to_detail() if error else None
    resource = operation_resource(session, operation)
    if resource is None:
        return
    if isinstance(resource, ManagedCluster) and operation.kind == "Delete":
        _finish_group_deletion(session, resource, deleted=status == OperationStatus.SUCCEEDED)
    if status == OperationStatus.SUCCEEDED and operation.kind == "Delete":
        session.delete(resource)
        return
    resource.provisioning_state = status
    if isinstance(resource, ManagedCluster):  # the cluster's operation covers pools without their own
        for pool in resource.agent_pools:
            pool_id = operation.resource_id + f"/{AGENT_POOLS}/{pool.name}"
            if (
                pool.provisioning_state in (ProvisioningState.CREATING, ProvisioningState.UPDATING)
                and in_progress_operation(session, pool_id) is None
            ):
                pool.provisioning_state = status


def _finish_group_deletion(session: Session, cluster: ManagedCluster, deleted: bool) -> None:
    """A Delete of `cluster` ended: when its group is being deleted, remove the group with its last cluster,
    or give the group back (Succeeded) when the cluster's deletion failed, as ARM ends a group's deletion."""
    group = cluster.group
    if group is None or group.provisioning_state != ProvisioningState.DELETING:
        return
    if not deleted:
        group.provisioning_state = ProvisioningState.SUCCEEDED
        return
    others = session.scalar(
        select(func.count())
        .select_from(ManagedCluster)
        .where(
            ManagedCluster.subscription_id == cluster.subscription_id,
            ManagedCluster.resource_group == cluster.resource_group,
            ManagedCluster.id != cluster.id,
        )
    )
    if not others:
        session.delete(group)


def operation_resource_id(session: Session, operation: Operation) -> str:
    """The id of the resource `operation` acts on as ARM answers it (ResourceId.of), or as stored once the
    resource is gone."""
    resource = operation_resource(session, operation)
    return operation.resource_id if resource is None else ResourceId.of(resource).path()


def operation_resource(session: Session, operation: Operation) -> ManagedCluster | AgentPool | None:
    """The cluster or pool `operation` acts on, or None if it no longer exists."""
    resource_id = ResourceId.parse(operation.resource_id)
    if resource_id is None or resource_id.resource_group is None:
        return None
    names = resource_id.names(CONTAINER_SERVICE, MANAGED_CLUSTERS) or resource_id.names(
        CONTAINER_SERVICE, MANAGED_CLUSTERS, AGENT_POOLS
    )
    if names is None:
        return None
    cluster = session.scalar(
        select(ManagedCluster).where(
            ManagedCluster.subscription_id == stored_name(resource_id.subscription_id),
            ManagedCluster.resource_group == stored_name(resource_id.resource_group),
            ManagedCluster.name == stored_name(names[0]),
        )
    )
    if cluster is None or len(names) == 1:
        return cluster
    return next((pool for pool in cluster.agent_pools if pool.name == stored_name(names[1])), None)
