"""Paths and bodies shared by the API tests, and raw HTTP/1.1 over a socket (paths sent byte for byte)."""

from __future__ import annotations

import contextlib
import json
import socket

import httpx
from fastapi.testclient import TestClient

from trustedlaunch.control.limits import DEFAULT_KUBERNETES_VERSION

SUB = "11111111-2222-3333-4444-555555555555"
RG_PATH = f"/subscriptions/{SUB}/resourceGroups/myResourceGroup/providers/Microsoft.ContainerService"
CLUSTER = f"{RG_PATH}/managedClusters/myAKSCluster"
API = {"api-version": "2024-09-01"}
PREVIEW_API = {"api-version": "2023-11-02-preview"}  # trusted launch needs TrustedLaunchPreview registered
FEATURES_API = {"api-version": "2021-07-01"}
RESOURCES_API = {"api-version": "2025-04-01"}


def create_group(
    client: TestClient | httpx.Client, name: str = "myResourceGroup", subscription: str = SUB
) -> None:
    """Create resource group `name` (in eastus), as every script does before it creates a cluster in it."""
    path = f"/subscriptions/{subscription}/resourceGroups/{name}"
    created = client.put(path, params=RESOURCES_API, json={"location": "eastus"})
    assert created.status_code in (200, 201), created.text


def register_trusted_launch(client: TestClient) -> None:
    """Register TrustedLaunchPreview (Registered at once with the registration delay 0) and the provider."""
    features = f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
    registered = client.post(f"{features}/features/TrustedLaunchPreview/register", params=FEATURES_API)
    assert registered.status_code == 200
    provider = f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/register"
    assert client.post(provider, params=RESOURCES_API).status_code == 200


def cluster_body(**pool: object) -> dict[str, object]:
    return {
        "location": "eastus",
        "properties": {
            "kubernetesVersion": DEFAULT_KUBERNETES_VERSION,
            "agentPoolProfiles": [{"name": "nodepool1", "count": 2, "vmSize": "Standard_D4s_v3", **pool}],
        },
    }


def raw_request(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` on a new connection to `url`'s server; the response's status, headers and body."""
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port or 80), timeout=30) as connection:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered before reading it all
            connection.sendall(data)
        received = b""
        while True:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


def http_bytes(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """One HTTP/1.1 request (Connection: close) with `target` exactly as given: no client rewrites it."""
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def arm_code(body: bytes) -> str:
    """The error code of an ARM error body."""
    return str(json.loads(body)["error"]["code"])
