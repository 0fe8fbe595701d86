"""Node image upgrades of an agent pool, as AKS: its upgrade profile (`GET .../upgradeProfiles/default`: the
Kubernetes versions it may move to and latestNodeImageVersion, the newest node image version of its flavour)
and `POST .../upgradeNodeImageVersion`, which moves the pool to that version; the reconciler then rolls its
nodes onto it (drained first, surge per maxSurge, soak: an Update's rolling reimage). Nodes not reimaged yet
keep attesting against the policy of the build they booted (nodes.attestation_policy)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from trustedlaunch.control import resources
from trustedlaunch.control.boot_packages import BootPackageError
from trustedlaunch.control.errors import conflict
from trustedlaunch.control.limits import boots_here
from trustedlaunch.control.node_image_versions import ImageBuild, image_versions, register_build, release_key
from trustedlaunch.control.node_images import find_image
from trustedlaunch.control.operations import in_progress_operation, start_operation
from trustedlaunch.control.resource_id import ResourceId
from trustedlaunch.control.resources import ResourcePath, pool_resource_id
from trustedlaunch.node.image import NodeImageError
from trustedlaunch.store.models import AgentPool, NodeImage, Operation
from trustedlaunch.store.vocabulary import ProvisioningState

UPGRADE_PROFILE_TYPE = "Microsoft.ContainerService/managedClusters/agentPools/upgradeProfiles"
UPGRADE_KIND = "Update"  # an Update operation: the reconciler's rolling reimage of outdated nodes


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _newest(session: Session, pool: AgentPool) -> tuple[str, ImageBuild | None]:
    current = find_image(pool.node_image_version, session)
    if not boots_here(pool.os_type) or current is None or not boots_here(current.os_type):
        return pool.node_image_version, None
    try:
        newest = image_versions(session)[0][1]
    except (BootPackageError, NodeImageError):  # no boot chain installed here: no newer version known
        return pool.node_image_version, None
    return newest.version(trusted_launch=current.trusted_launch_capable), newest


def latest_node_image_version(session: Session, pool: AgentPool) -> str:
    """The newest node image version of `pool`'s flavour (trusted launch capable or not, as its current
    image); a pool whose image is not a Linux version (e.g. a Windows pool an earlier release stored) keeps
    its own."""
    return _newest(session, pool)[0]


def _release(version: str) -> tuple[int, int, int]:
    return release_key(version.rsplit("-", 1)[-1])


def upgrade_profile(session: Session, path: ResourcePath, pool_name: str) -> dict[str, object]:
    """The pool's AgentPoolUpgradeProfile (404 for a pool that does not exist)."""
    pool = resources.get_pool(session, path, pool_name)
    installed = resources.kubernetes_versions(path.subscription_id, pool.cluster.location)
    upgrades = [
        {"kubernetesVersion": version, "isPreview": False}
        for version in installed
        if _version_key(version) > _version_key(pool.orchestrator_version)
    ]
    return {
        "id": ResourceId.of(pool).child("upgradeProfiles", "default").path(),
        "name": "default",
        "type": UPGRADE_PROFILE_TYPE,
        "properties": {
            "kubernetesVersion": pool.orchestrator_version,
            "osType": pool.os_type,
            "upgrades": upgrades,
            "latestNodeImageVersion": latest_node_image_version(session, pool),
        },
    }


def upgrade_node_image_version(
    session: Session, path: ResourcePath, pool_name: str
) -> tuple[AgentPool, Operation]:
    """Start moving the pool to latest_node_image_version (its provisioningState UpgradingNodeImageVersion
    until its nodes run it); a pool already on it gets an operation that ends at once, as AKS does. 409 while
    the pool or its cluster has an operation in progress or is being deleted; never a downgrade."""
    pool = resources.get_pool(session, path, pool_name)
    cluster = pool.cluster
    pool_id = pool_resource_id(cluster, pool.name)
    cluster_id = ResourceId.cluster(cluster.subscription_id, cluster.resource_group, cluster.name).canonical
    if ProvisioningState.DELETING in (cluster.provisioning_state, pool.provisioning_state):
        raise conflict(
            "OperationNotAllowed",
            f"Agent pool '{pool.name}' or its cluster is being deleted; no other operation is allowed.",
        )
    for resource_id, what in ((pool_id, f"Agent pool '{pool.name}'"), (cluster_id, "Its managed cluster")):
        running = in_progress_operation(session, resource_id)
        if running is not None:
            raise conflict(
                "OperationNotAllowed",
                f"{what} has an operation in progress ({running.kind}, id {running.id}); wait for it to "
                "finish (tl aks nodepool show / the Azure-AsyncOperation URL).",
            )
    latest, build = _newest(session, pool)
    if build is not None and session.get(NodeImage, latest) is None:  # the host's chain after an apt upgrade
        register_build(session, build)
        session.flush()
    if _release(latest) >= _release(pool.node_image_version):  # never a downgrade
        pool.node_image_version = latest
    pool.provisioning_state = ProvisioningState.UPGRADING_NODE_IMAGE_VERSION
    operation = start_operation(session, path.subscription_id, cluster.location, pool_id, UPGRADE_KIND)
    return pool, operation
