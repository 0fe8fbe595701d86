"""The node adapter against kmock's Kubernetes emulator on 127.0.0.1, through a kubeconfig file; the
adapter's client is synchronous, so it runs in a worker thread while kmock serves on the event loop."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from trustedlaunch.control.kubernetes import KubernetesAdapterError, KubernetesNodeAdapter, Taint
from trustedlaunch.control.labels import (
    LABEL_SECURE_BOOT,
    LABEL_TRUSTED_LAUNCH,
    QUARANTINE_ANNOTATION,
    QUARANTINE_TAINT_KEY,
)

NODES = kmock.resource("v1/nodes")
NODE = "aks-pool1-0"
TRUSTED = {LABEL_SECURE_BOOT: "true", LABEL_TRUSTED_LAUNCH: "true"}
FOREIGN_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoExecute"}
QUARANTINE_TAINT = {"key": QUARANTINE_TAINT_KEY, "value": "true", "effect": "NoSchedule"}
MERGE_PATCH = "application/merge-patch+json"


def trusted_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE,
            "resourceVersion": "41",
            "labels": {"kubernetes.io/hostname": NODE, "agentpool": "pool1", **TRUSTED},
        },
        "spec": {"taints": [FOREIGN_TAINT]},
    }


def write_kubeconfig(path: Path, contexts: dict[str, tuple[str, str]], current: str) -> Path:
    """A kubeconfig file with one cluster and user (server URL, bearer token) per context."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": name, "cluster": {"server": url}} for name, (url, _) in contexts.items()
                ],
                "users": [{"name": name, "user": {"token": token}} for name, (_, token) in contexts.items()],
                "contexts": [{"name": name, "context": {"cluster": name, "user": name}} for name in contexts],
                "current-context": current,
            }
        )
    )
    return path


@pytest.fixture
def adapter(kmock: kmock.KubernetesEmulator, tmp_path: Path) -> Iterator[KubernetesNodeAdapter]:
    kmock.objects[NODES, None, NODE] = trusted_node()
    server = str(kmock.url).rstrip("/")
    assert server.startswith("http://127.0.0.1:")
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"test": (server, "s3cr3t")}, "test")
    with KubernetesNodeAdapter(kubeconfig) as node_adapter:
        yield node_adapter


def stored_node(emulator: kmock.KubernetesEmulator) -> dict[str, Any]:
    node: dict[str, Any] = copy.deepcopy(emulator.objects[NODES, None, NODE].raw)
    return node


def received(emulator: kmock.KubernetesEmulator) -> list[tuple[str, str, str | None, Any]]:
    """Every request the server got: method, path and query, content type, JSON body."""
    return [
        (
            str(request.method).removeprefix("method."),
            request.url.path_qs,
            request.headers.get("Content-Type"),
            request.data,
        )
        for request in emulator
    ]


@pytest.mark.asyncio
async def test_quarantine_taints_cordons_and_removes_our_labels(
    kmock: kmock.KubernetesEmulator, adapter: KubernetesNodeAdapter
) -> None:
    assert await asyncio.to_thread(adapter.quarantine, NODE, "PCR4: grubx64.efi is not in the image policy")
    path = f"/api/v1/nodes/{NODE}"
    assert received(kmock) == [
        ("GET", path, None, None),
        (
            "PATCH",
            f"{path}?fieldManager=trustedlaunch",
            MERGE_PATCH,
            {
                "metadata": {
                    "labels": {LABEL_SECURE_BOOT: None, LABEL_TRUSTED_LAUNCH: None},
                    "annotations": {QUARANTINE_ANNOTATION: "PCR4: grubx64.efi is not in the image policy"},
                    "resourceVersion": "41",
                },
                "spec": {"taints": [FOREIGN_TAINT, QUARANTINE_TAINT], "unschedulable": True},
            },
        ),
    ]
    assert all(request.headers["Authorization"] == "Bearer s3cr3t" for request in kmock)
    node = stored_node(kmock)
    assert node["metadata"]["labels"] == {"kubernetes.io/hostname": NODE, "agentpool": "pool1"}
    assert node["spec"] == {"taints": [FOREIGN_TAINT, QUARANTINE_TAINT], "unschedulable": True}

    assert not await asyncio.to_thread(
        adapter.quarantine, NODE, "PCR4: grubx64.efi is not in the image policy"
    )
    assert [method for method, *_ in received(kmock)] == ["GET", "PATCH", "GET"]


@pytest.mark.asyncio
async def test_restore_after_a_new_attestation_gives_the_labels_back(
    kmock: kmock.KubernetesEmulator, adapter: KubernetesNodeAdapter
) -> None:
    await asyncio.to_thread(adapter.quarantine, NODE, "Secure Boot disabled")
    assert await asyncio.to_thread(adapter.restore, NODE, TRUSTED)
    [*_, (method, _, content_type, patch)] = received(kmock)
    assert (method, content_type) == ("PATCH", MERGE_PATCH)
    assert patch == {
        "metadata": {
            "labels": TRUSTED,
            "annotations": {QUARANTINE_ANNOTATION: None},
            "resourceVersion": "41",  # the emulator keeps the version it was given
        },
        "spec": {"taints": [FOREIGN_TAINT], "unschedulable": False},
    }
    node = stored_node(kmock)
    assert node["metadata"]["labels"] == trusted_node()["metadata"]["labels"]
    assert node["metadata"]["annotations"] == {}
    assert node["spec"] == {"taints": [FOREIGN_TAINT], "unschedulable": False}

    requests_before = len(kmock)
    assert not await asyncio.to_thread(adapter.restore, NODE, TRUSTED)
    assert [method for method, *_ in received(kmock)[requests_before:]] == ["GET", "GET"]


@pytest.mark.asyncio
async def test_restore_leaves_a_node_cordoned_by_an_operator_cordoned(
    kmock: kmock.KubernetesEmulator, adapter: KubernetesNodeAdapter
) -> None:
    kmock.objects[NODES, None, NODE].patch({"spec": {"unschedulable": True}, "metadata": {"labels": None}})
    assert await asyncio.to_thread(adapter.restore, NODE, TRUSTED)
    [*_, (_, _, _, patch)] = received(kmock)
    assert patch == {"metadata": {"labels": TRUSTED, "resourceVersion": "41"}}
    assert stored_node(kmock)["spec"]["unschedulable"] is True


@pytest.mark.asyncio
async def test_apply_node_state_sets_our_keys_only(
    kmock: kmock.KubernetesEmulator, adapter: KubernetesNodeAdapter
) -> None:
    maintenance = Taint(QUARANTINE_TAINT_KEY, "true", "PreferNoSchedule")
    changed = await asyncio.to_thread(
        adapter.apply_node_state, NODE, labels={LABEL_SECURE_BOOT: "true"}, taints=[maintenance]
    )
    assert changed
    [_, (_, _, _, patch)] = received(kmock)
    assert patch == {
        "metadata": {"labels": {LABEL_TRUSTED_LAUNCH: None}, "resourceVersion": "41"},
        "spec": {"taints": [FOREIGN_TAINT, maintenance.to_dict()]},
    }
    with pytest.raises(ValueError, match="'agentpool' is not one of our keys"):
        await asyncio.to_thread(adapter.apply_node_state, NODE, labels={"agentpool": "other"})
    assert len(kmock) == 3  # the refused call read the node and sent nothing


@pytest.mark.asyncio
async def test_unknown_node_is_an_error_naming_it(
    kmock: kmock.KubernetesEmulator, adapter: KubernetesNodeAdapter
) -> None:
    with pytest.raises(KubernetesAdapterError, match="node aks-gone-7: 404"):
        await asyncio.to_thread(adapter.quarantine, "aks-gone-7", "Secure Boot disabled")
    assert [method for method, *_ in received(kmock)] == ["GET"]


def test_unreachable_api_server_is_an_error_naming_the_node(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", {"down": ("http://127.0.0.1:9", "t")}, "down")
    with (
        KubernetesNodeAdapter(kubeconfig) as adapter,
        pytest.raises(KubernetesAdapterError, match="node aks-pool1-0: ConnectError"),
    ):
        adapter.quarantine(NODE, "Secure Boot disabled")


@pytest.mark.asyncio
async def test_context_selects_the_cluster_and_credentials(
    kmock: kmock.KubernetesEmulator, tmp_path: Path
) -> None:
    kmock.objects[NODES, None, NODE] = trusted_node()
    server = str(kmock.url).rstrip("/")
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig",
        {"elsewhere": ("http://127.0.0.1:9", "wrong"), "ours": (server, "right-token")},
        current="elsewhere",
    )
    with KubernetesNodeAdapter(kubeconfig, context="ours") as adapter:
        assert await asyncio.to_thread(adapter.quarantine, NODE, "Secure Boot disabled")
    assert {request.headers["Authorization"] for request in kmock} == {"Bearer right-token"}
    with pytest.raises(KubernetesAdapterError, match="Context 'missing' not found"):
        KubernetesNodeAdapter(kubeconfig, context="missing")


@pytest.mark.asyncio
async def test_restore_lifts_a_quarantine_an_earlier_release_wrote(
    kmock: kmock.KubernetesEmulator, adapter: KubernetesNodeAdapter
) -> None:
    """Nodes quarantined before the AKS label keys carry trustedlaunch.io/ keys: a node that attests again
    loses them all and is uncordoned; the adapter never sets such a key."""
    legacy_taint = {"key": "trustedlaunch.io/attestation-failed", "value": "true", "effect": "NoSchedule"}
    kmock.objects[NODES, None, NODE].patch(
        {
            "metadata": {
                "labels": {"trustedlaunch.io/trusted-launch": "true", **dict.fromkeys(TRUSTED)},
                "annotations": {"trustedlaunch.io/quarantine-reason": "PCR7: Secure Boot disabled"},
            },
            "spec": {"taints": [FOREIGN_TAINT, legacy_taint], "unschedulable": True},
        }
    )
    assert await asyncio.to_thread(adapter.restore, NODE, TRUSTED)
    node = stored_node(kmock)
    assert node["metadata"]["labels"] == trusted_node()["metadata"]["labels"]
    assert node["metadata"]["annotations"] == {}
    assert node["spec"] == {"taints": [FOREIGN_TAINT], "unschedulable": False}
    with pytest.raises(ValueError, match=r"'trustedlaunch\.io/secure-boot' is not one of our keys"):
        await asyncio.to_thread(
            adapter.apply_node_state, NODE, labels={"trustedlaunch.io/secure-boot": "true"}
        )
