"""Node image upgrades of agent pools, as AKS's AgentPools_GetUpgradeProfile (`GET .../agentPools/{pool}/
upgradeProfiles/default`) and AgentPools_UpgradeNodeImageVersion (`POST .../agentPools/{pool}/
upgradeNodeImageVersion`: 202, the pool, Azure-AsyncOperation; long-running) (control.node_image_upgrades)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from trustedlaunch.api.responses import AgentPoolResource, AgentPoolUpgradeProfile
from trustedlaunch.api.routes import (
    ERROR_RESPONSES,
    POOL,
    ClusterPath,
    api_version,
    lro_headers,
    transaction,
)
from trustedlaunch.api.views import pool_json, upgrade_profile_json
from trustedlaunch.control import node_image_upgrades

router = APIRouter(dependencies=[Depends(api_version)], responses=ERROR_RESPONSES, tags=["agentPools"])


@router.get(f"{POOL}/upgradeProfiles/default", response_model=AgentPoolUpgradeProfile)
def get_upgrade_profile(request: Request, path: ClusterPath, pool_name: str) -> dict[str, object]:
    """The pool's upgrade profile: the Kubernetes versions it may be upgraded to, the latest node image
    version of its flavour (trusted launch capable or not) and its packages (componentsByReleases). A plain
    function: FastAPI runs it in its thread pool, since finding the installed boot chain runs dpkg-query."""
    with transaction(request) as session:
        return upgrade_profile_json(node_image_upgrades.upgrade_profile(session, path, pool_name))


@router.post(
    f"{POOL}/upgradeNodeImageVersion",
    status_code=202,
    response_model=AgentPoolResource,
    response_model_exclude_unset=True,
)
def upgrade_node_image_version(
    request: Request, response: Response, path: ClusterPath, pool_name: str
) -> dict[str, object]:
    """Move the pool to its latest node image version: its nodes are reimaged onto it as an update rolls
    them (drained first, surge per maxSurge); 202 with the pool and the operation headers. In FastAPI's
    thread pool, as get_upgrade_profile."""
    with transaction(request) as session:
        pool, operation = node_image_upgrades.upgrade_node_image_version(session, path, pool_name)
        session.flush()
        content = pool_json(pool)
        response.headers.update(lro_headers(request, operation))
    return content
