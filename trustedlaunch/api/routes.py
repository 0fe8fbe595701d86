"""ARM routes of Microsoft.ContainerService (managed clusters, agent pools, operations), Microsoft.Features
and resource provider registration. PUT/DELETE are long-running: Azure-AsyncOperation + Location headers.

Handlers are `async def` and run their short database transactions on the event loop: with SQLite every
transaction is ~1 ms and serialised anyway, and FastAPI's thread pool hop (GIL contention between up to 40
worker threads) made p99 latency at 200 requests/s twenty times worse (bench/api_bench.py). A store on a
remote PostgreSQL would want SQLAlchemy's async engine instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from trustedlaunch.api import api_versions
from trustedlaunch.api.models import (
    AgentPoolBody,
    ErrorResponse,
    ManagedClusterBody,
    ResourceGroupBody,
    TagsBody,
)
from trustedlaunch.api.responses import (
    AgentPoolResource,
    ArmList,
    CredentialResults,
    FeatureResult,
    KubernetesVersionListResult,
    MachineResource,
    ManagedClusterResource,
    OperationStatusResult,
    ProviderResult,
    ResourceGroupResource,
)
from trustedlaunch.api.views import (
    cluster_json,
    feature_json,
    kubeconfig_json,
    kubernetes_versions_json,
    machine_json,
    operation_json,
    operation_path,
    pool_json,
    provider_json,
    resource_group_json,
)
from trustedlaunch.control import features, operations, resource_groups, resources, system_data
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.records import Operation, Session
from trustedlaunch.control.resources import ResourcePath
from trustedlaunch.control.system_data import Caller, token_caller

RETRY_AFTER_SECONDS = "5"


async def api_version(
    request: Request,
    version: str | None = Query(None, alias="api-version", description="e.g. 2026-08-01 (api_versions.py)"),
) -> str:
    """The request's `api-version`, validated as ARM does against its namespace's versions (api_versions)."""
    provider, resource_type = api_versions.provider_of(request.url.path)
    return api_versions.check_api_version(version, provider, resource_type)


ApiVersion = Annotated[str, Depends(api_version)]


def _entity_tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


@dataclass(frozen=True)
class Preconditions:
    """The request's `If-Match` / `If-None-Match` headers (None when absent)."""

    if_match: str | None
    if_none_match: str | None

    def check(self, current: str | None, what: str) -> None:
        """Raise 412 PreconditionFailed unless the resource's `current` eTag (None: it does not exist)
        satisfies the headers: If-Match needs it to be one of the listed eTags (`*`: to exist), If-None-Match
        needs it to be none of them (`*`: not to exist)."""
        if self.if_match is not None:
            tags = _entity_tags(self.if_match)
            if current is None or ("*" not in tags and current not in tags):
                state = "does not exist" if current is None else f"has changed (its eTag is now {current})"
                raise _precondition_failed(f"If-Match {self.if_match[:200]}: {what} {state}.", "If-Match")
        if self.if_none_match is not None and current is not None:
            tags = _entity_tags(self.if_none_match)
            if "*" in tags or current in tags:
                message = f"If-None-Match {self.if_none_match[:200]}: {what} exists (eTag {current})."
                raise _precondition_failed(message, "If-None-Match")


def _precondition_failed(message: str, header: str) -> ArmError:
    return ArmError(412, "PreconditionFailed", f"The precondition failed: {message}", header)


async def preconditions(
    if_match: Annotated[str | None, Header(description="eTag(s) the resource must have, or *")] = None,
    if_none_match: Annotated[
        str | None, Header(description="eTag(s) it must not have; * to create only")
    ] = None,
) -> Preconditions:
    """The request's conditional headers."""
    return Preconditions(if_match, if_none_match)


Conditions = Annotated[Preconditions, Depends(preconditions)]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Invalid request (validation or an AKS limitation; every violation in details)"),
        (401, "Missing or invalid bearer token"),
        (404, "Resource not found"),
        (409, "Conflict (operation in progress, resource being deleted, pool name exists)"),
        (413, "Request body too large"),
    )
}
router = APIRouter(dependencies=[Depends(api_version)], responses=ERROR_RESPONSES)
SUB = "/subscriptions/{subscription_id}"
CS = f"{SUB}/providers/Microsoft.ContainerService"
RG = f"{SUB}/resourceGroups/{{resource_group}}/providers/Microsoft.ContainerService/managedClusters"
CLUSTER = f"{RG}/{{cluster_name}}"
POOL = f"{CLUSTER}/agentPools/{{pool_name}}"
FEATURES = f"{SUB}/providers/Microsoft.Features"


async def cluster_path(
    request: Request, subscription_id: str, resource_group: str, cluster_name: str
) -> ResourcePath:
    """The cluster the request path names (400 for an invalid subscription, resource group or name; 404
    ResourceGroupNotFound when its resource group does not exist, as ARM answers any request below it). A
    write checks the group again in its own transaction (writable_group)."""
    path = ResourcePath(subscription_id, resource_group, cluster_name)
    with transaction(request) as session:
        resource_groups.get_group(session, path.subscription_id, path.resource_group)
    return path


def writable_group(session: Session, path: ResourcePath) -> None:
    """First in a write's transaction below the cluster's group (PUT, PATCH): 404 ResourceGroupNotFound, 409
    ResourceGroupBeingDeleted, else the group stays locked to the commit (a concurrent group DELETE waits)."""
    resource_groups.get_group(session, path.subscription_id, path.resource_group, write=True)


ClusterPath = Annotated[ResourcePath, Depends(cluster_path)]
IgnorePodDisruptionBudget = Annotated[
    bool,
    Query(
        alias="ignore-pod-disruption-budget",
        description="true: delete the pods of the nodes without considering PodDisruptionBudgets",
    ),
]


@contextmanager
def transaction(request: Request) -> Iterator[Session]:
    """One database transaction for the request: committed on success, rolled back on any error."""
    with request.app.state.sessions.begin() as session:
        yield session


def _check_cluster(session: Session, path: ResourcePath, conditions: Conditions) -> None:
    cluster = resources.find_cluster(session, path)
    current = None if cluster is None else str(cluster_json(cluster)["eTag"])
    conditions.check(current, f"managed cluster '{path.cluster_name}'")


def _check_pool(session: Session, path: ResourcePath, pool_name: str, conditions: Conditions) -> None:
    cluster = resources.get_cluster(session, path)
    pool = resources.find_pool(cluster, pool_name)
    current = None if pool is None else str(pool_json(pool)["properties"]["eTag"])  # type: ignore[index]
    conditions.check(current, f"agent pool '{pool_name}'")


def caller(request: Request) -> Caller:
    """Who sent the request: the API token BearerAuth authenticated (systemData's createdBy and
    lastModifiedBy)."""
    return token_caller(request.state.principal.name)


def lro_headers(request: Request, operation: Operation) -> dict[str, str]:
    """The Azure-AsyncOperation and Location headers of a long-running operation's 201/202 answer (on the
    public URL when TL_PUBLIC_URL is set)."""
    base = request.app.state.public_url or str(request.base_url).rstrip("/")
    query = f"?api-version={request.query_params['api-version']}"
    return {
        "Azure-AsyncOperation": base + operation_path(operation) + query,
        "Location": base + operation_path(operation, "operationresults") + query,
        "Retry-After": RETRY_AFTER_SECONDS,
    }


@router.get(
    f"{CS}/managedClusters",
    tags=["managedClusters"],
    response_model=ArmList[ManagedClusterResource],
    response_model_exclude_unset=True,
)
async def list_all_clusters(request: Request, subscription_id: str) -> dict[str, object]:
    """List the subscription's managed clusters."""
    with transaction(request) as session:
        return {"value": [cluster_json(c) for c in resources.list_clusters(session, subscription_id)]}


@router.get(
    RG,
    tags=["managedClusters"],
    response_model=ArmList[ManagedClusterResource],
    response_model_exclude_unset=True,
)
async def list_group_clusters(
    request: Request, subscription_id: str, resource_group: str
) -> dict[str, object]:
    """List the managed clusters of a resource group (404 ResourceGroupNotFound when it does not exist)."""
    with transaction(request) as session:
        resource_groups.get_group(session, subscription_id, resource_group)
        clusters = resources.list_clusters(session, subscription_id, resource_group)
        return {"value": [cluster_json(c) for c in clusters]}


@router.put(
    CLUSTER,
    tags=["managedClusters"],
    status_code=201,
    response_model=ManagedClusterResource,
    response_model_exclude_unset=True,
    responses={200: {"model": ManagedClusterResource, "description": "Updated"}},
)
def put_cluster(
    request: Request,
    response: Response,
    path: ClusterPath,
    body: ManagedClusterBody,
    version: ApiVersion,
    conditions: Conditions,
) -> dict[str, object]:
    """Create (201) or update (200) a managed cluster; long-running; If-Match / If-None-Match (412). A plain
    function: FastAPI runs it in its thread pool, since a new pool's latest node image version is found from
    the installed boot chain (dpkg-query)."""
    with transaction(request) as session:
        writable_group(session, path)
        _check_cluster(session, path, conditions)
        spec = body.to_spec()
        existing = resources.find_cluster(session, path)
        pools_before = set() if existing is None else {pool.name for pool in existing.agent_pools}
        cluster, operation, created = resources.put_cluster(
            session, path, spec, preview=api_versions.is_preview(version)
        )
        writer = caller(request)
        system_data.record_write(cluster, writer, created)
        for pool_spec in spec.agent_pools:  # the pools the body sets
            pool = resources.find_pool(cluster, pool_spec.name)
            if pool is not None:
                system_data.record_write(pool, writer, created=pool.name not in pools_before)
        session.flush()
        content = cluster_json(cluster)
        response.headers.update(lro_headers(request, operation))
    response.status_code = 201 if created else 200
    return content


@router.get(
    CLUSTER,
    tags=["managedClusters"],
    response_model=ManagedClusterResource,
    response_model_exclude_unset=True,
)
async def get_cluster(request: Request, path: ClusterPath) -> dict[str, object]:
    """Get a managed cluster."""
    with transaction(request) as session:
        return cluster_json(resources.get_cluster(session, path))


@router.delete(
    CLUSTER,
    tags=["managedClusters"],
    status_code=202,
    response_class=Response,
    responses={204: {"description": "The cluster does not exist"}},
)
async def delete_cluster(
    request: Request,
    path: ClusterPath,
    conditions: Conditions,
    ignore_pdb: IgnorePodDisruptionBudget = False,
) -> Response:
    """Delete a managed cluster (202 + operation headers; 204 if it does not exist); long-running; If-Match
    (412). `ignore-pod-disruption-budget` is accepted as AKS does; a cluster's deletion drains no node (its
    control plane goes with its nodes), so no PodDisruptionBudget can block it either way."""
    with transaction(request) as session:
        _check_cluster(session, path, conditions)
        operation = resources.delete_cluster(session, path)
        if operation is None:
            return Response(status_code=204)
        session.flush()
        headers = lro_headers(request, operation)
    return Response(status_code=202, headers=headers)


@router.patch(
    CLUSTER,
    tags=["managedClusters"],
    response_model=ManagedClusterResource,
    response_model_exclude_unset=True,
)
async def update_cluster_tags(
    request: Request, path: ClusterPath, body: TagsBody, conditions: Conditions
) -> dict[str, object]:
    """Replace a managed cluster's tags (ManagedClusters_UpdateTags); If-Match (412). A body without `tags`
    changes nothing (an absent PATCH property is left as it is); `{"tags": {}}` clears them."""
    with transaction(request) as session:
        writable_group(session, path)
        _check_cluster(session, path, conditions)
        if body.tags is None:
            return cluster_json(resources.get_cluster(session, path))
        cluster = resources.update_cluster_tags(session, path, body.tags)
        system_data.record_write(cluster, caller(request), created=False)
        session.flush()
        return cluster_json(cluster)


@router.post(
    f"{CLUSTER}/listClusterUserCredential", tags=["managedClusters"], response_model=CredentialResults
)
async def list_user_credential(request: Request, path: ClusterPath) -> dict[str, object]:
    """The user kubeconfig of a cluster (base64)."""
    with transaction(request) as session:
        return kubeconfig_json(resources.get_cluster(session, path), "clusterUser")


@router.post(
    f"{CLUSTER}/listClusterAdminCredential", tags=["managedClusters"], response_model=CredentialResults
)
async def list_admin_credential(request: Request, path: ClusterPath) -> dict[str, object]:
    """The admin kubeconfig of a cluster (base64)."""
    with transaction(request) as session:
        return kubeconfig_json(resources.get_cluster(session, path), "clusterAdmin")


@router.get(
    f"{CLUSTER}/agentPools",
    tags=["agentPools"],
    response_model=ArmList[AgentPoolResource],
    response_model_exclude_unset=True,
)
async def list_pools(request: Request, path: ClusterPath) -> dict[str, object]:
    """List the agent pools of a cluster."""
    with transaction(request) as session:
        return {"value": [pool_json(p) for p in resources.get_cluster(session, path).agent_pools]}


@router.put(
    POOL,
    tags=["agentPools"],
    status_code=201,
    response_model=AgentPoolResource,
    response_model_exclude_unset=True,
    responses={200: {"model": AgentPoolResource, "description": "Updated"}},
)
def put_pool(
    request: Request,
    response: Response,
    path: ClusterPath,
    pool_name: str,
    body: AgentPoolBody,
    version: ApiVersion,
    conditions: Conditions,
) -> dict[str, object]:
    """Create (201) or update (200) an agent pool; `If-None-Match: *` refuses an existing pool (409
    DuplicateAgentPoolName, which `tl aks nodepool add` relies on); If-Match / If-None-Match with eTags
    answer 412 when not met. A plain function, as put_cluster: a new pool's node image version is found from
    the installed boot chain."""
    create_only = conditions.if_none_match is not None and "*" in _entity_tags(conditions.if_none_match)
    with transaction(request) as session:
        writable_group(session, path)
        if create_only:
            conditions = Preconditions(conditions.if_match, None)
        _check_pool(session, path, pool_name, conditions)
        pool, operation, created = resources.put_pool(
            session,
            path,
            body.to_spec(pool_name),
            create_only=create_only,
            preview=api_versions.is_preview(version),
        )
        system_data.record_write(pool, caller(request), created)
        session.flush()
        content = pool_json(pool)
        response.headers.update(lro_headers(request, operation))
    response.status_code = 201 if created else 200
    return content


@router.get(POOL, tags=["agentPools"], response_model=AgentPoolResource, response_model_exclude_unset=True)
async def get_pool(request: Request, path: ClusterPath, pool_name: str) -> dict[str, object]:
    """Get an agent pool."""
    with transaction(request) as session:
        return pool_json(resources.get_pool(session, path, pool_name))


@router.get(f"{POOL}/machines", tags=["agentPools"], response_model=ArmList[MachineResource])
async def list_machines(request: Request, path: ClusterPath, pool_name: str) -> dict[str, object]:
    """List the nodes (machines) of an agent pool with their labels and attestation status."""
    with transaction(request) as session:
        pool = resources.get_pool(session, path, pool_name)
        return {"value": [machine_json(node) for node in sorted(pool.nodes, key=lambda n: n.ordinal)]}


@router.get(f"{POOL}/machines/{{machine_name}}", tags=["agentPools"], response_model=MachineResource)
async def get_machine(
    request: Request, path: ClusterPath, pool_name: str, machine_name: str
) -> dict[str, object]:
    """One node (machine) of an agent pool (Machines_Get)."""
    with transaction(request) as session:
        return machine_json(resources.get_machine(session, path, pool_name, machine_name))


@router.delete(
    POOL,
    tags=["agentPools"],
    status_code=202,
    response_class=Response,
    responses={204: {"description": "The agent pool does not exist"}},
)
async def delete_pool(
    request: Request,
    path: ClusterPath,
    pool_name: str,
    conditions: Conditions,
    ignore_pdb: IgnorePodDisruptionBudget = False,
) -> Response:
    """Delete an agent pool (202 + operation headers; 204 if it does not exist); long-running; If-Match
    (412). Its nodes are drained first; with `ignore-pod-disruption-budget=true` their pods are deleted
    instead of evicted, without considering PodDisruptionBudgets."""
    with transaction(request) as session:
        _check_pool(session, path, pool_name, conditions)
        operation = resources.delete_pool(session, path, pool_name, ignore_pdb)
        if operation is None:
            return Response(status_code=204)
        session.flush()
        headers = lro_headers(request, operation)
    return Response(status_code=202, headers=headers)


@router.get(
    f"{CS}/locations/{{location}}/kubernetesVersions",
    tags=["managedClusters"],
    response_model=KubernetesVersionListResult,
    response_model_exclude_unset=True,
)
async def list_kubernetes_versions(
    subscription_id: str, location: Annotated[str, Path(min_length=1, max_length=64)]
) -> dict[str, object]:
    """The Kubernetes versions clusters and pools may use at a location: the installed ones."""
    return kubernetes_versions_json(resources.kubernetes_versions(subscription_id, location))


@router.get(
    f"{CS}/locations/{{location}}/operations/{{operation_id}}",
    tags=["operations"],
    response_model=OperationStatusResult,
    response_model_exclude_unset=True,
)
async def get_operation(
    request: Request, subscription_id: str, location: str, operation_id: str
) -> dict[str, object]:
    """Status of a long-running operation (the Azure-AsyncOperation URL)."""
    with transaction(request) as session:
        operation = operations.get_operation(session, subscription_id, operation_id)
        return operation_json(operation, operations.operation_resource_id(session, operation))


@router.get(
    f"{CS}/locations/{{location}}/operationresults/{{operation_id}}",
    tags=["operations"],
    response_model=OperationStatusResult,
    response_model_exclude_unset=True,
    responses={
        202: {"description": "In progress (Location and Retry-After headers)"},
        204: {"description": "Succeeded"},
    },
)
async def get_operation_result(
    request: Request, subscription_id: str, location: str, operation_id: str
) -> Response | dict[str, object]:
    """The Location URL: 202 while InProgress, 204 once Succeeded, 200 with the status body otherwise."""
    with transaction(request) as session:
        operation = operations.get_operation(session, subscription_id, operation_id)
        if operation.status == operations.OperationStatus.IN_PROGRESS:
            return Response(status_code=202, headers=lro_headers(request, operation))
        if operation.status == operations.OperationStatus.SUCCEEDED:
            return Response(status_code=204)
        return operation_json(operation, operations.operation_resource_id(session, operation))


@router.post(
    f"{FEATURES}/providers/{{namespace}}/features/{{feature_name}}/register",
    tags=["features"],
    response_model=FeatureResult,
)
async def register_feature(
    request: Request, subscription_id: str, namespace: str, feature_name: str
) -> dict[str, object]:
    """Register a preview feature (state Registering, then Registered after the registration delay)."""
    with transaction(request) as session:
        return feature_json(features.register_feature(session, subscription_id, namespace, feature_name))


@router.get(
    f"{FEATURES}/providers/{{namespace}}/features/{{feature_name}}",
    tags=["features"],
    response_model=FeatureResult,
)
async def get_feature(
    request: Request, subscription_id: str, namespace: str, feature_name: str
) -> dict[str, object]:
    """A preview feature's registration state."""
    with transaction(request) as session:
        return feature_json(features.get_feature(session, subscription_id, namespace, feature_name))


@router.get(
    f"{FEATURES}/providers/{{namespace}}/features", tags=["features"], response_model=ArmList[FeatureResult]
)
async def list_namespace_features(
    request: Request, subscription_id: str, namespace: str
) -> dict[str, object]:
    """The preview features of one namespace."""
    with transaction(request) as session:
        return {
            "value": [feature_json(f) for f in features.list_features(session, subscription_id, namespace)]
        }


@router.get(f"{FEATURES}/features", tags=["features"], response_model=ArmList[FeatureResult])
async def list_features(request: Request, subscription_id: str) -> dict[str, object]:
    """Every preview feature."""
    with transaction(request) as session:
        return {"value": [feature_json(f) for f in features.list_features(session, subscription_id)]}


@router.post(f"{SUB}/providers/{{namespace}}/register", tags=["providers"], response_model=ProviderResult)
async def register_provider(request: Request, subscription_id: str, namespace: str) -> dict[str, object]:
    """Register a resource provider (its Registering features still wait for their delay)."""
    with transaction(request) as session:
        return provider_json(features.register_provider(session, subscription_id, namespace))


@router.get(f"{SUB}/providers/{{namespace}}", tags=["providers"], response_model=ProviderResult)
async def get_provider(request: Request, subscription_id: str, namespace: str) -> dict[str, object]:
    """A resource provider's registration state."""
    with transaction(request) as session:
        return provider_json(features.get_provider(session, subscription_id, namespace))


GROUPS = f"{SUB}/resourceGroups"


@router.put(
    f"{GROUPS}/{{group_name}}",
    tags=["resourceGroups"],
    status_code=201,
    response_model=ResourceGroupResource,
    responses={200: {"model": ResourceGroupResource, "description": "Updated"}},
)
async def put_resource_group(
    request: Request, response: Response, subscription_id: str, group_name: str, body: ResourceGroupBody
) -> dict[str, object]:
    """Create (201) or update (200, tags) a resource group."""
    with transaction(request) as session:
        group, created = resource_groups.put_group(
            session, subscription_id, group_name, body.location, body.tags
        )
        session.flush()
        response.status_code = 201 if created else 200
        return resource_group_json(group)


@router.get(f"{GROUPS}/{{group_name}}", tags=["resourceGroups"], response_model=ResourceGroupResource)
async def get_resource_group(request: Request, subscription_id: str, group_name: str) -> dict[str, object]:
    """A resource group (404 ResourceGroupNotFound)."""
    with transaction(request) as session:
        return resource_group_json(resource_groups.get_group(session, subscription_id, group_name))


@router.head(
    f"{GROUPS}/{{group_name}}",
    tags=["resourceGroups"],
    status_code=204,
    response_class=Response,
    responses={404: {"description": "No such group"}},
)
async def resource_group_exists(request: Request, subscription_id: str, group_name: str) -> Response:
    """Whether a resource group exists (ResourceGroups_CheckExistence): 204, or 404 without a body."""
    with transaction(request) as session:
        found = resource_groups.find_group(session, subscription_id, group_name) is not None
    return Response(status_code=204 if found else 404)


@router.get(GROUPS, tags=["resourceGroups"], response_model=ArmList[ResourceGroupResource])
async def list_resource_groups(request: Request, subscription_id: str) -> dict[str, object]:
    """The subscription's resource groups."""
    with transaction(request) as session:
        return {
            "value": [resource_group_json(g) for g in resource_groups.list_groups(session, subscription_id)]
        }


@router.delete(
    f"{GROUPS}/{{group_name}}",
    tags=["resourceGroups"],
    status_code=202,
    response_class=Response,
    responses={200: {"description": "Deleted (it held no cluster)"}, 204: {"description": "No such group"}},
)
async def delete_resource_group(request: Request, subscription_id: str, group_name: str) -> Response:
    """Delete a resource group and every cluster in it: 202 with the Location of the last cluster's Delete
    operation while they are deleted, 200 when it held none, 204 when it does not exist."""
    with transaction(request) as session:
        deleting = resource_groups.delete_group(session, subscription_id, group_name)
        if deleting is None:
            return Response(status_code=204)
        if not deleting:
            return Response(status_code=200)
        session.flush()
        operation = deleting[-1]
    base = request.app.state.public_url or str(request.base_url).rstrip("/")
    version = api_versions.default_version(operation_path(operation))
    location = f"{base}{operation_path(operation, 'operationresults')}?api-version={version}"
    return Response(status_code=202, headers={"Location": location, "Retry-After": RETRY_AFTER_SECONDS})
