"""Issue 12 items 2, 10 and 12 (agent answers) through the real `tl serve --workers 2`: a node whose agent
socket is taken over by a hostile peer (the VM's real socket moved aside, a relay in its place that answers
as the attack needs) while the control plane attests it and creates another pool.

- a stale UNKNOWN answer on the link does not fail the next TPM request (answers echo the request id);
- a 30 MB event log is refused at the answer-size cap, nothing of it is stored;
- wrong types, bad base64, 100k-deep JSON, an endless line: the node fails attestation, is alerted and loses
  its trusted launch labels, and the reconciler never fails a pass;
- a node that never answers holds no other pool's create or attestation.

One cluster: a 1-node vTPM pool booted by a first `tl serve`, adopted by a second one (the first one's
agent connection is gone, so the second one reaches the node through the agent socket), and a second
1-node pool created while the first node stays silent. Two VM boots.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from serve_process import start_serve

from trustedlaunch.control.features import DELAY_ENV

pytestmark = pytest.mark.slow
SUB = "00000000-0000-0000-0000-000000000000"
CLUSTER = (
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/hostile"
)
API = {"api-version": "2024-09-01"}
OPERATION_TIMEOUT = 600.0
TL_LABEL = "kubernetes.azure.com/trusted-launch"
SB_LABEL = "kubernetes.azure.com/secure-boot"
REQUEST_ID = re.compile(r"r[0-9a-f]{12}")


def framed(line: bytes) -> bytes:
    return line + b"\nEND " + hashlib.sha256(line + b"\n").hexdigest().encode() + b"\n"


def hostile_answer(mode: str, command: str, request_id: str | None) -> bytes | None:
    """What the hostile agent sends for `command` in `mode` (None: relay the request to the real agent).
    The garbage answers EVENTLOG, the last request of a quote (the TPM commands before it are relayed), or
    with `tpm-` the first TPM command."""
    echo = f'"id":"{request_id}",' if request_id else ""
    target = "TPM" if mode.startswith("tpm-") else "EVENTLOG"
    kind = mode.removeprefix("tpm-")
    if mode == "silent" and command != "PING":
        return b""
    if command != target:
        return None
    if kind == "huge-log":
        log = base64.b64encode(b"\x00" * (30 * 1024 * 1024))
        return framed(b"{" + echo.encode() + b'"reply":"EVENTLOG","eventLog":"' + log + b'"}')
    if kind == "wrong-types":  # the example
        return framed(f'{{{echo}"reply":"{command}","error":"x","detail":5}}'.encode())
    if kind == "bad-base64":
        return framed(f'{{{echo}"reply":"{command}","response":"@@@@","eventLog":"@@@@"}}'.encode())
    if kind == "deep-json":
        deep = "[" * 100_000 + "]" * 100_000
        return framed(f'{{{echo}"reply":"{command}","response":{deep},"eventLog":{deep}}}'.encode())
    if kind == "endless-line":
        return b"A" * (40 * 1024 * 1024) + b"\n"
    return None


@dataclass
class HostileAgent:
    """Listens on the node's run_dir/agent.sock in place of QEMU's socket (moved to agent.real.sock): each
    connection is relayed to the real agent, except the requests `mode` answers itself."""

    run_dir: Path
    mode: str = "relay"
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.real = self.run_dir / "agent.real.sock"
        os.rename(self.run_dir / "agent.sock", self.real)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.run_dir / "agent.sock"))
        self.listener.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(str(self.real))
        send = threading.Lock()

        def relay_answers() -> None:
            while chunk := _recv(upstream):
                with send:
                    client.sendall(chunk)

        threading.Thread(target=relay_answers, daemon=True).start()
        stale_sent = False
        try:
            for raw in client.makefile("rb"):
                words = raw.decode(errors="replace").split()
                if not words:  # the empty lines before each request
                    upstream.sendall(raw)
                    continue
                command = words[0] if words else ""
                request_id = next((word for word in words[1:2] if REQUEST_ID.fullmatch(word)), None)
                self.requests.append(f"{self.mode}: {command}")
                if self.mode == "stale-unknown" and command == "TPM" and not stale_sent:
                    stale_sent = True  # what a line cut on the link leaves: an UNKNOWN answer to "NG 1234"
                    with send:
                        client.sendall(framed(b'{"id":"1234","reply":"UNKNOWN","error":"unknown request"}'))
                answer = hostile_answer(self.mode, command, request_id)
                if answer is None:
                    upstream.sendall(raw)
                else:
                    with send:
                        client.sendall(answer)
        except OSError:
            pass
        finally:  # shut down, not only closed: the relay thread's recv would keep QEMU's connection open
            for sock in (upstream, client):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self.listener.close()


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


@dataclass
class Serve:
    process: subprocess.Popen[str]
    client: httpx.Client
    log: list[str]

    def stop(self) -> None:
        self.client.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=200)


@dataclass
class Plane:
    env: dict[str, str]
    database: str
    start: Callable[[], Serve]
    serve: Serve
    agent: HostileAgent
    node: str
    pool_seconds: float


def start(env: dict[str, str]) -> Serve:
    process, url, _ = start_serve(env, "--attestation-interval", "0", "--workers", "2", "--no-auto-repair")
    assert process.stderr is not None
    log: list[str] = []
    stderr = process.stderr
    threading.Thread(target=lambda: log.extend(iter(stderr.readline, "")), daemon=True).start()
    token = (Path(env["XDG_CONFIG_HOME"]) / "trustedlaunch" / "admin-token").read_text().strip()
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, params=API, timeout=60)
    return Serve(process, client, log)


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)
    return result


def finish(serve: Serve, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code in (200, 201, 202), response.text
    url = response.headers["Azure-AsyncOperation"]

    def ended() -> dict[str, Any] | None:
        status: dict[str, Any] = serve.client.get(url).json()
        return status if status["status"] != "InProgress" else None

    result: dict[str, Any] = wait_until(ended, OPERATION_TIMEOUT, f"operation {url}")
    return result


def machine(serve: Serve, pool: str) -> dict[str, Any]:
    (only,) = serve.client.get(f"{CLUSTER}/agentPools/{pool}/machines").json()["value"]
    result: dict[str, Any] = only
    return result


def attestations(serve: Serve, pool: str, node: str) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = serve.client.get(
        f"{CLUSTER}/agentPools/{pool}/machines/{node}/attestations"
    ).json()["value"]
    return value


def attest(plane: Plane, mode: str) -> dict[str, Any]:
    """Put the hostile agent in `mode`, ask for an attestation of the node; its new record."""
    plane.agent.mode = mode
    before = len(attestations(plane.serve, "hostilepool", plane.node))
    plane.serve.client.post(f"{CLUSTER}/agentPools/hostilepool/attest").raise_for_status()
    history = wait_until(
        lambda: (
            (found := attestations(plane.serve, "hostilepool", plane.node)) and len(found) > before and found
        ),
        300,
        f"an attestation with the hostile agent in mode {mode}",
    )
    record: dict[str, Any] = history[0]
    return record


def pool_body(count: int = 1) -> dict[str, Any]:
    return {
        "count": count,
        "vmSize": "Standard_D4s_v3",
        "securityProfile": {"enableSecureBoot": True, "enableVTPM": True},
    }


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    base = tmp_path_factory.mktemp("hostile")
    env = {
        **os.environ,
        "HOME": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "d"),
        "TL_DATABASE_URL": f"sqlite:///{base / 'serve.db'}",
        DELAY_ENV: "0",
    }
    first = start(env)
    serve = first
    agent: HostileAgent | None = None
    try:
        features = f"/subscriptions/{SUB}/providers/Microsoft.Features/providers/Microsoft.ContainerService"
        first.client.post(
            f"{features}/features/TrustedLaunchPreview/register", params={"api-version": "2021-07-01"}
        ).raise_for_status()
        first.client.post(
            f"/subscriptions/{SUB}/providers/Microsoft.ContainerService/register",
            params={"api-version": "2025-04-01"},
        ).raise_for_status()
        first.client.put(
            f"/subscriptions/{SUB}/resourceGroups/rg",
            json={"location": "eastus"},
            params={"api-version": "2025-04-01"},
        ).raise_for_status()
        began = time.monotonic()
        profile = {"name": "hostilepool", **pool_body()}
        body = {"location": "eastus", "properties": {"agentPoolProfiles": [profile]}}
        status = finish(first, first.client.put(CLUSTER, json=body))
        consoles = [p.read_text(errors="replace")[-3000:] for p in (base / "d").rglob("console.log")]
        assert status["status"] == "Succeeded", (status, "".join(first.log)[-6000:], consoles)
        pool_seconds = time.monotonic() - began
        node = machine(first, "hostilepool")
        assert node["properties"]["attestationStatus"] == "Attested"
        first.stop()  # its agent connection goes: the next server reaches the node through agent.sock
        run_dir = next((base / "d" / "trustedlaunch" / "nodes" / "vm").iterdir())
        agent = HostileAgent(run_dir)
        serve = start(env)
        wait_until(lambda: "adopted node" in "".join(serve.log), 60, "the node's adoption")
        yield Plane(env, env["TL_DATABASE_URL"], start, serve, agent, node["name"], pool_seconds)
    finally:
        with httpx.Client(
            base_url=str(serve.client.base_url), headers=serve.client.headers, params=API, timeout=60
        ) as client:
            try:
                deletion = client.delete(CLUSTER)
                if deletion.status_code == 202:
                    url = deletion.headers["Azure-AsyncOperation"]
                    wait_until(lambda: client.get(url).json()["status"] != "InProgress", 300, "the deletion")
            except httpx.HTTPError:
                pass
        serve.stop()
        if agent is not None:
            agent.close()


def stored_event_log_sizes(database: str) -> list[int]:
    engine = sqlalchemy.create_engine(database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text("SELECT length(event_log) FROM attestations"))
            return [size or 0 for (size,) in rows]
    finally:
        engine.dispose()


def test_a_stale_unknown_answer_on_the_link_does_not_fail_the_next_tpm_request(plane: Plane) -> None:
    """Item 10: an UNKNOWN answer to a line the link cut waits on the link before the first TPM request's
    answer; the request id tells them apart and the node attests."""
    record = attest(plane, "stale-unknown")
    assert "stale-unknown: TPM" in plane.agent.requests
    assert (record["properties"]["status"], record["properties"]["passed"]) == ("Attested", True), json.dumps(
        record["properties"]["findings"]
    )
    assert machine(plane.serve, "hostilepool")["properties"]["attestationStatus"] == "Attested"


def test_a_30_mb_event_log_is_refused_at_the_answer_cap_and_not_stored(plane: Plane) -> None:
    """Item 12: the agent answers EVENTLOG with 30 MB; the channel stops reading at its cap, the node fails
    attestation and no event log over 1 MiB is stored."""
    record = attest(plane, "huge-log")
    assert "huge-log: EVENTLOG" in plane.agent.requests
    assert record["properties"]["passed"] is False, record
    assert "longer than" in json.dumps(record["properties"]["findings"])
    assert max(stored_event_log_sizes(plane.database)) <= 1024 * 1024
    assert machine(plane.serve, "hostilepool")["properties"]["attestationStatus"] == "AttestationFailed"


@pytest.mark.parametrize(
    "mode", ["wrong-types", "bad-base64", "deep-json", "endless-line", "tpm-wrong-types"]
)
def test_a_node_answering_garbage_is_failed_alerted_and_quarantined(plane: Plane, mode: str) -> None:
    """Item 2: garbage from the node is this node's failed attestation (alert, labels removed); the
    reconciler's passes never fail."""
    record = attest(plane, "relay")  # attested again first: the garbage takes its labels away
    assert record["properties"]["passed"] is True, record
    assert TL_LABEL in machine(plane.serve, "hostilepool")["properties"]["labels"]
    record = attest(plane, mode)
    assert record["properties"]["passed"] is False and record["properties"]["status"] == "AttestationFailed"
    assert "answered garbage" in json.dumps(record["properties"]["findings"]), record
    node = machine(plane.serve, "hostilepool")["properties"]
    assert node["attestationStatus"] == "AttestationFailed"
    assert TL_LABEL not in node["labels"] and SB_LABEL not in node["labels"]
    alerts = plane.serve.client.get(f"/subscriptions/{SUB}/providers/Microsoft.Security/alerts").json()[
        "value"
    ]
    assert any(
        alert["properties"]["compromisedEntity"] == plane.node and alert["properties"]["status"] == "Active"
        for alert in alerts
    )
    assert not [line for line in plane.serve.log if "reconciler pass failed" in line]


def test_a_silent_node_holds_no_other_pool_create_or_attestation(plane: Plane) -> None:
    """Item 2: while the node's agent stays silent (the channel waits for it up to its timeout), another
    pool is created and its node attested in the time the first pool took; the silent node then ends
    Unreachable, quarantined."""
    plane.agent.mode = "silent"
    before = len(attestations(plane.serve, "hostilepool", plane.node))
    plane.serve.client.post(f"{CLUSTER}/agentPools/hostilepool/attest").raise_for_status()
    wait_until(lambda: "silent: TPM" in plane.agent.requests, 60, "the attestation of the silent node")
    began = time.monotonic()
    status = finish(
        plane.serve,
        plane.serve.client.put(f"{CLUSTER}/agentPools/otherpool", json={"properties": pool_body()}),
    )
    took = time.monotonic() - began
    assert status["status"] == "Succeeded", status
    assert machine(plane.serve, "otherpool")["properties"]["attestationStatus"] == "Attested"
    silent = attestations(plane.serve, "hostilepool", plane.node)
    assert len(silent) == before, "the silent node's attestation ended before the other pool was created"
    assert took < plane.pool_seconds + 60, (took, plane.pool_seconds)
    record = wait_until(
        lambda: (
            (found := attestations(plane.serve, "hostilepool", plane.node)) and len(found) > before and found
        ),
        300,
        "the silent node's attestation to time out",
    )[0]
    assert record["properties"]["status"] == "Unreachable", record
    node = machine(plane.serve, "hostilepool")["properties"]
    assert node["attestationStatus"] == "AttestationFailed" and TL_LABEL not in node["labels"]
    assert not [line for line in plane.serve.log if "reconciler pass failed" in line]
