"""`tl group` (az group) through CliRunner against a real server on loopback: no cluster without its group,
ids spelled as created, delete with az's prompt."""

from __future__ import annotations

import json
import threading
import time

from sqlalchemy import select
from test_cli_aks import finish_first_operation_later
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.store.models import Operation

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"


def tl(
    runner: CliRunner, env: dict[str, str | None], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_group_lifecycle_and_clusters_inside(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    assert tl(runner, cli_env, "group", "exists", "-n", "Team-A")[:2] == (0, "false\n")
    create = ["aks", "create", "-g", "team-a", "-n", "MyCluster", "--generate-ssh-keys", "--no-wait"]
    code, out, err = tl(runner, cli_env, *create)
    assert code == 3 and out == "", (code, out, err)  # az: a 404 exits 3
    assert "ERROR: (ResourceGroupNotFound) Resource group 'team-a' could not be found.\n" in err, err

    code, out, err = tl(
        runner, cli_env, "group", "create", "-n", "Team-A", "-l", "East US", "--tags", "env=dev"
    )
    assert code == 0, err
    group = json.loads(out)
    assert group["id"] == f"/subscriptions/{SUBSCRIPTION}/resourceGroups/Team-A"
    assert (group["name"], group["location"], group["tags"]) == ("Team-A", "eastus", {"env": "dev"})
    assert group["properties"]["provisioningState"] == "Succeeded"
    assert tl(runner, cli_env, "group", "exists", "-g", "TEAM-A")[:2] == (0, "true\n")
    code, out, _ = tl(runner, cli_env, "group", "show", "-g", "team-a", "--query", "name", "-o", "tsv")
    assert (code, out) == (0, "Team-A\n")
    code, out, _ = tl(runner, cli_env, "group", "list", "-o", "table")  # with the fixture's myResourceGroup
    assert code == 0 and [line.split() for line in out.splitlines()] == [
        ["Name", "Location", "Status"],
        ["myResourceGroup", "eastus", "Succeeded"],
        ["Team-A", "eastus", "Succeeded"],
    ], out
    code, _, err = tl(runner, cli_env, "group", "create", "-n", "team-a", "-l", "westus")
    assert code == 1 and "(InvalidResourceGroupLocation)" in err, err

    # ARM keeps the casing given at creation: the group's and the cluster's, in every id below them
    code, out, err = tl(runner, cli_env, *create)
    assert code == 0, err
    cluster_id = (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/Team-A/providers/Microsoft.ContainerService/"
        "managedClusters/MyCluster"
    )
    assert json.loads(out)["id"] == cluster_id
    code, out, _ = tl(
        runner, cli_env, "aks", "nodepool", "list", "-g", "TEAM-A", "--cluster-name", "mycluster"
    )
    assert code == 0 and [pool["id"] for pool in json.loads(out)] == [f"{cluster_id}/agentPools/nodepool1"]
    code, out, _ = tl(runner, cli_env, "aks", "list", "-g", "team-A", "--query", "[].id", "-o", "tsv")
    assert (code, out) == (0, cluster_id + "\n")

    code, out, err = tl(runner, cli_env, "group", "delete", "-n", "Team-A", stdin="n\n")
    assert code == 0 and "Are you sure you want to perform this operation" in out + err
    assert tl(runner, cli_env, "group", "exists", "-n", "Team-A")[:2] == (0, "true\n")
    code, out, err = tl(runner, cli_env, "group", "delete", "-n", "Team-A", "--yes", "--no-wait")
    assert (code, out) == (0, ""), err
    # the group stays Deleting until its cluster is deleted (no reconciler here: the test finishes it)
    code, out, _ = tl(
        runner, cli_env, "group", "show", "-n", "Team-A", "--query", "properties.provisioningState"
    )
    assert (code, json.loads(out)) == (0, "Deleting")
    sessions = server[2].server.config.app.state.sessions
    with sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.kind == "Delete")):
            finish_operation(session, operation, "Succeeded")
    assert tl(runner, cli_env, "group", "exists", "-n", "Team-A")[:2] == (0, "false\n")
    code, _, err = tl(runner, cli_env, "group", "show", "-n", "Team-A")
    assert code == 3 and "(ResourceGroupNotFound) Resource group 'Team-A' could not be found." in err
    code, _, err = tl(runner, cli_env, "aks", "show", "-g", "Team-A", "-n", "MyCluster")
    assert code == 3 and "(ResourceGroupNotFound)" in err
    code, _, err = tl(runner, cli_env, "group", "delete", "-n", "Team-A", "--yes")
    assert code == 0 and "nothing to delete" in err


def test_group_delete_waits_for_its_clusters(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    create = ["aks", "create", "-g", "myResourceGroup", "-n", "k", "--generate-ssh-keys", "--no-wait"]
    assert tl(runner, cli_env, *create)[0] == 0
    with server[2].server.config.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation)):
            finish_operation(session, operation, "Succeeded")
    reconciler = finish_first_operation_later(server[2])  # the cluster's Delete, as the reconciler
    code, out, err = tl(
        runner, cli_env, "group", "delete", "-g", "myresourcegroup", "--yes", "--timeout", "30"
    )
    reconciler.join()
    assert (code, out) == (0, ""), err
    assert tl(runner, cli_env, "group", "exists", "-n", "myResourceGroup")[:2] == (0, "false\n")
    code, out, _ = tl(runner, cli_env, "aks", "list", "-o", "json")
    assert (code, json.loads(out)) == (0, [])


def finish_delete_later(
    server: BackgroundServer, cluster: str, status: str, after: float
) -> threading.Thread:
    """Play the reconciler: `after` seconds once the Delete of `cluster` exists, end it with `status`."""
    sessions = server.server.config.app.state.sessions
    query = select(Operation).where(Operation.kind == "Delete", Operation.resource_id.endswith(cluster))

    def reconcile() -> None:
        deadline = time.monotonic() + 20  # the CLI may take a while to send the group's DELETE
        while time.monotonic() < deadline:
            with sessions.begin() as session:
                if session.scalars(query).first() is not None:
                    break
            time.sleep(0.1)
        time.sleep(after)
        with sessions.begin() as session:
            finish_operation(session, session.scalars(query).one(), status)

    thread = threading.Thread(target=reconcile, daemon=True)
    thread.start()
    return thread


def two_clusters(runner: CliRunner, env: dict[str, str | None], server: BackgroundServer) -> None:
    for name in ("k1", "k2"):
        create = ["aks", "create", "-g", "myResourceGroup", "-n", name, "--generate-ssh-keys", "--no-wait"]
        assert tl(runner, env, *create)[0] == 0
    with server.server.config.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation)):
            finish_operation(session, operation, "Succeeded")


def test_group_delete_waits_for_the_group_not_only_its_last_cluster(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """The 202's Location follows the last cluster's Delete: that one ends first here, the other later."""
    two_clusters(runner, cli_env, server[2])
    last, first = (
        finish_delete_later(server[2], "/k2", "Succeeded", 0.5),
        finish_delete_later(server[2], "/k1", "Succeeded", 3),
    )
    code, out, err = tl(
        runner, cli_env, "group", "delete", "-g", "myResourceGroup", "--yes", "--timeout", "30"
    )
    assert (code, out) == (0, ""), err
    assert tl(runner, cli_env, "group", "exists", "-n", "myResourceGroup")[:2] == (0, "false\n")
    last.join(), first.join()


def test_group_delete_fails_when_a_cluster_cannot_be_deleted(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    two_clusters(runner, cli_env, server[2])
    failing = finish_delete_later(server[2], "/k1", "Failed", 0.5)
    code, _, err = tl(runner, cli_env, "group", "delete", "-g", "myResourceGroup", "--yes", "--timeout", "30")
    failing.join()
    assert code == 1
    assert (
        "ERROR: Deleting the resource group myResourceGroup failed: its provisioningState is Succeeded" in err
    )
    assert tl(runner, cli_env, "group", "exists", "-n", "myResourceGroup")[:2] == (0, "true\n")
