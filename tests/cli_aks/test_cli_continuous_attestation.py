"""Creating or updating a vTPM cluster or pool against a server whose reconciler does not re-attest nodes on
an interval prints az's `WARNING:` (not with --only-show-errors): the server says whether it does (GET
/providers/Microsoft.TrustedLaunch/attestationMonitor), from the reconciler it runs beside (a real
reconciler thread here, and a real embedded server), or from TL_RECONCILER_ATTESTATION_INTERVAL when the
reconciler runs apart."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from trustedlaunch.api.app import create_app
from trustedlaunch.api.attestation_monitor_routes import ATTESTATION_MONITOR_PATH as MONITOR
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.arm import DEFAULT_SUBSCRIPTION, connect
from trustedlaunch.cli.main import app
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.control.plane import ControlPlane
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.store.models import Operation

GROUP = ["-g", "myResourceGroup"]  # the group cli_env created
CREATE = ["aks", "create", *GROUP, "--generate-ssh-keys", "--node-count", "1", "--no-wait"]
NODEPOOL = ["--cluster-name", "vtpm", *GROUP]
WARNING = "WARNING: Continuous attestation does not run on this server."


def tl(runner: CliRunner, env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def on_demand_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[dict[str, str | None], BackgroundServer]]:
    """A server whose reconciler runs apart with --attestation-interval 0, as its operator declared; the
    environment of a `tl` user of it."""
    monkeypatch.setenv("TL_RECONCILER_ATTESTATION_INTERVAL", "0")
    token_file = tmp_path / "config" / "admin-token"
    with BackgroundServer(create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)) as server:
        home = tmp_path / "home"
        home.mkdir()
        env: dict[str, str | None] = {
            "TL_ENDPOINT": server.url,
            "TL_TOKEN": token_file.read_text().strip(),
            "HOME": str(home),
            "TL_SUBSCRIPTION": None,
        }
        group = ["group", "create", "-n", "myResourceGroup", "-l", "eastus"]
        created = CliRunner().invoke(app, group, env=env)
        assert created.exit_code == 0, created.output
        yield env, server


def finish_operations(server: BackgroundServer) -> None:
    with server.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            finish_operation(session, operation, "Succeeded")


def test_vtpm_creates_and_updates_warn_without_continuous_attestation(
    runner: CliRunner, on_demand_server: tuple[dict[str, str | None], BackgroundServer]
) -> None:
    env, server = on_demand_server
    code, out, err = tl(runner, env, *CREATE, "-n", "vtpm", "--enable-secure-boot", "--enable-vtpm")
    assert code == 0, err
    assert err.splitlines()[1].startswith(WARNING)  # after the one about the SSH key it generated
    assert "runs with --attestation-interval 0: vTPM nodes are attested when they are provisioned" in err
    assert json.loads(out)["name"] == "vtpm"
    finish_operations(server)
    code, _, err = tl(runner, env, *CREATE, "-n", "plain", "--enable-secure-boot")
    assert code == 0 and WARNING not in err  # no vTPM: nothing to re-attest
    finish_operations(server)

    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "tpmpool", "--node-count", "1", "--no-wait"]
    code, _, err = tl(runner, env, *add, "--enable-vtpm", "--only-show-errors")
    assert (code, err) == (0, "")
    finish_operations(server)
    update = ["aks", "nodepool", "update", *NODEPOOL, "--name", "tpmpool", "--labels", "a=b", "--no-wait"]
    code, _, err = tl(runner, env, *update)  # a pool that has a vTPM, updated
    assert code == 0 and WARNING in err
    finish_operations(server)
    code, _, err = tl(runner, env, "aks", "update", "-n", "vtpm", *GROUP, "--tags", "env=dev", "--no-wait")
    assert code == 0 and WARNING in err
    finish_operations(server)
    scale = ["aks", "nodepool", "scale", *NODEPOOL, "--name", "tpmpool", "-c", "2", "--no-wait"]
    assert WARNING in tl(runner, env, *scale)[2]


def test_refused_puts_print_no_warning(
    runner: CliRunner, on_demand_server: tuple[dict[str, str | None], BackgroundServer]
) -> None:
    """A PUT the API refuses (400, 409) changed nothing: only its error is printed."""
    env, server = on_demand_server
    vtpm = ["--enable-secure-boot", "--enable-vtpm"]
    code, _, err = tl(runner, env, *CREATE, "-n", "vtpm", *vtpm, "--kubernetes-version", "1.20.0")
    assert code != 0 and "ERROR" in err and WARNING not in err  # 400: a version not installed
    assert tl(runner, env, *CREATE, "-n", "vtpm", *vtpm)[0] == 0
    finish_operations(server)
    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "tpmpool", "--node-count", "1", "--no-wait", *vtpm]
    assert tl(runner, env, *add)[0] == 0
    code, _, err = tl(runner, env, *add)  # 409 DuplicateAgentPoolName
    assert code != 0 and "DuplicateAgentPoolName" in err and WARNING not in err


def test_no_warning_when_the_server_cannot_tell(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    """The test server runs no reconciler and declares none: Unknown, so nothing is said."""
    code, _, err = tl(runner, cli_env, *CREATE, "-n", "vtpm", "--enable-secure-boot", "--enable-vtpm")
    assert code == 0 and WARNING not in err and "Continuous attestation" not in err


def monitor_status(url: str, token: str) -> dict[str, object]:
    answer = httpx.get(
        url + MONITOR, headers={"Authorization": f"Bearer {token}"}, params={"api-version": "2024-07-01"}
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


@pytest.mark.parametrize(("interval", "state"), [(0, "NotRunning"), (120, "Running")])
def test_the_reconciler_beside_the_api_says_what_it_runs(tmp_path: Path, interval: int, state: str) -> None:
    """`tl serve`'s composition (tests/cli_aks/test_cli_monitoring.py runs `tl serve` itself): a real
    reconciler thread on the API's store; a token scoped to one resource group may read the answer."""
    with ControlPlane(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "admin-token") as plane:
        reconciler = plane.reconciler(tmp_path / "state", attestation_interval=interval)
        with BackgroundServer(create_app(plane=plane), reconciler=reconciler) as server:
            admin = plane.token_file.read_text().strip()
            scoped = httpx.post(
                f"{server.url}/providers/Microsoft.TrustedLaunch/tokens",
                headers={"Authorization": f"Bearer {admin}"},
                params={"api-version": "2024-07-01"},
                json={"name": "team", "scope": f"/subscriptions/{DEFAULT_SUBSCRIPTION}/resourceGroups/rg"},
            ).json()["properties"]["token"]
            status = monitor_status(server.url, scoped)
    assert status["continuousAttestation"] == state
    assert status["attestationIntervalSeconds"] == interval


def test_the_embedded_server_says_it_stops_with_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `tl` command without --endpoint runs a real embedded server and reconciler on the default store."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("TL_DATABASE_URL", f"sqlite:///{tmp_path / 'tl.db'}")
    with connect(None, DEFAULT_SUBSCRIPTION) as client:
        status = client.json("GET", MONITOR)
    assert status["continuousAttestation"] == "NotRunning"
    assert "embedded server of a tl command" in status["message"] and "tl serve" in status["message"]


def test_a_bad_declared_interval_fails_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TL_RECONCILER_ATTESTATION_INTERVAL", "soon")
    with pytest.raises(TrustedLaunchError, match="TL_RECONCILER_ATTESTATION_INTERVAL: 'soon' is not"):
        create_app(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "admin-token")
