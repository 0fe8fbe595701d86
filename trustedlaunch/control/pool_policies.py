"""A pool's attestation policy: the one of its node image version and Secure Boot setting, kept in the store
(control.image_policies); the verifier API finds it from a pool's ARM id (`poolId`)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from trustedlaunch.control.errors import ArmError, bad_request
from trustedlaunch.control.resource_id import AGENT_POOLS, CONTAINER_SERVICE, MANAGED_CLUSTERS, ResourceId
from trustedlaunch.control.resources import ResourcePath, get_pool
from trustedlaunch.control.tokens import Principal, authorize_pool_reference
from trustedlaunch.store.models import ImagePolicy


@dataclass(frozen=True)
class PoolPolicy:
    """The policy document of a pool (Policy.to_json()), with the pool's id, name and node image version."""

    pool_id: int
    pool_name: str
    node_image_version: str
    document: str


def pool_policy(session: Session, pool_id: object, principal: Principal) -> PoolPolicy:
    """The policy the nodes of the pool with ARM id `pool_id` must pass (its image, its Secure Boot setting),
    for a verify request of `principal`.

    Raises a 400 ArmError for a malformed id or a pool without vTPM (nothing to attest), 403 for a pool
    outside the principal's scope, 404 for an unknown pool, 409 while the reconciler has not derived the
    policy yet."""
    if (
        not isinstance(pool_id, str)
        or (resource_id := ResourceId.parse(pool_id)) is None
        or resource_id.resource_group is None
        or (names := resource_id.names(CONTAINER_SERVICE, MANAGED_CLUSTERS, AGENT_POOLS)) is None
    ):
        raise bad_request(
            "InvalidPoolId",
            f"poolId: expected an agent pool's resource id, /subscriptions/{{id}}/resourceGroups/{{group}}"
            f"/providers/Microsoft.ContainerService/managedClusters/{{cluster}}/agentPools/{{pool}}; got "
            f"{pool_id!r}",
            "poolId",
        )
    authorize_pool_reference(principal, pool_id)
    cluster_name, pool_name = names
    path = ResourcePath(resource_id.subscription_id, resource_id.resource_group, cluster_name)
    pool = get_pool(session, path, pool_name)
    if not pool.enable_vtpm:
        raise bad_request(
            "AttestationNotSupported",
            f"Agent pool '{pool.name}' has vTPM disabled: its nodes have no TPM and cannot be attested. "
            "Enable vTPM on the pool (--enable-vtpm) to attest its nodes.",
            "poolId",
        )
    row = session.get(ImagePolicy, (pool.node_image_version, pool.enable_secure_boot))
    if row is None:
        raise ArmError(
            409,
            "AttestationPolicyNotReady",
            f"Agent pool '{pool.name}' has no attestation policy yet: it is derived from node image "
            f"{pool.node_image_version} when the pool's first node boots with Secure Boot "
            f"{'on' if pool.enable_secure_boot else 'off'}. Retry once a node of the pool is Ready, or send "
            "the policy document instead of poolId.",
            "poolId",
        )
    return PoolPolicy(pool.id, pool.name, pool.node_image_version, row.policy)
