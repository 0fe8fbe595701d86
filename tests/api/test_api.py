"""ARM-shaped routes, long-running operation headers, ARM errors for every failure, auth and limits."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest
from api_helpers import (
    API,
    CLUSTER,
    PREVIEW_API,
    RG_PATH,
    SUB,
    cluster_body,
    create_group,
    register_trusted_launch,
)
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from trustedlaunch.api.app import PUBLIC_URL_ENV, create_app
from trustedlaunch.control.features import DELAY_ENV
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION
from trustedlaunch.control.limits import DEFAULT_KUBERNETES_VERSION
from trustedlaunch.control.node_images import linux_image_version
from trustedlaunch.control.operations import finish_operation, get_operation
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.debian import debian_release
from trustedlaunch.store.models import Operation

TL = {"securityProfile": {"enableSecureBoot": True, "enableVTPM": True}}


def assert_arm_error(
    response: object, status: int, code: str, target: str | None = None
) -> dict[str, object]:
    assert hasattr(response, "status_code") and hasattr(response, "json")
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert set(error) == {"code", "message", "target", "details"}
    assert error["code"] == code, error
    if target is not None:
        assert error["target"] == target
    return error  # type: ignore[no-any-return]


def test_create_trusted_launch_cluster_is_long_running(client: TestClient) -> None:
    register_trusted_launch(client)
    response = client.put(CLUSTER, params=API, json=cluster_body(**TL))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "myAKSCluster" and body["type"] == "Microsoft.ContainerService/ManagedClusters"
    assert body["id"] == (  # the group and the name keep the casing of their creation in the id too (ARM)
        f"/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.ContainerService/"
        "managedClusters/myAKSCluster"
    )
    assert body["identity"]["type"] == "SystemAssigned" and body["sku"] == {"name": "Base", "tier": "Free"}
    assert uuid.UUID(body["identity"]["principalId"]) and uuid.UUID(body["identity"]["tenantId"])
    assert body["systemData"]["createdAt"].endswith("Z")
    props = body["properties"]
    assert props["enableRBAC"] is True and props["oidcIssuerProfile"] == {"enabled": False}
    assert props["networkProfile"] == {
        "networkPlugin": "kubenet",
        "podCidr": "10.244.0.0/16",
        "serviceCidr": "10.0.0.0/16",
        "podCidrs": ["10.244.0.0/16"],
        "serviceCidrs": ["10.0.0.0/16"],
        "ipFamilies": ["IPv4"],
    }
    assert (props["maxAgentPools"], props["supportPlan"]) == (100, "KubernetesOfficial")
    assert props["azurePortalFQDN"].startswith(props["dnsPrefix"] + ".portal.")
    assert props["identityProfile"]["kubeletidentity"]["resourceId"].endswith("/myAKSCluster-agentpool")
    assert props["provisioningState"] == "Creating" and props["powerState"] == {"code": "Running"}
    (pool,) = props["agentPoolProfiles"]
    assert pool["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": True}
    assert pool["nodeImageVersion"] == linux_image_version(trusted_launch=True, debian=debian_release())
    assert (pool["count"], pool["vmSize"], pool["osType"], pool["osSKU"], pool["mode"]) == (
        2,
        "Standard_D4s_v3",
        "Linux",
        "Ubuntu",
        "System",
    )
    async_url = response.headers["Azure-AsyncOperation"]
    assert "/providers/Microsoft.ContainerService/locations/eastus/operations/" in async_url
    assert "api-version=2024-09-01" in async_url
    status = client.get(async_url)
    assert status.status_code == 200
    operation = status.json()
    assert operation["status"] == "InProgress" and operation["startTime"].endswith("Z")
    assert "reconciler" in operation["properties"]["note"]
    assert client.get(response.headers["Location"]).status_code == 202

    # GET by the returned id (lowercase segments) and by the caller's path.
    assert client.get(body["id"], params=API).json()["name"] == "myAKSCluster"
    listed = client.get(f"{RG_PATH}/managedClusters").json()["value"]
    assert [c["name"] for c in listed] == ["myAKSCluster"]
    all_clusters = client.get(f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/managedClusters")
    assert len(all_clusters.json()["value"]) == 1


def test_trusted_launch_with_a_preview_api_version_needs_the_registration(client: TestClient) -> None:
    error = assert_arm_error(
        client.put(CLUSTER, json=cluster_body(**TL), params=PREVIEW_API),
        400,
        "PreviewFeatureNotRegistered",
        "properties.agentPoolProfiles[0].securityProfile",
    )
    assert "tl feature register --namespace Microsoft.ContainerService --name TrustedLaunchPreview" in str(
        error["message"]
    )
    assert_arm_error(client.get(CLUSTER), 404, "ResourceNotFound", "resourceName")


VERSIONS = f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/locations/eastus/kubernetesVersions"


def test_kubernetes_versions_list_the_installed_release(client: TestClient) -> None:
    installed = KUBERNETES_VERSION.removeprefix("v")  # the release `make setup` builds
    expected = {
        "values": [
            {
                "version": installed.rsplit(".", 1)[0],
                "capabilities": {"supportPlan": ["KubernetesOfficial"]},
                "isDefault": True,
                "isPreview": False,
                "patchVersions": {installed: {"upgrades": []}},
            }
        ]
    }
    assert client.get(VERSIONS, params=API).json() == expected
    assert client.get(VERSIONS.replace("eastus", "West%20Europe").lower()).json() == expected  # ARM: any case
    error = assert_arm_error(
        client.get(VERSIONS.replace("eastus", "mars")), 400, "LocationNotAvailableForResourceType", "location"
    )
    assert "resource type 'Microsoft.ContainerService/locations/kubernetesVersions'" in str(error["message"])
    assert_arm_error(
        client.get(VERSIONS.replace("eastus", "x" * 65)), 400, "InvalidRequestContent", "path.location"
    )
    assert_arm_error(
        client.get(VERSIONS.replace(SUB, "not-a-guid")), 400, "InvalidSubscriptionId", "subscriptionId"
    )
    assert client.get(VERSIONS, headers={"Authorization": ""}).status_code == 401


def test_versions_come_from_the_installed_release(client: TestClient) -> None:
    body = cluster_body()
    body["properties"]["kubernetesVersion"] = "1.30.6"  # type: ignore[index]
    error = assert_arm_error(
        client.put(CLUSTER, json=body), 400, "K8sVersionNotSupported", "properties.kubernetesVersion"
    )
    assert f"Supported versions: {DEFAULT_KUBERNETES_VERSION}." in str(error["message"])
    minor = DEFAULT_KUBERNETES_VERSION.rsplit(".", 1)[0]
    body["properties"]["kubernetesVersion"] = minor  # type: ignore[index]
    properties = client.put(CLUSTER, json=body).json()["properties"]
    assert (properties["kubernetesVersion"], properties["currentKubernetesVersion"]) == (
        minor,
        DEFAULT_KUBERNETES_VERSION,
    )
    pool = properties["agentPoolProfiles"][0]
    assert (pool["orchestratorVersion"], pool["currentOrchestratorVersion"]) == (
        minor,
        DEFAULT_KUBERNETES_VERSION,
    )
    old_pool = {"properties": {"count": 1, "orchestratorVersion": "1.29.2"}}
    error = assert_arm_error(
        client.put(f"{CLUSTER}/agentPools/oldpool", json=old_pool),
        400,
        "AgentPoolK8sVersionNotSupported",
        "properties.orchestratorVersion",
    )
    assert "Version 1.29.2 is not supported in this region(eastus)" in str(error["message"])
    default = client.put(f"{CLUSTER}/agentPools/newpool", json={"properties": {"count": 1}}).json()
    assert default["properties"]["orchestratorVersion"] == minor  # a new pool gets the cluster's version


def test_every_violation_is_listed_in_details(client: TestClient) -> None:
    register_trusted_launch(client)
    body = cluster_body(
        vmSize="Standard_D2ps_v5", enableFIPS=True, type="AvailabilitySet", orchestratorVersion="1.24.9", **TL
    )
    error = assert_arm_error(client.put(CLUSTER, json=body), 400, "TrustedLaunchIncompatibleWithConfig")
    targets = [d["target"] for d in error["details"]]  # type: ignore[union-attr]
    prefix = "properties.agentPoolProfiles[0]."
    assert targets == [
        prefix + "orchestratorVersion",
        prefix + "vmSize",
        prefix + "enableFIPS",
        prefix + "type",
        prefix + "orchestratorVersion",  # 1.24.9 is not installed either
    ]
    assert error["details"][-1]["code"] == "AgentPoolK8sVersionNotSupported"  # type: ignore[index]


def test_agent_pool_lifecycle(client: TestClient) -> None:
    assert client.put(CLUSTER, json=cluster_body()).status_code == 201
    pools = f"{CLUSTER}/agentPools"
    gpu = {"properties": {"count": 1, "vmSize": "Standard_NC4as_T4_v3", "gpuProfile": {"driver": "None"}}}
    created = client.put(f"{pools}/gpupool", json=gpu)
    assert created.status_code == 201 and "Azure-AsyncOperation" in created.headers
    props = created.json()["properties"]
    assert props["gpuProfile"] == {"driver": "None"} and props["provisioningState"] == "Creating"
    # a GA api-version: the image that can turn trusted launch on, without the preview registration
    assert props["nodeImageVersion"] == linux_image_version(trusted_launch=True, debian=debian_release())
    assert [p["name"] for p in client.get(pools).json()["value"]] == ["nodepool1", "gpupool"]
    assert client.get(f"{pools}/gpupool/machines").json() == {"value": []}  # no node booted yet
    assert_arm_error(client.get(f"{pools}/nosuchpool/machines"), 404, "ResourceNotFound", "agentPoolName")
    assert_arm_error(
        client.put(f"{pools}/gpupool", json=gpu, headers={"If-None-Match": "*"}),
        409,
        "DuplicateAgentPoolName",
        "name",
    )
    assert_arm_error(client.put(f"{pools}/gpupool", json=gpu), 409, "OperationNotAllowed")
    assert_arm_error(client.put(f"{pools}/Bad-Name", json=gpu), 400, "InvalidParameter", "name")
    deleted = client.delete(f"{pools}/gpupool")
    assert deleted.status_code == 202 and "Azure-AsyncOperation" in deleted.headers
    assert client.get(f"{pools}/gpupool").json()["properties"]["provisioningState"] == "Deleting"
    assert client.delete(f"{pools}/nosuchpool").status_code == 204
    assert_arm_error(client.get(f"{pools}/nosuchpool"), 404, "ResourceNotFound", "agentPoolName")


def test_pool_update_after_the_reconciler_finished(client: TestClient) -> None:
    register_trusted_launch(client)
    response = client.put(CLUSTER, json=cluster_body())
    operation_id = response.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        finish_operation(
            session, get_operation(session, SUB, operation_id), "Succeeded"
        )  # the reconciler's call
    pool_url = f"{CLUSTER}/agentPools/nodepool1"
    pool = client.get(pool_url).json()
    assert pool["properties"]["provisioningState"] == "Succeeded"
    pool["properties"]["securityProfile"] = {"enableSecureBoot": True}  # GET-modify-PUT, as az does
    updated = client.put(pool_url, json=pool)
    assert updated.status_code == 200
    assert updated.json()["properties"]["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": False}
    assert updated.json()["properties"]["provisioningState"] == "Updating"
    assert client.get(updated.headers["Location"]).status_code == 202


def test_validation_errors_use_the_arm_envelope(client: TestClient) -> None:
    error = assert_arm_error(
        client.put(CLUSTER, json={"properties": {"agentPoolProfiles": [{"name": "np", "count": -1}]}}),
        400,
        "InvalidRequestContent",
    )
    targets = {d["target"] for d in error["details"]}  # type: ignore[union-attr]
    assert targets == {"location", "properties.agentPoolProfiles.0.count"}
    bad_json = client.put(CLUSTER, content=b"{not json", headers={"Content-Type": "application/json"})
    assert_arm_error(bad_json, 400, "InvalidRequestContent")
    assert_arm_error(
        client.put(CLUSTER, json=cluster_body(osType="Linux", osSKU="Debian")),
        400,
        "InvalidRequestContent",
        "properties.agentPoolProfiles.0.osSKU",
    )
    bad_sub = CLUSTER.replace(SUB, "not-a-guid")
    assert_arm_error(client.get(bad_sub), 400, "InvalidSubscriptionId", "subscriptionId")
    assert_arm_error(client.get("/no/such/route"), 404, "NotFound")
    assert_arm_error(client.patch(f"{CLUSTER}/agentPools/nodepool1", json={}), 405, "MethodNotAllowed")


def test_server_failures_use_the_arm_envelope(tmp_path: Path) -> None:
    database = tmp_path / "c.db"
    token_file = tmp_path / "admin-token"
    app = create_app(f"sqlite:///{database}", token_file)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        create_group(client)
        with app.state.sessions.begin() as session:
            session.execute(text("DROP TABLE operations"))  # a broken store: every PUT fails
        error = assert_arm_error(
            client.put(CLUSTER, json=cluster_body(), params=API), 500, "InternalServerError"
        )
        assert "OperationalError" in str(error["message"]) and "operations" in str(error["message"])


def test_request_body_size_limit(client: TestClient) -> None:
    big = {"location": "eastus", "tags": {"pad": "x" * 70_000}}
    assert_arm_error(client.put(CLUSTER, json=big), 413, "RequestEntityTooLarge", "body")

    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(10):
            yield b"x" * 10_000

    assert_arm_error(client.put(CLUSTER, content=chunks()), 413, "RequestEntityTooLarge")


def test_openapi_types_every_response(tmp_path: Path) -> None:
    with TestClient(create_app(f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "admin-token")) as anonymous:
        schema = anonymous.get("/openapi.json").json()
    untyped = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response.get("content", {}).get("application/json")
                if content is not None and "$ref" not in content["schema"]:
                    untyped.append(f"{method.upper()} {path} {status}")
    assert not untyped, untyped
    components = schema["components"]["schemas"]
    cluster = components["ManagedClusterPropertiesOut"]["properties"]
    assert cluster["agentPoolProfiles"]["items"] == {"$ref": "#/components/schemas/AgentPoolProfileOut"}
    assert list(components["AgentPoolProfileOut"]["properties"])[:2] == ["name", "count"]
    pool = next(p for path, p in schema["paths"].items() if path.endswith("agentPools/{pool_name}"))
    assert {"200", "201"} <= set(pool["put"]["responses"]) and {"202", "204"} <= set(
        pool["delete"]["responses"]
    )
    assert {"subscription_id", "resource_group", "cluster_name", "pool_name"} <= {
        parameter["name"] for parameter in pool["get"]["parameters"]
    }


def test_authentication_required_except_health_and_openapi(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    with TestClient(create_app(f"sqlite:///{tmp_path / 'c.db'}", token_file)) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        schema = anonymous.get("/openapi.json").json()
        assert any("agentPools/{pool_name}" in path for path in schema["paths"])
        components = schema["components"]["schemas"]
        assert set(components["SecurityProfile"]["properties"]) == {"enableSecureBoot", "enableVTPM"}
        assert {"code", "message", "target", "details"} <= set(components["ErrorDetail"]["properties"])
        put = next(p for path, p in schema["paths"].items() if path.endswith("{cluster_name}"))["put"]
        assert {"201", "400", "401", "409"} <= set(put["responses"])
        parameters = {parameter["name"] for parameter in put["parameters"]}
        assert "api-version" in parameters
        assert anonymous.get("/docs").status_code in (401, 404)
        refused = anonymous.put(CLUSTER, json=cluster_body())
        error = assert_arm_error(refused, 401, "AuthenticationFailed")
        assert "TL_TOKEN" in str(error["message"]) and refused.headers["WWW-Authenticate"].startswith(
            "Bearer"
        )
        assert_arm_error(anonymous.get(CLUSTER), 401, "AuthenticationFailed")
        wrong = anonymous.delete(CLUSTER, headers={"Authorization": "Bearer tl_wrong"})
        assert_arm_error(wrong, 401, "InvalidAuthenticationToken")
        basic = anonymous.get(CLUSTER, headers={"Authorization": f"Basic {token_file.read_text().strip()}"})
        assert_arm_error(basic, 401, "InvalidAuthenticationToken")
        ok = anonymous.get(
            CLUSTER, headers={"Authorization": f"Bearer {token_file.read_text().strip()}"}, params=API
        )
        assert_arm_error(ok, 404, "ResourceGroupNotFound", "resourceGroupName")  # nothing exists yet


def test_features_and_providers(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    features = f"/subscriptions/{SUB}/providers/Microsoft.Features"
    feature = f"{features}/providers/Microsoft.ContainerService/features/TrustedLaunchPreview"
    assert client.get(feature).json()["properties"]["state"] == "NotRegistered"
    registered = client.post(f"{feature}/register").json()
    assert registered["name"] == "Microsoft.ContainerService/TrustedLaunchPreview"
    assert registered["properties"]["state"] == "Registering"
    provider = f"/subscriptions/{SUB}/providers/Microsoft.ContainerService"
    assert client.get(provider).json()["registrationState"] == "NotRegistered"
    assert client.post(f"{provider}/register").json()["registrationState"] == "Registered"
    # as on Azure, registering the provider does not hurry a Registering feature: its delay does
    assert client.get(feature).json()["properties"]["state"] == "Registering"
    assert_arm_error(
        client.put(CLUSTER, json=cluster_body(**TL), params=PREVIEW_API), 400, "PreviewFeatureNotRegistered"
    )
    monkeypatch.setenv(DELAY_ENV, "0")
    assert client.get(feature).json()["properties"]["state"] == "Registered"
    assert [f["properties"]["state"] for f in client.get(f"{features}/features").json()["value"]] == [
        "Registered"
    ]
    assert client.put(CLUSTER, json=cluster_body(**TL), params=PREVIEW_API).status_code == 201
    assert_arm_error(
        client.post(f"{features}/providers/Microsoft.ContainerService/features/Nope/register"),
        404,
        "FeatureNotFound",
    )


def test_credentials_and_cluster_delete(client: TestClient) -> None:
    assert client.put(CLUSTER, json=cluster_body()).status_code == 201
    credential = client.post(f"{CLUSTER}/listClusterUserCredential").json()["kubeconfigs"][0]
    config = json.loads(base64.b64decode(credential["value"]))
    assert config["current-context"] == "myakscluster" and config["users"][0]["user"]["token"]
    deleted = client.delete(CLUSTER)
    assert deleted.status_code == 202
    again = client.delete(CLUSTER)
    assert again.headers["Azure-AsyncOperation"] == deleted.headers["Azure-AsyncOperation"]
    assert_arm_error(client.put(f"{CLUSTER}/agentPools/more", json={}), 409, "OperationNotAllowed")
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        assert sorted(session.scalars(select(Operation.status))) == ["Canceled", "InProgress"]


def test_etags_and_conditional_requests(client: TestClient) -> None:
    created = client.put(CLUSTER, json=cluster_body())
    etag = created.json()["eTag"]
    assert etag.startswith('"') and client.get(CLUSTER).json()["eTag"] == etag
    pool = client.get(f"{CLUSTER}/agentPools/nodepool1").json()
    assert pool["properties"]["eTag"].startswith('"')
    # the store changes (the reconciler finishes the operation): the eTag changes with it
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        operation = session.scalars(select(Operation)).one()
        finish_operation(session, operation, "Succeeded")
    current = client.get(CLUSTER).json()["eTag"]
    assert current != etag
    stale = client.put(CLUSTER, json=cluster_body(), headers={"If-Match": etag})
    error = assert_arm_error(stale, 412, "PreconditionFailed", "If-Match")
    assert f"its eTag is now {current}" in str(error["message"])
    assert_arm_error(client.delete(CLUSTER, headers={"If-Match": etag}), 412, "PreconditionFailed")
    assert_arm_error(
        client.put(CLUSTER, json=cluster_body(), headers={"If-None-Match": "*"}), 412, "PreconditionFailed"
    )
    assert_arm_error(
        client.patch(CLUSTER, json={"tags": {}}, headers={"If-None-Match": current}),
        412,
        "PreconditionFailed",
    )
    missing = f"{RG_PATH}/managedClusters/nosuch"
    assert_arm_error(
        client.put(missing, json=cluster_body(), headers={"If-Match": "*"}), 412, "PreconditionFailed"
    )
    pool_etag = client.get(f"{CLUSTER}/agentPools/nodepool1").json()["properties"]["eTag"]
    stale_pool = client.put(
        f"{CLUSTER}/agentPools/nodepool1", json={"properties": {"count": 3}}, headers={"If-Match": '"old"'}
    )
    assert_arm_error(stale_pool, 412, "PreconditionFailed", "If-Match")
    tagged = client.patch(CLUSTER, json={"tags": {"env": "prod"}}, headers={"If-Match": current})
    assert tagged.status_code == 200 and tagged.json()["tags"] == {"env": "prod"}
    assert tagged.json()["eTag"] != current
    untouched = client.patch(CLUSTER, json={})  # an absent PATCH property is left as it is
    assert untouched.status_code == 200 and untouched.json()["tags"] == {"env": "prod"}
    assert_arm_error(client.patch(CLUSTER, json={"tags": {"x" * 600: "v"}}), 400, "InvalidRequestContent")
    updated = client.put(
        f"{CLUSTER}/agentPools/nodepool1", json={"properties": {"count": 3}}, headers={"If-Match": pool_etag}
    )
    assert updated.status_code == 200, updated.text


def test_pool_name_and_count_errors_as_aks_words_them(client: TestClient) -> None:
    body = cluster_body()
    body["properties"]["agentPoolProfiles"][0]["count"] = 1001  # type: ignore[index]
    error = assert_arm_error(
        client.put(CLUSTER, json=body), 400, "InvalidParameter", "properties.agentPoolProfiles.0.count"
    )
    assert error["message"] == (
        "The value of parameter agentPoolProfile.count was 1001. It must be greater than or equal to 0 and "
        "less than or equal to 1000."
    )
    body["properties"]["agentPoolProfiles"][0]["count"] = 10**200  # type: ignore[index]
    error = assert_arm_error(client.put(CLUSTER, json=body), 400, "InvalidParameter")
    assert f"count was {'1' + '0' * 63}. It must be" in str(error["message"])  # said back, bounded
    body["properties"]["agentPoolProfiles"][0]["count"] = "many"  # type: ignore[index]
    error = assert_arm_error(client.put(CLUSTER, json=body), 400, "InvalidRequestContent")
    assert "many" not in str(error["message"])  # not a range problem: not worded as one
    system = cluster_body(count=0, mode="System")
    error = assert_arm_error(
        client.put(CLUSTER, json=system), 400, "InvalidParameter", "properties.agentPoolProfiles[0].count"
    )
    assert "agentPoolProfile.count was 0" in str(error["message"])
    # a pool inside a cluster body: targets name the flat profile entry that exists in the body
    tl = cluster_body(**TL)
    error = assert_arm_error(
        client.put(CLUSTER, json=tl, params=PREVIEW_API), 400, "PreviewFeatureNotRegistered"
    )
    assert error["target"] == "properties.agentPoolProfiles[0].securityProfile"
    named = cluster_body(name="Bad-Name")
    error = assert_arm_error(client.put(CLUSTER, json=named), 400, "InvalidParameter")
    assert error["target"] == "properties.agentPoolProfiles[0].name"
    assert str(error["message"]).startswith("The value of parameter agentPoolProfile.name is invalid.")


def test_public_url_setting_gives_the_operation_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PUBLIC_URL_ENV, "https://tl.example.com:8443/")
    token_file = tmp_path / "admin-token"
    with TestClient(create_app(f"sqlite:///{tmp_path / 'c.db'}", token_file)) as client:
        client.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        create_group(client)
        created = client.put(CLUSTER, json=cluster_body(), params=API)
        assert created.headers["Azure-AsyncOperation"].startswith(
            f"https://tl.example.com:8443/subscriptions/{SUB}/providers/Microsoft.ContainerService/locations/"
        )
        assert created.headers["Location"].startswith("https://tl.example.com:8443/")
    monkeypatch.setenv(PUBLIC_URL_ENV, "tl.example.com")
    with pytest.raises(TrustedLaunchError, match="TL_PUBLIC_URL"):
        create_app(f"sqlite:///{tmp_path / 'c.db'}", token_file)


def test_resource_groups(client: TestClient) -> None:
    groups = f"/subscriptions/{SUB}/resourcegroups"  # any casing of the segment
    created = client.put(f"{groups}/Team-A", json={"location": "eastus", "tags": {"a": "1"}})
    assert (
        created.status_code == 201 and created.json()["id"] == f"/subscriptions/{SUB}/resourceGroups/Team-A"
    )
    assert client.put(f"{groups}/team-a", json={"location": "eastus"}).status_code == 200
    assert client.get(f"{groups}/TEAM-A").json()["tags"] == {"a": "1"}  # tags kept when not sent
    moved = client.put(f"{groups}/team-a", json={"location": "westeurope"})
    assert_arm_error(moved, 409, "InvalidResourceGroupLocation", "location")  # as ARM
    mars = client.put(f"{groups}/x", json={"location": "mars"})
    assert_arm_error(mars, 400, "LocationNotAvailableForResourceType")
    assert_arm_error(client.get(f"{groups}/nosuch"), 404, "ResourceGroupNotFound", "resourceGroupName")
    assert client.head(f"{groups}/nosuch").status_code == 404
    assert client.head(f"{groups}/team-a").status_code == 204
    wrong = client.get(f"{groups}/team-a", params=API)  # a Microsoft.ContainerService version
    assert_arm_error(wrong, 400, "InvalidApiVersionParameter", "api-version")
    # as ARM: nothing below a missing group (the fixture made myResourceGroup), names compared ignoring case
    elsewhere = f"{groups}/Team-B/providers/Microsoft.ContainerService/managedClusters"
    assert_arm_error(client.put(f"{elsewhere}/k", json=cluster_body()), 404, "ResourceGroupNotFound")
    assert_arm_error(client.get(elsewhere), 404, "ResourceGroupNotFound")
    assert_arm_error(client.delete(f"{elsewhere}/k"), 404, "ResourceGroupNotFound")
    assert_arm_error(client.get(f"{elsewhere}/k/agentPools/nodepool1/machines"), 404, "ResourceGroupNotFound")
    assert (
        client.put(CLUSTER.replace("myResourceGroup", "MYRESOURCEGROUP"), json=cluster_body()).status_code
        == 201
    )
    assert (
        client.get(CLUSTER).json()["id"].startswith(f"/subscriptions/{SUB}/resourceGroups/myResourceGroup/")
    )
    assert [g["name"] for g in client.get(groups).json()["value"]] == ["myResourceGroup", "Team-A"]
    deleted = client.delete(f"{groups}/myResourceGroup")
    assert deleted.status_code == 202 and "/operationresults/" in deleted.headers["Location"]
    # as ARM, the group stays (Deleting) until its clusters are gone, and takes nothing new meanwhile
    assert client.get(CLUSTER).json()["properties"]["provisioningState"] == "Deleting"
    assert client.get(f"{groups}/myresourcegroup").json()["properties"]["provisioningState"] == "Deleting"
    for refused in (
        client.put(f"{groups}/myResourceGroup", json={"location": "eastus"}),
        client.put(f"{RG_PATH}/managedClusters/k2", json=cluster_body()),
        client.put(f"{CLUSTER}/agentPools/pool2", json={"properties": {"count": 1}}),
    ):
        assert_arm_error(refused, 409, "ResourceGroupBeingDeleted", "resourceGroupName")
    operation = deleted.headers["Location"].split("/operationresults/")[1].split("?")[0]
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        finish_operation(session, get_operation(session, SUB, operation), "Succeeded")
    assert client.head(f"{groups}/myResourceGroup").status_code == 404
    assert_arm_error(client.get(CLUSTER), 404, "ResourceGroupNotFound")
    assert client.delete(f"{groups}/team-a").status_code == 200
    assert client.delete(f"{groups}/team-a").status_code == 204
