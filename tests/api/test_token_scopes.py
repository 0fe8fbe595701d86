"""Tokens scoped to a subscription or a resource group, token management (API and `tl token`), revocation."""

from __future__ import annotations

import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import API, SUB, arm_code, cluster_body, create_group, http_bytes, raw_request
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.arm import api_version_hook
from trustedlaunch.cli.main import app as tl_app
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.tokens import create_token, principal_for, revoke_token

TOKENS = "/providers/Microsoft.TrustedLaunch/tokens"
OTHER_SUB = "99999999-8888-7777-6666-555555555555"
CS = "providers/Microsoft.ContainerService"


def group(name: str, subscription: str = SUB) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{name}"


def cluster(group_name: str, name: str = "c1", subscription: str = SUB) -> str:
    return f"{group(group_name, subscription)}/{CS}/managedClusters/{name}"


def pool_body() -> dict[str, object]:
    return {"properties": {"count": 1, "vmSize": "Standard_D4s_v3"}}


def arm_error(response: httpx.Response, status: int, code: str) -> str:
    """The message of an ARM error response, after checking its status and code."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "target", "details"} and error["code"] == code, error
    return str(error["message"])


def authorization_failed(response: httpx.Response, client_name: str, action: str, scope: str) -> None:
    message = arm_error(response, 403, "AuthorizationFailed")
    assert message.startswith(
        f"The client '{client_name}' does not have authorization to perform action '{action}' over scope "
        f"'{scope}' or the scope is invalid."
    ), message


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[TestClient]:
    """A client with the bootstrap admin token, over a store with the resource groups rg-a and rg-b."""
    token_file = tmp_path / "config" / "admin-token"
    with TestClient(create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)) as client:
        client.event_hooks = {"request": [api_version_hook(None)]}
        client.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        for name in ("rg-a", "rg-b"):
            create_group(client, name)
        yield client


def mint(admin: TestClient, name: str, scope: str | None) -> str:
    response = admin.post(TOKENS, json={"name": name, "scope": scope})
    assert response.status_code == 201, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return str(response.json()["properties"]["token"])


def test_token_management_api(admin: TestClient) -> None:
    created = admin.post(TOKENS, json={"name": "ci", "scope": f"/Subscriptions/{SUB}/resourceGroups/RG-A/"})
    assert created.status_code == 201, created.text
    body = created.json()
    token = body["properties"]["token"]
    assert token.startswith("tl_") and len(token) > 40
    assert body["id"] == f"{TOKENS}/ci" and body["type"] == "Microsoft.TrustedLaunch/tokens"
    assert body["properties"]["scope"] == f"/subscriptions/{SUB}/resourcegroups/rg-a"

    listed = admin.get(TOKENS).json()["value"]
    assert [t["name"] for t in listed] == ["bootstrap-admin", "ci"]
    assert [t["properties"]["scope"] for t in listed] == [None, f"/subscriptions/{SUB}/resourcegroups/rg-a"]
    assert token not in json.dumps(listed) and "token" not in listed[1]["properties"]
    shown = admin.get(f"{TOKENS}/ci")
    assert shown.json()["properties"]["scope"] == body["properties"]["scope"]
    assert "token" not in shown.json()["properties"]

    arm_error(admin.post(TOKENS, json={"name": "ci"}), 409, "TokenExists")
    for scope in (
        "/subscriptions/not-a-guid",
        f"subscriptions/{SUB}",
        f"/subscriptions/{SUB}/resourceGroups",
        f"/subscriptions/{SUB}/resourceGroups/rg-a/providers/Microsoft.ContainerService",
        f"/subscriptions/{SUB}/locations/rg-a",
        f"/subscriptions/{SUB}/resourceGroups/bad*group",
        f"/resourceGroups/{SUB}",
        f"/providers/{SUB}/resourceGroups/rg-a",
    ):
        message = arm_error(admin.post(TOKENS, json={"name": "x", "scope": scope}), 400, "InvalidTokenScope")
        assert f"'{scope}'" in message and "/subscriptions/{subscriptionId}/resourceGroups/{name}" in message
    arm_error(admin.post(TOKENS, json={"name": "-bad name"}), 400, "InvalidTokenName")
    arm_error(admin.post(TOKENS, json={"name": "n" * 65}), 400, "InvalidTokenName")
    arm_error(admin.post(TOKENS, json={"name": "x", "role": "owner"}), 400, "InvalidRequestContent")
    arm_error(admin.get(f"{TOKENS}/nosuch"), 404, "TokenNotFound")
    arm_error(admin.delete(f"{TOKENS}/nosuch"), 404, "TokenNotFound")
    assert (
        admin.post(TOKENS, json={"name": "second-admin", "scope": "/"}).json()["properties"]["scope"] is None
    )
    assert [t["name"] for t in admin.get(TOKENS).json()["value"]] == ["bootstrap-admin", "ci", "second-admin"]


def test_resource_group_token_acts_only_in_its_group(admin: TestClient) -> None:
    token = mint(admin, "rg-a-deployer", group("rg-a"))
    in_b = admin.put(cluster("rg-b"), json=cluster_body())
    assert in_b.status_code == 201
    operation_b = in_b.headers["Azure-AsyncOperation"]
    result_b = in_b.headers["Location"]
    assert admin.put(f"{cluster('rg-b')}/agentPools/poolb", json=pool_body()).status_code == 201

    with TestClient(admin.app, headers=bearer(token)) as scoped:  # type: ignore[arg-type]
        scoped.event_hooks = {"request": [api_version_hook(None)]}
        # Everything inside rg-a: create, read, list, pools, operations, credentials, delete.
        created = scoped.put(cluster("rg-a"), params=API, json=cluster_body())
        assert created.status_code == 201, created.text
        assert scoped.get(cluster("rg-a")).json()["name"] == "c1"
        assert scoped.get(cluster("RG-A").replace("resourceGroups", "resourcegroups")).status_code == 200
        listed = scoped.get(f"{group('rg-a')}/{CS}/managedClusters").json()["value"]
        assert [c["name"] for c in listed] == ["c1"]
        operation = scoped.get(created.headers["Azure-AsyncOperation"])
        assert operation.status_code == 200 and operation.json()["status"] == "InProgress"
        assert scoped.get(created.headers["Location"]).status_code == 202
        pool = f"{cluster('rg-a')}/agentPools/poola"
        assert scoped.put(pool, json=pool_body()).status_code == 201
        assert scoped.get(pool).json()["name"] == "poola"
        assert scoped.get(f"{pool}/machines").status_code == 200
        assert scoped.post(f"{cluster('rg-a')}/listClusterUserCredential").status_code == 200
        assert scoped.delete(pool).status_code == 202
        assert scoped.delete(cluster("rg-a")).status_code == 202

        # rg-b (and lookalikes) refused with ARM's AuthorizationFailed, action and scope named.
        def refused(method: str, path: str, action: str, **kwargs: object) -> None:
            response = scoped.request(method, path, **kwargs)  # type: ignore[arg-type]
            authorization_failed(response, "rg-a-deployer", action, path)

        managed = "Microsoft.ContainerService/managedClusters"
        refused("PUT", cluster("rg-b"), f"{managed}/write", json=cluster_body())
        refused("PUT", cluster("rg-b", "c2"), f"{managed}/write", json=cluster_body())
        refused("GET", cluster("rg-b"), f"{managed}/read")
        refused("DELETE", cluster("rg-b"), f"{managed}/delete")
        refused("GET", f"{group('rg-b')}/{CS}/managedClusters", f"{managed}/read")
        refused(
            "POST",
            f"{cluster('rg-b')}/listClusterAdminCredential",
            f"{managed}/listClusterAdminCredential/action",
        )
        pool_b = f"{cluster('rg-b')}/agentPools/poolb"
        refused("PUT", pool_b, f"{managed}/agentPools/write", json=pool_body())
        refused("GET", pool_b, f"{managed}/agentPools/read")
        refused("DELETE", pool_b, f"{managed}/agentPools/delete")
        refused("GET", f"{pool_b}/machines", f"{managed}/agentPools/machines/read")
        refused("GET", f"{cluster('rg-b')}/agentPools", f"{managed}/agentPools/read")
        for url, kind in ((operation_b, "operations"), (result_b, "operationresults")):
            path = httpx.URL(url).path
            refused("GET", path, f"Microsoft.ContainerService/locations/{kind}/read")
        unknown_operation = (
            httpx.URL(operation_b).path.rsplit("/", 1)[0] + "/00000000-1111-2222-3333-444444444444"
        )
        refused("GET", unknown_operation, "Microsoft.ContainerService/locations/operations/read")
        refused("GET", cluster("rg-ab"), f"{managed}/read")  # a name that merely starts with rg-a
        refused("GET", cluster("rg-a", subscription=OTHER_SUB), f"{managed}/read")
        # its own operation, asked for through another subscription's operation URL
        foreign = httpx.URL(created.headers["Azure-AsyncOperation"]).path.replace(SUB, OTHER_SUB)
        assert OTHER_SUB in foreign
        refused("GET", foreign, "Microsoft.ContainerService/locations/operations/read")
        # (dot segments: test_dot_segments_cannot_leave_the_scope, over a socket, as httpx removes them)

        # Subscription-wide paths are refused, not filtered: lists, features, providers.
        refused("GET", f"/subscriptions/{SUB}/{CS}/managedClusters", f"{managed}/read")
        features = f"/subscriptions/{SUB}/providers/Microsoft.Features"
        feature = f"{features}/providers/Microsoft.ContainerService/features/TrustedLaunchPreview"
        refused("POST", f"{feature}/register", "Microsoft.Features/providers/features/register/action")
        refused("GET", feature, "Microsoft.Features/providers/features/read")
        refused("GET", f"{features}/features", "Microsoft.Features/features/read")
        refused("POST", f"/subscriptions/{SUB}/{CS}/register", "Microsoft.ContainerService/register/action")
        versions = f"/subscriptions/{SUB}/{CS}/locations/eastus/kubernetesVersions"
        refused("GET", versions, "Microsoft.ContainerService/locations/kubernetesVersions/read")

        # No token management and no metrics for a scoped token.
        refused("POST", TOKENS, "Microsoft.TrustedLaunch/tokens/action", json={"name": "escalate"})
        refused("GET", TOKENS, "Microsoft.TrustedLaunch/tokens/read")
        refused("DELETE", f"{TOKENS}/bootstrap-admin", "Microsoft.TrustedLaunch/tokens/delete")
        refused("GET", "/metrics", "Microsoft.TrustedLaunch/metrics/read")

    # The refusals changed nothing: rg-b is as the admin left it, no token was minted or revoked.
    assert admin.get(cluster("rg-b")).json()["properties"]["provisioningState"] == "Creating"
    assert admin.get(f"{cluster('rg-b')}/agentPools/poolb").status_code == 200
    arm_error(admin.get(cluster("rg-b", "c2")), 404, "ResourceNotFound")
    assert [t["name"] for t in admin.get(TOKENS).json()["value"]] == ["bootstrap-admin", "rg-a-deployer"]


def test_subscription_token_acts_in_its_subscription_only(admin: TestClient) -> None:
    token = mint(admin, "sub-ops", f"/subscriptions/{SUB.upper()}")
    with TestClient(admin.app, headers=bearer(token)) as scoped:  # type: ignore[arg-type]
        scoped.event_hooks = {"request": [api_version_hook(None)]}
        features = f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
        assert scoped.post(f"{features}/features/TrustedLaunchPreview/register").status_code == 200
        assert scoped.put(cluster("rg-a"), json=cluster_body()).status_code == 201
        assert scoped.put(cluster("rg-b"), json=cluster_body()).status_code == 201
        every = scoped.get(f"/subscriptions/{SUB}/{CS}/managedClusters").json()["value"]
        assert len(every) == 2
        assert scoped.get(f"/subscriptions/{SUB}/{CS}/locations/eastus/kubernetesVersions").status_code == 200
        authorization_failed(
            scoped.put(cluster("rg-a", subscription=OTHER_SUB), json=cluster_body()),
            "sub-ops",
            "Microsoft.ContainerService/managedClusters/write",
            cluster("rg-a", subscription=OTHER_SUB),
        )
        authorization_failed(
            scoped.post(TOKENS, json={"name": "x"}),
            "sub-ops",
            "Microsoft.TrustedLaunch/tokens/action",
            TOKENS,
        )


def test_verifier_token_reaches_only_the_verifier_api(admin: TestClient) -> None:
    """A token scoped to the verifier API gets challenges (as does every token) and nothing else."""
    challenge = "/providers/Microsoft.TrustedLaunch/attestation/challenge"
    token = mint(admin, "agent", "/providers/microsoft.trustedlaunch/Attestation/")
    listed = {t["name"]: t["properties"]["scope"] for t in admin.get(TOKENS).json()["value"]}
    assert listed["agent"] == "/providers/microsoft.trustedlaunch/attestation"
    with TestClient(admin.app, headers=bearer(token)) as verifier:  # type: ignore[arg-type]
        verifier.event_hooks = {"request": [api_version_hook(None)]}
        answer = verifier.post(challenge)
        assert answer.status_code == 200 and len(bytes.fromhex(answer.json()["nonce"])) >= 16
        authorization_failed(
            verifier.get(f"/subscriptions/{SUB}/{CS}/managedClusters"),
            "agent",
            "Microsoft.ContainerService/managedClusters/read",
            f"/subscriptions/{SUB}/{CS}/managedClusters",
        )
        authorization_failed(verifier.get(TOKENS), "agent", "Microsoft.TrustedLaunch/tokens/read", TOKENS)
        assert verifier.get("/metrics").status_code == 403
    group_token = mint(admin, "rg-ops", group("rg-a"))
    with TestClient(admin.app, headers=bearer(group_token)) as scoped:  # type: ignore[arg-type]
        scoped.event_hooks = {"request": [api_version_hook(None)]}
        assert scoped.post(challenge).status_code == 200
    for bad in (
        "/providers/Microsoft.TrustedLaunch/tokens",
        "/providers/Microsoft.TrustedLaunch/attestation/x",
    ):
        response = admin.post(TOKENS, json={"name": "bad", "scope": bad})
        assert "is not valid" in arm_error(response, 400, "InvalidTokenScope")


def test_revoked_token_gets_401(tmp_path: Path) -> None:
    token_file = tmp_path / "admin-token"
    # A short cache time so that a revocation by another process shows within the test.
    app = create_app(f"sqlite:///{tmp_path / 'c.db'}", token_file, token_cache_seconds=0.2)
    with TestClient(app) as admin:
        admin.event_hooks = {"request": [api_version_hook(None)]}
        admin.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        create_group(admin, "rg-a")
        revoked_here = mint(admin, "revoked-by-api", group("rg-a"))
        revoked_elsewhere = mint(admin, "revoked-in-store", group("rg-a"))
        path = f"{group('rg-a')}/{CS}/managedClusters"
        for token in (revoked_here, revoked_elsewhere):
            assert admin.get(path, headers=bearer(token)).status_code == 200  # now cached
        assert admin.delete(f"{TOKENS}/revoked-by-api").status_code == 200
        # Revoked through this server: refused at once, cache or not.
        arm_error(admin.get(path, headers=bearer(revoked_here)), 401, "InvalidAuthenticationToken")
        arm_error(
            admin.put(cluster("rg-a"), json=cluster_body(), headers=bearer(revoked_here)),
            401,
            "InvalidAuthenticationToken",
        )
        # Revoked in the store by someone else (another server process): refused once the cache time passed.
        with app.state.sessions.begin() as session:
            revoke_token(session, "revoked-in-store")
        time.sleep(0.3)
        arm_error(admin.get(path, headers=bearer(revoked_elsewhere)), 401, "InvalidAuthenticationToken")
        arm_error(admin.get(cluster("rg-a")), 404, "ResourceNotFound")  # nothing was created


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, admin token) of a real server on loopback, with the resource groups rg-a and rg-b."""
    token_file = tmp_path / "server-config" / "admin-token"
    with BackgroundServer(create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)) as running:
        token = token_file.read_text().strip()
        with httpx.Client(base_url=running.url, headers=bearer(token)) as admin:
            admin.event_hooks = {"request": [api_version_hook(None)]}
            for name in ("rg-a", "rg-b"):
                create_group(admin, name)
        yield running.url, token


def test_tl_token_commands(server: tuple[str, str], tmp_path: Path) -> None:
    url, admin_token = server
    runner = CliRunner()
    env: dict[str, str | None] = {"TL_ENDPOINT": url, "TL_TOKEN": admin_token, "HOME": str(tmp_path)}

    def tl(*args: str, token: str = admin_token) -> tuple[int, str, str]:
        result = runner.invoke(tl_app, ["token", *args], env={**env, "TL_TOKEN": token})
        return result.exit_code, result.stdout, result.stderr

    code, out, err = tl("create", "--name", "ci", "--scope", group("rg-a"))
    assert code == 0, err
    assert "shown only once" in err
    created = json.loads(out)
    ci_token = created["properties"]["token"]
    assert created["properties"]["scope"] == f"/subscriptions/{SUB}/resourcegroups/rg-a"
    with httpx.Client(base_url=url, headers=bearer(ci_token)) as ci:
        ci.event_hooks = {"request": [api_version_hook(None)]}
        assert ci.put(cluster("rg-a"), json=cluster_body()).status_code == 201
        assert ci.put(cluster("rg-b"), json=cluster_body()).status_code == 403

    code, out, err = tl("list", "-o", "table")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["Name", "Scope", "CreatedAt"]
    assert lines[1].split()[:2] == ["bootstrap-admin", "(admin)"]
    assert lines[2].split()[:2] == ["ci", f"/subscriptions/{SUB}/resourcegroups/rg-a"]
    assert ci_token not in out

    code, _, err = tl("create", "--name", "bad", "--scope", "/subscriptions/nope")
    assert code == 1 and "(InvalidTokenScope) Token scope '/subscriptions/nope' is not valid" in err
    code, _, err = tl("list", token=ci_token)
    assert code == 1 and "(AuthorizationFailed) The client 'ci' does not have authorization" in err

    code, _, err = tl("revoke", "--name", "ci")
    assert code == 0 and "Token 'ci' revoked." in err
    with httpx.Client(base_url=url, headers=bearer(ci_token)) as ci:
        ci.event_hooks = {"request": [api_version_hook(None)]}
        assert ci.get(cluster("rg-a")).status_code == 401
    code, _, err = tl("revoke", "--name", "ci")
    assert code == 3 and "(TokenNotFound) Token 'ci' does not exist" in err
    code, out, _ = tl("list")
    assert [t["name"] for t in json.loads(out)] == ["bootstrap-admin"]


def test_dot_segments_cannot_leave_the_scope(server: tuple[str, str]) -> None:
    """A resource-group token whose path climbs out of its group with `..` or `.` segments (raw or
    percent-encoded) is refused with 403 before routing: sent byte for byte over a socket to the real
    server, which does not normalise them (httpx would remove them before sending)."""
    url, admin_token = server
    with httpx.Client(base_url=url, headers=bearer(admin_token)) as admin:
        admin.event_hooks = {"request": [api_version_hook(None)]}
        features = f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
        assert admin.post(f"{features}/features/TrustedLaunchPreview/register").status_code == 200
        assert admin.put(cluster("rg-b"), json=cluster_body()).status_code == 201
        created = admin.post(TOKENS, json={"name": "rg-a-only", "scope": group("rg-a")})
        token = created.json()["properties"]["token"]
        before = admin.get(cluster("rg-b")).json()
    body = json.dumps(cluster_body()).encode()
    tail = f"rg-b/{CS}/managedClusters/c1"
    for climb in ("..", "%2e%2e", "%2E.", "./..", "x/../..", "..%2F..%2FresourceGroups"):
        target = f"{group('rg-a')}/{climb}/{tail}"
        for method, payload in (("GET", b""), ("PUT", body), ("DELETE", b"")):
            headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")]
            request = http_bytes(method, target, [*headers, ("Content-Length", str(len(payload)))], payload)
            status, _, answer = raw_request(url, request)
            assert (status, arm_code(answer)) == (403, "AuthorizationFailed"), (method, target, answer)
            assert "/rg-b/" in json.loads(answer)["error"]["message"]
        # the server routes such a path nowhere (the admin gets 404): the 403 above is the scope check's
        status, _, answer = raw_request(
            url, http_bytes("GET", target, [("Authorization", f"Bearer {admin_token}")])
        )
        assert status == 404, answer
    # a lone "." leaves nothing, but a path with dot segments is refused whole, not interpreted
    inside = f"{group('rg-a')}/./{CS}/managedClusters/c1"
    status, _, answer = raw_request(url, http_bytes("GET", inside, [("Authorization", f"Bearer {token}")]))
    assert (status, arm_code(answer)) == (403, "AuthorizationFailed"), answer
    with httpx.Client(base_url=url, headers=bearer(admin_token)) as admin:
        admin.event_hooks = {"request": [api_version_hook(None)]}
        assert admin.get(cluster("rg-b")).json() == before


def test_bootstrap_token_file_always_holds_an_admin_token(tmp_path: Path) -> None:
    """The server keeps the admin token file while it holds a valid admin token, and replaces it (mode
    0600, the old bootstrap token revoked) when it holds anything else, e.g. a scoped token."""
    url, token_file = f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "config" / "admin-token"
    engine, sessions = open_store(url, token_file)
    try:
        first = token_file.read_text().strip()
        open_store(url, token_file)[0].dispose()
        assert token_file.read_text().strip() == first
        with sessions.begin() as session:
            scoped = create_token(session, "ops", f"/subscriptions/{SUB}")
        token_file.write_text(scoped + "\n")
        open_store(url, token_file)[0].dispose()
        replaced = token_file.read_text().strip()
        assert replaced not in (first, scoped) and stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with sessions() as session:
            principal = principal_for(session, replaced)
            assert principal is not None and principal.is_admin
            assert principal_for(session, first) is None
    finally:
        engine.dispose()
