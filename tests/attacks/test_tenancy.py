"""Tenant isolation attacks (issue 12 items 3, 4, 7, 8, 9) against the real `tl serve --workers 2` over HTTP,
with resource-group and subscription scoped tokens, and the real `tl` command.

No VM boots here: the test holds the reconciler's state-directory lock (as a second reconciler would), so the
server's reconciler leaves every operation InProgress. Each test uses its own subscription, so the quotas
(per subscription) of one test do not see another's resources.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_process import start_serve

from trustedlaunch.control.reconciler import LOCK_FILE

NODE_QUOTA = 6
CLUSTER_QUOTA = 3
CS = "providers/Microsoft.ContainerService"
TOKENS = "/providers/Microsoft.TrustedLaunch/tokens"
API = {"api-version": "2024-09-01"}
RESOURCES_API = {"api-version": "2025-04-01"}


@dataclass
class Plane:
    """A running `tl serve --workers 2` and what a test needs to talk to it."""

    url: str
    admin: str
    env: dict[str, str]

    def token(self, name: str, scope: str) -> str:
        response = self.call(self.admin, "POST", TOKENS, json={"name": name, "scope": scope})
        assert response.status_code == 201, response.text
        return str(response.json()["properties"]["token"])

    def create_group(self, token: str, subscription: str, name: str) -> None:
        """Create resource group `name` with `token`, as a script does before its first cluster."""
        created = self.call(
            token, "PUT", group(subscription, name), json={"location": "eastus"}, params=RESOURCES_API
        )
        assert created.status_code == 201, created.text

    def call(self, token: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        kwargs.setdefault("params", API)
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    base = tmp_path_factory.mktemp("tenancy")
    env = {
        **os.environ,
        "HOME": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "TL_DATABASE_URL": f"sqlite:///{base / 'serve.db'}",
        "TL_QUOTA_NODES": str(NODE_QUOTA),
        "TL_QUOTA_CLUSTERS": str(CLUSTER_QUOTA),
    }
    for name in ("TL_QUOTA_CORES", "TL_QUOTA_MEMORY_MIB", "TL_ENDPOINT", "TL_TOKEN"):
        env.pop(name, None)
    state_dir = base / "data" / "trustedlaunch" / "nodes"
    state_dir.mkdir(parents=True)
    with (state_dir / LOCK_FILE).open("ab") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the server's reconciler stays idle: no VM boots
        process, url, _banner = start_serve(env, "--workers", "2", "--no-auto-repair")
        try:
            admin = (base / "config" / "trustedlaunch" / "admin-token").read_text().strip()
            yield Plane(url, admin, env)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def group(subscription: str, name: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{name}"


def cluster(subscription: str, group_name: str, name: str) -> str:
    return f"{group(subscription, group_name)}/{CS}/managedClusters/{name}"


def pools(*counts: int, location: str = "eastus") -> dict[str, object]:
    profiles = [
        {"name": f"p{index}", "count": count, "vmSize": "Standard_D4s_v3"}
        for index, count in enumerate(counts)
    ]
    return {"location": location, "properties": {"agentPoolProfiles": profiles}}


def arm_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text[:500]
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "target", "details"} and error["code"] == code, error
    return error


def operation_status(plane: Plane, token: str, created: httpx.Response) -> str:
    url = created.headers["Azure-AsyncOperation"]
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def test_quotas_refuse_a_node_flood_and_count_surge_nodes(plane: Plane) -> None:
    """Item 3: one resource-group token asked for 100 pools x 1000 nodes in one PUT; now 409 QuotaExceeded
    naming each quota's limit and usage, nothing created. Surge nodes of a rolling reimage count."""
    sub = "33333333-0000-4000-8000-000000000003"
    token = plane.token("flood", group(sub, "flood"))
    plane.create_group(token, sub, "flood")
    flood = plane.call(token, "PUT", cluster(sub, "flood", "c0"), json=pools(*[1000] * 100))
    error = arm_error(flood, 409, "QuotaExceeded")
    assert error["target"] == "subscriptionId"
    assert (
        f"exceeding the Nodes quota (node VMs, surge nodes included) of subscription '{sub}'"
        in (error["message"])
    )
    assert f"Current Limit: {NODE_QUOTA}, Current Usage: 0, Additional Required: 100000" in error["message"]
    assert [detail["message"].split(" quota")[0].rsplit(" ", 1)[1] for detail in error["details"]] == [
        "Nodes",
        "Cores",
        "MemoryMiB",
    ]  # the defaults (from the host's CPUs and memory) refuse it too
    assert plane.call(token, "GET", cluster(sub, "flood", "c0")).status_code == 404

    assert plane.call(token, "PUT", cluster(sub, "flood", "c1"), json=pools(2)).status_code == 201
    surge = {"properties": {"count": 2, "vmSize": "Standard_D4s_v3", "upgradeSettings": {"maxSurge": "2"}}}
    added = plane.call(token, "PUT", cluster(sub, "flood", "c1") + "/agentPools/surge", json=surge)
    assert added.status_code == 201, added.text  # 2 nodes + 2 surge nodes: 6 of 6
    one = {"properties": {"count": 1, "vmSize": "Standard_D4s_v3"}}
    refused = plane.call(token, "PUT", cluster(sub, "flood", "c1") + "/agentPools/one", json=one)
    error = arm_error(refused, 409, "QuotaExceeded")
    assert (
        f"Current Limit: {NODE_QUOTA}, Current Usage: {NODE_QUOTA}, Additional Required: 1, "
        f"(Minimum) New Limit Required: {NODE_QUOTA + 1}." in error["message"]
    )
    assert "TL_QUOTA_NODES" in error["message"]


def test_cluster_quota(plane: Plane) -> None:
    """Item 3: clusters are counted per subscription, whatever the resource group."""
    sub = "33333333-0000-4000-8000-00000000000c"
    token = plane.token("clusters", f"/subscriptions/{sub}")
    for name in [f"rg{index}" for index in range(CLUSTER_QUOTA)] + ["another"]:
        plane.create_group(token, sub, name)
    for index in range(CLUSTER_QUOTA):
        created = plane.call(token, "PUT", cluster(sub, f"rg{index}", "c"), json=pools(1))
        assert created.status_code == 201, created.text
    refused = plane.call(token, "PUT", cluster(sub, "another", "c"), json=pools(1))
    error = arm_error(refused, 409, "QuotaExceeded")
    assert "Clusters quota (managed clusters)" in error["message"]
    assert (
        f"Current Limit: {CLUSTER_QUOTA}, Current Usage: {CLUSTER_QUOTA}, Additional Required: 1"
        in (error["message"])
    )


def test_a_delete_cancels_only_the_operations_of_its_own_resource(plane: Plane) -> None:
    """Item 4: deleting `team_a/k` cancelled `team-a/k`'s create (LIKE's `_` matches `-`), and deleting `k`
    cancelled `k1`'s; now only the deleted cluster's own operations are cancelled."""
    sub = "44444444-0000-4000-8000-000000000004"
    victim = plane.token("team-a", group(sub, "team-a"))
    attacker = plane.token("team_a", group(sub, "team_a"))
    plane.create_group(victim, sub, "team-a")
    plane.create_group(attacker, sub, "team_a")
    victim_create = plane.call(victim, "PUT", cluster(sub, "team-a", "k"), json=pools(1))
    own_create = plane.call(attacker, "PUT", cluster(sub, "team_a", "k"), json=pools(1))
    sibling_create = plane.call(attacker, "PUT", cluster(sub, "team_a", "k1"), json=pools(1))
    for created in (victim_create, own_create, sibling_create):
        assert created.status_code == 201, created.text
    deleted = plane.call(attacker, "DELETE", cluster(sub, "team_a", "k"))
    assert deleted.status_code == 202, deleted.text
    assert operation_status(plane, attacker, own_create) == "Canceled"
    assert operation_status(plane, victim, victim_create) == "InProgress"
    assert operation_status(plane, attacker, sibling_create) == "InProgress"
    forbidden = httpx.get(
        victim_create.headers["Azure-AsyncOperation"], headers={"Authorization": f"Bearer {attacker}"}
    )
    assert forbidden.status_code == 403  # and team_a cannot even read team-a's operation


def test_subscription_ids_are_one_subscription_in_any_case(plane: Plane) -> None:
    """Item 7: `5555AAAA-...` and `5555aaaa-...` were two subscriptions with their own clusters, features
    and operations; ARM ids are case-insensitive."""
    upper = "5555AAAA-BBBB-4CCC-8DDD-EEEEFFFF0007"
    lower = upper.lower()
    token = plane.token("case", f"/subscriptions/{lower}")
    plane.create_group(token, upper, "rg")
    created = plane.call(token, "PUT", cluster(upper, "rg", "c"), json=pools(1))
    assert created.status_code == 201, created.text
    assert f"/subscriptions/{lower}/" in created.headers["Azure-AsyncOperation"]
    shown = plane.call(token, "GET", cluster(lower, "rg", "c"))
    assert shown.status_code == 200, shown.text
    assert shown.json()["id"] == cluster(lower, "rg", "c")  # the group and name as created
    for subscription in (upper, lower):
        listed = plane.call(token, "GET", f"/subscriptions/{subscription}/{CS}/managedClusters").json()
        assert [c["name"] for c in listed["value"]] == ["c"]
    again = plane.call(token, "PUT", cluster(lower, "RG", "C"), json=pools(1))
    assert arm_error(again, 409, "OperationNotAllowed")  # the same cluster, busy: not a second one
    operation_id = created.headers["Azure-AsyncOperation"].split("/operations/")[1].split("?")[0]
    upper_url = f"/subscriptions/{upper}/{CS}/locations/eastus/operations/{operation_id}"
    assert plane.call(token, "GET", upper_url).json()["status"] == "InProgress"

    feature = (
        "providers/Microsoft.Features/providers/Microsoft.ContainerService/features/TrustedLaunchPreview"
    )
    features_api = {"params": {"api-version": "2021-07-01"}}
    registered = plane.call(token, "POST", f"/subscriptions/{upper}/{feature}/register", **features_api)
    assert registered.json()["properties"]["state"] == "Registering", registered.text
    provider = f"/subscriptions/{lower}/providers/Microsoft.ContainerService/register"
    assert plane.call(token, "POST", provider, params={"api-version": "2025-04-01"})
    shown_feature = plane.call(token, "GET", f"/subscriptions/{upper}/{feature}", **features_api)
    # the same registration whatever the subscription id's casing; the provider does not hurry it
    assert shown_feature.json()["properties"]["state"] == "Registering", shown_feature.text


def test_location_must_come_from_the_catalogue(plane: Plane) -> None:
    """Item 9: a location with `/` or `..` went into the Azure-AsyncOperation URL (which `tl` then fetched
    with its token); now only catalogued locations are accepted."""
    sub = "99999999-0000-4000-8000-000000000009"
    token = plane.token("location", group(sub, "rg"))
    plane.create_group(token, sub, "rg")
    for location in ("eastus/../../../providers/Microsoft.TrustedLaunch/tokens", "..", "mars"):
        refused = plane.call(token, "PUT", cluster(sub, "rg", "c"), json=pools(1, location=location))
        error = arm_error(refused, 400, "LocationNotAvailableForResourceType")
        assert error["target"] == "location" and f"The provided location '{location}'" in error["message"]
        assert plane.call(token, "GET", cluster(sub, "rg", "c")).status_code == 404
    created = plane.call(token, "PUT", cluster(sub, "rg", "c"), json=pools(1, location="East US"))
    assert created.status_code == 201, created.text
    assert created.json()["location"] == "eastus"
    assert (
        f"/subscriptions/{sub}/{CS}/locations/eastus/operations/" in created.headers["Azure-AsyncOperation"]
    )


def tl(plane: Plane, token: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """The real `tl` command against the server."""
    env = {**plane.env, "TL_ENDPOINT": plane.url, "TL_TOKEN": token, "COLUMNS": "200"}
    command = [str(Path(sys.executable).parent / "tl"), *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_cli_names_cannot_address_another_resource(plane: Plane) -> None:
    """Item 8: `tl aks delete -g A -n 'typo/../sacrificial'` deleted `sacrificial`, `-g 'bad/../rg'` read
    another group, and any path segment could climb out (`--namespace ../../providers/...`)."""
    sub = "88888888-0000-4000-8000-000000000008"
    subscription = ["--subscription", sub]
    group_token = plane.token("cli-a", group(sub, "A"))
    subscription_token = plane.token("cli-sub", f"/subscriptions/{sub}")
    plane.create_group(group_token, sub, "A")
    plane.create_group(subscription_token, sub, "rg")
    assert plane.call(group_token, "PUT", cluster(sub, "A", "sacrificial"), json=pools(1)).status_code == 201
    assert plane.call(subscription_token, "PUT", cluster(sub, "rg", "c"), json=pools(1)).status_code == 201

    deleted = tl(plane, group_token, "aks", "delete", "-g", "A", "-n", "typo/../sacrificial", "--yes",
                 "--no-wait", *subscription)  # fmt: skip
    assert deleted.returncode == 2, deleted
    assert "Invalid value for '--name'" in deleted.stderr and "a cluster name is" in deleted.stderr
    state = plane.call(group_token, "GET", cluster(sub, "A", "sacrificial")).json()["properties"]
    assert state["provisioningState"] == "Creating"

    shown = tl(plane, subscription_token, "aks", "show", "-g", "bad/../rg", "-n", "c", *subscription)
    assert shown.returncode == 2 and shown.stdout == "", shown
    assert "Invalid value for '--resource-group'" in shown.stderr

    pool = tl(plane, group_token, "aks", "nodepool", "delete", "-g", "A", "--cluster-name", "sacrificial",
              "-n", "../../sacrificial", "--no-wait", *subscription)  # fmt: skip
    assert pool.returncode == 2 and "Invalid value for '--name'" in pool.stderr, pool
    assert (
        plane.call(group_token, "GET", cluster(sub, "A", "sacrificial")).json()["properties"][
            "provisioningState"
        ]
        == "Creating"
    )

    climbing = tl(plane, plane.admin, "provider", "show", "--namespace",
                  "../../../providers/Microsoft.TrustedLaunch/tokens", *subscription)  # fmt: skip
    assert climbing.returncode == 3, climbing  # quoted into one segment: no such provider
    assert "cli-sub" not in climbing.stdout + climbing.stderr  # the token list was never fetched
