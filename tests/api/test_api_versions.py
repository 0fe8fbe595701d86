"""The api-version query parameter, validated as ARM does, and trusted launch with GA and preview versions."""

from __future__ import annotations

from api_helpers import CLUSTER, FEATURES_API, RESOURCES_API, SUB, cluster_body
from fastapi.testclient import TestClient

from trustedlaunch.api.api_versions import (
    CONTAINER_SERVICE,
    FEATURES,
    RESOURCES,
    default_version,
    provider_of,
)

TL = {"securityProfile": {"enableSecureBoot": True, "enableVTPM": True}}
FEATURE = (
    f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService/features/"
    "TrustedLaunchPreview"
)


def error_of(response: object) -> dict[str, str]:
    assert hasattr(response, "status_code") and response.status_code == 400, response.text  # type: ignore[attr-defined]
    return response.json()["error"]  # type: ignore[attr-defined,no-any-return]


def test_missing_unknown_and_malformed_api_versions(client: TestClient) -> None:
    client.event_hooks = {"request": []}  # send exactly what the test gives
    missing = error_of(client.get(CLUSTER))
    assert missing["code"] == "MissingApiVersionParameter"
    assert (
        missing["message"] == "The api-version query parameter (?api-version=) is required for all requests."
    )
    assert error_of(client.get(CLUSTER, params={"api-version": ""}))["code"] == "MissingApiVersionParameter"

    # a resource provider's unknown version: NoRegisteredProviderFound with its versions, newest first
    unknown = error_of(client.get(CLUSTER, params={"api-version": "2099-01-01"}))
    assert unknown["code"] == "NoRegisteredProviderFound"
    assert "'2099-01-01'" in unknown["message"] and "type 'managedClusters'" in unknown["message"]
    assert "The supported api-versions are '2026-08-01, 2025-08-01," in unknown["message"]
    assert "2023-11-02-preview" in unknown["message"]
    pools = error_of(client.get(f"{CLUSTER}/agentPools", params={"api-version": "2019-01-01"}))
    assert pools["code"] == "NoRegisteredProviderFound" and "'managedClusters/agentPools'" in pools["message"]

    # not an api-version at all, or a version ARM's own namespaces do not have: InvalidApiVersionParameter
    malformed = error_of(client.get(CLUSTER, params={"api-version": "abc"}))
    assert malformed["code"] == "InvalidApiVersionParameter"
    assert malformed["message"].startswith("The api-version 'abc' is invalid. The supported versions are '")
    feature = error_of(client.get(FEATURE, params={"api-version": "2024-09-01"}))
    assert (
        feature["code"] == "InvalidApiVersionParameter" and "'2021-07-01, 2015-12-01'" in feature["message"]
    )
    provider = f"/subscriptions/{SUB}/providers/Microsoft.ContainerService"
    assert error_of(client.get(provider, params={"api-version": "2024-09-01"}))["code"] == (
        "InvalidApiVersionParameter"
    )

    # every supported version is served (the 404 is the cluster's: the version passed)
    for version in CONTAINER_SERVICE.versions:
        assert (
            client.get(CLUSTER, params={"api-version": version}).json()["error"]["code"] == "ResourceNotFound"
        )
    assert client.get(FEATURE, params=FEATURES_API).status_code == 200
    assert client.get(provider, params=RESOURCES_API).status_code == 200


def test_trusted_launch_needs_the_registration_with_preview_versions_only(client: TestClient) -> None:
    preview = {"api-version": "2023-11-02-preview"}
    refused = error_of(client.put(CLUSTER, json=cluster_body(**TL), params=preview))
    assert refused["code"] == "PreviewFeatureNotRegistered" and "GA api-version" in refused["message"]
    for version in ("2024-07-01", "2026-08-01"):  # GA: no registration
        path = f"{CLUSTER}-{version}"
        created = client.put(path, json=cluster_body(**TL), params={"api-version": version})
        assert created.status_code == 201, created.text
        pool = created.json()["properties"]["agentPoolProfiles"][0]
        assert pool["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": True}
        assert f"api-version={version}" in created.headers["Azure-AsyncOperation"]


def test_the_namespace_is_read_where_arm_puts_it() -> None:
    """A resource group or cluster name cannot pose as a namespace: the segment after the `providers` that
    follows the subscription (and resource group) decides."""
    posing = f"/subscriptions/{SUB}/resourceGroups/Microsoft.Features/providers/Microsoft.ContainerService"
    assert provider_of(f"{posing}/managedClusters/providers") == (CONTAINER_SERVICE, "managedClusters")
    assert provider_of(f"{posing}/managedClusters/c1/agentPools/p1")[1] == "managedClusters/agentPools"
    assert provider_of(FEATURE) == (FEATURES, "features")
    assert provider_of(f"/subscriptions/{SUB}/resourceGroups/providers") == (RESOURCES, "resourceGroups")
    assert provider_of(f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/register")[0] is RESOURCES
    assert provider_of("/providers/Microsoft.TrustedLaunch/attestation/challenge")[0] is CONTAINER_SERVICE
    assert default_version(f"{posing}/managedClusters/c1") == "2026-08-01"
