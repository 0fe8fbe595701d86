"""`properties.upgradeSettings` of agent pools (maxSurge, drainTimeoutInMinutes, nodeSoakDurationInMinutes,
undrainableNodeBehavior): stored, shown, kept on GET-modify-PUT, and refused with an ARM error naming the
property when out of AKS's range; a pool DELETE's ignore-pod-disruption-budget is recorded on its
operation."""

from __future__ import annotations

import pytest
from api_helpers import CLUSTER, SUB, cluster_body
from fastapi.testclient import TestClient

from trustedlaunch.control.operations import finish_operation, get_operation
from trustedlaunch.store.models import AgentPool, Operation

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


def stored_pool(client: TestClient, name: str) -> AgentPool:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        pool: AgentPool = session.query(AgentPool).filter_by(name=name).one()
        return pool


def test_soak_duration_and_undrainable_behaviour_are_stored_shown_and_kept(client: TestClient) -> None:
    """Unset (AKS's defaults: 0 minutes, Schedule) they are not shown; set, they are stored, shown and kept by
    a GET-modify-PUT of another setting."""
    created = client.put(CLUSTER, json=cluster_body())
    assert created.status_code == 201
    finish(client, created)
    settings = {"nodeSoakDurationInMinutes": 30, "undrainableNodeBehavior": "Cordon"}
    body = {"count": 1, "vmSize": "Standard_D4s_v3", "upgradeSettings": settings}
    added = client.put(f"{POOLS}/userpool", json={"properties": body})
    assert added.status_code == 201, added.text
    assert added.json()["properties"]["upgradeSettings"] == settings
    pool = stored_pool(client, "userpool")
    assert (pool.node_soak_duration_in_minutes, pool.undrainable_node_behavior) == (30, "Cordon")
    assert stored_pool(client, "nodepool1").undrainable_node_behavior is None
    finish(client, added)

    shown = client.get(f"{POOLS}/userpool").json()
    shown["properties"]["upgradeSettings"] = {"drainTimeoutInMinutes": 5}
    assert client.put(f"{POOLS}/userpool", json=shown).status_code == 200
    kept = client.get(f"{POOLS}/userpool").json()["properties"]["upgradeSettings"]
    assert kept == {**settings, "drainTimeoutInMinutes": 5}


@pytest.mark.parametrize("minutes", [-1, 31])
def test_a_soak_duration_out_of_aks_range_is_an_arm_error(client: TestClient, minutes: int) -> None:
    settings = {"nodeSoakDurationInMinutes": minutes}
    assert client.put(CLUSTER, json=cluster_body()).status_code == 201
    body = {"count": 1, "vmSize": "Standard_D4s_v3", "upgradeSettings": settings}
    response = client.put(f"{POOLS}/userpool", json={"properties": body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["target"]) == (
        "InvalidParameter",
        "properties.upgradeSettings.nodeSoakDurationInMinutes",
    )
    assert f"nodeSoakDurationInMinutes {minutes} of pool 'userpool' is out of range" in error["message"]
    assert "from 0 to 30 (unset: 0)" in error["message"]


def test_an_undrainable_behaviour_aks_does_not_know_is_refused(client: TestClient) -> None:
    assert client.put(CLUSTER, json=cluster_body()).status_code == 201
    body = {"count": 1, "vmSize": "Standard_D4s_v3", "upgradeSettings": {"undrainableNodeBehavior": "Drain"}}
    response = client.put(f"{POOLS}/userpool", json={"properties": body})
    assert response.status_code == 400, response.text
    assert "undrainableNodeBehavior" in response.text
    assert client.get(f"{POOLS}/userpool").status_code == 404


def delete_operation(client: TestClient, response: object) -> Operation:
    operation_id = response.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]  # type: ignore[attr-defined]
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        return get_operation(session, SUB, operation_id)


def test_a_pool_delete_records_ignore_pod_disruption_budget(client: TestClient) -> None:
    """DELETE ...?ignore-pod-disruption-budget=true marks its operation (its drains delete the pods); asked
    again of the Delete under way, it marks that one; without it, or =false, evictions respect budgets.
    The cluster DELETE accepts it too."""
    finish(client, client.put(CLUSTER, json=cluster_body()))
    for name in ("userpool", "otherpool"):
        finish(client, client.put(f"{POOLS}/{name}", json={"properties": {"count": 1}}))
    plain = client.delete(f"{POOLS}/otherpool", params={"ignore-pod-disruption-budget": "false"})
    assert plain.status_code == 202, plain.text
    assert delete_operation(client, plain).ignore_pod_disruption_budget is False
    ignoring = client.delete(f"{POOLS}/otherpool", params={"ignore-pod-disruption-budget": "true"})
    assert delete_operation(client, ignoring).id == delete_operation(client, plain).id
    assert delete_operation(client, ignoring).ignore_pod_disruption_budget is True
    response = client.delete(f"{POOLS}/userpool", params={"ignore-pod-disruption-budget": "true"})
    assert response.status_code == 202, response.text
    assert delete_operation(client, response).ignore_pod_disruption_budget is True
    bad = client.delete(f"{POOLS}/userpool", params={"ignore-pod-disruption-budget": "maybe"})
    assert bad.status_code == 400, bad.text
    deleted = client.delete(CLUSTER, params={"ignore-pod-disruption-budget": "true"})
    assert deleted.status_code == 202, deleted.text
