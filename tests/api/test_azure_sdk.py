"""Microsoft's own Azure SDK for Python (azure-mgmt-containerservice, azure-mgmt-resource) against a real
server (uvicorn on loopback, a real SQLite store), as an AKS automation script drives it. No VMs boot: no
reconciler runs, the test finishes each long-running operation in the store as the reconciler would, and a
node row stands for a machine."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core import MatchConditions
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import BearerTokenCredentialPolicy
from azure.mgmt.containerservice import ContainerServiceClient
from azure.mgmt.containerservice.models import (
    AgentPool,
    AgentPoolSecurityProfile,
    ManagedCluster,
    ManagedClusterAgentPoolProfile,
    TagsObject,
)
from azure.mgmt.resource.resources import ResourceManagementClient
from azure.mgmt.resource.resources.models import ResourceGroup
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.records import AgentPool as PoolRecord
from trustedlaunch.control.records import Node, Operation
from trustedlaunch.control.tokens import BOOTSTRAP_TOKEN_NAME, create_token
from trustedlaunch.store.vocabulary import OperationStatus

SUB = "11111111-2222-3333-4444-555555555555"
SCOPE = "https://management.azure.com/.default"


class AdminToken:
    """A TokenCredential handing out the server's bootstrap admin token."""

    def __init__(self, token: str) -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


class LoopbackBearerPolicy(BearerTokenCredentialPolicy):
    """The SDK's bearer policy, allowed over the test's plain-http loopback server (enforce_https=False)."""

    def on_request(self, request: PipelineRequest[Any]) -> None:
        request.context["enforce_https"] = False
        super().on_request(request)


class Plane:
    """The running server, SDK clients of it and its store."""

    def __init__(self, url: str, token: str, sessions: sessionmaker[Session]) -> None:
        self.url = url
        self.credential = AdminToken(token)
        self.aks = self.client()
        self.groups = ResourceManagementClient(
            self.credential,  # type: ignore[arg-type]
            SUB,
            base_url=url,
            authentication_policy=LoopbackBearerPolicy(self.credential, SCOPE),
            polling_interval=0.2,
        ).resource_groups
        self.sessions = sessions

    def create_group(self, name: str = "sdkGroup") -> None:
        """Create resource group `name` with the SDK, as a script does before it creates a cluster."""
        self.groups.create_or_update(name, ResourceGroup(location="eastus"))

    def client(self, credential: AdminToken | None = None, **options: Any) -> ContainerServiceClient:
        """A ContainerServiceClient of the server (`api_version=` to send another than the SDK's default;
        `credential`: another token's)."""
        credential = credential or self.credential
        return ContainerServiceClient(
            credential,  # type: ignore[arg-type]
            SUB,
            base_url=self.url,
            authentication_policy=LoopbackBearerPolicy(credential, SCOPE),
            polling_interval=0.2,
            **options,
        )

    def token(self, name: str) -> AdminToken:
        """A new subscription-scoped API token called `name`, as a credential."""
        with self.sessions.begin() as session:
            return AdminToken(create_token(session, name, f"/subscriptions/{SUB}"))

    def finish_operations(self) -> None:
        """Finish every InProgress operation with Succeeded, as the reconciler does once nodes are up."""
        with self.sessions.begin() as session:
            running = select(Operation).where(Operation.status == OperationStatus.IN_PROGRESS)
            for operation in session.scalars(running):
                finish_operation(session, operation, OperationStatus.SUCCEEDED)

    def add_node(self, pool_name: str) -> str:
        """A node row in pool `pool_name` (what the reconciler records for a booted VM); its name."""
        with self.sessions.begin() as session:
            pool = session.scalars(select(PoolRecord).where(PoolRecord.name == pool_name)).one()
            name = f"aks-{pool.name}-{pool.id:08d}-vmss000000"
            session.add(
                Node(
                    pool_id=pool.id,
                    ordinal=0,
                    name=name,
                    node_image_version=pool.node_image_version,
                    state="Ready",
                    enable_secure_boot=pool.enable_secure_boot,
                    enable_vtpm=pool.enable_vtpm,
                    attestation_status="Passed",
                    handle="1",
                )
            )
        return name


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    token_file = tmp_path / "config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)
    with BackgroundServer(app) as server:
        yield Plane(server.url, token_file.read_text().strip(), app.state.sessions)


def trusted_launch_cluster() -> ManagedCluster:
    return ManagedCluster(
        location="eastus",
        dns_prefix="sdk",
        agent_pool_profiles=[
            ManagedClusterAgentPoolProfile(
                name="nodepool1",
                count=1,
                vm_size="Standard_D4s_v3",
                mode="System",
                security_profile=AgentPoolSecurityProfile(enable_secure_boot=True, enable_vtpm=True),
            )
        ],
    )


def test_cluster_pool_and_machines_with_the_sdk(plane: Plane) -> None:
    aks = plane.aks
    plane.create_group()
    # GA api-version (the SDK's 2026-08-01): trusted launch without the preview registration
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "sdkCluster", trusted_launch_cluster())
    plane.finish_operations()
    cluster = poller.result(timeout=60)
    assert cluster.provisioning_state == "Succeeded" and cluster.name == "sdkCluster"
    # ids keep the casing of the group's and the cluster's creation (ARM), lookups ignore it
    cluster_id = f"/subscriptions/{SUB}/resourceGroups/sdkGroup/providers/Microsoft.ContainerService/"
    cluster_id += "managedClusters/sdkCluster"
    assert cluster.id == cluster_id and cluster.identity.type == "SystemAssigned"
    assert aks.managed_clusters.get("SDKGROUP", "sdkcluster").id == cluster_id
    assert (cluster.sku.name, cluster.sku.tier, cluster.enable_rbac) == ("Base", "Free", True)
    assert cluster.network_profile.service_cidr == "10.0.0.0/16" and cluster.power_state.code == "Running"
    network = cluster.network_profile
    assert (network.pod_cidrs, network.service_cidrs, network.ip_families) == (
        ["10.244.0.0/16"],
        ["10.0.0.0/16"],
        ["IPv4"],
    )
    assert (cluster.max_agent_pools, cluster.support_plan) == (100, "KubernetesOfficial")
    assert cluster.system_data.created_at is not None and cluster.azure_portal_fqdn
    profile = cluster.agent_pool_profiles[0]
    assert (profile.security_profile.enable_secure_boot, profile.security_profile.enable_vtpm) == (True, True)
    assert [c.name for c in aks.managed_clusters.list_by_resource_group("sdkGroup")] == ["sdkCluster"]

    pool = AgentPool(count=1, vm_size="Standard_D4s_v3", mode="User")
    poller = aks.agent_pools.begin_create_or_update("sdkGroup", "sdkCluster", "userpool", pool)
    plane.finish_operations()
    assert poller.result(timeout=60).provisioning_state == "Succeeded"
    pools = sorted((p.name, p.id) for p in aks.agent_pools.list("sdkgroup", "SDKCLUSTER"))
    assert pools == [(name, f"{cluster_id}/agentPools/{name}") for name in ("nodepool1", "userpool")]

    name = plane.add_node("nodepool1")
    [listed] = list(aks.machines.list("sdkGroup", "sdkCluster", "nodepool1"))
    machine = aks.machines.get("sdkGroup", "sdkCluster", "nodepool1", name)
    for shown in (listed, machine):
        assert shown.name == name and shown.id == f"{cluster_id}/agentPools/nodepool1/machines/{name}"
        assert [(a.family, a.ip) for a in shown.properties.network.ip_addresses] == [("IPv4", "10.0.2.15")]
        assert shown.properties.resource_id.endswith(
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{name.removesuffix('000000')}/virtualMachines/0"
        )
        # this server's attestation fields ride along inside AKS's shape
        assert shown.properties["attestationStatus"] == "Passed"
        assert shown.properties["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": True}
    with pytest.raises(ResourceNotFoundError) as missing:
        aks.machines.get("sdkGroup", "sdkCluster", "nodepool1", "aks-nodepool1-nosuch-vmss000009")
    assert missing.value.error is not None and missing.value.error.code == "ResourceNotFound"


def test_sdk_error_paths(plane: Plane) -> None:
    aks = plane.aks
    for no_group in (  # nothing below a missing group, as ARM: not even a cluster's create
        lambda: aks.managed_clusters.get("sdkGroup", "nosuch"),
        lambda: aks.managed_clusters.begin_create_or_update("sdkGroup", "c", trusted_launch_cluster()),
        lambda: list(aks.managed_clusters.list_by_resource_group("sdkGroup")),
    ):
        with pytest.raises(ResourceNotFoundError) as missing:
            no_group()
        assert missing.value.error is not None and missing.value.error.code == "ResourceGroupNotFound"
        assert missing.value.error.message == "Resource group 'sdkGroup' could not be found."
    plane.create_group()
    with pytest.raises(ResourceNotFoundError) as missing:
        aks.managed_clusters.get("sdkGroup", "nosuch")
    assert missing.value.error is not None and missing.value.error.code == "ResourceNotFound"
    with pytest.raises(HttpResponseError) as unknown:
        plane.client(api_version="2099-01-01").managed_clusters.get("sdkGroup", "nosuch")
    assert unknown.value.error is not None and unknown.value.error.code == "NoRegisteredProviderFound"
    assert "2026-08-01" in str(unknown.value.error.message)
    with pytest.raises(HttpResponseError) as preview:  # a preview api-version needs the registration
        plane.client(api_version="2023-11-02-preview").managed_clusters.begin_create_or_update(
            "sdkGroup", "sdkCluster", trusted_launch_cluster()
        )
    assert preview.value.status_code == 400
    assert preview.value.error is not None and preview.value.error.code == "PreviewFeatureNotRegistered"


def test_tags_and_etags_with_the_sdk(plane: Plane) -> None:
    aks = plane.aks
    plane.create_group()
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "sdkCluster", trusted_launch_cluster())
    plane.finish_operations()
    created = poller.result(timeout=60)
    assert created.e_tag and created.e_tag == aks.managed_clusters.get("sdkGroup", "sdkCluster").e_tag

    tagged = aks.managed_clusters.begin_update_tags(
        "sdkGroup", "sdkCluster", TagsObject(tags={"env": "test", "owner": "sdk"})
    ).result(timeout=30)
    assert tagged.tags == {"env": "test", "owner": "sdk"} and tagged.e_tag != created.e_tag
    assert aks.managed_clusters.get("sdkGroup", "sdkCluster").tags == {"env": "test", "owner": "sdk"}

    # a write with the stale eTag is refused (412), with the current one it is done
    with pytest.raises(HttpResponseError) as stale:
        aks.managed_clusters.begin_create_or_update(
            "sdkGroup",
            "sdkCluster",
            trusted_launch_cluster(),
            etag=created.e_tag,
            match_condition=MatchConditions.IfNotModified,
        )
    assert stale.value.status_code == 412
    assert stale.value.error is not None and stale.value.error.code == "PreconditionFailed"
    with pytest.raises(HttpResponseError) as exists:  # create-only of an existing cluster
        aks.managed_clusters.begin_create_or_update(
            "sdkGroup", "sdkCluster", trusted_launch_cluster(), match_condition=MatchConditions.IfMissing
        )
    assert exists.value.status_code == 412
    poller = aks.managed_clusters.begin_create_or_update(
        "sdkGroup",
        "sdkCluster",
        trusted_launch_cluster(),
        etag=tagged.e_tag,
        match_condition=MatchConditions.IfNotModified,
    )
    plane.finish_operations()
    assert poller.result(timeout=60).provisioning_state == "Succeeded"

    pool = aks.agent_pools.get("sdkGroup", "sdkCluster", "nodepool1")
    assert pool.e_tag
    with pytest.raises(HttpResponseError) as stale_pool:
        aks.agent_pools.begin_delete(
            "sdkGroup",
            "sdkCluster",
            "nodepool1",
            etag='"0000"',
            match_condition=MatchConditions.IfNotModified,
        )
    assert stale_pool.value.status_code == 412


def test_resource_groups_with_the_sdk(plane: Plane) -> None:
    groups = plane.groups
    created = groups.create_or_update("sdkGroup", ResourceGroup(location="eastus", tags={"team": "a"}))
    assert (created.name, created.location, created.tags) == ("sdkGroup", "eastus", {"team": "a"})
    assert created.id == f"/subscriptions/{SUB}/resourceGroups/sdkGroup"
    assert groups.check_existence("sdkGroup") is True
    assert [g.name for g in groups.list()] == ["sdkGroup"]
    with pytest.raises(ResourceNotFoundError) as missing:
        groups.get("nosuch")
    assert missing.value.error is not None and missing.value.error.code == "ResourceGroupNotFound"

    aks = plane.aks
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "sdkCluster", trusted_launch_cluster())
    plane.finish_operations()
    poller.result(timeout=60)
    deleting = groups.begin_delete("sdkGroup")  # cascades to the cluster
    assert aks.managed_clusters.get("sdkGroup", "sdkCluster").provisioning_state == "Deleting"
    assert groups.get("sdkGroup").properties.provisioning_state == "Deleting"  # until its cluster is gone
    plane.finish_operations()
    deleting.result(timeout=60)
    assert list(groups.list()) == []
    with pytest.raises(ResourceNotFoundError):
        aks.managed_clusters.get("sdkGroup", "sdkCluster")


def test_operation_urls_behind_a_tls_proxy_on_loopback(plane: Plane) -> None:
    """A TLS proxy on the same host that sends X-Forwarded-Proto gets https operation URLs (uvicorn trusts
    the forwarded headers of FORWARDED_ALLOW_IPS, by default loopback); without it they stay http://."""
    cluster = (
        f"/subscriptions/{SUB}/resourceGroups/proxied/providers/Microsoft.ContainerService/managedClusters"
    )
    body = {"location": "eastus", "properties": {"agentPoolProfiles": [{"name": "nodepool1", "count": 1}]}}
    headers = {"Authorization": f"Bearer {plane.credential.token}"}
    plane.create_group("proxied")
    with httpx.Client(base_url=plane.url, headers=headers, params={"api-version": "2026-08-01"}) as client:
        proxied = client.put(f"{cluster}/c1", json=body, headers={"X-Forwarded-Proto": "https"})
        assert proxied.headers["Azure-AsyncOperation"].startswith("https://")
        direct = client.put(f"{cluster}/c2", json=body)
        assert direct.headers["Azure-AsyncOperation"].startswith("http://")


def test_identity_and_system_data_with_the_sdk(plane: Plane, monkeypatch: pytest.MonkeyPatch) -> None:
    plane.create_group()
    aks = plane.aks
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "sdkCluster", trusted_launch_cluster())
    plane.finish_operations()
    cluster = poller.result(timeout=60)
    identity = cluster.identity
    assert (
        identity.type == "SystemAssigned"
        and uuid.UUID(identity.principal_id)
        and uuid.UUID(identity.tenant_id)
    )
    kubelet = cluster.identity_profile["kubeletidentity"]
    assert uuid.UUID(kubelet.client_id) and uuid.UUID(kubelet.object_id) != uuid.UUID(kubelet.client_id)
    assert kubelet.resource_id.endswith("/userAssignedIdentities/sdkCluster-agentpool")
    data = cluster.system_data
    assert (data.created_by, data.created_by_type) == (BOOTSTRAP_TOKEN_NAME, "Application")
    assert (data.last_modified_by, data.last_modified_by_type) == (BOOTSTRAP_TOKEN_NAME, "Application")
    assert data.created_at is not None and data.last_modified_at == data.created_at
    pool = aks.agent_pools.get("sdkGroup", "sdkCluster", "nodepool1")
    assert (pool.system_data.created_by, pool.system_data.created_by_type) == (
        BOOTSTRAP_TOKEN_NAME,
        "Application",
    )

    # another caller changes it: lastModifiedBy is that token, createdBy and the identities stay
    ci = plane.client(plane.token("ci-pipeline"))
    ci.managed_clusters.begin_update_tags("sdkGroup", "sdkCluster", TagsObject(tags={"a": "b"})).result(30)
    again = aks.managed_clusters.get("sdkGroup", "sdkCluster")
    assert (again.system_data.created_by, again.system_data.last_modified_by) == (
        BOOTSTRAP_TOKEN_NAME,
        "ci-pipeline",
    )
    assert again.system_data.last_modified_at > data.last_modified_at
    assert (again.identity.principal_id, again.identity.tenant_id) == (
        identity.principal_id,
        identity.tenant_id,
    )
    assert again.identity_profile["kubeletidentity"].client_id == kubelet.client_id
    poller = ci.agent_pools.begin_create_or_update("sdkGroup", "sdkCluster", "cipool", AgentPool(count=1))
    plane.finish_operations()
    ci_pool = poller.result(timeout=60)
    assert (ci_pool.system_data.created_by, ci_pool.system_data.last_modified_by) == (
        "ci-pipeline",
        "ci-pipeline",
    )
    # the reconciler's progress is no client change
    assert aks.agent_pools.get("sdkGroup", "sdkCluster", "cipool").system_data.last_modified_at == (
        ci_pool.system_data.last_modified_at
    )

    # every cluster of the installation has its tenant id; TL_TENANT_ID sets it for new clusters
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "second", trusted_launch_cluster())
    plane.finish_operations()
    second = poller.result(timeout=60)
    assert second.identity.tenant_id == identity.tenant_id
    assert second.identity.principal_id != identity.principal_id
    tenant = "72f988bf-86f1-41af-91ab-2d7cd011db47"
    monkeypatch.setenv("TL_TENANT_ID", tenant.upper())
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "third", trusted_launch_cluster())
    plane.finish_operations()
    assert poller.result(timeout=60).identity.tenant_id == tenant
    assert aks.managed_clusters.get("sdkGroup", "sdkCluster").identity.tenant_id == identity.tenant_id


def test_pool_tags_with_the_sdk(plane: Plane) -> None:
    plane.create_group()
    aks = plane.aks
    cluster = trusted_launch_cluster()
    cluster.agent_pool_profiles[0].tags = {"tier": "system"}
    poller = aks.managed_clusters.begin_create_or_update("sdkGroup", "sdkCluster", cluster)
    plane.finish_operations()
    assert poller.result(timeout=60).agent_pool_profiles[0].tags == {"tier": "system"}

    tagged = AgentPool(count=1, mode="User", tags={"team": "blue", "cost-center": "9000"})
    poller = aks.agent_pools.begin_create_or_update("sdkGroup", "sdkCluster", "userpool", tagged)
    plane.finish_operations()
    assert poller.result(timeout=60).tags == {"team": "blue", "cost-center": "9000"}
    pool = aks.agent_pools.get("sdkGroup", "sdkCluster", "userpool")
    assert pool.tags == {"team": "blue", "cost-center": "9000"}

    # a GET-modify-PUT keeps what it does not change; new tags replace the old ones; {} clears them
    pool.count = 2
    poller = aks.agent_pools.begin_create_or_update("sdkGroup", "sdkCluster", "userpool", pool)
    plane.finish_operations()
    assert poller.result(timeout=60).tags == {"team": "blue", "cost-center": "9000"}
    pool = aks.agent_pools.get("sdkGroup", "sdkCluster", "userpool")
    pool.tags = {"team": "green"}
    poller = aks.agent_pools.begin_create_or_update("sdkGroup", "sdkCluster", "userpool", pool)
    plane.finish_operations()
    assert poller.result(timeout=60).tags == {"team": "green"}
    pool = aks.agent_pools.get("sdkGroup", "sdkCluster", "userpool")
    pool.tags = {}
    poller = aks.agent_pools.begin_create_or_update("sdkGroup", "sdkCluster", "userpool", pool)
    plane.finish_operations()
    assert poller.result(timeout=60).tags is None  # absent, as AKS leaves empty tags out


def test_cluster_tags_patch_is_synchronous(plane: Plane) -> None:
    """ManagedClusters_UpdateTags answers 200 with the cluster (the REST API's documented response; the
    SDK's poller also takes a 202): tags touch no node, so no operation is started."""
    plane.create_group()
    poller = plane.aks.managed_clusters.begin_create_or_update(
        "sdkGroup", "sdkCluster", trusted_launch_cluster()
    )
    plane.finish_operations()
    poller.result(timeout=60)
    path = (
        f"/subscriptions/{SUB}/resourceGroups/sdkGroup/providers/Microsoft.ContainerService/managedClusters"
    )
    headers = {"Authorization": f"Bearer {plane.credential.token}"}
    with httpx.Client(base_url=plane.url, headers=headers, params={"api-version": "2026-08-01"}) as client:
        patched = client.patch(f"{path}/sdkCluster", json={"tags": {"env": "prod"}})
    assert patched.status_code == 200 and "Azure-AsyncOperation" not in patched.headers
    assert patched.json()["tags"] == {"env": "prod"}
    assert patched.json()["properties"]["provisioningState"] == "Succeeded"


def test_a_cluster_holds_at_most_max_agent_pools(plane: Plane) -> None:
    plane.create_group()
    poller = plane.aks.managed_clusters.begin_create_or_update(
        "sdkGroup", "sdkCluster", trusted_launch_cluster()
    )
    plane.finish_operations()
    limit = poller.result(timeout=60).max_agent_pools
    pools = (
        f"/subscriptions/{SUB}/resourceGroups/sdkGroup/providers/Microsoft.ContainerService/managedClusters"
    )
    headers = {"Authorization": f"Bearer {plane.credential.token}"}
    body = {"properties": {"count": 0, "mode": "User"}}
    with httpx.Client(base_url=plane.url, headers=headers, params={"api-version": "2026-08-01"}) as client:
        for index in range(1, limit):
            assert client.put(f"{pools}/sdkCluster/agentPools/p{index}", json=body).status_code == 201
    with pytest.raises(HttpResponseError) as refused:
        plane.aks.agent_pools.begin_create_or_update(
            "sdkGroup", "sdkCluster", "onetoomany", AgentPool(count=0)
        )
    assert refused.value.status_code == 400
    assert refused.value.error is not None and refused.value.error.code == "InvalidParameter"
    assert f"would have {limit + 1} agent pools; at most {limit} are allowed" in str(
        refused.value.error.message
    )
