"""`tl aks create --nodepool-labels/--nodepool-taints/--max-pods`, `tl aks nodepool add --labels
--node-taints --max-pods` and `nodepool update --labels --node-taints` as az takes them, `tl aks wait` and
`tl aks machine show`, against a real server (no reconciler: --no-wait, operations finished by hand)."""

from __future__ import annotations

import json

from monitoring_rows import add_node
from sqlalchemy import select
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.store.models import AgentPool, Operation

CLUSTER = ["-g", "myResourceGroup", "-n", "myAKSCluster"]
NODEPOOL = ["--cluster-name", "myAKSCluster", "-g", "myResourceGroup"]
CREATE = ["aks", "create", *CLUSTER, "--generate-ssh-keys", "--node-count", "1", "--no-wait"]


def tl(runner: CliRunner, env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def finish_operations(server: BackgroundServer) -> None:
    """Finish the operations in progress as the reconciler would (no VMs here)."""
    with server.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            finish_operation(session, operation, "Succeeded")


def test_labels_taints_and_max_pods_as_az_takes_them(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    code, out, err = tl(
        runner, cli_env, *CREATE, "--nodepool-labels", "dept=IT costcenter=9000", "--max-pods", "50"
    )
    assert code == 0, err
    [profile] = json.loads(out)["properties"]["agentPoolProfiles"]
    assert (profile["nodeLabels"], profile["maxPods"]) == ({"dept": "IT", "costcenter": "9000"}, 50)
    finish_operations(server[2])

    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "labelnp", "--node-count", "1", "--no-wait"]
    taints = "sku=gpu:NoSchedule,dedicated=web:NoExecute"
    code, out, err = tl(runner, cli_env, *add, "--labels", "dept=HR", "--node-taints", taints, "-m", "30")
    assert code == 0, err
    props = json.loads(out)["properties"]
    assert props["nodeLabels"] == {"dept": "HR"}
    assert props["nodeTaints"] == ["sku=gpu:NoSchedule", "dedicated=web:NoExecute"]
    assert props["maxPods"] == 30
    finish_operations(server[2])

    update = ["aks", "nodepool", "update", *NODEPOOL, "--name", "labelnp", "--no-wait"]
    code, out, err = tl(runner, cli_env, *update, "--labels", "dept=Finance tier=web", "--node-taints", "")
    assert code == 0, err
    finish_operations(server[2])
    code, out, err = tl(runner, cli_env, "aks", "nodepool", "show", *NODEPOOL, "--name", "labelnp")
    props = json.loads(out)["properties"]
    assert props["nodeLabels"] == {"dept": "Finance", "tier": "web"} and "nodeTaints" not in props
    assert props["maxPods"] == 30  # kept


def test_the_aks_prefix_and_bad_values_are_refused(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    assert tl(runner, cli_env, *CREATE)[0] == 0
    finish_operations(server[2])
    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "labelnp", "--node-count", "1", "--no-wait"]
    code, _, err = tl(runner, cli_env, *add, "--labels", "kubernetes.azure.com/secure-boot=true")
    assert code == 1
    assert "(BadRequest) Invalid node label key kubernetes.azure.com/secure-boot." in err
    assert "The 'kubernetes.azure.com' prefix is preserved by aks system labels\n" in err  # AKS's words
    code, _, err = tl(runner, cli_env, *add, "--node-taints", "kubernetes.azure.com/attestation=x:NoSchedule")
    assert code == 1 and "(InvalidParameter)" in err and "belongs to the attestation verdict's taints" in err
    code, _, err = tl(runner, cli_env, *add, "--max-pods", "300")
    assert code == 1 and "maxPods 300 of pool 'labelnp' is out of range" in err
    code, _, err = tl(runner, cli_env, *add, "--labels", "novalue")
    assert code == 2 and "argument --labels: 'novalue' is not key=value" in err


def test_aks_wait(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """--created waits for Succeeded (times out while Creating: exit 1), --exists and --custom JMESPath,
    --deleted for a 404; exactly one condition."""
    wait = ["aks", "wait", *CLUSTER, "--interval", "1", "--timeout", "2"]
    code, _, err = tl(runner, cli_env, *wait, "--exists")
    assert code == 1 and "Wait operation timed-out after 2 seconds" in err
    assert tl(runner, cli_env, *wait, "--deleted")[0] == 0
    assert tl(runner, cli_env, *CREATE)[0] == 0
    assert tl(runner, cli_env, *wait, "--exists")[0] == 0
    code, _, err = tl(runner, cli_env, *wait, "--created")
    assert code == 1 and "timed-out" in err
    finish_operations(server[2])
    assert tl(runner, cli_env, *wait, "--created") == (0, "", "")
    assert tl(runner, cli_env, *wait, "--updated")[0] == 0
    running = "properties.powerState.code=='Running'"
    assert tl(runner, cli_env, *wait, "--custom", running)[0] == 0
    assert tl(runner, cli_env, *wait, "--custom", "properties.agentPoolProfiles[0].count==`3`")[0] == 1
    code, _, err = tl(runner, cli_env, *wait, "--custom", "[[")
    assert code == 2 and "argument --custom: invalid jmespath_type value: '[['" in err
    code, _, err = tl(runner, cli_env, *wait)
    assert code == 2 and "pass exactly one of --created" in err
    assert tl(runner, cli_env, *wait, "--created", "--deleted")[0] == 2


def test_aks_nodepool_wait(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """`az aks nodepool wait`'s conditions on a pool: --created times out while it is Creating, then
    passes; --exists, --custom on the pool's JSON (a query the pool's data cannot take exits 2 naming it),
    --deleted for a pool that is not there."""
    assert tl(runner, cli_env, *CREATE)[0] == 0
    finish_operations(server[2])
    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "waitnp", "--node-count", "2", "--no-wait"]
    assert tl(runner, cli_env, *add)[0] == 0
    wait = ["aks", "nodepool", "wait", *NODEPOOL, "--interval", "1", "--timeout", "2"]
    code, _, err = tl(runner, cli_env, *wait, "--nodepool-name", "waitnp", "--created")
    assert code == 1 and "Wait operation timed-out after 2 seconds" in err
    assert tl(runner, cli_env, *wait, "-n", "waitnp", "--exists") == (0, "", "")
    finish_operations(server[2])
    assert tl(runner, cli_env, *wait, "-n", "waitnp", "--created") == (0, "", "")
    assert tl(runner, cli_env, *wait, "-n", "waitnp", "--custom", "properties.count==`2`")[0] == 0
    assert tl(runner, cli_env, *wait, "-n", "waitnp", "--custom", "properties.count==`5`")[0] == 1
    code, _, err = tl(runner, cli_env, *wait, "-n", "waitnp", "--custom", "abs(name)")
    assert code == 2 and "argument --custom: 'abs(name)' cannot be applied to the node pool" in err
    assert tl(runner, cli_env, *wait, "-n", "nopool", "--deleted") == (0, "", "")
    code, _, err = tl(runner, cli_env, *wait, "-n", "nopool", "--exists")
    assert code == 1 and "timed-out" in err
    code, _, err = tl(runner, cli_env, *wait, "-n", "waitnp", "--exists", "--updated")
    assert code == 2 and "pass exactly one of --created" in err


def test_machine_show_asks_for_the_machine(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """`aks machine show` GETs .../agentPools/{pool}/machines/{machine} (Machines_Get): the machine in AKS's
    shape; a machine that does not exist exits 3, as az does for a missing resource."""
    assert tl(runner, cli_env, *CREATE)[0] == 0
    finish_operations(server[2])
    with server[2].app.state.sessions.begin() as session:
        name = add_node(session, session.scalars(select(AgentPool)).one(), 0).name
    show = ["aks", "machine", "show", *NODEPOOL, "--nodepool-name", "nodepool1"]
    code, out, err = tl(runner, cli_env, *show, "--machine-name", name)
    assert code == 0, err
    machine = json.loads(out)
    assert machine["name"] == name
    assert (
        "/virtualMachineScaleSets/aks-nodepool1-vmss/virtualMachines/" in machine["properties"]["resourceId"]
    )
    assert machine["properties"]["provisioningState"] == "Ready"
    code, _, _ = tl(runner, cli_env, *show, "--machine-name", "aks-nodepool1-00000001-vmss000009")
    assert code == 3
    assert tl(runner, cli_env, *show, "--machine-name", "Bad_Name")[0] == 2


def test_machines_show_their_nodes_labels_and_taints(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    """A machine carries its Node's pool labels and taints where AKS's Machine has them
    (properties.kubernetes.nodeLabels/nodeTaints, with nodeName, maxPods and the version), beside the
    attestation verdict's labels; `machine list`/`show -o table` show both on a wide terminal."""
    taints = "sku=gpu:NoSchedule"
    code, _, err = tl(runner, cli_env, *CREATE, "--nodepool-labels", "dept=IT", "--nodepool-taints", taints)
    assert code == 0, err
    finish_operations(server[2])
    with server[2].app.state.sessions.begin() as session:
        pool = session.scalars(select(AgentPool)).one()
        joined, waiting = add_node(session, pool, 0), add_node(session, pool, 1)
        # what the control plane set on the first one's Node, before the pool's labels changed
        joined.applied_node_labels, joined.applied_node_taints = {"dept": "HR"}, []
        names = joined.name, waiting.name
    machines = ["aks", "machine", "list", *NODEPOOL, "--nodepool-name", "nodepool1"]
    code, out, err = tl(runner, cli_env, *machines)
    assert code == 0, err
    by_name = {machine["name"]: machine["properties"] for machine in json.loads(out)}
    assert by_name[names[0]]["kubernetes"] == {
        "nodeName": names[0],
        "nodeLabels": {"dept": "HR"},
        "nodeTaints": [],
        "maxPods": 110,
        "orchestratorVersion": by_name[names[0]]["kubernetes"]["currentOrchestratorVersion"],
        "currentOrchestratorVersion": by_name[names[0]]["kubernetes"]["orchestratorVersion"],
    }
    waiting_kubernetes = by_name[names[1]]["kubernetes"]  # not joined yet: the pool's
    assert (waiting_kubernetes["nodeLabels"], waiting_kubernetes["nodeTaints"]) == ({"dept": "IT"}, [taints])
    assert by_name[names[1]]["mode"] == "System"
    assert by_name[names[1]]["labels"] == {"kubernetes.azure.com/agentpool": "nodepool1"}  # the verdict's

    result = runner.invoke(app, [*machines, "-o", "table"], env={**cli_env, "COLUMNS": "250"})
    header, *rows = result.stdout.splitlines()
    assert header.split()[-3:] == ["Labels", "NodeLabels", "Taints"]
    rows_by_name = {row.split()[0]: row.split() for row in rows}
    assert rows_by_name[names[1]][-3:] == ["kubernetes.azure.com/agentpool=nodepool1", "dept=IT", taints]
    assert rows_by_name[names[0]][-2:] == ["kubernetes.azure.com/agentpool=nodepool1", "dept=HR"]  # no taint
    show = ["aks", "machine", "show", *NODEPOOL, "--nodepool-name", "nodepool1", "--machine-name", names[0]]
    result = runner.invoke(app, [*show, "-o", "table"], env={**cli_env, "COLUMNS": "250"})
    assert result.stdout.splitlines()[1].split()[-2:] == [
        "kubernetes.azure.com/agentpool=nodepool1",
        "dept=HR",
    ]
