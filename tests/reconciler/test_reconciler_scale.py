"""Scaling and max-surge rolling reimages through the real API server with its reconciler (real SQLite, real
QEMU + swtpm VMs): a vTPM-only pool of 1 node with upgradeSettings.maxSurge "1" is scaled to 2, gets Secure
Boot (each outdated node is replaced by a surge node created before it is deleted, so two nodes stay Ready
all along), then is scaled back to 1. Four VM boots in all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from reconciler_helpers import SUB, nodes, processes_under
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.control.features import DELAY_ENV
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import Node

pytestmark = pytest.mark.slow
API = {"api-version": "2024-09-01"}
CLUSTER = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/scale"
POOL = f"{CLUSTER}/agentPools/nodepool1"
OPERATION_TIMEOUT = 900.0  # two VM boots under TCG on a loaded machine
SB_LABEL = "kubernetes.azure.com/secure-boot"
TL_LABEL = "kubernetes.azure.com/trusted-launch"


@dataclass(frozen=True)
class Snapshot:
    """The node rows at one instant: (id, ordinal, state, secure boot) by ordinal."""

    rows: tuple[tuple[int, int, str, bool], ...]

    @property
    def ids(self) -> set[int]:
        return {row[0] for row in self.rows}

    @property
    def ready(self) -> int:
        return sum(1 for row in self.rows if row[2] == "Ready")


@dataclass
class Run:
    """An operation's final status, its progress notes and the node rows seen while it ran."""

    status: dict[str, object]
    notes: list[str]
    snapshots: list[Snapshot]


@dataclass
class ControlPlane:
    client: httpx.Client
    sessions: sessionmaker[Session]

    def nodes(self) -> list[Node]:
        """Every node row, by ordinal."""
        return nodes(self.sessions)


@pytest.fixture(scope="module")
def plane(reconciler_base: Path, state_dir: Path) -> Iterator[ControlPlane]:
    """API + reconciler thread on reconciler_base/scale.db; the trusted launch feature registered."""
    url = f"sqlite:///{reconciler_base / 'scale.db'}"
    token_file = reconciler_base / "scale-token"
    engine = make_engine(url)
    sessions = session_factory(engine)
    reconciler = Reconciler(sessions, state_dir, poll_seconds=0.2)
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
            yield ControlPlane(client, sessions)
    engine.dispose()


def snapshot(plane: ControlPlane) -> Snapshot:
    return Snapshot(tuple((n.id, n.ordinal, n.state, n.enable_secure_boot) for n in plane.nodes()))


def run(plane: ControlPlane, response: httpx.Response) -> Run:
    """Wait for the response's operation to end, recording its notes and the node rows every 0.2 s."""
    assert response.status_code in (200, 201, 202), response.text
    url = response.headers["Azure-AsyncOperation"]
    notes: list[str] = []
    snapshots = [snapshot(plane)]
    deadline = time.monotonic() + OPERATION_TIMEOUT
    while time.monotonic() < deadline:
        status = plane.client.get(url).json()
        note = str(status.get("properties", {}).get("note", ""))
        if not notes or notes[-1] != note:
            notes.append(note)
        current = snapshot(plane)
        if current != snapshots[-1]:
            snapshots.append(current)
        if status["status"] != "InProgress":
            return Run(status, notes, snapshots)
        time.sleep(0.2)
    raise AssertionError(f"operation {url} still InProgress after {OPERATION_TIMEOUT:.0f} s; notes {notes}")


def put_pool(plane: ControlPlane, **changes: object) -> httpx.Response:
    """GET-modify-PUT of the pool's properties, as az does."""
    pool = plane.client.get(POOL).json()
    pool["properties"].update(changes)
    return plane.client.put(POOL, json=pool)


def assert_running(node: Node) -> None:
    """The node's qemu and swtpm run from its run directory."""
    running = processes_under(Path(str(node.run_dir)))
    assert len(running) == 2, running


def test_create_then_scale_up_boots_a_second_attested_node(plane: ControlPlane) -> None:
    profile = {
        "name": "nodepool1",
        "count": 1,
        "vmSize": "Standard_D4s_v3",
        "securityProfile": {"enableSecureBoot": False, "enableVTPM": True},
        "upgradeSettings": {"maxSurge": "1"},
    }
    created = run(
        plane,
        plane.client.put(
            CLUSTER, json={"location": "eastus", "properties": {"agentPoolProfiles": [profile]}}
        ),
    )
    assert created.status["status"] == "Succeeded", created.status
    (first,) = plane.nodes()
    assert plane.client.get(POOL).json()["properties"]["upgradeSettings"] == {"maxSurge": "1"}

    scaled = run(plane, put_pool(plane, count=2))
    assert scaled.status["status"] == "Succeeded", scaled.status
    assert "agent pool nodepool1: creating node 2/2" in scaled.notes
    assert all(first.id in s.ids for s in scaled.snapshots)  # the first node is never touched
    both = plane.nodes()
    assert [(n.ordinal, n.state, n.attestation_status) for n in both] == [
        (0, "Ready", "Attested"),
        (1, "Ready", "Attested"),
    ]
    assert [n.name for n in both] == [first.name, first.name.replace("vmss000000", "vmss000001")]
    for node in both:
        assert node.labels[TL_LABEL] == "true" and SB_LABEL not in node.labels
        assert node.labels["kubernetes.azure.com/agentpool"] == "nodepool1"
        assert_running(node)
    machines = plane.client.get(f"{POOL}/machines").json()["value"]
    assert [m["name"] for m in machines] == [n.name for n in both]
    assert plane.client.get(POOL).json()["properties"]["count"] == 2


def test_max_surge_reimage_creates_each_replacement_before_deleting_the_old_node(plane: ControlPlane) -> None:
    before = plane.nodes()
    assert [n.ordinal for n in before] == [0, 1]
    old_ids = {n.id for n in before}
    old_ak_names = {str((n.attestation_state or {})["akName"]) for n in before}

    reimage = run(plane, put_pool(plane, securityProfile={"enableSecureBoot": True, "enableVTPM": True}))
    assert reimage.status["status"] == "Succeeded", reimage.status
    assert "agent pool nodepool1: reimaging node 1/2 (surge node)" in reimage.notes
    assert "agent pool nodepool1: reimaging node 2/2 (surge node)" in reimage.notes
    sizes = [len(s.rows) for s in reimage.snapshots]
    assert max(sizes) == 3, sizes  # one surge node at a time beside the two
    first_change = next(s for s in reimage.snapshots if s.ids != reimage.snapshots[0].ids)
    assert first_change.ids > old_ids  # a node was added before any was deleted
    assert [row[1] for row in first_change.rows] == [0, 1, 2]
    # Every outdated node stays Ready until its replacement is: two Ready nodes at every instant.
    assert all(s.ready >= 2 for s in reimage.snapshots), [s.rows for s in reimage.snapshots]

    after = plane.nodes()
    assert not old_ids & {n.id for n in after}
    assert [n.ordinal for n in after] == [1, 2]  # ordinal 2 is the first surge node, 1 was freed and reused
    for node in after:
        assert (node.state, node.attestation_status, node.enable_secure_boot) == ("Ready", "Attested", True)
        assert node.labels[TL_LABEL] == "true" and node.labels[SB_LABEL] == "true"
        assert node.labels["kubernetes.azure.com/attestation-status"] == "Attested"
        assert_running(node)
    new_ak_names = {str((n.attestation_state or {})["akName"]) for n in after}
    assert len(new_ak_names) == 2 and not new_ak_names & old_ak_names  # each new node attested afresh
    for node in before:
        assert processes_under(Path(str(node.run_dir))) == [] and not Path(str(node.run_dir)).exists()
    assert plane.client.get(POOL).json()["properties"]["provisioningState"] == "Succeeded"


def test_scale_down_deletes_the_highest_ordinal_then_the_cluster(plane: ControlPlane) -> None:
    kept, removed = plane.nodes()
    scaled = run(plane, put_pool(plane, count=1))
    assert scaled.status["status"] == "Succeeded", scaled.status
    # (the 'deleting node' note lasts only as long as one VM kill: polling may not see it)
    assert max(len(s.rows) for s in scaled.snapshots) == 2  # no node booted to scale down
    (left,) = plane.nodes()
    assert (left.id, left.run_dir, left.state) == (kept.id, kept.run_dir, "Ready")
    assert_running(left)
    assert processes_under(Path(str(removed.run_dir))) == [] and not Path(str(removed.run_dir)).exists()
    assert [m["name"] for m in plane.client.get(f"{POOL}/machines").json()["value"]] == [kept.name]

    deleted = run(plane, plane.client.delete(CLUSTER))
    assert deleted.status["status"] == "Succeeded", deleted.status
    assert plane.nodes() == []
    assert processes_under(Path(str(kept.run_dir))) == []
