"""`properties.nodeLabels`, `nodeTaints` and `maxPods` of agent pools (and of a cluster body's
agentPoolProfiles): stored, shown as AKS shows them, kept on GET-modify-PUT, replaced by an update (maxPods
refused: fixed once the pool exists), and refused with AKS's errors naming the property."""

from __future__ import annotations

from api_helpers import API, CLUSTER, SUB, cluster_body
from fastapi.testclient import TestClient

from trustedlaunch.control.operations import finish_operation, get_operation
from trustedlaunch.store.models import AgentPool

POOLS = f"{CLUSTER}/agentPools"
LABELS = {"dept": "HR", "costcenter": "5000"}
TAINTS = ["sku=gpu:NoSchedule", "dedicated:NoExecute"]


def finish(client: TestClient, response: object) -> None:
    """Finish the response's operation as the reconciler would (no VMs here)."""
    operation_id = response.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]  # type: ignore[attr-defined]
    with client.app.state.sessions.begin() as session:  # type: ignore[attr-defined]
        finish_operation(session, get_operation(session, SUB, operation_id), "Succeeded")


def stored(client: TestClient, name: str) -> tuple[object, object, object]:
    with client.app.state.sessions() as session:  # type: ignore[attr-defined]
        pool = session.query(AgentPool).filter_by(name=name).one()
        return pool.node_labels, pool.node_taints, pool.max_pods


def test_labels_taints_and_max_pods_are_stored_shown_kept_and_replaced(client: TestClient) -> None:
    created = client.put(CLUSTER, params=API, json=cluster_body(nodeLabels={"tier": "system"}, maxPods=50))
    assert created.status_code == 201, created.text
    profile = created.json()["properties"]["agentPoolProfiles"][0]
    assert (profile["nodeLabels"], profile["maxPods"]) == ({"tier": "system"}, 50)
    assert "nodeTaints" not in profile  # as AKS: absent when the pool has none
    finish(client, created)

    body = {"properties": {"count": 1, "nodeLabels": LABELS, "nodeTaints": TAINTS}}
    added = client.put(f"{POOLS}/labelnp", params=API, json=body)
    assert added.status_code == 201, added.text
    props = added.json()["properties"]
    assert (props["nodeLabels"], props["nodeTaints"], props["maxPods"]) == (LABELS, TAINTS, 110)
    assert stored(client, "labelnp") == (LABELS, TAINTS, 110)  # AKS's kubenet default, stored
    finish(client, added)

    pool = client.get(f"{POOLS}/labelnp", params=API).json()
    pool["properties"]["count"] = 2  # GET-modify-PUT keeps them all
    kept = client.put(f"{POOLS}/labelnp", params=API, json=pool)
    assert kept.status_code == 200, kept.text
    assert stored(client, "labelnp") == (LABELS, TAINTS, 110)
    finish(client, kept)

    pool = client.get(f"{POOLS}/labelnp", params=API).json()
    pool["properties"]["nodeLabels"] = {"dept": "IT"}  # an update replaces them (as az nodepool update)
    pool["properties"]["nodeTaints"] = []
    replaced = client.put(f"{POOLS}/labelnp", params=API, json=pool)
    assert replaced.status_code == 200, replaced.text
    assert stored(client, "labelnp") == ({"dept": "IT"}, [], 110)
    props = client.get(f"{POOLS}/labelnp", params=API).json()["properties"]
    assert props["nodeLabels"] == {"dept": "IT"} and "nodeTaints" not in props
    finish(client, replaced)

    pool["properties"]["maxPods"] = 30
    refused = client.put(f"{POOLS}/labelnp", params=API, json=pool)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["target"]) == ("PropertyChangeNotAllowed", "properties.maxPods")


def test_the_aks_label_prefix_and_bad_taints_are_refused_naming_the_property(client: TestClient) -> None:
    assert client.put(CLUSTER, params=API, json=cluster_body()).status_code == 201
    body = {"properties": {"count": 1, "nodeLabels": {"kubernetes.azure.com/trusted-launch": "true"}}}
    response = client.put(f"{POOLS}/labelnp", params=API, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["target"]) == ("BadRequest", "properties.nodeLabels")
    assert "The 'kubernetes.azure.com' prefix is preserved by aks system labels" in error["message"]

    body = {"properties": {"count": 1, "nodeTaints": ["sku=gpu"], "maxPods": 5}}
    response = client.put(f"{POOLS}/labelnp", params=API, json=body)
    assert response.status_code == 400, response.text
    targets = [detail["target"] for detail in response.json()["error"]["details"]]
    assert targets == ["properties.nodeTaints", "properties.maxPods"]
    assert client.get(f"{POOLS}/labelnp", params=API).status_code == 404


def test_a_bad_label_in_a_cluster_body_names_the_profile(client: TestClient) -> None:
    response = client.put(CLUSTER, params=API, json=cluster_body(nodeLabels={"dept": "not valid"}))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "BadRequest"
    assert error["target"].startswith("properties.agentPoolProfiles[0].")
    assert error["target"].endswith("nodeLabels")


def test_too_many_labels_are_refused_before_the_limits(client: TestClient) -> None:
    assert client.put(CLUSTER, params=API, json=cluster_body()).status_code == 201
    labels = {f"k{i}": "v" for i in range(101)}
    response = client.put(f"{POOLS}/labelnp", params=API, json={"properties": {"nodeLabels": labels}})
    assert response.status_code == 400, response.text
