"""`tl aks nodepool attest`, `tl aks machine attestation ...`, `tl aks machine get-attestation-token`,
`tl alerts ...` and `tl serve`, against real servers.

The server of the `server` fixture runs no reconciler: what the reconciler writes (node rows, attestation
records with real swtpm evidence, alerts) is written through the store, here or from a thread while a
command waits, as in test_cli_aks.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from monitoring_rows import (
    RealAttestation,
    add_alert,
    add_attestation,
    add_node,
    minutes_ago,
    real_attestation,
)
from serve_process import start_serve
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.store.models import AgentPool, Node, Operation, utc_now

CLUSTER = ["--cluster-name", "myAKSCluster", "-g", "myResourceGroup"]
MACHINE = [*CLUSTER, "--nodepool-name", "nodepool1", "--machine-name"]
CREATE = ("aks", "create", "-g", "myResourceGroup", "-n", "myAKSCluster", "--generate-ssh-keys", "--no-wait")
SUB = "00000000-0000-0000-0000-000000000000"  # the CLI's default subscription


def tl(runner: CliRunner, env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def store(server: BackgroundServer) -> sessionmaker[Session]:
    sessions: sessionmaker[Session] = server.server.config.app.state.sessions
    return sessions


def create_trusted_cluster(runner: CliRunner, env: dict[str, str | None], server: BackgroundServer) -> None:
    """A cluster with one Secure Boot + vTPM pool whose two nodes are Ready (rows as the reconciler
    leaves them) and whose create operation has finished."""
    for args in (
        (
            "feature",
            "register",
            "--namespace",
            "Microsoft.ContainerService",
            "--name",
            "TrustedLaunchPreview",
        ),
        ("provider", "register", "--namespace", "Microsoft.ContainerService"),
        (*CREATE, "--enable-secure-boot", "--enable-vtpm", "--node-count", "2"),
    ):
        code, _, err = tl(runner, env, *args)
        assert code == 0, err
    with store(server).begin() as session:
        for operation in session.scalars(select(Operation)):
            finish_operation(session, operation, "Succeeded")
        pool = session.scalars(select(AgentPool)).one()
        add_node(session, pool, 0)
        add_node(session, pool, 1)


@pytest.fixture(scope="module")
def attestation(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> RealAttestation:
    return real_attestation(testdata, tmp_path_factory.mktemp("quote"))


def node_row(session: Session, name: str) -> Node:
    return session.scalars(select(Node).where(Node.name == name)).one()


def attest_when_requested(
    server: BackgroundServer, attestation: RealAttestation, failing: str
) -> threading.Thread:
    """Play the reconciler: attest each node whose request is newer than now (`failing` fails)."""
    sessions = store(server)
    since = utc_now()

    def reconcile() -> None:
        deadline = time.monotonic() + 30
        done = 0
        while done < 2 and time.monotonic() < deadline:
            with sessions.begin() as session:
                pending = session.scalars(select(Node).where(Node.attestation_requested_at.is_not(None)))
                node = next((n for n in pending if n.attestation_requested_at > since), None)
                if node is not None:
                    add_attestation(
                        session,
                        node,
                        attestation,
                        ok=node.name != failing,
                        when=minutes_ago(0),
                        trigger="OnDemand",
                    )
                    node.attestation_requested_at = None
                    done += 1
            time.sleep(0.3)

    thread = threading.Thread(target=reconcile, daemon=True)
    thread.start()
    return thread


def test_nodepool_attest_waits_for_every_node(
    runner: CliRunner,
    cli_env: dict[str, str | None],
    server: tuple[str, str, BackgroundServer],
    attestation: RealAttestation,
) -> None:
    create_trusted_cluster(runner, cli_env, server[2])
    attest = ["aks", "nodepool", "attest", *CLUSTER, "-n", "nodepool1"]

    code, out, err = tl(runner, cli_env, *attest, "--no-wait")
    assert code == 0, err
    request = json.loads(out)
    assert request["machines"] == ["aks-nodepool1-0", "aks-nodepool1-1"]

    reconciler = attest_when_requested(server[2], attestation, failing="none")
    code, out, err = tl(runner, cli_env, *attest, "--timeout", "60")
    reconciler.join()
    assert code == 0, err
    results = json.loads(out)
    assert [r["properties"]["machineName"] for r in results] == ["aks-nodepool1-0", "aks-nodepool1-1"]
    assert all(r["properties"]["passed"] and r["properties"]["trigger"] == "OnDemand" for r in results)

    reconciler = attest_when_requested(server[2], attestation, failing="aks-nodepool1-1")
    code, out, err = tl(runner, cli_env, *attest, "--timeout", "60", "-o", "table")
    reconciler.join()
    assert code == 1
    assert "1 of 2 machine(s) failed attestation: aks-nodepool1-1 (AttestationFailed)" in err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["Machine", "Id", "Time", "Trigger", "Status"]
    failed_line = next(line for line in lines if line.startswith("aks-nodepool1-1"))
    assert "AttestationFailed" in failed_line and "Secure Boot" in failed_line

    # nobody attests: the wait ends at --timeout naming the machines
    code, _, err = tl(runner, cli_env, *attest, "--timeout", "1")
    assert code == 1
    assert "still waiting after 1 s for the attestation of aks-nodepool1-0, aks-nodepool1-1" in err

    code, _, err = tl(runner, cli_env, "aks", "nodepool", "attest", *CLUSTER, "-n", "nopool")
    assert code == 3 and "(ResourceNotFound)" in err


def test_machine_attestation_history_and_token(
    runner: CliRunner,
    cli_env: dict[str, str | None],
    server: tuple[str, str, BackgroundServer],
    attestation: RealAttestation,
) -> None:
    create_trusted_cluster(runner, cli_env, server[2])
    issuer = server[2].server.config.app.state.token_issuer
    with store(server[2]).begin() as session:
        node = node_row(session, "aks-nodepool1-0")
        failed = add_attestation(session, node, attestation, ok=False, when=minutes_ago(20)).id
        passed = add_attestation(session, node, attestation, ok=True, when=minutes_ago(10), issuer=issuer).id

    code, out, err = tl(runner, cli_env, "aks", "machine", "attestation", "list", *MACHINE, "aks-nodepool1-0")
    assert code == 0, err
    assert [int(record["name"]) for record in json.loads(out)] == [passed, failed]
    code, out, _ = tl(
        runner,
        cli_env,
        "aks",
        "machine",
        "attestation",
        "list",
        *MACHINE,
        "aks-nodepool1-0",
        "--top",
        "1",
        "-o",
        "table",
    )
    assert code == 0 and "Attested" in out and "AttestationFailed" not in out

    code, out, err = tl(
        runner,
        cli_env,
        "aks",
        "machine",
        "attestation",
        "show",
        *MACHINE,
        "aks-nodepool1-0",
        "--id",
        str(failed),
    )
    assert code == 0, err
    shown = json.loads(out)["properties"]
    assert shown["findings"][0]["check"] == "SecureBootStateMismatch"
    assert shown["evidence"]["quote"] and shown["pcrs"]["sha256"]

    code, out, err = tl(
        runner, cli_env, "aks", "machine", "get-attestation-token", *MACHINE, "aks-nodepool1-0"
    )
    assert code == 0, err
    token = json.loads(out)["token"]
    assert issuer.verify(token)["sub"] == "aks-nodepool1-0"
    code, _, err = tl(runner, cli_env, "aks", "machine", "get-attestation-token", *MACHINE, "aks-nodepool1-1")
    assert code == 3 and "(AttestationNotFound)" in err and "tl aks nodepool attest" in err


def test_alerts_and_webhook_commands(
    runner: CliRunner,
    cli_env: dict[str, str | None],
    server: tuple[str, str, BackgroundServer],
    attestation: RealAttestation,
) -> None:
    create_trusted_cluster(runner, cli_env, server[2])
    with store(server[2]).begin() as session:
        older = add_alert(
            session,
            node_row(session, "aks-nodepool1-0"),
            attestation,
            subscription_id=SUB,
            when=minutes_ago(9),
        ).id
        newer = add_alert(
            session,
            node_row(session, "aks-nodepool1-1"),
            attestation,
            subscription_id=SUB,
            when=minutes_ago(3),
        ).id

    code, out, err = tl(runner, cli_env, "alerts", "list")
    assert code == 0, err
    assert [alert["name"] for alert in json.loads(out)] == [newer, older]
    code, out, _ = tl(
        runner,
        cli_env,
        "alerts",
        "list",
        "-g",
        "myResourceGroup",
        "--cluster-name",
        "myAKSCluster",
        "-o",
        "table",
    )
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "Name",
        "Time",
        "Severity",
        "Status",
        "Cluster",
        "NodePool",
        "Node",
        "FailedComponents",
        "Count",
        "LastSeen",
    ]
    assert rows[0].split()[:7] == [
        newer,
        rows[0].split()[1],
        "High",
        "Active",
        "myakscluster",
        "nodepool1",
        "aks-nodepool1-1",
    ]
    failed_components = json.loads(tl(runner, cli_env, "alerts", "show", "--id", newer)[1])["properties"][
        "extendedProperties"
    ]["failedComponents"]
    for columns in (80, 160):  # a real terminal's widths: the columns that fit, no word split
        code, out, _ = tl(runner, {**cli_env, "COLUMNS": str(columns)}, "alerts", "list", "-o", "table")
        if columns == 80:
            assert out.split("\n")[0].split() == ["Name", "Severity", "Status", "FailedComponents", "Count"]
        assert code == 0 and max(len(line) for line in out.splitlines()) <= columns
        words = out.split()
        assert all(word in words for word in failed_components.split())
    code, out, _ = tl(runner, cli_env, "alerts", "list", "--cluster-name", "otherCluster")
    assert code == 0 and json.loads(out) == []
    code, _, err = tl(runner, cli_env, "alerts", "list", "--severity", "Critical")
    assert code == 2 and "Critical" in err

    code, out, err = tl(
        runner,
        cli_env,
        "alerts",
        "resolve",
        "--id",
        f"/subscriptions/{SUB}/providers/Microsoft.Security/alerts/{older}",
    )
    assert code == 0, err
    assert json.loads(out)["properties"]["status"] == "Resolved"
    code, out, _ = tl(runner, cli_env, "alerts", "list", "--status", "Active")
    assert [alert["name"] for alert in json.loads(out)] == [newer]
    code, out, err = tl(runner, cli_env, "alerts", "acknowledge", "--id", newer)
    assert code == 0, err
    assert json.loads(out)["properties"]["status"] == "InProgress"
    code, out, _ = tl(runner, cli_env, "alerts", "list", "--status", "InProgress")
    assert [alert["name"] for alert in json.loads(out)] == [newer]
    code, _, err = tl(runner, cli_env, "alerts", "acknowledge", "--id", older)
    assert code == 1 and "(AlertResolved)" in err
    code, out, _ = tl(runner, cli_env, "alerts", "show", "--id", newer)
    assert code == 0 and "Secure Boot" in json.loads(out)["properties"]["description"]
    code, _, err = tl(runner, cli_env, "alerts", "show", "--id", "no-such-alert")
    assert code == 3 and "(AlertNotFound)" in err

    code, _, err = tl(runner, cli_env, "alerts", "webhook", "show")
    assert code == 3 and "tl alerts webhook set --url" in err
    code, _, err = tl(
        runner, cli_env, "alerts", "webhook", "set", "--url", "https://ops:pw@hooks.example.com/x"
    )
    assert code == 1 and "(InvalidWebhookUrl)" in err and "credentials" in err
    code, out, err = tl(
        runner, cli_env, "alerts", "webhook", "set", "--url", "https://hooks.example.com/tl", "-o", "table"
    )
    assert code == 0 and "https://hooks.example.com/tl" in out, err
    code, out, _ = tl(runner, cli_env, "alerts", "webhook", "show")
    assert json.loads(out)["properties"]["url"] == "https://hooks.example.com/tl"
    code, _, err = tl(runner, cli_env, "alerts", "webhook", "delete")
    assert code == 0 and "deleted" in err
    code, _, err = tl(runner, cli_env, "alerts", "webhook", "delete")
    assert code == 0 and "nothing to delete" in err


@pytest.fixture
def serve_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "TL_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}",
    }
    yield env


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (Linux /proc)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.parametrize(
    ("arguments", "environment", "message"),
    [
        (
            ["--node-network-address", "300.1.1.1"],
            {},
            "TL_NODE_NETWORK_ADDRESS='300.1.1.1' is not an IP address",
        ),
        (
            [],
            {"TL_NODE_NETWORK_ADDRESS": "::1"},
            "TL_NODE_NETWORK_ADDRESS=::1 is not an IPv4 address of one interface",
        ),
    ],
)
def test_serve_refuses_a_bad_node_network_address_before_it_starts(
    serve_env: dict[str, str], tmp_path: Path, arguments: list[str], environment: dict[str, str], message: str
) -> None:
    """The option and its environment variable are checked before anything starts (exit 2, no store)."""
    serve = subprocess.run(
        [str(Path(sys.executable).parent / "tl"), "serve", "--port", "0", *arguments],
        env={**serve_env, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (serve.returncode, serve.stdout) == (2, ""), serve.stderr
    assert serve.stderr.strip() == f"ERROR: {message}"
    assert not (tmp_path / "serve.db").exists()


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_answers_until_sigterm(serve_env: dict[str, str], tmp_path: Path, workers: int) -> None:
    """`tl serve` answers until SIGTERM, then exits 0 and leaves nothing behind; with --workers 2 the API
    runs in two worker processes (both answer over the one port), supervised by the serve process."""
    process, url, banner = start_serve(
        serve_env, "--attestation-interval", "5", "--workers", str(workers), "--no-auto-repair"
    )
    try:
        token = (tmp_path / "config" / "trustedlaunch" / "admin-token").read_text().strip()
        for _ in range(20):  # a new connection each: the kernel spreads them over the workers
            alerts = httpx.get(
                f"{url}/subscriptions/{SUB}/providers/Microsoft.Security/alerts",
                headers={"Authorization": f"Bearer {token}"},
                params={"api-version": "2024-09-01"},
            )
            assert alerts.status_code == 200 and alerts.json() == {"value": []}
            monitor = httpx.get(  # every worker knows what the serve process's reconciler runs
                f"{url}/providers/Microsoft.TrustedLaunch/attestationMonitor",
                headers={"Authorization": f"Bearer {token}"},
                params={"api-version": "2024-09-01"},
            )
            assert monitor.status_code == 200, monitor.text
            assert monitor.json()["continuousAttestation"] == "Running"
            assert monitor.json()["attestationIntervalSeconds"] == 5
        assert f"Dashboard: {url}/ui " in banner
        children = child_pids(process.pid)
        if workers > 1:
            assert f"{workers} API worker processes" in banner
            assert len(children) >= workers, children
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert process.stderr is not None
        rest = process.stderr.read()
        assert "stopping" in rest and "stopped" in rest, rest
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
        deadline = time.monotonic() + 10  # multiprocessing's resource tracker ends once its parent is gone
        while (
            left := [pid for pid in children if Path(f"/proc/{pid}").exists()]
        ) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in left]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
