"""`tl aks nodepool get-upgrades`, `tl aks nodepool upgrade --node-image-only` and `tl aks upgrade
--node-image-only`, as az: a pool's upgrade profile (latestNodeImageVersion) and the move of a pool (or of
every pool of a cluster) onto the latest node image version of its flavour, its nodes reimaged with the
pool's drain and surge settings (control.node_image_upgrades)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trustedlaunch.cli.aks import (
    CLUSTER_COLUMNS,
    POOL_COLUMNS,
    ClusterNameOption,
    GroupOption,
    NameOption,
    PoolNameOption,
    YesOption,
    aks_app,
    cluster_resource_path,
    cluster_table_row,
    confirm_or_exit,
    finish_or_wait,
    nodepool_app,
    pool_resource_path,
    pool_table_row,
)
from trustedlaunch.cli.arm import (
    DEFAULT_WAIT_SECONDS,
    ApiTarget,
    ArmCallError,
    NoWaitOption,
    OutputFormat,
    OutputOption,
    TimeoutOption,
    api_command,
    fail,
    output,
    segment,
    wait_for_operation,
)
from trustedlaunch.cli.errors import bad_input
from trustedlaunch.cli.output import Column, DetailTable
from trustedlaunch.control.resource_id import AGENT_POOLS

UPGRADE_PROFILE_COLUMNS = ("Name", "KubernetesVersion", "OsType", "LatestNodeImageVersion", "Upgrades")
# componentsByReleases under the profile's row: the packages first (a 6.12 kernel's name and shim's version
# make ~75 cells), the Kubernetes version left out first when the terminal is narrower
COMPONENT_COLUMNS = (
    Column("Kubernetes", priority=2),
    Column("Component", priority=0),
    Column("Version", priority=1),
)
NodeImageOnlyOption = Annotated[
    bool,
    typer.Option(
        "--node-image-only",
        help="Only upgrade the node image version of the pool(s): the latest version of their flavour "
        "(trusted launch capable or not), their nodes reimaged onto it.",
    ),
]
KubernetesVersionOption = Annotated[
    str | None,
    typer.Option(
        "--kubernetes-version", "-k", help="Kubernetes version (one is installed: use --node-image-only)."
    ),
]


def _profile_row(profile: dict[str, Any]) -> list[object]:
    props = profile["properties"]
    upgrades = ", ".join(upgrade["kubernetesVersion"] for upgrade in props.get("upgrades") or [])
    return [
        profile["name"],
        props["kubernetesVersion"],
        props["osType"],
        props["latestNodeImageVersion"],
        upgrades or "None available",
    ]


def _component_tables(profile: dict[str, Any]) -> list[DetailTable]:
    """The components (kernel, shim and GRUB packages) of the latest node image version, one row each per
    Kubernetes version (componentsByReleases); none when the server names none."""
    props = profile["properties"]
    rows = [
        [release.get("kubernetesVersion"), component.get("name"), component.get("version")]
        for release in props.get("componentsByReleases") or []
        for component in release.get("components") or []
    ]
    title = f"Components of {props['latestNodeImageVersion']}"
    return [DetailTable(title, COMPONENT_COLUMNS, rows)] if rows else []


def _only_node_images(node_image_only: bool, kubernetes_version: str | None) -> None:
    if kubernetes_version is not None and node_image_only:
        raise bad_input(
            "Conflicting flags. Upgrading the Kubernetes version will also upgrade node image version. "
            'If you only want to upgrade the node version please use the "--node-image-only" option only.'
        )
    if not node_image_only:
        raise bad_input(
            "Only node image upgrades are possible here (one Kubernetes version is installed: tl aks "
            "get-versions): use --node-image-only."
        )


@api_command(nodepool_app, name="get-upgrades")
def get_upgrades(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    nodepool_name: PoolNameOption,
    resource_group: GroupOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Get the available upgrades for a node pool: Kubernetes versions, its latestNodeImageVersion and the
    packages that version is built from (componentsByReleases; `-o table`: a table under the profile's)."""
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, nodepool_name)
        profile = client.json("GET", f"{path}/upgradeProfiles/default")
    output(profile, output_format, UPGRADE_PROFILE_COLUMNS, _profile_row, details=_component_tables)


@api_command(nodepool_app, name="upgrade")
def upgrade_pool(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    node_image_only: NodeImageOnlyOption = False,
    kubernetes_version: KubernetesVersionOption = None,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Upgrade the node image version of a node pool to the latest (--node-image-only); its nodes are
    reimaged one by one (or beside surge nodes per --max-surge), each drained first. Nothing asks for
    confirmation: az asks only before a Kubernetes version upgrade, which is refused here (--yes is
    accepted, as az accepts it)."""
    _only_node_images(node_image_only, kubernetes_version)
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        response = client.request("POST", f"{path}/upgradeNodeImageVersion")
        what = f"Upgrading the node image of node pool {name}"
        result = finish_or_wait(client, response, path, what, no_wait, timeout)
        output(result or response.json(), output_format, POOL_COLUMNS, pool_table_row)


@api_command(aks_app, name="upgrade")
def upgrade_cluster(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    node_image_only: NodeImageOnlyOption = False,
    kubernetes_version: KubernetesVersionOption = None,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Upgrade the node image version of every node pool of a cluster (--node-image-only), as az: one
    upgrade per pool, all started at once; then (unless --no-wait) wait for each."""
    _only_node_images(node_image_only, kubernetes_version)
    confirm_or_exit(yes, f"upgrade the node image of every node pool of cluster {name}")
    with api.connect() as client:
        cluster_path = cluster_resource_path(client, resource_group, name)
        cluster = client.json("GET", cluster_path)
        started, refused = [], []
        for pool in cluster["properties"].get("agentPoolProfiles") or []:
            path = f"{cluster_path}/{AGENT_POOLS}/{segment(pool['name'])}"
            try:
                started.append((pool["name"], client.request("POST", f"{path}/upgradeNodeImageVersion")))
            except ArmCallError as exc:  # the others' upgrades go on: say which one was refused and why
                refused.append(f"{pool['name']} ({exc.error.get('code')}: {exc.error.get('message')})")
        if not no_wait:
            for pool_name, response in started:
                wait_for_operation(
                    client, response, f"Upgrading the node image of node pool {pool_name}", timeout
                )
        output(client.json("GET", cluster_path), output_format, CLUSTER_COLUMNS, cluster_table_row)
    if refused:
        upgrading = ", ".join(pool_name for pool_name, _ in started) or "none"
        raise fail(f"node image upgrade refused for node pool(s) {'; '.join(refused)}; started: {upgrading}")
