"""Managed clusters and agent pools: create/update/get/list/delete with every limitation checked first.

PUT and DELETE record a long-running operation (see operations.py) and leave the resource in Creating,
Updating or Deleting until the reconciler finishes that operation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from typing import TypeVar

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session, object_session

from trustedlaunch.control import limits
from trustedlaunch.control.errors import ArmError, bad_request, conflict, not_found
from trustedlaunch.control.features import trusted_launch_registered
from trustedlaunch.control.limits import (
    CLUSTER_NAME,
    DEFAULT_KUBERNETES_VERSION,
    RESOURCE_GROUP,
    canonical_subscription_id,
)
from trustedlaunch.control.limits import SUBSCRIPTION_ID as SUBSCRIPTION_ID  # re-exported: the ARM name rules
from trustedlaunch.control.node_image_versions import ImageBuild, newest_build, store_version
from trustedlaunch.control.node_images import find_image, select_image
from trustedlaunch.control.operations import in_progress_operation, start_operation
from trustedlaunch.control.resource_id import AGENT_POOLS, CONTAINER_SERVICE, ResourceId, stored_name
from trustedlaunch.control.system_data import tenant_id
from trustedlaunch.control.vm_sizes import find_vm_size
from trustedlaunch.store.models import AgentPool, ManagedCluster, Node, Operation, utc_now
from trustedlaunch.store.vocabulary import OperationStatus, ProvisioningState
from trustedlaunch.store.vocabulary import UndrainableNodeBehavior as UndrainableNodeBehavior  # for the API

PROVIDER = CONTAINER_SERVICE
DEFAULT_VM_SIZE = "Standard_DS2_v2"
DEFAULT_NODE_COUNT = 3
DEFAULT_OS_DISK_SIZE_GB = 128
DEFAULT_OS_SKU = {"Linux": "Ubuntu", "Windows": "Windows2022"}  # as AKS (a Windows pool is then refused)


@dataclass(frozen=True)
class ResourcePath:
    """Where a cluster lives: subscription (lowercase), resource group and cluster name (as given), validated.
    Compare clusters by `resource_id` (or `cluster_id`, all lowercase): ARM ids are case-insensitive."""

    subscription_id: str
    resource_group: str
    cluster_name: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "subscription_id", canonical_subscription_id(self.subscription_id))
        if not RESOURCE_GROUP.match(self.resource_group):
            raise bad_request(
                "InvalidResourceGroup",
                f"Resource group name '{self.resource_group}' is invalid: 1-90 letters, digits, '-', '_', "
                "'.', '(' or ')', not ending with '.'.",
                "resourceGroupName",
            )
        if not CLUSTER_NAME.match(self.cluster_name):
            raise bad_request(
                "InvalidResourceName",
                f"Cluster name '{self.cluster_name}' is invalid: 1-63 letters, digits, '-' or '_', starting "
                "and ending with a letter or digit.",
                "resourceName",
            )

    @property
    def resource_id(self) -> ResourceId:
        """The ARM resource id of the cluster."""
        return ResourceId.cluster(self.subscription_id, self.resource_group, self.cluster_name)

    @property
    def cluster_id(self) -> str:
        """The ARM resource id of the cluster as stored (lowercase group and name)."""
        return self.resource_id.canonical


def cluster_resource_id(subscription_id: str, resource_group: str, name: str) -> str:
    """ARM id of a managed cluster, as stored."""
    return ResourceId.cluster(subscription_id, resource_group, name).canonical


def pool_resource_id(cluster: ManagedCluster, pool_name: str) -> str:
    """ARM id of an agent pool, as stored."""
    cluster_id = ResourceId.cluster(cluster.subscription_id, cluster.resource_group, cluster.name)
    return cluster_id.child(AGENT_POOLS, pool_name).canonical


@dataclass(frozen=True)
class PoolSpec:
    """A requested agent pool; None means "default" on create and "keep" on update."""

    name: str
    count: int | None = None
    vm_size: str | None = None
    os_type: str | None = None
    os_sku: str | None = None
    pool_type: str | None = None
    mode: str | None = None
    enable_fips: bool | None = None
    orchestrator_version: str | None = None
    os_disk_type: str | None = None
    os_disk_size_gb: int | None = None
    gpu_driver: str | None = None
    enable_secure_boot: bool | None = None
    enable_vtpm: bool | None = None
    max_surge: str | None = None  # upgradeSettings.maxSurge: "1" or "33%"
    drain_timeout_in_minutes: int | None = None  # upgradeSettings.drainTimeoutInMinutes
    node_soak_duration_in_minutes: int | None = None  # upgradeSettings.nodeSoakDurationInMinutes
    undrainable_node_behavior: UndrainableNodeBehavior | None = (
        None  # upgradeSettings.undrainableNodeBehavior
    )
    node_labels: dict[str, str] | None = None  # nodeLabels; on update, replaces the pool's (as AKS)
    node_taints: list[str] | None = None  # nodeTaints ("key=value:Effect"); on update, replaces the pool's
    max_pods: int | None = None  # maxPods; None: DEFAULT_MAX_PODS on create, kept on update
    tags: dict[str, str] | None = None  # properties.tags; on update, replaces the pool's (None: kept)


def _labels(labels: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((labels or {}).items()))


@dataclass(frozen=True)
class ClusterSpec:
    """A requested managed cluster."""

    location: str
    kubernetes_version: str | None = None
    dns_prefix: str | None = None
    ssh_public_key: str | None = None
    virtual_nodes: bool | None = None
    tags: dict[str, str] | None = None
    agent_pools: list[PoolSpec] = field(default_factory=list)


def _request_for_new_pool(
    spec: PoolSpec, cluster_version: str, virtual_nodes: bool, default_mode: str = "User"
) -> limits.PoolRequest:
    os_type = spec.os_type or "Linux"
    vm_size = spec.vm_size or DEFAULT_VM_SIZE
    enable_secure_boot = bool(spec.enable_secure_boot)
    enable_vtpm = bool(spec.enable_vtpm)
    disk_size = spec.os_disk_size_gb or DEFAULT_OS_DISK_SIZE_GB
    os_disk_type = spec.os_disk_type
    if os_disk_type is None:  # as AKS: ephemeral when the size can hold the OS disk, managed otherwise
        size = find_vm_size(vm_size)
        needed = disk_size + (limits.VMGS_RESERVATION_GIB if enable_secure_boot or enable_vtpm else 0)
        os_disk_type = (
            "Ephemeral" if size is not None and size.ephemeral_capacity_gib >= needed else "Managed"
        )
    return limits.PoolRequest(
        name=spec.name,
        os_type=os_type,
        os_sku=spec.os_sku or DEFAULT_OS_SKU.get(os_type, "Ubuntu"),
        vm_size=vm_size,
        pool_type=spec.pool_type or "VirtualMachineScaleSets",
        orchestrator_version=spec.orchestrator_version or cluster_version,
        cluster_version=cluster_version,
        enable_fips=bool(spec.enable_fips),
        os_disk_type=os_disk_type,
        os_disk_size_gb=disk_size,
        gpu_driver=spec.gpu_driver,
        enable_secure_boot=enable_secure_boot,
        enable_vtpm=enable_vtpm,
        mode=spec.mode or default_mode,
        count=DEFAULT_NODE_COUNT if spec.count is None else spec.count,
        max_surge=spec.max_surge,
        drain_timeout_in_minutes=spec.drain_timeout_in_minutes,
        node_soak_duration_in_minutes=spec.node_soak_duration_in_minutes,
        undrainable_node_behavior=spec.undrainable_node_behavior,
        node_labels=_labels(spec.node_labels),
        node_taints=tuple(spec.node_taints or ()),
        max_pods=limits.DEFAULT_MAX_PODS if spec.max_pods is None else spec.max_pods,
        virtual_nodes=virtual_nodes,
    )


def pool_count_after(cluster: ManagedCluster, names: list[str]) -> int:
    """How many pools `cluster` has once a PUT naming the pools `names` is done: those not being deleted and
    the named ones; the one count the maxAgentPools limit reads, for a cluster PUT and a pool PUT alike."""
    kept = {
        pool.name for pool in cluster.agent_pools if pool.provisioning_state != ProvisioningState.DELETING
    }
    return len(kept | {stored_name(name) for name in names})


def _system_pools_besides(cluster: ManagedCluster, name: str) -> int:
    return sum(
        1
        for pool in cluster.agent_pools
        if pool.mode == "System"
        and pool.name != stored_name(name)
        and pool.provisioning_state != ProvisioningState.DELETING
    )


def _request_for_pool(pool: AgentPool, virtual_nodes: bool) -> limits.PoolRequest:
    return limits.PoolRequest(
        cluster_version=pool.cluster.kubernetes_version,
        name=pool.name,
        os_type=pool.os_type,
        os_sku=pool.os_sku,
        vm_size=pool.vm_size,
        pool_type=pool.pool_type,
        orchestrator_version=pool.orchestrator_version,
        enable_fips=pool.enable_fips,
        os_disk_type=pool.os_disk_type,
        os_disk_size_gb=pool.os_disk_size_gb,
        gpu_driver=pool.gpu_driver,
        enable_secure_boot=pool.enable_secure_boot,
        enable_vtpm=pool.enable_vtpm,
        mode=pool.mode,
        count=pool.count,
        max_surge=pool.max_surge,
        drain_timeout_in_minutes=pool.drain_timeout_in_minutes,
        node_soak_duration_in_minutes=pool.node_soak_duration_in_minutes,
        undrainable_node_behavior=pool.undrainable_node_behavior,
        node_labels=_labels(pool.node_labels),
        node_taints=tuple(pool.node_taints or ()),
        max_pods=limits.DEFAULT_MAX_PODS if pool.max_pods is None else pool.max_pods,
        virtual_nodes=virtual_nodes,
        current_image=find_image(pool.node_image_version, object_session(pool)),
    )


def _version_violations(request: limits.PoolRequest, location: str, prefix: str = "") -> list[ArmError]:
    """The version rules of a pool that chooses its Kubernetes version (a new pool, or a changed version):
    a version that is not installed is refused (AgentPoolK8sVersionNotSupported)."""
    if request.previous is not None and request.orchestrator_version == request.previous.orchestrator_version:
        return []
    return limits.check_version(
        limits.VersionRequest(request.orchestrator_version, location, request.name), prefix
    )


T = TypeVar("T")


def _pick(value: T | None, kept: T) -> T:
    return kept if value is None else value


def _merge(current: limits.PoolRequest, spec: PoolSpec) -> limits.PoolRequest:
    return replace(
        current,
        os_type=_pick(spec.os_type, current.os_type),
        os_sku=_pick(spec.os_sku, current.os_sku),
        vm_size=_pick(spec.vm_size, current.vm_size),
        pool_type=_pick(spec.pool_type, current.pool_type),
        orchestrator_version=_pick(spec.orchestrator_version, current.orchestrator_version),
        enable_fips=_pick(spec.enable_fips, current.enable_fips),
        os_disk_type=_pick(spec.os_disk_type, current.os_disk_type),
        os_disk_size_gb=_pick(spec.os_disk_size_gb, current.os_disk_size_gb),
        gpu_driver=_pick(spec.gpu_driver, current.gpu_driver),
        enable_secure_boot=_pick(spec.enable_secure_boot, current.enable_secure_boot),
        enable_vtpm=_pick(spec.enable_vtpm, current.enable_vtpm),
        mode=_pick(spec.mode, current.mode),
        count=_pick(spec.count, current.count),
        max_surge=_pick(spec.max_surge, current.max_surge),
        drain_timeout_in_minutes=_pick(spec.drain_timeout_in_minutes, current.drain_timeout_in_minutes),
        node_soak_duration_in_minutes=_pick(
            spec.node_soak_duration_in_minutes, current.node_soak_duration_in_minutes
        ),
        undrainable_node_behavior=_pick(spec.undrainable_node_behavior, current.undrainable_node_behavior),
        node_labels=current.node_labels if spec.node_labels is None else _labels(spec.node_labels),
        node_taints=current.node_taints if spec.node_taints is None else tuple(spec.node_taints),
        max_pods=_pick(spec.max_pods, current.max_pods),
        previous=current,
    )


class _NewestBuild:
    """The latest node image build for the new pools of one request: found (dpkg-query) at its first new pool
    only, and stored once (store_version)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.found = False
        self.build: ImageBuild | None = None

    def get(self) -> ImageBuild | None:
        if not self.found:
            self.build, self.found = newest_build(self.session), True
            if self.build is not None:
                store_version(self.session, self.build)
        return self.build


def _new_pool(request: limits.PoolRequest, tl_registered: bool, newest: _NewestBuild) -> AgentPool:
    """A new pool of `request` on the latest node image version (`newest`) of the flavour select_image picks
    (trusted launch capable or not), as AKS: its nodes, surge ones included, boot that version until the
    pool is upgraded."""
    flavour = select_image(request.size, request.enable_fips, trusted_launch_registered=tl_registered)
    build = newest.get()
    version = (
        flavour.version if build is None else build.version(trusted_launch=flavour.trusted_launch_capable)
    )
    return AgentPool(
        name=request.name,
        mode=request.mode,
        count=request.count,
        vm_size=request.size.name if request.size else request.vm_size,
        os_type=request.os_type,
        os_sku=request.os_sku,
        pool_type=request.pool_type,
        enable_fips=request.enable_fips,
        orchestrator_version=request.orchestrator_version,
        os_disk_type=request.os_disk_type,
        os_disk_size_gb=request.os_disk_size_gb,
        gpu_driver=request.gpu_driver,
        enable_secure_boot=request.enable_secure_boot,
        enable_vtpm=request.enable_vtpm,
        node_image_version=version,
        max_surge=request.max_surge,
        drain_timeout_in_minutes=request.drain_timeout_in_minutes,
        node_soak_duration_in_minutes=request.node_soak_duration_in_minutes,
        undrainable_node_behavior=request.undrainable_node_behavior,
        node_labels=dict(request.node_labels),
        node_taints=list(request.node_taints),
        max_pods=request.max_pods,
        provisioning_state=ProvisioningState.CREATING,
    )


def _apply(pool: AgentPool, request: limits.PoolRequest) -> None:
    pool.count = request.count
    pool.mode = request.mode
    pool.orchestrator_version = request.orchestrator_version
    pool.enable_secure_boot = request.enable_secure_boot
    pool.enable_vtpm = request.enable_vtpm
    pool.max_surge = request.max_surge
    pool.drain_timeout_in_minutes = request.drain_timeout_in_minutes
    pool.node_soak_duration_in_minutes = request.node_soak_duration_in_minutes
    pool.undrainable_node_behavior = request.undrainable_node_behavior
    pool.node_labels = dict(request.node_labels)
    pool.node_taints = list(request.node_taints)
    pool.provisioning_state = ProvisioningState.UPDATING
    pool.updated_at = utc_now()


def _set_tags(pool: AgentPool, spec: PoolSpec) -> None:
    """The pool's tags as `spec` asks: replaced when given, kept when not (ARM tags touch no node)."""
    if spec.tags is not None:
        pool.tags = dict(spec.tags)


def find_cluster(session: Session, path: ResourcePath) -> ManagedCluster | None:
    """The cluster at `path`, or None."""
    return session.scalar(
        select(ManagedCluster).where(
            ManagedCluster.subscription_id == path.subscription_id,
            ManagedCluster.resource_group == stored_name(path.resource_group),
            ManagedCluster.name == stored_name(path.cluster_name),
        )
    )


def get_cluster(session: Session, path: ResourcePath) -> ManagedCluster:
    """The cluster at `path`, or a 404 ArmError."""
    cluster = find_cluster(session, path)
    if cluster is None:
        raise not_found(
            "ResourceNotFound",
            f"Managed cluster '{path.cluster_name}' was not found in resource group '{path.resource_group}'.",
            "resourceName",
        )
    return cluster


def list_clusters(
    session: Session, subscription_id: str, resource_group: str | None = None
) -> list[ManagedCluster]:
    """The subscription's clusters, optionally of one resource group."""
    subscription_id = canonical_subscription_id(subscription_id)
    query = select(ManagedCluster).where(ManagedCluster.subscription_id == subscription_id)
    if resource_group is not None:
        query = query.where(ManagedCluster.resource_group == stored_name(resource_group))
    return list(session.scalars(query.order_by(ManagedCluster.resource_group, ManagedCluster.name)))


def kubernetes_versions(subscription_id: str, location: str) -> tuple[str, ...]:
    """The Kubernetes versions clusters and pools may use at `location`: the installed ones, oldest first;
    400 for an invalid subscription id or a location that is not an Azure region."""
    canonical_subscription_id(subscription_id)
    where = limits.LocationRequest(location, f"{PROVIDER}/locations/kubernetesVersions")
    limits.raise_violations(limits.check_location(where))
    return limits.INSTALLED_KUBERNETES_VERSIONS


def _subscription_usage(session: Session, subscription_id: str) -> limits.Usage:
    """What the subscription's clusters and pools hold now (pools being deleted too, until they are gone)."""
    clusters = session.scalar(
        select(func.count())
        .select_from(ManagedCluster)
        .where(ManagedCluster.subscription_id == subscription_id)
    )
    pools = session.execute(
        select(AgentPool.count, AgentPool.max_surge)
        .join(AgentPool.cluster)
        .where(ManagedCluster.subscription_id == subscription_id)
    )
    return sum(
        (limits.pool_usage(count, max_surge) for count, max_surge in pools),
        limits.Usage(clusters=clusters or 0),
    )


def _pools_usage(pools: list[tuple[int, str | None]]) -> limits.Usage:
    return sum((limits.pool_usage(count, max_surge) for count, max_surge in pools), limits.Usage())


def _check_quota(session: Session, subscription_id: str, before: limits.Usage, after: limits.Usage) -> None:
    """Raise 409 QuotaExceeded (the caller's transaction then rolls back) when the request, whose changes are
    in `session` and which replaced `before` with `after`, grew the subscription's usage past a quota.

    The usage is counted once the changes are written: SQLite's write lock (or PostgreSQL's per-subscription
    advisory lock) is then held to the commit, so concurrent requests (other API workers) are counted one
    after another and cannot pass the quota together."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:subscription))"), {"subscription": subscription_id}
        )
    session.flush()
    requested = _subscription_usage(session, subscription_id)
    usage = requested - after + before
    limits.raise_violations(
        limits.check_quota(limits.QuotaRequest(subscription_id, usage, requested, limits.configured_quotas()))
    )


def _refuse_if_busy(session: Session, resource_id: str, what: str) -> None:
    running = in_progress_operation(session, resource_id)
    if running is not None:
        raise conflict(
            "OperationNotAllowed",
            f"{what} has an operation in progress ({running.kind}, id {running.id}); wait for it to finish "
            "(tl aks show / the Azure-AsyncOperation URL) or delete the resource.",
        )


def refuse_if_busy(session: Session, cluster: ManagedCluster, pools: list[AgentPool]) -> None:
    """409 OperationNotAllowed while `cluster` or one of its `pools` has an operation in progress: a pool's
    nodes are one operation's at a time (two would take each other's nodes, a soaking node drained anew)."""
    for pool in pools:
        _refuse_if_busy(session, pool_resource_id(cluster, pool.name), f"Agent pool '{pool.name}'")
    cluster_id = cluster_resource_id(cluster.subscription_id, cluster.resource_group, cluster.name)
    _refuse_if_busy(session, cluster_id, f"Managed cluster '{cluster.display_name}'")


def _refuse_if_deleting(cluster: ManagedCluster) -> None:
    if cluster.provisioning_state == ProvisioningState.DELETING:
        raise conflict(
            "OperationNotAllowed",
            f"Managed cluster '{cluster.display_name}' is being deleted; no other operation is allowed.",
        )


def trusted_launch_allowed(session: Session, subscription_id: str, preview: bool) -> bool:
    """Whether a request may turn trusted launch on: always with a GA api-version, with a preview one only
    once TrustedLaunchPreview is Registered in the subscription."""
    return not preview or trusted_launch_registered(session, subscription_id)


def put_cluster(
    session: Session, path: ResourcePath, spec: ClusterSpec, preview: bool = False
) -> tuple[ManagedCluster, Operation, bool]:
    """Create or update a cluster; returns (cluster, operation, created). `preview`: the request came with a
    preview api-version (trusted launch then needs the TrustedLaunchPreview registration)."""
    cluster = find_cluster(session, path)
    tl_registered = trusted_launch_allowed(session, path.subscription_id, preview)
    if cluster is None:
        return (*_create_cluster(session, path, spec, tl_registered), True)
    _refuse_if_deleting(cluster)
    refuse_if_busy(session, cluster, cluster.agent_pools)
    version = spec.kubernetes_version or cluster.kubernetes_version
    virtual_nodes = cluster.virtual_nodes_enabled if spec.virtual_nodes is None else spec.virtual_nodes
    violations: list[ArmError] = []
    version_changed = version != cluster.kubernetes_version
    if version_changed:
        violations += limits.check_version(limits.VersionRequest(version, cluster.location))
    existing = {pool.name: pool for pool in cluster.agent_pools}
    final_modes = {
        pool.name: pool.mode
        for pool in cluster.agent_pools
        if pool.provisioning_state != ProvisioningState.DELETING
    }
    for pool_spec in spec.agent_pools:
        final_modes[stored_name(pool_spec.name)] = pool_spec.mode or final_modes.get(
            stored_name(pool_spec.name), "User"
        )
    planned: list[tuple[limits.PoolRequest, AgentPool | None]] = []
    for index, pool_spec in enumerate(spec.agent_pools):
        prefix = f"properties.agentPoolProfiles[{index}]."
        pool = existing.get(stored_name(pool_spec.name))
        earlier_names = (
            *existing,
            *(p.name for p in spec.agent_pools[:index] if stored_name(p.name) not in existing),
        )
        if pool is None:
            request = _request_for_new_pool(pool_spec, version, virtual_nodes)
            request = replace(request, feature_registered=tl_registered, sibling_pool_names=earlier_names)
        else:
            request = _merge(_request_for_pool(pool, virtual_nodes), pool_spec)
            others = sum(1 for name, mode in final_modes.items() if mode == "System" and name != pool.name)
            request = replace(
                request, feature_registered=tl_registered, other_system_pools=others, cluster_version=version
            )
        violations += limits.check_pool(request, prefix)
        if not (version_changed and request.orchestrator_version == version):  # else refused once, above
            violations += _version_violations(request, cluster.location, prefix)
        planned.append((request, pool))
    if virtual_nodes and not cluster.virtual_nodes_enabled:
        for index, pool in enumerate(cluster.agent_pools):
            prefix = f"properties.agentPoolProfiles[{index}]."
            stored = _request_for_pool(pool, virtual_nodes=True)
            violations += limits.check_pool(replace(stored, previous=stored), prefix)  # an update
    system_pools = sum(1 for mode in final_modes.values() if mode == "System")
    pool_count = pool_count_after(cluster, [pool_spec.name for pool_spec in spec.agent_pools])
    cluster_request = limits.ClusterRequest(
        pool_count, system_pools, version, cluster.kubernetes_version, spec.location
    )
    violations += limits.check_cluster(cluster_request)
    limits.raise_violations(violations)
    planned_pools = {pool.name for _request, pool in planned if pool is not None}
    before = _pools_usage([(pool.count, pool.max_surge) for pool in cluster.agent_pools])
    after = _pools_usage(
        [(pool.count, pool.max_surge) for pool in cluster.agent_pools if pool.name not in planned_pools]
        + [(request.count, request.max_surge) for request, _pool in planned]
    )
    cluster.kubernetes_version = version
    cluster.virtual_nodes_enabled = virtual_nodes
    cluster.tags = spec.tags if spec.tags is not None else cluster.tags
    cluster.provisioning_state = ProvisioningState.UPDATING
    cluster.updated_at = utc_now()
    newest = _NewestBuild(session)
    for (request, pool), pool_spec in zip(planned, spec.agent_pools, strict=True):
        if pool is None:
            pool = _new_pool(request, tl_registered, newest)
            cluster.agent_pools.append(pool)
        else:
            _apply(pool, request)
        _set_tags(pool, pool_spec)
    _check_quota(session, path.subscription_id, before, after)
    operation = start_operation(session, path.subscription_id, cluster.location, path.cluster_id, "Update")
    return cluster, operation, False


def update_cluster_tags(session: Session, path: ResourcePath, tags: dict[str, str]) -> ManagedCluster:
    """Replace the cluster's tags: they touch no node, so no operation (the SDK's poller ends at once)."""
    cluster = get_cluster(session, path)
    _refuse_if_deleting(cluster)
    cluster.tags = dict(tags)
    cluster.updated_at = utc_now()
    return cluster


def _create_cluster(
    session: Session, path: ResourcePath, spec: ClusterSpec, tl_registered: bool
) -> tuple[ManagedCluster, Operation]:
    version = spec.kubernetes_version or DEFAULT_KUBERNETES_VERSION
    violations = limits.check_version(limits.VersionRequest(version, spec.location))
    if not spec.agent_pools:
        violations.append(
            bad_request(
                "AgentPoolProfilesRequired",
                "A managed cluster needs at least one agent pool in properties.agentPoolProfiles.",
                "properties.agentPoolProfiles",
            )
        )
    requests: list[limits.PoolRequest] = []
    has_system_pool = any(p.mode == "System" for p in spec.agent_pools)
    for index, pool_spec in enumerate(spec.agent_pools):
        default_mode = "System" if index == 0 and not has_system_pool else "User"
        request = replace(
            _request_for_new_pool(pool_spec, version, bool(spec.virtual_nodes), default_mode),
            feature_registered=tl_registered,
            sibling_pool_names=tuple(p.name for p in spec.agent_pools[:index]),
        )
        prefix = f"properties.agentPoolProfiles[{index}]."
        violations += limits.check_pool(request, prefix)
        if request.orchestrator_version != version:  # else refused once, above
            violations += _version_violations(request, spec.location, prefix)
        requests.append(request)
    system_pools = sum(1 for request in requests if request.mode == "System")
    violations += limits.check_cluster(
        limits.ClusterRequest(len(requests), system_pools, version, location=spec.location)
    )
    limits.raise_violations(violations)
    name = stored_name(path.cluster_name)
    location = limits.normalize_location(spec.location)
    group = stored_name(path.resource_group)
    dns_prefix = spec.dns_prefix or f"{name[:10]}-{group[:16]}-{path.subscription_id[:6]}"
    cluster = ManagedCluster(
        subscription_id=path.subscription_id,
        resource_group=group,
        name=name,
        display_name=path.cluster_name,
        location=location,
        kubernetes_version=version,
        dns_prefix=dns_prefix,
        fqdn=f"{dns_prefix}.hcp.{location}.trustedlaunch.internal",
        ssh_public_key=spec.ssh_public_key,
        virtual_nodes_enabled=bool(spec.virtual_nodes),
        tags=spec.tags or {},
        identity_tenant_id=tenant_id(session),
        kube_token=secrets.token_hex(32),
        provisioning_state=ProvisioningState.CREATING,
    )
    newest = _NewestBuild(session)
    for request, pool_spec in zip(requests, spec.agent_pools, strict=True):
        pool = _new_pool(request, tl_registered, newest)
        _set_tags(pool, pool_spec)
        cluster.agent_pools.append(pool)
    session.add(cluster)
    new_pools = _pools_usage([(request.count, request.max_surge) for request in requests])
    _check_quota(session, path.subscription_id, limits.Usage(), limits.Usage(clusters=1) + new_pools)
    operation = start_operation(session, path.subscription_id, cluster.location, path.cluster_id, "Create")
    return cluster, operation


def delete_cluster(session: Session, path: ResourcePath) -> Operation | None:
    """Start deleting the cluster (cancels its create/update operations); None if it does not exist."""
    cluster = find_cluster(session, path)
    if cluster is None:
        return None
    if cluster.provisioning_state == ProvisioningState.DELETING:
        running = in_progress_operation(session, path.cluster_id)
        if running is not None:
            return running
    _cancel_operations(session, path.cluster_id)
    cluster.provisioning_state = ProvisioningState.DELETING
    for pool in cluster.agent_pools:
        pool.provisioning_state = ProvisioningState.DELETING
    return start_operation(session, path.subscription_id, cluster.location, path.cluster_id, "Delete")


def _cancel_operations(session: Session, resource_id: str) -> None:
    """Cancel the InProgress operations on exactly `resource_id` and on the resources inside it (a cluster's
    pools): never on a sibling whose id merely starts alike (`k1` for `k`, `team-a` for `team_a`)."""
    running = session.scalars(
        select(Operation).where(
            or_(
                Operation.resource_id == resource_id,
                Operation.resource_id.startswith(resource_id + "/", autoescape=True),
            ),
            Operation.status == OperationStatus.IN_PROGRESS,
        )
    )
    for operation in running:
        operation.status = OperationStatus.CANCELED
        operation.end_time = utc_now()
        operation.note = "Canceled by a later DELETE of the resource."


def find_pool(cluster: ManagedCluster, pool_name: str) -> AgentPool | None:
    """The cluster's pool called `pool_name` (any case), or None."""
    return next((pool for pool in cluster.agent_pools if pool.name == stored_name(pool_name)), None)


def get_pool(session: Session, path: ResourcePath, pool_name: str) -> AgentPool:
    """The pool, or a 404 ArmError naming what is missing."""
    cluster = get_cluster(session, path)
    pool = find_pool(cluster, pool_name)
    if pool is None:
        raise not_found(
            "ResourceNotFound",
            f"Agent pool '{pool_name}' was not found in managed cluster '{cluster.display_name}'.",
            "agentPoolName",
        )
    return pool


def get_machine(session: Session, path: ResourcePath, pool_name: str, machine_name: str) -> Node:
    """The pool's node called `machine_name` (any case), or a 404 ArmError naming what is missing."""
    pool = get_pool(session, path, pool_name)
    node = next((node for node in pool.nodes if node.name.lower() == machine_name.lower()), None)
    if node is None:
        raise not_found(
            "ResourceNotFound",
            f"Machine '{machine_name}' was not found in agent pool '{pool.name}' of managed cluster "
            f"'{pool.cluster.display_name}'.",
            "machineName",
        )
    return node


def put_pool(
    session: Session, path: ResourcePath, spec: PoolSpec, create_only: bool = False, preview: bool = False
) -> tuple[AgentPool, Operation, bool]:
    """Create or update a pool; `create_only` (If-None-Match: *) refuses an existing name with 409;
    `preview` as for put_cluster."""
    cluster = get_cluster(session, path)
    _refuse_if_deleting(cluster)
    pool = find_pool(cluster, spec.name)
    pool_id = pool_resource_id(cluster, stored_name(spec.name))
    tl_registered = trusted_launch_allowed(session, path.subscription_id, preview)
    if pool is None or create_only:
        request = replace(
            _request_for_new_pool(spec, cluster.kubernetes_version, cluster.virtual_nodes_enabled),
            feature_registered=tl_registered,
            sibling_pool_names=tuple(p.name for p in cluster.agent_pools),
            pool_count=pool_count_after(cluster, [spec.name]),
        )
        limits.raise_violations(limits.check_pool(request) + _version_violations(request, cluster.location))
        pool = _new_pool(request, tl_registered, _NewestBuild(session))
        _set_tags(pool, spec)
        cluster.agent_pools.append(pool)
        _check_quota(
            session, path.subscription_id, limits.Usage(), _pools_usage([(request.count, request.max_surge)])
        )
        operation = start_operation(session, path.subscription_id, cluster.location, pool_id, "Create")
        return pool, operation, True
    request = replace(
        _merge(_request_for_pool(pool, cluster.virtual_nodes_enabled), spec),
        feature_registered=tl_registered,
        other_system_pools=_system_pools_besides(cluster, pool.name),
    )
    limits.raise_violations(limits.check_pool(request) + _version_violations(request, cluster.location))
    refuse_if_busy(session, cluster, [pool])
    before = _pools_usage([(pool.count, pool.max_surge)])
    _apply(pool, request)
    _set_tags(pool, spec)
    _check_quota(session, path.subscription_id, before, _pools_usage([(request.count, request.max_surge)]))
    operation = start_operation(session, path.subscription_id, cluster.location, pool_id, "Update")
    return pool, operation, False


def delete_pool(
    session: Session, path: ResourcePath, pool_name: str, ignore_pod_disruption_budget: bool = False
) -> Operation | None:
    """Start deleting the pool (cancels its create/update operations); None if it does not exist. With
    `ignore_pod_disruption_budget` (AKS's ignore-pod-disruption-budget=true) its nodes' pods are deleted
    instead of evicted, so no PodDisruptionBudget can block it; asked again of a Delete under way, it applies
    from that Delete's next node on."""
    cluster = get_cluster(session, path)
    pool = find_pool(cluster, pool_name)
    if pool is None:
        return None
    pool_id = pool_resource_id(cluster, pool.name)
    if pool.provisioning_state == ProvisioningState.DELETING:
        running = in_progress_operation(session, pool_id)
        if running is not None:
            running.ignore_pod_disruption_budget = running.ignore_pod_disruption_budget or (
                ignore_pod_disruption_budget
            )
            return running
    deletion = limits.PoolDeletion(pool.name, pool.mode, _system_pools_besides(cluster, pool.name))
    limits.raise_violations(limits.check_deletion(deletion))
    _cancel_operations(session, pool_id)
    pool.provisioning_state = ProvisioningState.DELETING
    operation = start_operation(session, path.subscription_id, cluster.location, pool_id, "Delete")
    operation.ignore_pod_disruption_budget = ignore_pod_disruption_budget
    return operation
