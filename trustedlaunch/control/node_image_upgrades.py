"""Node image upgrades of an agent pool, as AKS: its upgrade profile (`GET .../upgradeProfiles/default`: the
Kubernetes versions it may move to and latestNodeImageVersion, the newest node image version of its flavour,
with the packages it is built from; the API's views render it)
and `POST .../upgradeNodeImageVersion`, which moves the pool to that version; the reconciler then rolls its
nodes onto it (drained first, surge per maxSurge, soak: an Update's rolling reimage). Nodes not reimaged yet
keep attesting against the policy of the build they booted (nodes.attestation_policy)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from trustedlaunch.control import resources
from trustedlaunch.control.errors import conflict
from trustedlaunch.control.limits import boots_here, kubernetes_upgrades
from trustedlaunch.control.node_image_versions import ImageBuild, latest_version, store_version, stored_builds
from trustedlaunch.control.node_images import find_image
from trustedlaunch.control.operations import start_operation
from trustedlaunch.control.resources import ResourcePath, pool_resource_id
from trustedlaunch.store.models import AgentPool, Operation
from trustedlaunch.store.vocabulary import ProvisioningState

UPGRADE_KIND = "Update"  # an Update operation: the reconciler's rolling reimage of outdated nodes


@dataclass(frozen=True)
class UpgradeProfile:
    """What a pool may be upgraded to: the installed Kubernetes versions newer than its own, the newest node
    image version of its flavour and that version's build record (None for a pool whose image is not a
    Linux version built here)."""

    pool: AgentPool
    kubernetes_upgrades: list[str]
    latest_node_image_version: str
    latest_build: ImageBuild | None


def _newest(session: Session, pool: AgentPool) -> tuple[str, ImageBuild | None]:
    """The latest node image version of `pool`'s flavour (trusted launch capable or not, as its current
    image: node_image_versions.latest_version, as a new pool gets) and its build; a pool whose image is not a
    Linux version (e.g. a Windows pool an earlier release stored) keeps its own, without a build."""
    current = find_image(pool.node_image_version, session)
    if not boots_here(pool.os_type) or current is None or not boots_here(current.os_type):
        return pool.node_image_version, None
    latest = latest_version(session, trusted_launch_capable=current.trusted_launch_capable)
    return (pool.node_image_version, None) if latest is None else latest


def upgrade_profile(session: Session, path: ResourcePath, pool_name: str) -> UpgradeProfile:
    """The pool's upgrade profile (404 for a pool that does not exist); reads only (the latest version is
    stored by the upgrade that moves a pool to it)."""
    pool = resources.get_pool(session, path, pool_name)
    installed = resources.kubernetes_versions(path.subscription_id, pool.cluster.location)
    latest, build = _newest(session, pool)
    return UpgradeProfile(pool, kubernetes_upgrades(pool.orchestrator_version, installed), latest, build)


def upgrade_node_image_version(
    session: Session, path: ResourcePath, pool_name: str
) -> tuple[AgentPool, Operation]:
    """Start moving the pool to its latest node image version (upgrade_profile; the pool's provisioningState
    is UpgradingNodeImageVersion until its nodes run it); a pool already on it gets an operation that ends at
    once, as AKS does. 409 while the pool or its cluster has an operation in progress or is being deleted;
    never a downgrade (by the versions' packages)."""
    pool = resources.get_pool(session, path, pool_name)
    cluster = pool.cluster
    pool_id = pool_resource_id(cluster, pool.name)
    if ProvisioningState.DELETING in (cluster.provisioning_state, pool.provisioning_state):
        raise conflict(
            "OperationNotAllowed",
            f"Agent pool '{pool.name}' or its cluster is being deleted; no other operation is allowed.",
        )
    resources.refuse_if_busy(session, cluster, [pool])
    latest, build = _newest(session, pool)
    current = stored_builds(session).get(pool.node_image_version)
    if build is not None and (current is None or current.order() <= build.order()):  # never a downgrade
        store_version(session, build)
        pool.node_image_version = latest
    pool.provisioning_state = ProvisioningState.UPGRADING_NODE_IMAGE_VERSION
    operation = start_operation(session, path.subscription_id, cluster.location, pool_id, UPGRADE_KIND)
    return pool, operation
