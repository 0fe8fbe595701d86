"""The reconciler behind the real API server (BackgroundServer, real SQLite, real QEMU + swtpm VMs):
create a Secure Boot + vTPM cluster, add a vTPM-only pool, enable Secure Boot on it (rolling reimage with a
new EK), delete that pool, delete the cluster. Three VM boots in all (1-node pools)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from reconciler_helpers import SUB, nodes, processes_under, wait_until
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.features import DELAY_ENV
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import Node

pytestmark = pytest.mark.slow
API = {"api-version": "2024-09-01"}
CLUSTER = (
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/tlcluster"
)
OPERATION_TIMEOUT = 400.0
SB_LABEL = "kubernetes.azure.com/secure-boot"
TL_LABEL = "kubernetes.azure.com/trusted-launch"


@dataclass
class ControlPlane:
    client: httpx.Client
    sessions: sessionmaker[Session]
    state_dir: Path


@pytest.fixture(scope="module")
def control_plane(reconciler_base: Path, state_dir: Path) -> Iterator[ControlPlane]:
    """The API with its reconciler thread on reconciler_base/api.db; the trusted launch feature registered."""
    url = f"sqlite:///{reconciler_base / 'api.db'}"
    token_file = reconciler_base / "api-token"
    engine = make_engine(url)
    reconciler = Reconciler(session_factory(engine), state_dir, poll_seconds=0.2)
    with (
        pytest.MonkeyPatch.context() as patch,
        BackgroundServer(create_app(url, token_file), reconciler=reconciler) as server,
    ):
        patch.setenv(DELAY_ENV, "0")
        headers = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        with httpx.Client(base_url=server.url, headers=headers, params=API, timeout=60) as client:
            features = (
                f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
            )
            client.post(
                f"{features}/features/TrustedLaunchPreview/register", params={"api-version": "2021-07-01"}
            ).raise_for_status()
            client.put(
                f"/subscriptions/{SUB}/resourceGroups/rg",
                json={"location": "eastus"},
                params={"api-version": "2025-04-01"},
            ).raise_for_status()
            client.post(
                f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/register",
                params={"api-version": "2025-04-01"},
            ).raise_for_status()
            yield ControlPlane(client, session_factory(engine), state_dir)
    engine.dispose()


def finish(plane: ControlPlane, response: httpx.Response) -> tuple[dict[str, object], list[str]]:
    """Wait for the response's operation to end; return its final status and the progress notes seen."""
    assert response.status_code in (200, 201, 202), response.text
    url = response.headers["Azure-AsyncOperation"]
    notes: list[str] = []

    def ended() -> dict[str, object] | None:
        status = plane.client.get(url).json()
        note = str(status.get("properties", {}).get("note", ""))
        if not notes or notes[-1] != note:
            notes.append(note)
        return status if status["status"] != "InProgress" else None

    return wait_until(ended, OPERATION_TIMEOUT, f"operation {url}"), notes


def pool_nodes(plane: ControlPlane, pool: str) -> list[Node]:
    return [
        node for node in nodes(plane.sessions) if node.labels.get("kubernetes.azure.com/agentpool") == pool
    ]


def ek_certificate(node: Node) -> bytes:
    assert node.run_dir is not None
    return (Path(node.run_dir) / "tpm" / "ek-rsa2048.crt").read_bytes()


def test_create_cluster_boots_an_attested_secure_boot_vtpm_node(control_plane: ControlPlane) -> None:
    profile = {
        "name": "nodepool1",
        "count": 1,
        "vmSize": "Standard_D4s_v3",
        "securityProfile": {"enableSecureBoot": True, "enableVTPM": True},
    }
    body = {"location": "eastus", "properties": {"agentPoolProfiles": [profile]}}
    status, notes = finish(control_plane, control_plane.client.put(CLUSTER, json=body))
    assert status["status"] == "Succeeded", status
    assert "agent pool nodepool1: creating node 1/1" in notes
    cluster = control_plane.client.get(CLUSTER).json()
    assert cluster["properties"]["provisioningState"] == "Succeeded"
    assert cluster["properties"]["agentPoolProfiles"][0]["provisioningState"] == "Succeeded"
    (node,) = nodes(control_plane.sessions)
    assert (node.state, node.attestation_status, node.enable_secure_boot, node.enable_vtpm) == (
        "Ready",
        "Attested",
        True,
        True,
    )
    assert node.labels == {
        "kubernetes.azure.com/agentpool": "nodepool1",
        "kubernetes.azure.com/attestation-status": "Attested",
        TL_LABEL: "true",
        SB_LABEL: "true",
    }
    assert node.attestation_state is not None and node.attestation_state["akName"]
    running = processes_under(Path(str(node.run_dir)))
    assert len(running) == 2 and any("secboot" in line for line in running), running  # qemu + swtpm
    (machine,) = control_plane.client.get(f"{CLUSTER}/agentPools/nodepool1/machines").json()["value"]
    assert machine["name"] == node.name and machine["properties"]["labels"] == node.labels
    assert machine["properties"]["attestationStatus"] == "Attested"
    assert machine["properties"]["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": True}
    listed = CliRunner().invoke(
        app,
        ["aks", "machine", "list", "-g", "rg", "--cluster-name", "tlcluster", "--nodepool-name", "nodepool1"],
        env={
            "TL_ENDPOINT": str(control_plane.client.base_url),
            "TL_TOKEN": control_plane.client.headers["Authorization"].removeprefix("Bearer "),
            "TL_SUBSCRIPTION": SUB,
        },
    )
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout) == [machine]


def test_vtpm_only_pool_then_enabling_secure_boot_reimages_the_node(control_plane: ControlPlane) -> None:
    pool_url = f"{CLUSTER}/agentPools/vtpmpool"
    body = {
        "properties": {
            "count": 1,
            "vmSize": "Standard_D4s_v3",
            "securityProfile": {"enableSecureBoot": False, "enableVTPM": True},
        }
    }
    status, _ = finish(control_plane, control_plane.client.put(pool_url, json=body))
    assert status["status"] == "Succeeded", status
    (before,) = pool_nodes(control_plane, "vtpmpool")
    assert (before.state, before.attestation_status, before.enable_secure_boot) == (
        "Ready",
        "Attested",
        False,
    )
    assert before.labels[TL_LABEL] == "true" and SB_LABEL not in before.labels
    old_ek = ek_certificate(before)

    pool = control_plane.client.get(pool_url).json()
    pool["properties"]["securityProfile"] = {"enableSecureBoot": True, "enableVTPM": True}
    update = control_plane.client.put(pool_url, json=pool)
    assert update.json()["properties"]["provisioningState"] == "Updating"
    status, notes = finish(control_plane, update)
    assert status["status"] == "Succeeded", status
    assert "agent pool vtpmpool: reimaging node 1/1" in notes
    (after,) = pool_nodes(control_plane, "vtpmpool")
    assert (after.id, after.ordinal, after.name) == (before.id, before.ordinal, before.name)
    assert (after.state, after.attestation_status, after.enable_secure_boot) == ("Ready", "Attested", True)
    assert after.labels[TL_LABEL] == "true" and after.labels[SB_LABEL] == "true"
    assert after.run_dir != before.run_dir and not Path(str(before.run_dir)).exists()
    assert ek_certificate(after) != old_ek  # a new vTPM: new EK, enrolled again
    assert after.attestation_state != before.attestation_state
    assert processes_under(Path(str(before.run_dir))) == []
    assert control_plane.client.get(pool_url).json()["properties"]["provisioningState"] == "Succeeded"


def test_delete_pool_then_cluster_stops_every_vm_and_vtpm(control_plane: ControlPlane) -> None:
    assert len(processes_under(control_plane.state_dir)) == 4  # two nodes: qemu + swtpm each
    (pool_node,) = pool_nodes(control_plane, "vtpmpool")
    pool_url = f"{CLUSTER}/agentPools/vtpmpool"
    status, notes = finish(control_plane, control_plane.client.delete(pool_url))
    assert status["status"] == "Succeeded", status
    assert notes[-1] == "all nodes deleted"
    assert control_plane.client.get(pool_url).status_code == 404
    assert pool_node.id not in [node.id for node in nodes(control_plane.sessions)]
    assert processes_under(Path(str(pool_node.run_dir))) == []
    assert len(processes_under(control_plane.state_dir)) == 2

    status, _ = finish(control_plane, control_plane.client.delete(CLUSTER))
    assert status["status"] == "Succeeded", status
    assert control_plane.client.get(CLUSTER).status_code == 404
    assert nodes(control_plane.sessions) == []
    assert processes_under(control_plane.state_dir) == []
    assert list((control_plane.state_dir / "vm").iterdir()) == []
