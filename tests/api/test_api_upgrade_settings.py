"""`properties.upgradeSettings.maxSurge` of agent pools: stored, shown, kept on GET-modify-PUT, and refused
with an ARM error naming the property when it is neither a node count nor a percentage."""

from __future__ import annotations

import pytest
from api_helpers import CLUSTER, SUB, cluster_body
from fastapi.testclient import TestClient

from trustedlaunch.control.operations import finish_operation, get_operation
from trustedlaunch.store.models import AgentPool

POOLS = f"{CLUSTER}/agentPools"


def finish(client: TestClient, response: object) -> None:
    """Finish the response's operation as the reconciler would (no VMs here)."""
    operation_id = response.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]  # type: ignore[attr-defined]
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        finish_operation(session, get_operation(session, SUB, operation_id), "Succeeded")


def stored_max_surge(client: TestClient, name: str) -> str | None:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        pool = session.query(AgentPool).filter_by(name=name).one()
        return pool.max_surge


def test_max_surge_is_stored_shown_and_kept(client: TestClient) -> None:
    created = client.put(CLUSTER, json=cluster_body(upgradeSettings={"maxSurge": "33%"}))
    assert created.status_code == 201, created.text
    assert created.json()["properties"]["agentPoolProfiles"][0]["upgradeSettings"] == {"maxSurge": "33%"}
    assert stored_max_surge(client, "nodepool1") == "33%"
    finish(client, created)

    added = client.put(f"{POOLS}/userpool", json={"properties": {"count": 1, "vmSize": "Standard_D4s_v3"}})
    assert added.status_code == 201, added.text
    assert added.json()["properties"]["upgradeSettings"] == {}  # none: reimage in place
    assert stored_max_surge(client, "userpool") is None
    finish(client, added)

    pool = client.get(f"{POOLS}/nodepool1").json()
    pool["properties"]["count"] = 3  # GET-modify-PUT keeps the max surge
    updated = client.put(f"{POOLS}/nodepool1", json=pool)
    assert updated.status_code == 200, updated.text
    assert updated.json()["properties"]["upgradeSettings"] == {"maxSurge": "33%"}
    finish(client, updated)

    pool = client.get(f"{POOLS}/userpool").json()
    pool["properties"]["upgradeSettings"] = {"maxSurge": "1"}
    updated = client.put(f"{POOLS}/userpool", json=pool)
    assert updated.status_code == 200, updated.text
    assert client.get(f"{POOLS}/userpool").json()["properties"]["upgradeSettings"] == {"maxSurge": "1"}
    assert stored_max_surge(client, "userpool") == "1"


@pytest.mark.parametrize("value", ["abc", "101%", "-1", "1.5", "1001", "33 %"])
def test_invalid_max_surge_is_an_arm_error(client: TestClient, value: str) -> None:
    body = {"properties": {"count": 1, "vmSize": "Standard_D4s_v3", "upgradeSettings": {"maxSurge": value}}}
    assert client.put(CLUSTER, json=cluster_body()).status_code == 201
    response = client.put(f"{POOLS}/userpool", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["target"]) == ("InvalidParameter", "properties.upgradeSettings.maxSurge")
    assert f"upgradeSettings.maxSurge '{value}' of pool 'userpool' is invalid" in error["message"]
    assert "a node count from 0 to 1000" in error["message"] and "from 0% to 100%" in error["message"]
    assert client.get(f"{POOLS}/userpool").status_code == 404


def test_invalid_max_surge_in_a_cluster_body_names_the_profile(client: TestClient) -> None:
    response = client.put(CLUSTER, json=cluster_body(upgradeSettings={"maxSurge": "200%"}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "InvalidParameter"
    assert error["target"] == "properties.agentPoolProfiles[0].upgradeSettings.maxSurge"
    assert client.get(CLUSTER).status_code == 404


def stored_drain_timeout(client: TestClient, name: str) -> int | None:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        pool = session.query(AgentPool).filter_by(name=name).one()
        return pool.drain_timeout_in_minutes


def test_drain_timeout_is_stored_shown_and_kept(client: TestClient) -> None:
    """upgradeSettings.drainTimeoutInMinutes: unset (AKS's default, 30) is not shown; a value is stored,
    shown, kept by a GET-modify-PUT that changes another setting, and changed by one that sets it."""
    created = client.put(CLUSTER, json=cluster_body(upgradeSettings={"maxSurge": "1"}))
    assert created.status_code == 201, created.text
    assert stored_drain_timeout(client, "nodepool1") is None
    finish(client, created)

    body = {"count": 1, "vmSize": "Standard_D4s_v3", "upgradeSettings": {"drainTimeoutInMinutes": 45}}
    added = client.put(f"{POOLS}/userpool", json={"properties": body})
    assert added.status_code == 201, added.text
    assert added.json()["properties"]["upgradeSettings"] == {"drainTimeoutInMinutes": 45}
    assert stored_drain_timeout(client, "userpool") == 45
    finish(client, added)

    pool = client.get(f"{POOLS}/userpool").json()
    pool["properties"]["upgradeSettings"]["maxSurge"] = "1"
    updated = client.put(f"{POOLS}/userpool", json=pool)
    assert updated.status_code == 200, updated.text
    shown = client.get(f"{POOLS}/userpool").json()["properties"]["upgradeSettings"]
    assert shown == {"maxSurge": "1", "drainTimeoutInMinutes": 45}
    finish(client, updated)

    pool["properties"]["upgradeSettings"] = {"drainTimeoutInMinutes": 5}
    assert client.put(f"{POOLS}/userpool", json=pool).status_code == 200
    assert stored_drain_timeout(client, "userpool") == 5


@pytest.mark.parametrize("minutes", [0, -1, 1441])
def test_a_drain_timeout_out_of_aks_range_is_an_arm_error(client: TestClient, minutes: int) -> None:
    body = {"count": 1, "vmSize": "Standard_D4s_v3", "upgradeSettings": {"drainTimeoutInMinutes": minutes}}
    assert client.put(CLUSTER, json=cluster_body()).status_code == 201
    response = client.put(f"{POOLS}/userpool", json={"properties": body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["target"]) == (
        "InvalidParameter",
        "properties.upgradeSettings.drainTimeoutInMinutes",
    )
    assert f"drainTimeoutInMinutes {minutes} of pool 'userpool' is out of range" in error["message"]
    assert "from 1 to 1440" in error["message"]
