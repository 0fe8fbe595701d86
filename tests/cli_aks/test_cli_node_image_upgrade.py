"""`tl aks nodepool get-upgrades` (JSON as the API answers; `-o table` with the latest version's packages
under the profile, in 80 columns), `tl aks nodepool upgrade --node-image-only` and `tl aks upgrade
--node-image-only` against a real server (no reconciler: the operations are finished as it would)."""

from __future__ import annotations

import json

import httpx
from older_image_version import OLDER, put_pool_on_older_version, store_newer_kernel_version
from sqlalchemy import select
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.boot_packages import GRUB_PACKAGE, SHIM_PACKAGE
from trustedlaunch.control.node_images import IMAGE_RELEASE
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.store.models import Operation

GROUP = ["-g", "myResourceGroup"]
NODEPOOL = ["--cluster-name", "myAKSCluster", *GROUP]
CREATE = ["aks", "create", *GROUP, "-n", "myAKSCluster", "--generate-ssh-keys", "--node-count", "1"]


def tl(
    runner: CliRunner, env: dict[str, str | None], *args: str, input: str | None = None
) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, input=input)
    return result.exit_code, result.stdout, result.stderr


def finish_operations(server: BackgroundServer) -> None:
    """Finish the operations in progress as the reconciler would (no VMs here)."""
    with server.app.state.sessions.begin() as session:
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            finish_operation(session, operation, "Succeeded")


def older_pools(server: BackgroundServer, *names: str) -> str:
    """Put the pools `names` on the older version; the latest version of their flavour."""
    with server.app.state.sessions.begin() as session:
        latest = {put_pool_on_older_version(session, name)[1] for name in names}
    assert len(latest) == 1
    return latest.pop()


def test_get_upgrades_and_node_image_upgrade_of_a_pool(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    code, _, err = tl(runner, cli_env, *CREATE, "--nodepool-name", "nodepool1", "--no-wait")
    assert code == 0, err
    finish_operations(server[2])
    latest = older_pools(server[2], "nodepool1")
    code, out, err = tl(
        runner, cli_env, "aks", "nodepool", "get-upgrades", *NODEPOOL, "--nodepool-name", "nodepool1"
    )
    assert code == 0, err
    assert json.loads(out)["properties"]["latestNodeImageVersion"] == latest
    assert latest.endswith(IMAGE_RELEASE)
    code, out, err = tl(
        runner,
        cli_env,
        "aks",
        "nodepool",
        "get-upgrades",
        *NODEPOOL,
        "--nodepool-name",
        "nodepool1",
        "-o",
        "table",
    )
    assert code == 0 and "LatestNodeImageVersion" in out and "None available" in out

    upgrade = ["aks", "nodepool", "upgrade", *NODEPOOL, "--name", "nodepool1"]
    code, _, err = tl(runner, cli_env, *upgrade, "--no-wait")
    assert code == 2 and "use --node-image-only" in err
    code, _, err = tl(runner, cli_env, *upgrade, "--node-image-only", "-k", "1.36.3", "--no-wait")
    assert code == 2 and "Conflicting flags" in err
    code, out, err = tl(runner, cli_env, *upgrade, "--node-image-only", "--no-wait")
    assert code == 0, err
    pool = json.loads(out)["properties"]
    assert pool["nodeImageVersion"] == latest and pool["provisioningState"] == "UpgradingNodeImageVersion"
    code, _, err = tl(runner, cli_env, *upgrade, "--node-image-only", "--no-wait")
    assert code == 1 and "(OperationNotAllowed)" in err


def test_cluster_node_image_upgrade_moves_every_pool(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    code, _, err = tl(runner, cli_env, *CREATE, "--no-wait")
    assert code == 0, err
    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "userpool", "--node-count", "1", "--no-wait"]
    assert tl(runner, cli_env, *add)[0] == 0
    finish_operations(server[2])
    latest = older_pools(server[2], "nodepool1", "userpool")
    code, _, err = tl(
        runner,
        cli_env,
        "aks",
        "upgrade",
        *GROUP,
        "-n",
        "myAKSCluster",
        "--node-image-only",
        "--yes",
        "--no-wait",
    )
    assert code == 0, err
    for name in ("nodepool1", "userpool"):
        code, out, _ = tl(runner, cli_env, "aks", "nodepool", "show", *NODEPOOL, "--name", name)
        assert json.loads(out)["properties"]["nodeImageVersion"] == latest
        assert not json.loads(out)["properties"]["nodeImageVersion"].endswith(OLDER)
    # again while both upgrades run: each pool's refusal is named, exit 1 (the server refused)
    again = ["aks", "upgrade", *GROUP, "-n", "myAKSCluster", "--node-image-only", "--yes", "--no-wait"]
    code, _, err = tl(runner, cli_env, *again)
    assert code == 1
    assert "ERROR: node image upgrade refused for node pool(s) nodepool1 (OperationNotAllowed: " in err
    assert "; userpool (OperationNotAllowed: " in err and err.rstrip().endswith("started: none")


def test_get_upgrades_shows_the_latest_versions_packages_in_80_columns(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    code, _, err = tl(runner, cli_env, *CREATE, "--nodepool-name", "nodepool1", "--no-wait")
    assert code == 0, err
    finish_operations(server[2])
    with server[2].app.state.sessions.begin() as session:
        newer = store_newer_kernel_version(session)  # the longest names: linux-image-6.12.118+deb12-amd64
    get_upgrades = ["aks", "nodepool", "get-upgrades", *NODEPOOL, "--nodepool-name", "nodepool1"]
    code, out, err = tl(runner, cli_env, *get_upgrades)
    assert code == 0, err
    profile = json.loads(out)
    answered = httpx.get(
        f"{server[0]}{profile['id']}",
        params={"api-version": "2024-09-01"},
        headers={"Authorization": f"Bearer {server[1]}"},
    )
    assert answered.status_code == 200 and profile == answered.json()  # -o json: as the API answers
    [release] = profile["properties"]["componentsByReleases"]
    assert release["components"][0] == {"name": newer.kernel_package, "version": newer.kernel_version}

    code, out, err = tl(runner, {**cli_env, "COLUMNS": "80"}, *get_upgrades, "-o", "table")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, out
    assert "LatestNodeImageVersion" in lines[0] and newer.version() in lines[1]
    assert f"Components of {newer.version()}" in out
    header = next(line for line in lines if "Component" in line and "Version" in line)
    assert header.split() == ["Kubernetes", "Component", "Version"]
    rows = [line.split() for line in lines[lines.index(header) + 1 :]]
    assert rows == [
        [release["kubernetesVersion"], newer.kernel_package, newer.kernel_version],
        [release["kubernetesVersion"], SHIM_PACKAGE, newer.shim_version],
        [release["kubernetesVersion"], GRUB_PACKAGE, newer.grub_version],
    ]
