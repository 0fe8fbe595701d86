"""Paths and bodies shared by the API tests."""

from __future__ import annotations

from fastapi.testclient import TestClient

SUB = "11111111-2222-3333-4444-555555555555"
RG_PATH = f"/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.ContainerService"
CLUSTER = f"{RG_PATH}/managedClusters/myAKSCluster"
API = {"api-version": "2024-09-01"}


def register_trusted_launch(client: TestClient) -> None:
    features = f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
    assert client.post(f"{features}/features/TrustedLaunchPreview/register", params=API).status_code == 200
    assert (
        client.post(f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/register").status_code == 200
    )


def cluster_body(**pool: object) -> dict[str, object]:
    return {
        "location": "eastus",
        "properties": {
            "kubernetesVersion": "1.30.6",
            "agentPoolProfiles": [{"name": "nodepool1", "count": 2, "vmSize": "Standard_D4s_v3", **pool}],
        },
    }
