"""AKS's node image upgrade API without VMs: `GET .../agentPools/{pool}/upgradeProfiles/default` names the
latest node image version of the pool's flavour (trusted launch capable or not: the one built from the
newest packages, whatever its name) with its kernel, shim and GRUB packages in componentsByReleases, and
`POST .../upgradeNodeImageVersion` moves a pool on an older built version onto it (202,
Azure-AsyncOperation, the pool UpgradingNodeImageVersion), refused with 409 while an operation runs, never
a downgrade."""

from __future__ import annotations

import older_image_version
from api_helpers import API, CLUSTER, PREVIEW_API, SUB, cluster_body, register_trusted_launch
from debian_boot_packages import NEWER_KERNEL
from fastapi.testclient import TestClient
from older_image_version import NEWER_NAMED_EARLIER, OLDER

from trustedlaunch.control.boot_packages import GRUB_PACKAGE, SHIM_PACKAGE
from trustedlaunch.control.limits import DEFAULT_KUBERNETES_VERSION
from trustedlaunch.control.node_image_versions import image_versions
from trustedlaunch.control.node_images import IMAGE_RELEASE
from trustedlaunch.control.operations import finish_operation, get_operation

POOL = f"{CLUSTER}/agentPools/nodepool1"


def finish(client: TestClient, response: object) -> None:
    """Finish the response's operation as the reconciler would (no VMs here)."""
    operation_id = response.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]  # type: ignore[attr-defined]
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        finish_operation(session, get_operation(session, SUB, operation_id), "Succeeded")


def put_pool_on_older_version(client: TestClient) -> tuple[str, str]:
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        return older_image_version.put_pool_on_older_version(session, "nodepool1")


def test_get_upgrades_names_the_latest_and_the_upgrade_moves_the_pool(client: TestClient) -> None:
    register_trusted_launch(client)
    created = client.put(CLUSTER, json=cluster_body(count=1), params=API)
    assert created.status_code == 201, created.text
    finish(client, created)
    older, latest = put_pool_on_older_version(client)
    assert older.endswith(OLDER) and "TLcontainerd" in older and latest.endswith(IMAGE_RELEASE)

    profile = client.get(f"{POOL}/upgradeProfiles/default", params=API)
    assert profile.status_code == 200, profile.text
    body = profile.json()
    assert body["id"].endswith("/agentPools/nodepool1/upgradeProfiles/default")
    assert body["type"] == "Microsoft.ContainerService/managedClusters/agentPools/upgradeProfiles"
    assert body["properties"]["latestNodeImageVersion"] == latest
    assert body["properties"]["osType"] == "Linux"
    assert body["properties"]["upgrades"] == []  # one Kubernetes version installed
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        build = image_versions(session)[0][1]
    minor = ".".join(DEFAULT_KUBERNETES_VERSION.split(".")[:2])
    assert body["properties"]["componentsByReleases"] == [
        {
            "kubernetesVersion": minor,
            "components": [  # what the latest is built from: the installed boot chain's packages
                {"name": build.kernel_package, "version": build.kernel_version},
                {"name": SHIM_PACKAGE, "version": build.shim_version},
                {"name": GRUB_PACKAGE, "version": build.grub_version},
            ],
        }
    ]

    upgraded = client.post(f"{POOL}/upgradeNodeImageVersion", params=API)
    assert upgraded.status_code == 202, upgraded.text
    assert "/operations/" in upgraded.headers["Azure-AsyncOperation"]
    assert upgraded.json()["properties"]["nodeImageVersion"] == latest
    assert upgraded.json()["properties"]["provisioningState"] == "UpgradingNodeImageVersion"
    again = client.post(f"{POOL}/upgradeNodeImageVersion", params=API)
    assert again.status_code == 409 and again.json()["error"]["code"] == "OperationNotAllowed"
    finish(client, upgraded)
    assert client.get(POOL, params=API).json()["properties"]["provisioningState"] == "Succeeded"

    on_latest = client.post(f"{POOL}/upgradeNodeImageVersion", params=API)  # nothing to do: ends at once
    assert on_latest.status_code == 202 and on_latest.json()["properties"]["nodeImageVersion"] == latest


def test_a_pool_that_is_not_trusted_launch_capable_stays_so(client: TestClient) -> None:
    # a preview api-version before TrustedLaunchPreview was registered: the pool's image is not TL capable
    created = client.put(CLUSTER, json=cluster_body(count=1), params=PREVIEW_API)
    finish(client, created)
    older, latest = put_pool_on_older_version(client)
    assert "TLcontainerd" not in older and "TLcontainerd" not in latest and latest.endswith(IMAGE_RELEASE)
    profile = client.get(f"{POOL}/upgradeProfiles/default", params=API).json()
    assert profile["properties"]["latestNodeImageVersion"] == latest
    upgraded = client.post(f"{POOL}/upgradeNodeImageVersion", params=API)
    assert upgraded.json()["properties"]["nodeImageVersion"] == latest


def test_a_pool_on_a_built_version_keeps_its_trusted_launch_check(client: TestClient) -> None:
    created = client.put(CLUSTER, json=cluster_body(count=1), params=PREVIEW_API)
    finish(client, created)
    register_trusted_launch(client)  # after the pool was created: its image stays not capable, as AKS
    older, _ = put_pool_on_older_version(client)
    pool = client.get(POOL, params=API).json()
    pool["properties"]["securityProfile"] = {"enableSecureBoot": True, "enableVTPM": True}
    refused = client.put(POOL, json=pool, params=API)
    assert refused.status_code == 400, refused.text
    assert older in refused.text


def test_unknown_pool_is_404(client: TestClient) -> None:
    created = client.put(CLUSTER, json=cluster_body(count=1), params=API)
    finish(client, created)
    assert client.get(f"{CLUSTER}/agentPools/nopool/upgradeProfiles/default", params=API).status_code == 404
    assert client.post(f"{CLUSTER}/agentPools/nopool/upgradeNodeImageVersion", params=API).status_code == 404


def test_a_newer_kernel_is_the_latest_whatever_day_debian_built_it(client: TestClient) -> None:
    """Defect of issue 17: a version of a newer kernel that Debian built before this release's day sorted
    older (by its name) and was never offered. Versions are ordered by their packages: it is the latest
    under the name an earlier release gave it, and the upgrade moves a pool on this release's onto it."""
    register_trusted_launch(client)
    created = client.put(CLUSTER, json=cluster_body(count=1), params=API)
    finish(client, created)
    current = client.get(POOL, params=API).json()["properties"]["nodeImageVersion"]
    assert current.endswith(IMAGE_RELEASE)
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        newer = older_image_version.store_newer_kernel_version(session)
    latest = newer.version()
    assert latest.endswith(NEWER_NAMED_EARLIER) and NEWER_NAMED_EARLIER < IMAGE_RELEASE

    properties = client.get(f"{POOL}/upgradeProfiles/default", params=API).json()["properties"]
    assert properties["latestNodeImageVersion"] == latest
    [release] = properties["componentsByReleases"]
    assert release["components"][0] == {"name": NEWER_KERNEL[0], "version": NEWER_KERNEL[1]}

    upgraded = client.post(f"{POOL}/upgradeNodeImageVersion", params=API)
    assert upgraded.status_code == 202, upgraded.text
    assert upgraded.json()["properties"]["nodeImageVersion"] == latest  # not refused as a downgrade
    finish(client, upgraded)


def test_new_pools_get_the_latest_version_of_their_flavour_existing_ones_keep_theirs(
    client: TestClient,
) -> None:
    """As AKS: a new pool (of a new cluster or added to one) gets the latest node image version of its
    flavour, the one built from the newest packages (here a newer kernel's, named before this release), so
    every node it creates, surge ones included, boots that version; a pool that exists keeps its version,
    scaled up too, until it is upgraded (its nodes keep attesting against that version's policy)."""
    # a preview api-version before TrustedLaunchPreview was registered: the flavour that is not capable
    created = client.put(CLUSTER, json=cluster_body(count=1), params=PREVIEW_API)
    finish(client, created)
    existing = client.get(POOL, params=API).json()["properties"]["nodeImageVersion"]
    assert existing.endswith(IMAGE_RELEASE) and "TLcontainerd" not in existing
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        newer = older_image_version.store_newer_kernel_version(session)

    pool = client.get(POOL, params=API).json()
    pool["properties"]["count"] = 2
    scaled = client.put(POOL, json=pool, params=API)
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["properties"]["nodeImageVersion"] == existing  # scale-up: the pool's own version
    finish(client, scaled)

    plain = client.put(f"{CLUSTER}/agentPools/plain", json={"properties": {"count": 1}}, params=PREVIEW_API)
    assert plain.status_code == 201, plain.text
    assert plain.json()["properties"]["nodeImageVersion"] == newer.version(trusted_launch=False)
    finish(client, plain)

    register_trusted_launch(client)
    capable = client.put(f"{CLUSTER}/agentPools/capable", json={"properties": {"count": 1}}, params=API)
    assert capable.status_code == 201, capable.text
    assert capable.json()["properties"]["nodeImageVersion"] == newer.version(trusted_launch=True)
    other_cluster = CLUSTER.replace("myAKSCluster", "other")
    second = client.put(other_cluster, json=cluster_body(count=1), params=API)
    assert second.status_code == 201, second.text
    [new_pool] = second.json()["properties"]["agentPoolProfiles"]
    assert new_pool["nodeImageVersion"] == newer.version(trusted_launch=True)

    # what the existing pool is offered is what new pools got
    profile = client.get(f"{POOL}/upgradeProfiles/default", params=API).json()["properties"]
    assert profile["latestNodeImageVersion"] == newer.version(trusted_launch=False)
    assert client.get(POOL, params=API).json()["properties"]["nodeImageVersion"] == existing
