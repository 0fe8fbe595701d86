"""`--max-surge` of `tl aks nodepool add/update` against a real server (no reconciler: --no-wait)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from trustedlaunch.cli.main import app

NODEPOOL = ["--cluster-name", "myAKSCluster", "-g", "myResourceGroup"]


def tl(runner: CliRunner, env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_nodepool_add_and_update_with_max_surge(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    create = ["aks", "create", "-g", "myResourceGroup", "-n", "myAKSCluster", "--generate-ssh-keys"]
    code, _, err = tl(runner, cli_env, *create, "--node-count", "1", "--no-wait")
    assert code == 0, err
    add = ["aks", "nodepool", "add", *NODEPOOL, "--node-count", "3", "--no-wait"]
    code, out, err = tl(runner, cli_env, *add, "--name", "surgepool", "--max-surge", "34%")
    assert code == 0, err
    assert json.loads(out)["properties"]["upgradeSettings"] == {"maxSurge": "34%"}
    code, out, _ = tl(runner, cli_env, "aks", "nodepool", "show", *NODEPOOL, "--name", "surgepool")
    assert json.loads(out)["properties"]["upgradeSettings"] == {"maxSurge": "34%"}

    code, _, err = tl(runner, cli_env, *add, "--name", "badsurge", "--max-surge", "150%")
    assert code == 1
    assert "(InvalidParameter) upgradeSettings.maxSurge '150%' of pool 'badsurge' is invalid" in err
    assert "Target: properties.upgradeSettings.maxSurge" in err


def test_nodepool_update_needs_something_to_update(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "update", *NODEPOOL, "--name", "surgepool")
    assert code == 2
    assert "--disable-vtpm, --max-surge or --drain-timeout" in err


def test_nodepool_add_with_drain_timeout(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    """--drain-timeout (minutes) is sent beside --max-surge; a value out of AKS's range is refused."""
    create = ["aks", "create", "-g", "myResourceGroup", "-n", "myAKSCluster", "--generate-ssh-keys"]
    code, _, err = tl(runner, cli_env, *create, "--node-count", "1", "--no-wait")
    assert code == 0, err
    add = ["aks", "nodepool", "add", *NODEPOOL, "--node-count", "1", "--no-wait"]
    code, out, err = tl(
        runner, cli_env, *add, "--name", "drainpool", "--drain-timeout", "45", "--max-surge", "1"
    )
    assert code == 0, err
    settings = {"maxSurge": "1", "drainTimeoutInMinutes": 45}
    assert json.loads(out)["properties"]["upgradeSettings"] == settings
    code, _, err = tl(runner, cli_env, *add, "--name", "baddrain", "--drain-timeout", "2000")
    assert code == 1
    assert "(InvalidParameter) upgradeSettings.drainTimeoutInMinutes 2000 of pool 'baddrain'" in err
