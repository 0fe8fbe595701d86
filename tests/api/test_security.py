"""API security over every route: no mutation without a valid token, no reach outside a token's resource
group, body limits everywhere, and URL/header limits both through the app and over a real socket."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_helpers import SUB, arm_code, cluster_body, create_group, http_bytes, raw_request
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from trustedlaunch.api import limits
from trustedlaunch.api.app import PUBLIC_PATHS, create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.arm import api_version_hook
from trustedlaunch.control.tokens import ATTESTATION_API_PATH
from trustedlaunch.store.models import Base
from trustedlaunch.web import dashboard

BODY_LIMIT = 64 * 1024
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
TOKENS = "/providers/Microsoft.TrustedLaunch/tokens"
CS = "providers/Microsoft.ContainerService"


def cluster(group_name: str) -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{group_name}/{CS}/managedClusters/c1"


def arm_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.request.method, response.request.url, response.text)
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"code", "message", "target", "details"} and error["code"] == code, error
    return error


def every_route(app: FastAPI) -> list[tuple[str, frozenset[str]]]:
    """(path template, methods) of every HTTP route of `app`, including those of included routers."""
    found = []
    for route in app.routes:
        expand = getattr(route, "effective_route_contexts", None)
        for context in expand() if expand is not None else [route]:
            path, methods = getattr(context, "path", None), getattr(context, "methods", None)
            if path and methods:
                found.append((path, frozenset(methods)))
    return found


def fill(template: str, values: dict[str, str]) -> str:
    """The template's path parameters replaced by `values` (any other parameter: a plausible name)."""
    parts = []
    for segment in template.split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            segment = values.get(segment[1:-1].split(":")[0], "x1")
        parts.append(segment)
    return "/".join(parts)


def store_snapshot(app: FastAPI) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table."""
    with app.state.sessions() as session:
        return {
            table.name: sorted((tuple(row) for row in session.execute(select(table))), key=repr)
            for table in Base.metadata.sorted_tables
        }


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """An admin client over a store with a cluster (pool `pool1`) in rg-a and rg-b and a registered preview,
    and path parameter values naming those real resources."""
    token_file = tmp_path / "config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file, max_body_bytes=BODY_LIMIT)
    with TestClient(app) as admin:
        admin.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        admin.event_hooks = {"request": [api_version_hook(None)]}
        features = f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
        assert admin.post(f"{features}/features/TrustedLaunchPreview/register").status_code == 200
        operation = ""
        for name in ("rg-a", "rg-b"):
            create_group(admin, name)
            created = admin.put(cluster(name), json=cluster_body())
            assert created.status_code == 201, created.text
            operation = httpx.URL(created.headers["Azure-AsyncOperation"]).path.rsplit("/", 1)[1]
        values = {
            "subscription_id": SUB,
            "resource_group": "rg-a",
            "cluster_name": "c1",
            "pool_name": "nodepool1",
            "location": "eastus",
            "operation_id": operation,
            "namespace": "Microsoft.ContainerService",
            "feature_name": "TrustedLaunchPreview",
            "name": "bootstrap-admin",
        }
        yield admin, values


def mutating_requests(app: FastAPI, values: dict[str, str], *, bearer: bool = True) -> list[tuple[str, str]]:
    """(method, path) of every mutating method of every route, parameters from `values`: those that take
    bearer tokens, or (bearer=False) the dashboard's, which authenticate with its session cookie."""
    requests = [
        (method, fill(template, values))
        for template, methods in every_route(app)
        if template not in PUBLIC_PATHS and dashboard.owns_path(template) != bearer
        for method in sorted(methods & MUTATING)
    ]
    if bearer:
        assert (
            len(requests) >= 12
        )  # PUT/DELETE of clusters and pools, credentials, features, providers, tokens
    return requests


def test_every_route_is_enumerated(populated: tuple[TestClient, dict[str, str]]) -> None:
    admin, _ = populated
    enumerated = {(path, method) for path, methods in every_route(admin.app) for method in methods}  # type: ignore[arg-type]
    documented = {
        (path, method.upper())
        for path, operations in admin.get("/openapi.json").json()["paths"].items()
        for method in operations
    }
    assert documented <= enumerated
    assert ("/metrics", "GET") in enumerated and (TOKENS, "POST") in enumerated


def test_no_mutation_without_a_valid_token(populated: tuple[TestClient, dict[str, str]]) -> None:
    admin, values = populated
    app: FastAPI = admin.app  # type: ignore[assignment]
    before = store_snapshot(app)
    body = json.dumps(cluster_body()).encode()
    with TestClient(app) as anonymous:
        for method, path in mutating_requests(app, values):
            missing = anonymous.request(
                method, path, content=body, headers={"Content-Type": "application/json"}
            )
            arm_error(missing, 401, "AuthenticationFailed")
            assert missing.headers["WWW-Authenticate"].startswith("Bearer")
            for authorization in ("Bearer tl_not-a-token", "Bearer ", "Basic YWRtaW46YWRtaW4=", "tl_x"):
                wrong = anonymous.request(
                    method, path, content=body, headers={"Authorization": authorization}
                )
                arm_error(wrong, 401, "InvalidAuthenticationToken")
        for method, path in mutating_requests(app, values, bearer=False):  # sign-in with a wrong token, ...
            answered = anonymous.request(method, path, data={"token": "tl_not-a-token"})
            assert answered.status_code < 500 and "tl_not-a-token" not in answered.headers.get(
                "set-cookie", ""
            )
    assert store_snapshot(app) == before


def test_only_the_dashboards_own_paths_skip_the_bearer_token(
    populated: tuple[TestClient, dict[str, str]],
) -> None:
    """/ui and /ui/... authenticate with the dashboard's session; a path that merely starts with "/ui" is
    an API path like any other: 401 without a token."""
    admin, _ = populated
    with TestClient(admin.app) as anonymous:  # type: ignore[arg-type]
        for path in ("/uix", "/ui.json", "/uimetrics"):
            arm_error(anonymous.get(path), 401, "AuthenticationFailed")
        assert anonymous.get("/ui/login").status_code == 200


def test_resource_group_token_cannot_mutate_another_group(
    populated: tuple[TestClient, dict[str, str]],
) -> None:
    admin, values = populated
    app: FastAPI = admin.app  # type: ignore[assignment]
    minted = admin.post(
        TOKENS, json={"name": "rg-a-only", "scope": f"/subscriptions/{SUB}/resourceGroups/rg-a"}
    )
    token = minted.json()["properties"]["token"]
    before = store_snapshot(app)
    with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as scoped:
        for method, path in mutating_requests(app, {**values, "resource_group": "rg-b"}):
            response = scoped.request(method, path, json=cluster_body())
            if path.startswith(ATTESTATION_API_PATH):  # open to every token; it touches no resource
                assert response.status_code in (200, 400), response.text
                continue
            error = arm_error(response, 403, "AuthorizationFailed")
            assert f"over scope '{path}'" in error["message"]
    assert store_snapshot(app) == before


def test_body_limit_on_every_route(populated: tuple[TestClient, dict[str, str]]) -> None:
    admin, values = populated
    app: FastAPI = admin.app  # type: ignore[assignment]
    before = store_snapshot(app)

    def chunked() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        for _ in range(BODY_LIMIT // 8192 + 1):
            yield b"x" * 8192

    for template, methods in every_route(app):
        for method in sorted(methods - {"HEAD"}):
            path = fill(template, values)
            error = arm_error(admin.request(method, path, content=chunked()), 413, "RequestEntityTooLarge")
            assert str(BODY_LIMIT) in error["message"]
            declared = admin.request(
                method, path, content=b"{}", headers={"Content-Length": str(BODY_LIMIT + 1)}
            )
            arm_error(declared, 413, "RequestEntityTooLarge")
    assert store_snapshot(app) == before


def header_limit_cases(authorization: str) -> list[tuple[str, str, list[tuple[str, str]], int, str]]:
    """(name, target, headers, status, error target) of one request over each URL and header limit."""
    auth = [("Authorization", authorization)]
    long_path = "/subscriptions/" + "a" * limits.MAX_PATH_BYTES
    many = [(f"X-Pad-{i}", "1") for i in range(limits.MAX_HEADER_COUNT)]
    big = [("X-Big", "b" * limits.MAX_HEADER_BYTES)]
    total = [(f"X-Part-{i}", "t" * (limits.MAX_HEADER_BYTES - 100)) for i in range(5)]
    return [
        ("path", long_path, auth, 414, "path"),
        # measured as sent: percent-encoding makes the path three times longer than it decodes to
        ("encoded path", "/subscriptions/" + "%61" * (limits.MAX_PATH_BYTES // 3), auth, 414, "path"),
        ("query", "/healthz?q=" + "q" * limits.MAX_QUERY_BYTES, auth, 414, "query"),
        ("count", "/healthz", auth + many, 431, "headers"),
        ("one header", "/healthz", auth + big, 431, "x-big"),
        ("total", "/healthz", auth + total, 431, "headers"),
    ]


def test_url_and_header_limits_in_the_app(populated: tuple[TestClient, dict[str, str]]) -> None:
    admin, _ = populated
    with TestClient(admin.app) as client:  # type: ignore[arg-type]
        for _name, target, headers, status, error_target in header_limit_cases(
            admin.headers["Authorization"]
        ):
            code = "RequestUriTooLong" if status == 414 else "RequestHeaderFieldsTooLarge"
            error = arm_error(client.get(target, headers=headers), status, code)
            assert error["target"] == error_target and "limit" in error["message"]
        # Just under every limit: served.
        under = [(f"X-Pad-{i}", "u" * 200) for i in range(limits.MAX_HEADER_COUNT - 10)]
        path = cluster("rg-a") + "?api-version=2024-09-01&pad=" + "p" * (limits.MAX_QUERY_BYTES - 100)
        served = client.get(path, headers=[("Authorization", admin.headers["Authorization"]), *under])
        assert served.status_code == 200, served.text


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(URL, admin token) of a real uvicorn server on loopback (BackgroundServer: head-capped httptools), with
    the resource group rg-a."""
    token_file = tmp_path / "config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file, max_body_bytes=BODY_LIMIT)
    with BackgroundServer(app) as server:
        token = token_file.read_text().strip()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as admin:
            admin.event_hooks = {"request": [api_version_hook(None)]}
            create_group(admin, "rg-a")
        yield server.url, token


def test_limits_over_a_real_socket(live: tuple[str, str]) -> None:
    url, token = live
    bearer = f"Bearer {token}"
    for name, target, headers, status, _target in header_limit_cases(bearer):
        code, response_headers, body = raw_request(url, http_bytes("GET", target, headers))
        assert code == status, (name, body[:300])
        assert arm_code(body) == ("RequestUriTooLong" if status == 414 else "RequestHeaderFieldsTooLarge")
        assert response_headers["content-type"] == "application/json"

    # Bodies: chunked without Content-Length, and a declared Content-Length, both over the limit.
    put = [("Authorization", bearer), ("Content-Type", "application/json")]
    piece = b"x" * 8192
    chunks = (b"%x\r\n" % len(piece) + piece + b"\r\n") * (BODY_LIMIT // len(piece) + 1) + b"0\r\n\r\n"
    code, _, body = raw_request(
        url, http_bytes("PUT", cluster("rg-a"), [*put, ("Transfer-Encoding", "chunked")], chunks)
    )
    assert code == 413 and arm_code(body) == "RequestEntityTooLarge"
    code, _, body = raw_request(
        url, http_bytes("PUT", cluster("rg-a"), [*put, ("Content-Length", str(10**9))])
    )
    assert code == 413 and arm_code(body) == "RequestEntityTooLarge"
    # Without a token a body is refused before it is read.
    anonymous = [("Content-Type", "application/json"), ("Content-Length", str(10**9))]
    code, _, body = raw_request(url, http_bytes("PUT", cluster("rg-a"), anonymous))
    assert code == 401 and arm_code(body) == "AuthenticationFailed"

    # Dot segments are not normalised by the server: such a path matches no route and reaches nothing.
    admin = [("Authorization", bearer)]
    code, _, body = raw_request(
        url, http_bytes("GET", f"/subscriptions/{SUB}/resourceGroups/rg-a/../rg-b", admin)
    )
    assert code == 404 and arm_code(body) == "NotFound"

    # A request head that grows past the protocol's cap without ending never reaches the app: 431 and the
    # connection is closed (complete heads reach the app and get the finer 431s above).
    endless = (
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Huge: " + b"h" * 2 * limits.MAX_INCOMPLETE_HEAD_BYTES
    )
    code, response_headers, body = raw_request(url, endless)
    assert code == 431 and arm_code(body) == "RequestHeaderFieldsTooLarge", body[:300]
    assert response_headers["connection"] == "close"
    code, _, body = raw_request(url, http_bytes("GET", "/healthz", []))
    assert code == 200 and json.loads(body) == {"status": "ok"}

    # A request inside every limit still works end to end.
    target = cluster("rg-a") + "?api-version=2024-09-01"
    created = raw_request(url, http_bytes("PUT", target, [*put, ("Content-Length", "2")], b"{}"))
    assert created[0] == 400 and arm_code(created[2]) == "InvalidRequestContent"


def read_responses(connection: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """`count` HTTP responses (status, body) read off a keep-alive connection (bodies by Content-Length);
    nothing may follow them (every request sent so far is answered once)."""
    buffered = b""
    answers = []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffered:
            chunk = connection.recv(65536)
            assert chunk, f"connection closed after {len(answers)} of {count} responses"
            buffered += chunk
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
        while len(buffered) < length:
            buffered += connection.recv(65536)
        answers.append((int(lines[0].split(" ")[1]), buffered[:length]))
        buffered = buffered[length:]
    assert buffered == b"", f"more than {count} response(s): {buffered[:200]!r}"
    return answers


def assert_closed_by_server(connection: socket.socket, timeout: float = 10.0) -> None:
    """The server ended the connection: an orderly close (FIN), or a reset (RST), which is what a close
    becomes when our unread bytes were still in its receive buffer (the kernel decides, not the server).
    More data, or the connection still open after `timeout`, fails."""
    connection.settimeout(timeout)
    try:
        rest = connection.recv(65536)
    except ConnectionResetError:
        return
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open for {timeout:.0f} s") from None
    assert rest == b"", f"the server sent more after its answer: {rest[:200]!r}"


def test_head_cap_counts_unfinished_heads_only(tmp_path: Path) -> None:
    """Bodies far above the head cap, arriving with their head or before a pipelined request's partial
    head, are not taken for a head; a head that then stalls past the cap is still refused."""
    token_file = tmp_path / "config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file, max_body_bytes=1024 * 1024)
    with BackgroundServer(app) as server:
        token = token_file.read_text().strip()
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as admin:
            admin.event_hooks = {"request": [api_version_hook(None)]}
            create_group(admin, "rg-a")
        address = httpx.URL(server.url)
        big = b'{"padding": "' + b"p" * (4 * limits.MAX_INCOMPLETE_HEAD_BYTES) + b'"}'
        headers = [("Authorization", f"Bearer {token}"), ("Content-Type", "application/json")]
        target = cluster("rg-a") + "?api-version=2024-09-01"
        put = http_bytes("PUT", target, [*headers, ("Content-Length", str(len(big)))], big)
        put = put.replace(b"Connection: close\r\n", b"")
        health = http_bytes("GET", "/healthz", []).replace(b"Connection: close\r\n", b"")
        with socket.create_connection((address.host, address.port), timeout=30) as connection:
            # one write: the big body, then half of a pipelined request's head; its rest comes later
            connection.sendall(put + health[:20])
            first = read_responses(connection, 1)
            connection.sendall(health[20:])
            answers = first + read_responses(connection, 1)
            assert [status for status, _ in answers] == [400, 200], answers
            assert arm_code(answers[0][1]) == "InvalidRequestContent"
            # the same connection, now a head that never ends
            connection.sendall(
                b"GET /healthz HTTP/1.1\r\nX-Huge: " + b"h" * 2 * limits.MAX_INCOMPLETE_HEAD_BYTES
            )
            [(status, body)] = read_responses(connection, 1)
            assert status == 431 and arm_code(body) == "RequestHeaderFieldsTooLarge"
            assert_closed_by_server(connection)
        # a new connection that opens with an endless head: refused while most of it is still unread,
        # so the close usually arrives as a reset
        with socket.create_connection((address.host, address.port), timeout=30) as connection:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                connection.sendall(
                    b"GET /healthz HTTP/1.1\r\nX-Huge: " + b"h" * 4 * limits.MAX_INCOMPLETE_HEAD_BYTES
                )
            [(status, body)] = read_responses(connection, 1)
            assert status == 431 and arm_code(body) == "RequestHeaderFieldsTooLarge"
            assert_closed_by_server(connection)
