"""az 2.91's global options and conventions in `tl`, through CliRunner against a real server on loopback:
`-o json|jsonc|table|tsv|yaml|none`, `--query` (JMESPath), `--only-show-errors`, `--verbose`, `--debug`,
`ERROR:` lines and exit codes (3 for a missing resource), tables that fit 80 columns, help without `<bool>`,
and the flags of the AKS docs' examples (`--enable-managed-identity`, `--yes`, `--tags`, `--nodepool-name`).
The server runs no reconciler: a thread plays it where a command waits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import yaml
from monitoring_rows import add_node
from rich.cells import cell_len
from sqlalchemy import select
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.store.models import AgentPool, Operation

GROUP = ["-g", "myResourceGroup"]
CREATE = ["aks", "create", *GROUP, "-n", "myAKSCluster", "--generate-ssh-keys", "--no-wait"]
POOL = ["--cluster-name", "myAKSCluster", *GROUP]
MACHINES = ["aks", "machine", "list", *POOL, "--nodepool-name", "nodepool1"]


def tl(
    runner: CliRunner, env: dict[str, str | None], *args: str, columns: int | None = None
) -> tuple[int, str, str]:
    environment = {**env, "COLUMNS": str(columns) if columns else None}
    result = runner.invoke(app, list(args), env=environment)
    return result.exit_code, result.stdout, result.stderr


def assert_fits(text: str, width: int) -> None:
    """Every line of `text` is at most `width` cells."""
    too_wide = [line for line in text.splitlines() if cell_len(line) > width]
    assert not too_wide, f"lines wider than {width}:\n" + "\n".join(too_wide)


def header(text: str) -> list[str]:
    return text.splitlines()[0].split()


def test_output_formats_and_query(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    code, _, err = tl(runner, cli_env, *CREATE, "--node-count", "1", "--tags", "env=dev team=blue")
    assert code == 0, err

    code, out, _ = tl(runner, cli_env, "aks", "list", "-o", "json")
    (cluster,) = json.loads(out)
    assert cluster["tags"] == {"env": "dev", "team": "blue"}
    code, out, _ = tl(runner, cli_env, "aks", "list", "-o", "jsonc")
    assert code == 0 and json.loads(out) == [cluster]  # colours only on a terminal
    code, out, _ = tl(runner, cli_env, "aks", "show", "-n", "myAKSCluster", *GROUP, "-o", "yaml")
    assert code == 0 and yaml.safe_load(out)["name"] == "myAKSCluster"
    code, out, _ = tl(runner, cli_env, "aks", "list", "-o", "none")
    assert (code, out) == (0, "")
    code, out, _ = tl(runner, cli_env, "aks", "list", "-o", "tsv")
    fields = out.rstrip("\n").split("\t")  # scalars only, as az: nested objects left out
    assert code == 0 and "myAKSCluster" in fields and "eastus" in fields and len(out.splitlines()) == 1

    query = [
        "--query",
        "[].{name:name, k8s:properties.kubernetesVersion, pools:length(properties.agentPoolProfiles)}",
    ]
    code, out, _ = tl(runner, cli_env, "aks", "list", *query)
    assert json.loads(out) == [
        {"name": "myAKSCluster", "k8s": cluster["properties"]["kubernetesVersion"], "pools": 1}
    ]
    code, out, _ = tl(runner, cli_env, "aks", "list", *query, "-o", "table")
    assert header(out) == ["Name", "K8s", "Pools"] and out.splitlines()[1].split()[0] == "myAKSCluster"
    code, out, _ = tl(runner, cli_env, "aks", "list", "--query", "[0].name", "-o", "tsv")
    assert (code, out) == (0, "myAKSCluster\n")
    code, _, err = tl(runner, cli_env, "aks", "list", "--query", "[?name==")
    assert code == 2 and err.startswith("ERROR: argument --query: invalid jmespath_type value")
    code, _, err = tl(
        runner, cli_env, "aks", "list", "--query", "length(`1`)"
    )  # wrong type: only on the data
    assert code == 2 and err.startswith("ERROR: argument --query: 'length(`1`)' cannot be applied")

    code, out, err = tl(runner, cli_env, "aks", "update", "-n", "myAKSCluster", *GROUP, "--tags", "")
    assert code == 1 and "(OperationNotAllowed)" in err  # its create is still InProgress (no reconciler)


def test_errors_print_as_az_and_missing_resources_exit_3(
    runner: CliRunner, cli_env: dict[str, str | None]
) -> None:
    code, out, err = tl(runner, cli_env, "aks", "show", "-n", "nothere", *GROUP)
    assert (code, out) == (3, "")
    assert err.startswith("ERROR: (ResourceNotFound) ")
    message = err.splitlines()[0].removeprefix("ERROR: (ResourceNotFound) ")
    assert err.count(message) == 1  # said once
    assert "Code: ResourceNotFound" in err
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "show", *POOL, "-n", "nopool")
    assert code == 3 and err.startswith("ERROR: (ResourceNotFound)")
    quiet = [*CREATE, "--only-show-errors"]  # without the warning about the SSH key it generates
    arm64 = ("--enable-secure-boot", "--node-vm-size", "Standard_D2ps_v5")  # refused by the server: exit 1
    code, _, err = tl(runner, cli_env, *quiet, *arm64)
    assert code == 1 and err.startswith("ERROR: (TrustedLaunchIncompatibleWithConfig)")
    code, _, err = tl(runner, cli_env, *quiet, "--enable-addons", "monitoring")  # by tl itself: exit 2
    assert code == 2 and err.startswith("ERROR: --enable-addons: unsupported addon(s) monitoring")
    code, _, err = tl(runner, cli_env, *quiet)
    assert code == 0, err
    code, _, err = tl(runner, cli_env, "aks", "show", "-n", "MYAKSCLUSTER", "-g", "otherGroup")
    assert code == 3 and err.startswith(
        "ERROR: (ResourceGroupNotFound) Resource group 'otherGroup' could not"
    )
    assert "A cluster named 'MYAKSCLUSTER' exists in resource group(s) myResourceGroup: try -g" in err


def test_only_show_errors_verbose_and_debug(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    feature = [
        "feature",
        "register",
        "--namespace",
        "Microsoft.ContainerService",
        "--name",
        "TrustedLaunchPreview",
    ]
    code, _, err = tl(runner, cli_env, *feature)
    assert code == 0 and err.startswith("WARNING: Once the feature 'TrustedLaunchPreview' is registered")
    code, out, err = tl(runner, cli_env, *feature, "--only-show-errors")
    assert (code, err) == (0, "") and json.loads(out)["name"].endswith("TrustedLaunchPreview")

    code, out, err = tl(runner, cli_env, "aks", "list", "--verbose")
    assert code == 0 and json.loads(out) == []
    assert "INFO: trustedlaunch.cli: Command ran in " in err and "HTTP Request" not in err
    code, out, err = tl(runner, cli_env, "aks", "list", "--debug")
    assert code == 0 and json.loads(out) == []
    assert "HTTP Request: GET" in err and "managedClusters?api-version=" in err
    assert 'DEBUG: trustedlaunch.cli: Response content: {"value":[]}' in err
    code, out, err = tl(runner, cli_env, "token", "create", "--name", "debugged", "--debug")
    assert code == 0, err
    secret = json.loads(out)["properties"]["token"]
    assert secret not in err and "Response content: (not shown: " in err  # credentials stay off the log


def test_help_shows_no_bool_values_and_fits_80_columns(
    runner: CliRunner, cli_env: dict[str, str | None]
) -> None:
    for command in (["aks", "create"], ["aks", "nodepool", "add"], ["aks", "nodepool", "update"]):
        code, out, _ = tl(runner, cli_env, *command, "--help", columns=80)
        assert code == 0
        assert "<bool>" not in out and "--enable-vtpm" in out
        assert_fits(out, 80)
    code, out, _ = tl(runner, cli_env, "aks", "create", "--help", columns=80)
    assert "Allowed values:" in " ".join(out.split())  # choices as help text, wrapped between words
    assert "Windows2022." in out and "buntu2404" not in out.replace("Ubuntu2404", "")
    code, _, err = tl(runner, cli_env, *CREATE, "--enable-vtpm", "true")  # a flag takes no value, as in az
    assert code == 2 and err.startswith("ERROR: Got unexpected extra argument(s) (true)\n")
    code, _, err = tl(runner, cli_env, "aks", "show", *GROUP)  # command-line errors print as az's too
    assert (code, err) == (2, "ERROR: Missing option '--name' / '-n'.\nTry 'tl aks show --help' for help.\n")


def play_reconciler(server: BackgroundServer, notes: list[str]) -> threading.Thread:
    """Once an operation is InProgress: show each of `notes` as its step, add the pool's node (Ready,
    Attested) and finish it as Succeeded."""
    sessions = server.server.config.app.state.sessions

    def reconcile() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sessions.begin() as session:
                operation = session.scalars(select(Operation).where(Operation.status == "InProgress")).first()
                if operation is not None:
                    break
            time.sleep(0.1)
        for note in notes:
            with sessions.begin() as session:
                session.scalars(select(Operation)).one().note = note
            time.sleep(1.5)  # the CLI polls every second
        with sessions.begin() as session:
            node = add_node(session, session.scalars(select(AgentPool)).one(), 0)
            node.name = "aks-nodepool1-12345678-vmss000000"  # AKS's length
            finish_operation(session, session.scalars(select(Operation)).one(), "Succeeded")

    thread = threading.Thread(target=reconcile, daemon=True)
    thread.start()
    return thread


def test_create_shows_the_servers_steps_and_each_nodes_attestation(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """The AKS docs' example (the Russian page's flags included) waits, naming the reconciler's steps."""
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
    ):
        assert tl(runner, cli_env, *args)[0] == 0
    steps = ["agent pool nodepool1: booting node 1/1", "agent pool nodepool1: attesting node 1/1"]
    reconciler = play_reconciler(server[2], steps)
    create = [arg for arg in CREATE if arg != "--no-wait"]
    code, out, err = tl(
        runner,
        cli_env,
        *create,
        "--node-count",
        "1",
        "--enable-secure-boot",
        "--enable-vtpm",
        "--enable-managed-identity",
        "--yes",
        "--timeout",
        "60",
        "--verbose",
        "-o",
        "table",
        columns=80,
    )
    reconciler.join()
    assert code == 0, err
    for step in steps:
        assert f"Creating cluster myAKSCluster: {step}" in err
    assert "Node aks-nodepool1-12345678-vmss000000: Attested (Secure Boot, vTPM)" in err
    assert header(out) == ["Name", "Location", "ResourceGroup", "KubernetesVersion", "ProvisioningState"]
    assert_fits(out, 80)
    code, out, _ = tl(
        runner, cli_env, "aks", "show", "-n", "myAKSCluster", *GROUP, "-o", "table", columns=160
    )
    assert header(out)[-1] == "Fqdn" and ".hcp.eastus." in out

    # Tables at 80 and 160 columns: the columns that fit, most important first, no word split.
    code, out, _ = tl(runner, cli_env, *MACHINES, "-o", "table", columns=80)
    # (Health and SecureBoot do not fit beside them; the narrower VTPM does)
    assert header(out) == ["Name", "ProvisioningState", "Power", "VTPM", "Attestation"]
    assert out.splitlines()[1].split() == [
        "aks-nodepool1-12345678-vmss000000",
        "Ready",
        "Stopped",
        "True",
        "Attested",
    ]
    assert_fits(out, 80)
    code, out, _ = tl(runner, cli_env, *MACHINES, "-o", "table", columns=160)
    assert header(out)[:7] == [
        "Name",
        "ProvisioningState",
        "Power",
        "Health",
        "SecureBoot",
        "VTPM",
        "Attestation",
    ]
    assert_fits(out, 160)
    code, out, _ = tl(runner, cli_env, "aks", "nodepool", "list", *POOL, "-o", "table", columns=80)
    assert header(out) == ["Name", "KubernetesVersion", "VmSize", "Count", "ProvisioningState", "Mode"]
    assert_fits(out, 80)
    code, out, _ = tl(runner, cli_env, "aks", "nodepool", "list", *POOL, "-o", "table", columns=160)
    assert header(out)[:8] == [
        "Name",
        "OsType",
        "KubernetesVersion",
        "VmSize",
        "Count",
        "MaxPods",
        "ProvisioningState",
        "Mode",
    ]
    assert {"SecureBoot", "VTPM"} <= set(header(out))
    assert_fits(out, 160)

    # `aks update --tags` replaces the tags (a PUT of the cluster as it is, as az does).
    code, out, err = tl(
        runner, cli_env, "aks", "update", "-n", "myAKSCluster", *GROUP, "--tags", "env=prod", "--no-wait"
    )
    assert code == 0 and json.loads(out)["tags"] == {"env": "prod"}, err

    # --nodepool-name is --name's alias in `nodepool` commands, as az has it.
    code, out, err = tl(runner, cli_env, "aks", "nodepool", "show", *POOL, "--nodepool-name", "nodepool1")
    assert code == 0 and json.loads(out)["name"] == "nodepool1", err


def test_tables_on_a_terminal_without_a_size_keep_every_column() -> None:
    """A pseudo-terminal nobody sized (0 columns, as a test's pty) is not a width: the table is whole."""
    controller, terminal = os.openpty()
    try:
        script = (
            "from trustedlaunch.cli.output import print_table; print_table(['Name', 'Fqdn'], [['c1', 'a.b']])"
        )
        environment = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
        done = subprocess.run(
            [sys.executable, "-c", script], stdout=terminal, stderr=terminal, env=environment, timeout=60
        )
        shown = os.read(controller, 65536).decode()
    finally:
        os.close(terminal)
        os.close(controller)
    assert done.returncode == 0, shown
    assert "Fqdn" in shown and "a.b" in shown


def finish_every_operation(server: BackgroundServer) -> None:
    """Finish the InProgress operations as Succeeded, as the reconciler does."""
    with server.server.config.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            finish_operation(session, operation, "Succeeded")


def test_nodepool_tags(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """`aks create --nodepool-tags` and `nodepool add/update --tags` set a pool's ARM tags (properties.tags),
    as az; the rest is kept."""
    code, out, err = tl(runner, cli_env, *CREATE, "--node-count", "1", "--nodepool-tags", "tier=system")
    assert code == 0 and json.loads(out)["properties"]["agentPoolProfiles"][0]["tags"] == {
        "tier": "system"
    }, err
    add = ["aks", "nodepool", "add", *POOL, "-n", "userpool", "--node-count", "1", "--no-wait"]
    code, out, err = tl(runner, cli_env, *add, "--tags", "team=blue cost-center=9000", "--labels", "dept=IT")
    assert code == 0, err
    assert json.loads(out)["properties"]["tags"] == {"team": "blue", "cost-center": "9000"}
    finish_every_operation(server[2])
    update = ["aks", "nodepool", "update", *POOL, "-n", "userpool", "--no-wait"]
    code, out, err = tl(runner, cli_env, *update, "--tags", "team=green")
    assert code == 0, err
    properties = json.loads(out)["properties"]
    assert properties["tags"] == {"team": "green"} and properties["nodeLabels"] == {"dept": "IT"}
    finish_every_operation(server[2])
    code, out, err = tl(runner, cli_env, *update, "--tags", "")
    assert code == 0 and "tags" not in json.loads(out)["properties"], err
    code, _, err = tl(runner, cli_env, *update, "--tags", "=x")
    assert code == 2 and "argument --tags: '=x' has no key" in err
