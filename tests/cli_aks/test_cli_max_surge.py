"""The upgrade settings of `tl aks nodepool add/update` (--max-surge, --drain-timeout, --node-soak-duration,
--undrainable-node-behavior) and `tl aks nodepool delete --ignore-pod-disruption-budget` against a real
server (no reconciler: --no-wait)."""

from __future__ import annotations

import json

from sqlalchemy import select
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.store.models import Operation

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
    assert "--max-surge, --drain-timeout, --node-soak-duration, --undrainable-node-behavior" in err


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


def finish_operations(server: BackgroundServer) -> None:
    """Finish the operations in progress as the reconciler would (no VMs here)."""
    with server.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            finish_operation(session, operation, "Succeeded")


def test_nodepool_soak_duration_and_undrainable_behaviour(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """--node-soak-duration and --undrainable-node-behavior are sent as AKS's upgradeSettings by add and
    update (which keeps the others); a soak out of AKS's range and an unknown behaviour are refused."""
    create = ["aks", "create", "-g", "myResourceGroup", "-n", "myAKSCluster", "--generate-ssh-keys"]
    code, _, err = tl(runner, cli_env, *create, "--node-count", "1", "--no-wait")
    assert code == 0, err
    add = ["aks", "nodepool", "add", *NODEPOOL, "--node-count", "1", "--no-wait"]
    code, out, err = tl(runner, cli_env, *add, "--name", "soakpool", "--node-soak-duration", "10")
    assert code == 0, err
    assert json.loads(out)["properties"]["upgradeSettings"] == {"nodeSoakDurationInMinutes": 10}
    finish_operations(server[2])
    update = ["aks", "nodepool", "update", *NODEPOOL, "--name", "soakpool", "--no-wait"]
    code, out, err = tl(runner, cli_env, *update, "--undrainable-node-behavior", "Cordon")
    assert code == 0, err
    settings = {"nodeSoakDurationInMinutes": 10, "undrainableNodeBehavior": "Cordon"}
    assert json.loads(out)["properties"]["upgradeSettings"] == settings
    code, _, err = tl(runner, cli_env, *add, "--name", "badsoak", "--node-soak-duration", "31")
    assert code == 1  # the server refused it (az: 1)
    assert "(InvalidParameter) upgradeSettings.nodeSoakDurationInMinutes 31 of pool 'badsoak'" in err
    code, _, err = tl(runner, cli_env, *update, "--undrainable-node-behavior", "Drain")
    assert code == 2 and "--undrainable-node-behavior" in err


def test_nodepool_delete_ignoring_pod_disruption_budgets(
    runner: CliRunner,
    cli_env: dict[str, str | None],
    server: tuple[str, str, BackgroundServer],
) -> None:
    """--ignore-pod-disruption-budget sends ignore-pod-disruption-budget=true: the Delete operation's drains
    delete pods instead of evicting them."""
    create = ["aks", "create", "-g", "myResourceGroup", "-n", "myAKSCluster", "--generate-ssh-keys"]
    code, _, err = tl(runner, cli_env, *create, "--node-count", "1", "--no-wait")
    assert code == 0, err
    add = ["aks", "nodepool", "add", *NODEPOOL, "--node-count", "1", "--no-wait"]
    for name in ("keptbudget", "nobudget"):
        code, _, err = tl(runner, cli_env, *add, "--name", name)
        assert code == 0, err
    delete = ["aks", "nodepool", "delete", *NODEPOOL, "--no-wait"]
    code, _, err = tl(runner, cli_env, *delete, "--name", "keptbudget")
    assert code == 0, err
    code, _, err = tl(runner, cli_env, *delete, "--name", "nobudget", "--ignore-pod-disruption-budget")
    assert code == 0, err
    with server[2].app.state.sessions() as session:
        deletes = session.scalars(select(Operation).where(Operation.kind == "Delete")).all()
        ignoring = {op.resource_id.rsplit("/", 1)[1]: op.ignore_pod_disruption_budget for op in deletes}
    assert ignoring == {"keptbudget": False, "nobudget": True}
