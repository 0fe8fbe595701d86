"""Resource groups (`Microsoft.Resources/resourceGroups`): create/update, get, list and delete, which deletes
every managed cluster in the group (each with its own long-running Delete operation).

As ARM, a request below a group that does not exist (a cluster's PUT too) answers 404 ResourceGroupNotFound
(get_group); stores from before resource groups keep working: migration 0018 made a group for each group
their clusters were in."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from trustedlaunch.control import limits
from trustedlaunch.control.errors import bad_request, conflict, not_found
from trustedlaunch.control.limits import RESOURCE_GROUP, canonical_subscription_id
from trustedlaunch.control.resource_id import stored_name
from trustedlaunch.control.resources import ResourcePath, delete_cluster, list_clusters
from trustedlaunch.store.models import Operation, ResourceGroup
from trustedlaunch.store.vocabulary import ProvisioningState


def _key(subscription_id: str, name: str) -> tuple[str, str]:
    if not RESOURCE_GROUP.match(name):
        raise bad_request(
            "InvalidResourceGroup",
            f"Resource group name '{name}' is invalid: 1-90 letters, digits, '-', '_', '.', '(' or ')', not "
            "ending with '.'.",
            "resourceGroupName",
        )
    return canonical_subscription_id(subscription_id), stored_name(name)


def find_group(session: Session, subscription_id: str, name: str) -> ResourceGroup | None:
    """The resource group, or None."""
    return session.get(ResourceGroup, _key(subscription_id, name))


def lock_group(session: Session, subscription_id: str, name: str) -> ResourceGroup | None:
    """The resource group (or None), read under a lock held to the caller's commit: the writes below a group
    (its clusters' and pools' PUTs) and its delete take it before anything else, so that no cluster is
    created in a group being deleted. PostgreSQL locks the group's row (FOR UPDATE); SQLite locks no row and
    a transaction takes the database's write lock only at its first write, so the row is first written
    unchanged."""
    subscription, stored = _key(subscription_id, name)
    where = (ResourceGroup.subscription_id == subscription, ResourceGroup.name == stored)
    if session.get_bind().dialect.name == "sqlite":
        unchanged = (
            update(ResourceGroup).where(*where).values(provisioning_state=ResourceGroup.provisioning_state)
        )
        session.execute(unchanged.execution_options(synchronize_session=False))
    locked = select(ResourceGroup).where(*where).with_for_update()
    return session.scalar(locked.execution_options(populate_existing=True))


def get_group(session: Session, subscription_id: str, name: str, write: bool = False) -> ResourceGroup:
    """The resource group, or 404 ResourceGroupNotFound; for a `write` below it (called first in the write's
    transaction), the group locked to the commit (lock_group) and 409 ResourceGroupBeingDeleted while it is
    being deleted (as ARM)."""
    group = (
        lock_group(session, subscription_id, name) if write else find_group(session, subscription_id, name)
    )
    if group is None:
        raise not_found(
            "ResourceGroupNotFound", f"Resource group '{name}' could not be found.", "resourceGroupName"
        )
    if write and group.provisioning_state == ProvisioningState.DELETING:
        raise conflict(
            "ResourceGroupBeingDeleted",
            f"The resource group '{group.display_name}' is in deprovisioning state and cannot perform this "
            "operation.",
            "resourceGroupName",
        )
    return group


def put_group(
    session: Session, subscription_id: str, name: str, location: str, tags: dict[str, str] | None
) -> tuple[ResourceGroup, bool]:
    """Create or update a group (its location cannot change, as ARM); (group, created)."""
    where = limits.LocationRequest(location, "Microsoft.Resources/resourceGroups")
    limits.raise_violations(limits.check_location(where))
    location = limits.normalize_location(location)
    group = find_group(session, subscription_id, name)
    if group is not None:
        get_group(session, subscription_id, name, write=True)
    if group is None:
        subscription, stored = _key(subscription_id, name)
        group = ResourceGroup(
            subscription_id=subscription, name=stored, display_name=name, location=location, tags=tags or {}
        )
        session.add(group)
        return group, True
    if group.location != location:  # ARM: 409 Conflict
        raise conflict(
            "InvalidResourceGroupLocation",
            f"Invalid resource group location '{location}'. The Resource group already exists in location "
            f"'{group.location}' in resource group '{group.display_name}'.",
            "location",
        )
    if tags is not None:
        group.tags = dict(tags)
    return group, False


def list_groups(session: Session, subscription_id: str) -> list[ResourceGroup]:
    """The subscription's resource groups by name."""
    subscription = canonical_subscription_id(subscription_id)
    query = select(ResourceGroup).where(ResourceGroup.subscription_id == subscription)
    return list(session.scalars(query.order_by(ResourceGroup.name)))


def delete_group(session: Session, subscription_id: str, name: str) -> list[Operation] | None:
    """Delete the group: at once when it holds no cluster, else it stays Deleting while each of its clusters
    is deleted (operations.finish_operation removes it with the last one); the clusters' Delete operations
    (None if the group does not exist). The group is locked first (lock_group): a cluster PUT in it either
    committed before (its cluster is deleted too) or waits and is refused."""
    group = lock_group(session, subscription_id, name)
    if group is None:
        return None
    operations = []
    for cluster in list_clusters(session, subscription_id, name):
        operation = delete_cluster(session, ResourcePath(subscription_id, name, cluster.display_name))
        if operation is not None:
            operations.append(operation)
    if operations:
        group.provisioning_state = ProvisioningState.DELETING
    else:
        session.delete(group)
    return operations
