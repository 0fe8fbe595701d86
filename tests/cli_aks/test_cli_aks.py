"""`tl aks`, `tl feature`, `tl provider` through CliRunner against a real server on loopback.

The server here runs without a reconciler (no VM boots in these tests; tests/reconciler covers that), so
operations stay InProgress: the tests use --no-wait, except one that checks the wait ends with a clear
message at --timeout."""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app
from trustedlaunch.control.limits import DEFAULT_KUBERNETES_VERSION
from trustedlaunch.control.node_images import linux_image_version
from trustedlaunch.control.operations import finish_operation
from trustedlaunch.node.debian import debian_release
from trustedlaunch.store.models import Operation

CREATE = ["aks", "create", "-g", "myResourceGroup", "-n", "myAKSCluster", "--generate-ssh-keys", "--no-wait"]
NODEPOOL = ["--cluster-name", "myAKSCluster", "-g", "myResourceGroup"]


def tl(runner: CliRunner, env: dict[str, str | None], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def register_preview(runner: CliRunner, env: dict[str, str | None]) -> None:
    code, out, err = tl(
        runner,
        env,
        "feature",
        "register",
        "--namespace",
        "Microsoft.ContainerService",
        "--name",
        "TrustedLaunchPreview",
    )
    assert code == 0, err
    assert json.loads(out)["properties"]["state"] == "Registering"
    assert "tl provider register --namespace Microsoft.ContainerService" in err
    code, out, _ = tl(runner, env, "provider", "register", "--namespace", "Microsoft.ContainerService")
    assert code == 0 and json.loads(out)["registrationState"] == "Registered"


def test_trusted_launch_cluster_end_to_end(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    # the CLI sends GA api-versions (as az): trusted launch needs no registration; the preview flow works
    register_preview(runner, cli_env)
    code, out, _ = tl(
        runner,
        cli_env,
        "feature",
        "show",
        "--namespace",
        "Microsoft.ContainerService",
        "--name",
        "TrustedLaunchPreview",
        "-o",
        "table",
    )
    assert code == 0 and "Registering" in out  # the provider does not hurry it

    code, out, err = tl(
        runner,
        cli_env,
        *CREATE,
        "--enable-secure-boot",
        "--enable-vtpm",
        "--node-count",
        "2",
        "--node-vm-size",
        "Standard_D4s_v3",
        "--kubernetes-version",
        DEFAULT_KUBERNETES_VERSION,
    )
    assert code == 0, err
    cluster = json.loads(out)
    assert cluster["properties"]["provisioningState"] == "Creating"
    pool = cluster["properties"]["agentPoolProfiles"][0]
    assert pool["securityProfile"] == {"enableSecureBoot": True, "enableVTPM": True}
    assert pool["count"] == 2
    assert pool["nodeImageVersion"] == linux_image_version(trusted_launch=True, debian=debian_release())
    home = Path(str(cli_env["HOME"]))
    assert (home / ".ssh" / "id_rsa.pub").read_text().startswith("ssh-rsa ")
    assert cluster["properties"]["linuxProfile"]["ssh"]["publicKeys"][0]["keyData"].startswith("ssh-rsa ")

    code, out, _ = tl(
        runner, cli_env, "aks", "show", "-g", "myResourceGroup", "-n", "myAKSCluster", "-o", "table"
    )
    assert code == 0 and "myAKSCluster" in out and "Creating" in out
    code, out, _ = tl(runner, cli_env, "aks", "list")
    assert code == 0 and [c["name"] for c in json.loads(out)] == ["myAKSCluster"]

    # Node pools: add (GPU with Secure Boot needs --gpu-driver None), show, list, duplicate, scale, delete.
    gpu = [
        *NODEPOOL,
        "-n",
        "gpupool",
        "--node-vm-size",
        "Standard_NC4as_T4_v3",
        "--enable-secure-boot",
        "--no-wait",
    ]
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "add", *gpu)
    assert code == 1 and "(TrustedLaunchIncompatibleWithConfig)" in err and "gpuProfile.driver" in err
    code, out, err = tl(runner, cli_env, "aks", "nodepool", "add", *gpu, "--gpu-driver", "None")
    assert code == 0, err
    assert json.loads(out)["properties"]["gpuProfile"] == {"driver": "None"}
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "add", *gpu, "--gpu-driver", "None")
    assert code == 1 and "(DuplicateAgentPoolName)" in err and "nodepool update" in err
    code, out, _ = tl(runner, cli_env, "aks", "nodepool", "list", *NODEPOOL, "-o", "table")
    assert code == 0 and "gpupool" in out and "nodepool1" in out
    code, out, _ = tl(runner, cli_env, "aks", "nodepool", "show", *NODEPOOL, "-n", "gpupool")
    assert code == 0 and json.loads(out)["properties"]["vmSize"] == "Standard_NC4as_T4_v3"
    code, _, err = tl(
        runner, cli_env, "aks", "nodepool", "scale", *NODEPOOL, "-n", "gpupool", "-c", "2", "--no-wait"
    )
    assert code == 1 and "(OperationNotAllowed)" in err  # its create is still InProgress (no reconciler here)
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "delete", *NODEPOOL, "-n", "gpupool", "--no-wait")
    assert code == 0, err
    code, _, err = tl(
        runner, cli_env, "aks", "delete", "-g", "myResourceGroup", "-n", "myAKSCluster", "--yes", "--no-wait"
    )
    assert code == 0, err
    code, out, _ = tl(runner, cli_env, "aks", "show", "-g", "myResourceGroup", "-n", "myAKSCluster")
    assert json.loads(out)["properties"]["provisioningState"] == "Deleting"


def test_nodepool_update_flags(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    code, _, err = tl(
        runner,
        cli_env,
        "aks",
        "nodepool",
        "update",
        *NODEPOOL,
        "-n",
        "np",
        "--enable-secure-boot",
        "--disable-secure-boot",
    )
    assert code == 2 and "(MutuallyExclusiveArguments)" in err
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "update", *NODEPOOL, "-n", "np")
    assert code == 2 and "nothing to update" in err
    code, _, err = tl(runner, cli_env, "aks", "nodepool", "update", *NODEPOOL, "-n", "np", "--enable-vtpm")
    assert code == 3 and "(ResourceNotFound)" in err
    # A pool created with a GA api-version runs the trusted launch capable image: it can turn it on.
    assert tl(runner, cli_env, *CREATE)[0] == 0
    with server[2].server.config.app.state.sessions.begin() as session:  # the reconciler's part
        finish_operation(session, session.scalars(select(Operation)).one(), "Succeeded")
    code, _, err = tl(
        runner,
        cli_env,
        "aks",
        "nodepool",
        "update",
        *NODEPOOL,
        "-n",
        "nodepool1",
        "--enable-vtpm",
        "--no-wait",
    )
    assert code == 0, err


def test_bad_flags_get_clear_errors(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    code, _, err = tl(runner, cli_env, *CREATE, "--os-sku", "Debian")
    assert code == 2 and "--os-sku" in err
    code, _, err = tl(
        runner, cli_env, *CREATE, "--node-osdisk-type", "Ephemeral", "--node-vm-size", "Standard_D2s_v5"
    )
    assert code == 1 and "(EphemeralOSDiskSizeTooLarge)" in err
    code, _, err = tl(runner, cli_env, *CREATE, "--enable-addons", "monitoring")
    assert code == 2 and "unsupported addon" in err
    code, _, err = tl(runner, cli_env, "aks", "show", "-g", "rg", "-n", "nope")
    assert code == 3 and "(ResourceGroupNotFound) Resource group 'rg' could not be found." in err
    code, _, err = tl(runner, cli_env, "aks", "show", "-g", "myresourcegroup", "-n", "nope")
    assert code == 3 and "(ResourceNotFound)" in err
    code, _, err = tl(runner, cli_env, "aks", "show", "-g", "rg", "-n", "x", "--subscription", "bad")
    assert code == 2 and "Invalid value for '--subscription'" in err  # refused before any request
    env = {**cli_env, "TL_TOKEN": "tl_wrong"}
    code, _, err = tl(runner, env, "aks", "list")
    assert code == 1 and "(InvalidAuthenticationToken)" in err
    code, _, err = tl(runner, {**cli_env, "TL_TOKEN": None}, "aks", "list")
    assert code == 2 and "TL_TOKEN is not set" in err
    code, _, err = tl(runner, {**cli_env, "TL_ENDPOINT": "http://127.0.0.1:9"}, "aks", "list")
    assert code == 1 and "cannot reach the API" in err


def test_wait_ends_at_the_timeout_while_no_reconciler_runs(
    runner: CliRunner, cli_env: dict[str, str | None]
) -> None:
    create = [arg for arg in CREATE if arg != "--no-wait"]
    code, _, err = tl(runner, cli_env, *create, "--timeout", "1")
    assert code == 1
    assert "still InProgress after 1 s" in err and "--no-wait" in err


def finish_first_operation_later(server: BackgroundServer) -> threading.Thread:
    """Play the reconciler (next slice): once an operation is InProgress, finish it as Succeeded."""
    sessions = server.server.config.app.state.sessions

    def reconcile() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with sessions.begin() as session:
                operation = session.scalars(select(Operation).where(Operation.status == "InProgress")).first()
                if operation is not None:
                    finish_operation(session, operation, "Succeeded")
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=reconcile, daemon=True)
    thread.start()
    return thread


def test_wait_returns_the_resource_once_the_operation_succeeded(
    runner: CliRunner, cli_env: dict[str, str | None], server: tuple[str, str, BackgroundServer]
) -> None:
    reconciler = finish_first_operation_later(server[2])
    create = [arg for arg in CREATE if arg != "--no-wait"]
    code, out, err = tl(runner, cli_env, *create, "--timeout", "30", "-o", "table")
    reconciler.join()
    assert code == 0, err
    assert "myAKSCluster" in out and "Succeeded" in out
    reconciler = finish_first_operation_later(server[2])
    code, out, err = tl(runner, cli_env, "aks", "nodepool", "scale", *NODEPOOL, "-n", "nodepool1", "-c", "5")
    reconciler.join()
    assert code == 0, err
    assert json.loads(out)["properties"]["count"] == 5
    assert json.loads(out)["properties"]["provisioningState"] == "Succeeded"


def test_get_credentials_merges_a_kubeconfig_context(
    runner: CliRunner, cli_env: dict[str, str | None], tmp_path: Path
) -> None:
    assert tl(runner, cli_env, *CREATE)[0] == 0
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "other", "cluster": {"server": "https://other:6443"}}],
                "contexts": [{"name": "other", "context": {"cluster": "other", "user": "u"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "current-context": "other",
            }
        )
    )
    args = [
        "aks",
        "get-credentials",
        "-g",
        "myResourceGroup",
        "-n",
        "myAKSCluster",
        "--file",
        str(kubeconfig),
    ]
    code, _, err = tl(runner, cli_env, *args)
    assert code == 0, err
    merged = yaml.safe_load(kubeconfig.read_text())
    assert merged["current-context"] == "myakscluster"
    assert [c["name"] for c in merged["contexts"]] == ["other", "myakscluster"]
    assert merged["clusters"][1]["cluster"]["server"].startswith("https://myaksclust-myresourcegroup-")
    assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
    assert tl(runner, cli_env, *args)[0] == 0  # same content again: fine
    code, _, err = tl(runner, cli_env, *args, "--admin")
    assert code == 2 and "--overwrite-existing" in err
    assert tl(runner, cli_env, *args, "--admin", "--overwrite-existing", "--context", "prod")[0] == 0
    assert yaml.safe_load(kubeconfig.read_text())["current-context"] == "prod"
    code, _, _ = tl(runner, cli_env, "aks", "get-credentials", "-g", "myResourceGroup", "-n", "myAKSCluster")
    assert code == 0 and (Path(str(cli_env["HOME"])) / ".kube" / "config").is_file()


def test_embedded_server_without_endpoint(runner: CliRunner, tmp_path: Path) -> None:
    env: dict[str, str | None] = {
        "TL_ENDPOINT": None,
        "TL_TOKEN": None,
        "TL_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HOME": str(tmp_path),
    }
    code, out, err = tl(runner, env, "provider", "show", "-n", "Microsoft.ContainerService", "-o", "table")
    assert code == 0, err
    assert "NotRegistered" in out
    assert tl(runner, env, "provider", "register", "-n", "Microsoft.ContainerService")[0] == 0
    code, out, _ = tl(runner, env, "provider", "show", "-n", "Microsoft.ContainerService")
    assert json.loads(out)["registrationState"] == "Registered"  # state persisted across invocations
    token_file = tmp_path / "config" / "trustedlaunch" / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600


def test_get_versions_lists_the_installed_release(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    minor = DEFAULT_KUBERNETES_VERSION.rsplit(".", 1)[0]
    code, out, err = tl(runner, cli_env, "aks", "get-versions", "-l", "eastus")
    assert code == 0, err
    assert json.loads(out) == {
        "values": [
            {
                "version": minor,
                "capabilities": {"supportPlan": ["KubernetesOfficial"]},
                "isDefault": True,
                "isPreview": False,
                "patchVersions": {DEFAULT_KUBERNETES_VERSION: {"upgrades": []}},
            }
        ]
    }
    code, out, err = tl(runner, cli_env, "aks", "get-versions", "--location", "West Europe", "-o", "table")
    assert code == 0, err
    header, row = (line.split() for line in out.strip().splitlines())
    assert header == ["KubernetesVersion", "Upgrades", "SupportPlan"]
    assert row == [DEFAULT_KUBERNETES_VERSION, "None", "available", "KubernetesOfficial"]
    code, _, err = tl(runner, cli_env, "aks", "get-versions", "-l", "mars")
    assert code == 1 and "(LocationNotAvailableForResourceType)" in err and "'mars'" in err
    code, _, err = tl(runner, cli_env, "aks", "get-versions", "-l", "east/../us")
    assert code == 3 and "(NotFound)" in err  # the server decodes the quoted '/': no such route
    code, _, err = tl(runner, cli_env, "aks", "get-versions")
    assert code == 2 and "--location" in err


def test_versions_that_are_not_installed_are_refused(
    runner: CliRunner, cli_env: dict[str, str | None]
) -> None:
    code, _, err = tl(runner, cli_env, *CREATE, "--kubernetes-version", "1.30.6")
    assert code == 1 and "(K8sVersionNotSupported)" in err
    assert "Version 1.30.6 is not supported in this region(eastus)" in err
    assert f"Supported versions: {DEFAULT_KUBERNETES_VERSION}." in err
    minor = DEFAULT_KUBERNETES_VERSION.rsplit(".", 1)[0]
    code, out, err = tl(runner, cli_env, *CREATE, "--kubernetes-version", minor)
    assert code == 0, err
    properties = json.loads(out)["properties"]
    assert (properties["kubernetesVersion"], properties["currentKubernetesVersion"]) == (
        minor,
        DEFAULT_KUBERNETES_VERSION,
    )
    add = ["aks", "nodepool", "add", *NODEPOOL, "-n", "oldpool", "--no-wait"]
    code, _, err = tl(runner, cli_env, *add, "--kubernetes-version", "1.29.2")
    assert code == 1 and "(AgentPoolK8sVersionNotSupported)" in err and "Agent pool 'oldpool'" in err
    assert "Target: properties.orchestratorVersion" in err


def test_a_windows_pool_is_refused_saying_why(runner: CliRunner, cli_env: dict[str, str | None]) -> None:
    code, _, err = tl(runner, cli_env, *CREATE)
    assert code == 0, err
    add = ["aks", "nodepool", "add", *NODEPOOL, "--name", "win", "--os-type", "Windows", "--no-wait"]
    code, _, err = tl(runner, cli_env, *add)
    assert code == 1  # the server refused it (az: 1)
    assert "(OSTypeNotSupported)" in err and "Pool 'win' is Windows" in err
    assert "only Linux node images" in err and "Target: properties.osType" in err
    code, out, _ = tl(runner, cli_env, "aks", "nodepool", "add", "--help")
    assert "Windows is refused" in " ".join(out.split())
