"""`tl aks`: az-compatible managed cluster and node pool commands over the ARM-shaped API."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from trustedlaunch.cli.arm import (
    DEFAULT_WAIT_SECONDS,
    ApiTarget,
    ArmCallError,
    ArmClient,
    NoWaitOption,
    OutputFormat,
    OutputOption,
    TimeoutOption,
    api_command,
    fail,
    log,
    name_rule,
    note,
    output,
    print_json,
    segment,
    wait_for_operation,
    warn,
)
from trustedlaunch.cli.errors import BAD_INPUT_EXIT_CODE, bad_input
from trustedlaunch.cli.machine_attestation import ATTESTATION_COLUMNS, attestation_row, wait_for_attestation
from trustedlaunch.cli.output import Column, apply_query, check_query
from trustedlaunch.control.limits import (
    CLUSTER_NAME,
    DEFAULT_KUBERNETES_VERSION,
    MACHINE_NAME,
    POOL_NAME,
    RESOURCE_GROUP,
    SecurityFlags,
    check_flags,
)
from trustedlaunch.control.resource_id import AGENT_POOLS, CONTAINER_SERVICE, MANAGED_CLUSTERS, ResourceId
from trustedlaunch.store.vocabulary import UndrainableNodeBehavior

aks_app = typer.Typer(
    name="aks", help="Manage trusted launch managed clusters (az aks compatible).", no_args_is_help=True
)
nodepool_app = typer.Typer(
    name="nodepool", help="Manage node pools of a managed cluster.", no_args_is_help=True
)
aks_app.add_typer(nodepool_app, name="nodepool")
machine_app = typer.Typer(
    name="machine", help="Show the machines (nodes) of a node pool.", no_args_is_help=True
)
aks_app.add_typer(machine_app, name="machine")

# `-o table` columns (see cli/output.py: those that do not fit the terminal are left out, lowest priority
# first; `-o json` and `--query` give the rest).
VERSION_COLUMNS = ("KubernetesVersion", "Upgrades", Column("SupportPlan", prose=True))
CLUSTER_COLUMNS = ("Name", "Location", "ResourceGroup", "KubernetesVersion", "ProvisioningState", "Fqdn")
MACHINE_COLUMNS = (
    Column("Name", priority=0),
    Column("ProvisioningState", priority=2),
    Column("Power", priority=3),
    Column("Health", priority=4),
    Column("SecureBoot", priority=5),
    Column("VTPM", priority=6),
    Column("Attestation", priority=1),
    Column("Labels", priority=7),  # the attestation verdict's
    Column("NodeLabels", priority=8),  # the pool's, on its Node
    Column("Taints", priority=9),
)
POOL_COLUMNS = (  # az's pick, then trusted launch's
    Column("Name", priority=0),
    Column("OsType", priority=6),
    Column("KubernetesVersion", priority=5),
    Column("VmSize", priority=2),
    Column("Count", priority=3),
    Column("MaxPods", priority=7),
    Column("ProvisioningState", priority=1),
    Column("Mode", priority=4),
    Column("SecureBoot", priority=8),
    Column("VTPM", priority=9),
    Column("OsSku", priority=10),
    Column("NodeImageVersion", priority=11),
)


class OsType(StrEnum):
    """`--os-type`: AKS's values; Windows is refused (OSTypeNotSupported): only Linux images boot here."""

    Linux = "Linux"
    Windows = "Windows"


class OsSku(StrEnum):
    """`--os-sku`: AKS's values; every Linux one runs the Debian node image (control.node_images.OS_SKUS)."""

    Ubuntu = "Ubuntu"
    Ubuntu2204 = "Ubuntu2204"
    Ubuntu2404 = "Ubuntu2404"
    AzureLinux = "AzureLinux"
    AzureLinux3 = "AzureLinux3"
    CBLMariner = "CBLMariner"
    Mariner = "Mariner"
    Flatcar = "Flatcar"
    Windows2019 = "Windows2019"
    Windows2022 = "Windows2022"


class GpuDriver(StrEnum):
    """`--gpu-driver`: None skips the GPU driver installation."""

    Install = "Install"
    none = "None"


class OsDiskType(StrEnum):
    """`--node-osdisk-type`."""

    Managed = "Managed"
    Ephemeral = "Ephemeral"


class VmSetType(StrEnum):
    """`--vm-set-type`."""

    VirtualMachineScaleSets = "VirtualMachineScaleSets"
    AvailabilitySet = "AvailabilitySet"
    VirtualMachines = "VirtualMachines"


valid_group = name_rule(
    RESOURCE_GROUP,
    "a resource group name is 1-90 letters, digits, '-', '_', '.', '(' or ')', not ending with '.'",
)
valid_cluster = name_rule(
    CLUSTER_NAME,
    "a cluster name is 1-63 letters, digits, '-' or '_', starting and ending with a letter or digit",
)
valid_pool = name_rule(
    POOL_NAME, "a node pool name is 1-12 lowercase letters or digits, starting with a letter"
)
valid_machine = name_rule(MACHINE_NAME, "a machine name is 1-80 lowercase letters, digits or '-'")
NameOption = Annotated[
    str, typer.Option("--name", "-n", help="Name of the managed cluster.", callback=valid_cluster)
]
GroupOption = Annotated[
    str, typer.Option("--resource-group", "-g", help="Name of the resource group.", callback=valid_group)
]
ClusterNameOption = Annotated[
    str, typer.Option("--cluster-name", help="Name of the managed cluster.", callback=valid_cluster)
]
PoolNameOption = Annotated[
    str, typer.Option("--name", "-n", "--nodepool-name", help="Name of the node pool.", callback=valid_pool)
]
NodepoolNameOption = Annotated[
    str, typer.Option("--nodepool-name", help="Name of the node pool.", callback=valid_pool)
]
MachineNameOption = Annotated[
    str, typer.Option("--machine-name", help="Name of the machine (node).", callback=valid_machine)
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not prompt for confirmation.")]
TagsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--tags",
        help='Space-separated tags: key[=value] (repeat --tags or quote them: --tags "env=dev team=a"); '
        "'' clears them.",
    ),
]
NodeCountOption = Annotated[
    int | None, typer.Option("--node-count", "-c", min=0, max=1000, help="Number of nodes.")
]
VmSizeOption = Annotated[str | None, typer.Option("--node-vm-size", "-s", help="VM size of the nodes.")]
KubernetesVersionOption = Annotated[
    str | None,
    typer.Option(
        "--kubernetes-version",
        "-k",
        help=f"Kubernetes version (default {DEFAULT_KUBERNETES_VERSION}; `tl aks get-versions` lists them).",
    ),
]
SecureBootOption = Annotated[
    bool, typer.Option("--enable-secure-boot", help="Enable UEFI Secure Boot (trusted launch).")
]
VtpmOption = Annotated[bool, typer.Option("--enable-vtpm", help="Enable a per-VM vTPM (trusted launch).")]
OsSkuOption = Annotated[
    OsSku | None,
    typer.Option(
        "--os-sku",
        help="OS SKU of the nodes, as AKS takes it; every Linux SKU runs the Debian node image "
        "(TLDebian...; the pool and its nodes' os-sku label keep the SKU given).",
    ),
]
FipsOption = Annotated[
    bool,
    typer.Option(
        "--enable-fips-image",
        help="Ask for a FIPS-enabled node image, as AKS takes it (there is none here: the pool runs the "
        "Debian node image, not FIPS-validated, and cannot use trusted launch).",
    ),
]
GpuDriverOption = Annotated[
    GpuDriver | None, typer.Option("--gpu-driver", help="GPU driver: Install, or None to skip the install.")
]
OsDiskTypeOption = Annotated[
    OsDiskType | None, typer.Option("--node-osdisk-type", help="Managed or Ephemeral.")
]
OsDiskSizeOption = Annotated[
    int | None, typer.Option("--node-osdisk-size", min=30, max=2048, help="OS disk GiB.")
]
VmSetTypeOption = Annotated[VmSetType | None, typer.Option("--vm-set-type", help="Node pool VM set type.")]
MaxSurgeOption = Annotated[
    str | None,
    typer.Option(
        "--max-surge",
        help="Extra nodes a rolling reimage creates before deleting outdated ones: a count ('1') or a "
        "percentage of the node count ('33%').",
    ),
]

DrainTimeoutOption = Annotated[
    int | None,
    typer.Option(
        "--drain-timeout",
        help="Minutes a node's cordon and drain (pod evictions, PodDisruptionBudgets) may take before the "
        "operation fails (AKS's default: 30).",
    ),
]


NodeSoakDurationOption = Annotated[
    int | None,
    typer.Option(
        "--node-soak-duration",
        help="Minutes an upgrade waits after draining a node before it reimages or deletes that node and "
        "moves on (0 to 30; AKS's default: 0).",
    ),
]


UndrainableNodeBehaviorOption = Annotated[
    UndrainableNodeBehavior | None,
    typer.Option(
        "--undrainable-node-behavior",
        help="What an upgrade does with a node it cannot drain: Cordon (keep it cordoned, its label "
        "kubernetes.azure.com/upgrade-status set to Quarantined, and go on with a surge node in its place) "
        "or Schedule (make it schedulable again and fail; AKS's default).",
    ),
]


LabelsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--labels",
        help="Node labels of the pool's Kubernetes Nodes: space-separated key=value (quote them: --labels "
        "\"dept=IT costcenter=9000\"); on update they replace the pool's, '' clears them. Keys under "
        "kubernetes.azure.com/ are AKS's own and refused.",
    ),
]
TaintsOption = Annotated[
    str | None,
    typer.Option(
        "--node-taints",
        help="Taints of the pool's Kubernetes Nodes: comma-separated key=value:Effect (NoSchedule, "
        "PreferNoSchedule or NoExecute); on update they replace the pool's, '' clears them.",
    ),
]
MaxPodsOption = Annotated[
    int | None,
    typer.Option(
        "--max-pods",
        "-m",
        help="Maximum pods per node (10-250; default 110), the kubelet's; fixed once the pool exists.",
    ),
]


def _labels(values: list[str]) -> dict[str, str]:
    """az's `--labels key=value ...` as a label dict ("" clears: {})."""
    labels: dict[str, str] = {}
    for word in " ".join(values).split():
        key, equals, value = word.partition("=")
        if not key or not equals:
            raise bad_input(f"argument --labels: '{word}' is not key=value")
        labels[key] = value
    return labels


def _taints(value: str) -> list[str]:
    """az's `--node-taints key=value:Effect,...` as a list ("" clears: [])."""
    return [taint.strip() for taint in value.split(",") if taint.strip()]


def _node_settings(
    properties: dict[str, Any], labels: list[str] | None, taints: str | None, max_pods: int | None = None
) -> None:
    """Set the given nodeLabels, nodeTaints and maxPods (None: not given) in pool `properties`."""
    if labels is not None:
        properties["nodeLabels"] = _labels(labels)
    if taints is not None:
        properties["nodeTaints"] = _taints(taints)
    if max_pods is not None:
        properties["maxPods"] = max_pods


def parse_tags(values: list[str]) -> dict[str, str]:
    """az's `--tags key[=value] ...` as a tag dict ("" clears: {})."""
    tags: dict[str, str] = {}
    for word in " ".join(values).split():
        key, _, value = word.partition("=")
        if not key:
            raise bad_input(f"argument --tags: '{word}' has no key (key[=value])")
        tags[key] = value
    return tags


def _upgrade_settings(properties: dict[str, Any], **given: object) -> None:
    """Set the `given` upgradeSettings (ARM names; None: not given) in pool `properties`, keeping the
    others."""
    settings = properties.setdefault("upgradeSettings", {})
    settings.update({name: value for name, value in given.items() if value is not None})


def _cluster_id(client: ArmClient, group: str, name: str) -> ResourceId:
    return ResourceId.cluster(client.subscription_id, group, name)


def cluster_resource_path(client: ArmClient, group: str, name: str) -> str:
    """The API path of managed cluster `name` in resource group `group`."""
    return client.path(_cluster_id(client, group, name))


def cluster_table_row(cluster: dict[str, Any]) -> list[object]:
    """A cluster's `-o table` row (CLUSTER_COLUMNS)."""
    group = cluster["id"].split("/")[4]
    props = cluster["properties"]
    return [
        cluster["name"],
        cluster["location"],
        group,
        props["kubernetesVersion"],
        props["provisioningState"],
        props["fqdn"],
    ]


def pool_table_row(pool: dict[str, Any]) -> list[object]:
    """A node pool's `-o table` row (POOL_COLUMNS)."""
    props = pool.get("properties", pool)
    security = props.get("securityProfile") or {}
    return [
        pool["name"],
        props["osType"],
        props["orchestratorVersion"],
        props["vmSize"],
        props["count"],
        props.get("maxPods"),
        props["provisioningState"],
        props["mode"],
        security.get("enableSecureBoot"),
        security.get("enableVTPM"),
        props["osSKU"],
        props["nodeImageVersion"],
    ]


def _pool_properties(
    count: int | None,
    vm_size: str | None,
    os_type: OsType | None,
    os_sku: OsSku | None,
    vm_set_type: VmSetType | None,
    kubernetes_version: str | None,
    fips: bool,
    gpu_driver: GpuDriver | None,
    os_disk_type: OsDiskType | None,
    os_disk_size: int | None,
    secure_boot: bool,
    vtpm: bool,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "count": count,
        "vmSize": vm_size,
        "osType": os_type.value if os_type else None,
        "osSKU": os_sku.value if os_sku else None,
        "type": vm_set_type.value if vm_set_type else None,
        "orchestratorVersion": kubernetes_version,
        "enableFIPS": fips or None,
        "gpuProfile": {"driver": gpu_driver.value} if gpu_driver else None,
        "osDiskType": os_disk_type.value if os_disk_type else None,
        "osDiskSizeGB": os_disk_size,
        "securityProfile": {"enableSecureBoot": secure_boot, "enableVTPM": vtpm},
    }
    return {key: value for key, value in values.items() if value is not None}


def _ssh_public_key(generate: bool, key_value: str | None) -> str | None:
    """The key to put on the nodes: --ssh-key-value (a key or a .pub file), or ~/.ssh/id_rsa.pub, created
    with --generate-ssh-keys when missing (as az does)."""
    if key_value:
        path = Path(key_value).expanduser()
        return path.read_text().strip() if path.is_file() else key_value.strip()
    public = Path.home() / ".ssh" / "id_rsa.pub"
    if public.is_file():
        return public.read_text().strip()
    if not generate:
        raise bad_input(
            f"no SSH public key: {public} does not exist; pass --generate-ssh-keys or --ssh-key-value"
        )
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    public.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private = public.with_suffix("")
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
    openssh = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public.write_text(openssh.decode() + "\n")
    warn(f"SSH key files '{private}' and '{public}' have been generated under ~/.ssh.")
    return openssh.decode()


def _has_vtpm(body: dict[str, Any]) -> bool:
    """Whether the cluster or pool `body` (as PUT) has a pool with a vTPM."""
    properties = body.get("properties") or {}
    pools = properties.get("agentPoolProfiles") or [properties]
    return any((pool.get("securityProfile") or {}).get("enableVTPM") for pool in pools)


def warn_without_continuous_attestation(client: ArmClient, body: dict[str, Any]) -> None:
    """Warn (stderr, unless --only-show-errors) when `body`, a cluster or pool with a vTPM whose PUT the API
    accepted (a refused one raised ArmCallError before: it changed nothing), went to a server whose
    reconciler does not re-attest nodes on an interval (GET .../attestationMonitor: the embedded server of a
    `tl` command, or `--attestation-interval 0`); a server that cannot tell (Unknown), or that predates the
    endpoint, gets no warning."""
    from trustedlaunch.api.attestation_monitor_routes import ATTESTATION_MONITOR_PATH  # the server's

    if not _has_vtpm(body):
        return
    try:
        status = client.json("GET", ATTESTATION_MONITOR_PATH)
    except ArmCallError as exc:
        log.info("continuous attestation not checked: %s", exc)
        return
    if status.get("continuousAttestation") == "NotRunning":
        warn(f"Continuous attestation does not run on this server. {status.get('message', '')}".strip())


def finish_or_wait(
    client: ArmClient, response: Any, get_path: str, what: str, no_wait: bool, timeout: int
) -> dict[str, Any] | None:
    """After a PUT: None with --no-wait, else wait for the operation, print each node's attestation result
    (stderr) and return the resource as it is then."""
    if no_wait:
        return None
    wait_for_operation(client, response, what, timeout)
    result: dict[str, Any] = client.json("GET", get_path)
    if "agentPoolProfiles" in result.get("properties", {}):
        pools = [
            f"{get_path}/{AGENT_POOLS}/{segment(p['name'])}"
            for p in result["properties"]["agentPoolProfiles"]
        ]
    else:
        pools = [get_path]
    for pool in pools:
        for machine in client.json("GET", f"{pool}/machines")["value"]:
            note(_attestation_line(machine))
    return result


def _attestation_line(machine: dict[str, Any]) -> str:
    """`Node NAME: Attested (Secure Boot, vTPM)`: a node's attestation result after create/update."""
    props = machine["properties"]
    security = props.get("securityProfile") or {}
    features = [
        label
        for label, on in (
            ("Secure Boot", security.get("enableSecureBoot")),
            ("vTPM", security.get("enableVTPM")),
        )
        if on
    ]
    trusted_launch = ", ".join(features) or "no trusted launch"
    line = f"Node {machine['name']}: {props.get('attestationStatus')} ({trusted_launch})"
    if props.get("attestationStatus") == "AttestationFailed" and props.get("message"):
        line += f": {props['message']}"
    return line


@api_command(aks_app)
def create(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    location: Annotated[str, typer.Option("--location", "-l", help="Azure-style location name.")] = "eastus",
    node_count: NodeCountOption = 3,
    node_vm_size: VmSizeOption = None,
    kubernetes_version: KubernetesVersionOption = None,
    enable_secure_boot: SecureBootOption = False,
    enable_vtpm: VtpmOption = False,
    generate_ssh_keys: Annotated[
        bool, typer.Option("--generate-ssh-keys", help="Create SSH keys if missing.")
    ] = False,
    ssh_key_value: Annotated[
        str | None, typer.Option("--ssh-key-value", help="SSH public key or .pub file.")
    ] = None,
    nodepool_name: NodepoolNameOption = "nodepool1",
    os_sku: OsSkuOption = None,
    enable_fips_image: FipsOption = False,
    gpu_driver: GpuDriverOption = None,
    node_osdisk_type: OsDiskTypeOption = None,
    node_osdisk_size: OsDiskSizeOption = None,
    vm_set_type: VmSetTypeOption = None,
    enable_addons: Annotated[
        str | None, typer.Option("--enable-addons", "-a", help="Comma-separated addons: virtual-node.")
    ] = None,
    enable_managed_identity: Annotated[
        bool,
        typer.Option(
            "--enable-managed-identity",
            help="Use a system-assigned managed identity (AKS's default; accepted as az accepts it).",
        ),
    ] = False,
    tags: TagsOption = None,
    nodepool_labels: Annotated[
        list[str] | None,
        typer.Option(
            "--nodepool-labels",
            "--labels",
            help="Node labels of the first pool: space-separated key=value (see `nodepool add --labels`).",
        ),
    ] = None,
    nodepool_taints: Annotated[
        str | None,
        typer.Option(
            "--nodepool-taints",
            "--node-taints",
            help="Taints of the first pool: comma-separated key=value:Effect.",
        ),
    ] = None,
    max_pods: MaxPodsOption = None,
    nodepool_tags: Annotated[
        list[str] | None,
        typer.Option(
            "--nodepool-tags",
            help="ARM tags of the first pool: space-separated key[=value] (see `nodepool add --tags`).",
        ),
    ] = None,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Create a managed cluster with one system node pool; print each node's attestation result when done."""
    addons = {a.strip() for a in (enable_addons or "").split(",") if a.strip()}
    if addons - {"virtual-node"}:
        raise bad_input(
            f"--enable-addons: unsupported addon(s) {', '.join(sorted(addons - {'virtual-node'}))}"
        )
    pool: dict[str, Any] = {"name": nodepool_name, "mode": "System"}
    pool |= _pool_properties(
        node_count,
        node_vm_size,
        None,
        os_sku,
        vm_set_type,
        kubernetes_version,
        enable_fips_image,
        gpu_driver,
        node_osdisk_type,
        node_osdisk_size,
        enable_secure_boot,
        enable_vtpm,
    )
    _node_settings(pool, nodepool_labels, nodepool_taints, max_pods)
    if nodepool_tags is not None:
        pool["tags"] = parse_tags(nodepool_tags)
    properties: dict[str, Any] = {"agentPoolProfiles": [pool]}
    if kubernetes_version:
        properties["kubernetesVersion"] = kubernetes_version
    key = _ssh_public_key(generate_ssh_keys, ssh_key_value)
    if key:
        properties["linuxProfile"] = {"adminUsername": "azureuser", "ssh": {"publicKeys": [{"keyData": key}]}}
    if addons:
        properties["addonProfiles"] = {"aciConnectorLinux": {"enabled": True}}
    body: dict[str, Any] = {"location": location, "properties": properties}
    body["identity"] = {"type": "SystemAssigned"}  # --enable-managed-identity is AKS's default
    if tags is not None:
        body["tags"] = parse_tags(tags)
    with api.connect() as client:
        path = cluster_resource_path(client, resource_group, name)
        response = client.request("PUT", path, json=body)
        warn_without_continuous_attestation(client, body)
        result = finish_or_wait(client, response, path, f"Creating cluster {name}", no_wait, timeout)
        output(result or response.json(), output_format, CLUSTER_COLUMNS, cluster_table_row)


@api_command(aks_app)
def show(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show a managed cluster (exit 3 if it does not exist, naming the groups where one of its name is)."""
    with api.connect() as client:
        cluster = _get_cluster(client, resource_group, name)
    output(cluster, output_format, CLUSTER_COLUMNS, cluster_table_row)


def _get_cluster(client: ArmClient, group: str, name: str) -> dict[str, Any]:
    """The cluster; a 404 names the resource groups of the subscription that have a cluster `name`."""
    try:
        cluster: dict[str, Any] = client.json("GET", cluster_resource_path(client, group, name))
    except ArmCallError as missing:
        if missing.status != 404:
            raise
        provider = client.subscription.provider(CONTAINER_SERVICE)
        clusters = client.json("GET", f"{client.path(provider)}/{MANAGED_CLUSTERS}")["value"]
        groups = sorted(
            {c["id"].split("/")[4] for c in clusters if c["name"].lower() == name.lower()}, key=str.lower
        )
        if groups:
            missing.error["message"] = (
                f"{missing.error.get('message', '')} A cluster named '{name}' exists in resource group(s) "
                f"{', '.join(groups)}: try -g {groups[0]}."
            )
        raise
    return cluster


@api_command(aks_app, name="update")
def update_cluster(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    tags: TagsOption = None,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Update a managed cluster's tags (--tags replaces them all; --tags '' clears them)."""
    if tags is None:
        raise bad_input("nothing to update: pass --tags")
    with api.connect() as client:
        path = cluster_resource_path(client, resource_group, name)
        cluster = _get_cluster(client, resource_group, name)
        body = {
            "location": cluster["location"],
            "tags": parse_tags(tags),
            "properties": cluster["properties"],
        }
        response = client.request("PUT", path, json=body, headers=_if_match(cluster.get("eTag")))
        warn_without_continuous_attestation(client, body)
        result = finish_or_wait(client, response, path, f"Updating cluster {name}", no_wait, timeout)
        output(result or response.json(), output_format, CLUSTER_COLUMNS, cluster_table_row)


def _if_match(etag: object) -> dict[str, str]:
    """The If-Match header of a PUT that writes back what a GET read (`etag`: the resource's eTag), so a
    change made in between is refused (412 PreconditionFailed) instead of being undone."""
    return {"If-Match": etag} if isinstance(etag, str) else {}


@dataclass(frozen=True)
class WaitCondition:
    """What `aks wait` / `aks nodepool wait` wait for: exactly one of az's conditions."""

    created: bool = False
    updated: bool = False
    deleted: bool = False
    exists: bool = False
    custom: str | None = None
    # with `deleted`, for a resource whose deletion was just accepted: fail once it is no longer Deleting (its
    # deletion failed and the server gave it back, as a resource group whose cluster could not be deleted)
    while_deleting: bool = False

    def check(self) -> None:
        """Refuse anything but exactly one condition, and a --custom query that does not parse."""
        given = (self.created, self.updated, self.deleted, self.exists, self.custom is not None)
        if sum(given) != 1:
            raise bad_input("pass exactly one of --created, --updated, --deleted, --exists or --custom")
        if self.custom is not None:
            check_query("--custom", self.custom)

    def met(self, resource: dict[str, Any] | None, what: str) -> bool:
        """Whether `resource` (None: it does not exist) is what is waited for; fails when it is in a state
        the wait cannot reach (provisioningState Failed while waiting for --created or --updated)."""
        if self.deleted:
            state = None if resource is None else resource.get("properties", {}).get("provisioningState")
            if self.while_deleting and resource is not None and state != "Deleting":
                raise fail(f"Deleting the {what} failed: its provisioningState is {state} again")
            return resource is None
        if resource is None:
            return False
        state = resource.get("properties", {}).get("provisioningState")
        if (self.created or self.updated) and state == "Failed":
            raise fail(f"the {what}'s provisioningState is {state}")
        if self.custom is not None:
            return bool(apply_query("--custom", self.custom, resource, f"the {what}"))
        return self.exists or state == "Succeeded"


CreatedOption = Annotated[
    bool, typer.Option("--created", help="Wait until it exists with provisioningState Succeeded.")
]
UpdatedOption = Annotated[
    bool, typer.Option("--updated", help="Wait until its provisioningState is Succeeded.")
]
DeletedOption = Annotated[bool, typer.Option("--deleted", help="Wait until it is deleted.")]
ExistsOption = Annotated[bool, typer.Option("--exists", help="Wait until it exists.")]
CustomOption = Annotated[
    str | None,
    typer.Option(
        "--custom",
        help="Wait until this JMESPath query on its JSON is true, e.g. "
        "\"properties.provisioningState=='Succeeded'\".",
    ),
]
IntervalOption = Annotated[int, typer.Option("--interval", min=1, help="Polling interval in seconds.")]
WaitTimeoutOption = Annotated[int, typer.Option("--timeout", min=1, help="Maximum wait in seconds.")]


def wait_until(
    client: ArmClient, path: str, what: str, condition: WaitCondition, interval: float, timeout: int
) -> None:
    """Poll the resource at `path` every `interval` seconds until `condition` is met; exit 1 after
    `timeout` seconds, as az's wait commands."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            resource: dict[str, Any] | None = client.json("GET", path)
        except ArmCallError as missing:
            if missing.status != 404:
                raise
            resource = None
        if condition.met(resource, what):
            return
        if time.monotonic() + interval > deadline:
            raise fail(f"Wait operation timed-out after {timeout} seconds")
        time.sleep(interval)


@api_command(aks_app, name="wait")
def wait_cluster(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    created: CreatedOption = False,
    updated: UpdatedOption = False,
    deleted: DeletedOption = False,
    exists: ExistsOption = False,
    custom: CustomOption = None,
    interval: IntervalOption = 30,
    timeout: WaitTimeoutOption = 3600,
) -> None:
    """Place the CLI in a waiting state until a condition of the managed cluster is met (as `az aks wait`):
    exit 0 then, 1 after --timeout seconds."""
    condition = WaitCondition(created, updated, deleted, exists, custom)
    condition.check()
    with api.connect() as client:
        path = cluster_resource_path(client, resource_group, name)
        wait_until(client, path, "cluster", condition, interval, timeout)


@api_command(aks_app, name="list")
def list_clusters(
    api: ApiTarget,
    resource_group: Annotated[
        str | None, typer.Option("--resource-group", "-g", help="Only this group.", callback=valid_group)
    ] = None,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List managed clusters (of a resource group, or of the subscription)."""
    with api.connect() as client:
        provider = ResourceId(client.subscription_id, resource_group).provider(CONTAINER_SERVICE)
        clusters = client.json("GET", f"{client.path(provider)}/{MANAGED_CLUSTERS}")
    output(clusters["value"], output_format, CLUSTER_COLUMNS, cluster_table_row)


def _version_rows(versions: dict[str, Any]) -> list[list[object]]:
    """One table row per patch version, as `az aks get-versions -o table` prints them."""
    rows: list[list[object]] = []
    for minor in versions["values"]:
        plans = ", ".join((minor.get("capabilities") or {}).get("supportPlan") or [])
        preview = " (preview)" if minor.get("isPreview") else ""
        for patch, details in minor["patchVersions"].items():
            rows.append([patch + preview, ", ".join(details["upgrades"]) or "None available", plans])
    return rows


@api_command(aks_app, name="get-versions")
def get_versions(
    api: ApiTarget,
    location: Annotated[str, typer.Option("--location", "-l", help="Azure-style location name.")],
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List the Kubernetes versions clusters and node pools can use in a location (the installed ones)."""
    with api.connect() as client:
        locations = client.subscription.provider(CONTAINER_SERVICE).child("locations", location)
        versions = client.json("GET", f"{client.path(locations)}/kubernetesVersions")
    output(versions, output_format, VERSION_COLUMNS, None, table_rows=_version_rows)


def confirm_or_exit(yes: bool, what: str) -> None:
    """Ask as az does before `what` unless --yes; exit 0 when the user says no."""
    if not yes and not typer.confirm(f"Are you sure you want to perform this operation ({what})?"):
        raise typer.Exit(0)


def _delete(
    client: ArmClient, path: str, what: str, no_wait: bool, timeout: int, params: dict[str, str] | None = None
) -> None:
    response = client.request("DELETE", path, params=params)
    if response.status_code == 204:
        note(f"{what}: nothing to delete (it does not exist).")
        return
    if not no_wait:
        wait_for_operation(client, response, what, timeout)


@api_command(aks_app)
def delete(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    yes: YesOption = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
) -> None:
    """Delete a managed cluster."""
    confirm_or_exit(yes, f"delete cluster {name}")
    with api.connect() as client:
        _delete(
            client,
            cluster_resource_path(client, resource_group, name),
            f"Deleting cluster {name}",
            no_wait,
            timeout,
        )


def _merge_kubeconfig(
    existing: dict[str, Any], new: dict[str, Any], overwrite: bool, context: str | None
) -> None:
    if context:
        new["contexts"][0]["name"] = context
        new["current-context"] = context
    for section in ("clusters", "users", "contexts"):
        entries = existing.get(section) or []
        for entry in new[section]:
            same = [e for e in entries if e.get("name") == entry["name"]]
            if same and same[0] != entry and not overwrite:
                raise fail(
                    f"a different object named '{entry['name']}' already exists in the kubeconfig {section}; "
                    "use --overwrite-existing to replace it",
                    BAD_INPUT_EXIT_CODE,
                )
            entries = [e for e in entries if e.get("name") != entry["name"]] + [entry]
        existing[section] = entries
    existing.setdefault("apiVersion", "v1")
    existing.setdefault("kind", "Config")
    existing["current-context"] = new["current-context"]


@api_command(aks_app, name="get-credentials")
def get_credentials(
    api: ApiTarget,
    name: NameOption,
    resource_group: GroupOption,
    file: Annotated[
        Path | None,
        typer.Option("--file", "-f", help="Kubeconfig to write (default ~/.kube/config); '-' prints."),
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Get the cluster admin credentials.")] = False,
    overwrite_existing: Annotated[
        bool, typer.Option("--overwrite-existing", help="Replace entries of the same name.")
    ] = False,
    context: Annotated[str | None, typer.Option("--context", help="Name of the kubeconfig context.")] = None,
) -> None:
    """Write the cluster's kubeconfig context (merged into the file) and make it the current context."""
    kind = "listClusterAdminCredential" if admin else "listClusterUserCredential"
    with api.connect() as client:
        credentials = client.json("POST", f"{cluster_resource_path(client, resource_group, name)}/{kind}")
    new = yaml.safe_load(base64.b64decode(credentials["kubeconfigs"][0]["value"]))
    if file is not None and str(file) == "-":
        typer.echo(yaml.safe_dump(new, sort_keys=False))
        return
    target = file or Path.home() / ".kube" / "config"
    try:
        existing = (yaml.safe_load(target.read_text()) if target.is_file() else None) or {}
    except yaml.YAMLError as exc:
        raise bad_input(f"{target} is not a valid kubeconfig: {exc}") from None
    if not isinstance(existing, dict):
        raise bad_input(f"{target} is not a valid kubeconfig (not a mapping)")
    _merge_kubeconfig(existing, new, overwrite_existing, context)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(target.name + ".tl-tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        yaml.safe_dump(existing, handle, sort_keys=False)
    os.replace(temporary, target)  # credentials inside: the file ends up 0600, replaced atomically
    note(f'Merged "{new["current-context"]}" as current context in {target}')


def pool_resource_path(client: ArmClient, group: str, cluster: str, pool: str) -> str:
    """The API path of agent pool `pool` of `cluster` in resource group `group`."""
    return client.path(_cluster_id(client, group, cluster).child(AGENT_POOLS, pool))


def _machine_path(client: ArmClient, group: str, cluster: str, pool: str, machine: str) -> str:
    return client.path(
        _cluster_id(client, group, cluster).child(AGENT_POOLS, pool).child("machines", machine)
    )


@api_command(nodepool_app)
def add(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    node_count: NodeCountOption = 3,
    node_vm_size: VmSizeOption = None,
    os_type: Annotated[
        OsType | None,
        typer.Option(
            "--os-type",
            help="Linux (the default). Windows is refused: only Linux node images (Debian's signed boot "
            "chain) can be booted here.",
        ),
    ] = None,
    os_sku: OsSkuOption = None,
    kubernetes_version: KubernetesVersionOption = None,
    mode: Annotated[str, typer.Option("--mode", help="System or User.")] = "User",
    enable_secure_boot: SecureBootOption = False,
    enable_vtpm: VtpmOption = False,
    enable_fips_image: FipsOption = False,
    gpu_driver: GpuDriverOption = None,
    node_osdisk_type: OsDiskTypeOption = None,
    node_osdisk_size: OsDiskSizeOption = None,
    vm_set_type: VmSetTypeOption = None,
    max_surge: MaxSurgeOption = None,
    drain_timeout: DrainTimeoutOption = None,
    node_soak_duration: NodeSoakDurationOption = None,
    undrainable_node_behavior: UndrainableNodeBehaviorOption = None,
    labels: LabelsOption = None,
    node_taints: TaintsOption = None,
    max_pods: MaxPodsOption = None,
    tags: TagsOption = None,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Add a node pool (refused with 409 if the name exists: use `nodepool update`)."""
    if mode not in ("System", "User"):
        raise bad_input(f"--mode must be System or User, got {mode!r}")
    properties = {"mode": mode} | _pool_properties(
        node_count,
        node_vm_size,
        os_type,
        os_sku,
        vm_set_type,
        kubernetes_version,
        enable_fips_image,
        gpu_driver,
        node_osdisk_type,
        node_osdisk_size,
        enable_secure_boot,
        enable_vtpm,
    )
    upgrade = {
        "maxSurge": max_surge,
        "drainTimeoutInMinutes": drain_timeout,
        "nodeSoakDurationInMinutes": node_soak_duration,
        "undrainableNodeBehavior": undrainable_node_behavior,
    }
    if any(value is not None for value in upgrade.values()):
        _upgrade_settings(properties, **upgrade)
    _node_settings(properties, labels, node_taints, max_pods)
    if tags is not None:
        properties["tags"] = parse_tags(tags)
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        body = {"properties": properties}
        response = client.request("PUT", path, json=body, headers={"If-None-Match": "*"})
        warn_without_continuous_attestation(client, body)
        result = finish_or_wait(client, response, path, f"Adding node pool {name}", no_wait, timeout)
        output(result or response.json(), output_format, POOL_COLUMNS, pool_table_row)


@api_command(nodepool_app)
def update(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    enable_secure_boot: SecureBootOption = False,
    disable_secure_boot: Annotated[
        bool, typer.Option("--disable-secure-boot", help="Disable Secure Boot.")
    ] = False,
    enable_vtpm: VtpmOption = False,
    disable_vtpm: Annotated[bool, typer.Option("--disable-vtpm", help="Disable the vTPM.")] = False,
    max_surge: MaxSurgeOption = None,
    drain_timeout: DrainTimeoutOption = None,
    node_soak_duration: NodeSoakDurationOption = None,
    undrainable_node_behavior: UndrainableNodeBehaviorOption = None,
    labels: LabelsOption = None,
    node_taints: TaintsOption = None,
    tags: TagsOption = None,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Enable or disable Secure Boot / vTPM on a node pool (the reconciler reimages the nodes, --max-surge
    at a time beside the old ones, each old node drained within --drain-timeout minutes, then soaked
    --node-soak-duration minutes; one it cannot drain is handled as --undrainable-node-behavior says), set
    those upgrade settings, replace the pool's node labels and taints (set on its Nodes without a reimage)
    or its tags (--tags replaces them all; --tags '' clears them)."""
    flags = SecurityFlags(enable_secure_boot, disable_secure_boot, enable_vtpm, disable_vtpm)
    conflicts = check_flags(flags)
    if conflicts:
        raise bad_input("; ".join(f"({v.code}) {v.message}" for v in conflicts))
    if not (
        enable_secure_boot
        or disable_secure_boot
        or enable_vtpm
        or disable_vtpm
        or max_surge is not None
        or drain_timeout is not None
        or node_soak_duration is not None
        or undrainable_node_behavior is not None
        or labels is not None
        or node_taints is not None
        or tags is not None
    ):
        raise bad_input(
            "nothing to update: pass --enable-secure-boot, --disable-secure-boot, --enable-vtpm, "
            "--disable-vtpm, --max-surge, --drain-timeout, --node-soak-duration, "
            "--undrainable-node-behavior, --labels, --node-taints or --tags"
        )
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        pool = client.json("GET", path)
        security = pool["properties"].setdefault("securityProfile", {})
        if enable_secure_boot or disable_secure_boot:
            security["enableSecureBoot"] = enable_secure_boot
        if enable_vtpm or disable_vtpm:
            security["enableVTPM"] = enable_vtpm
        _upgrade_settings(
            pool["properties"],
            maxSurge=max_surge,
            drainTimeoutInMinutes=drain_timeout,
            nodeSoakDurationInMinutes=node_soak_duration,
            undrainableNodeBehavior=undrainable_node_behavior,
        )
        _node_settings(pool["properties"], labels, node_taints)
        if tags is not None:
            pool["properties"]["tags"] = parse_tags(tags)
        response = client.request("PUT", path, json=pool, headers=_if_match(pool["properties"].get("eTag")))
        warn_without_continuous_attestation(client, pool)
        result = finish_or_wait(client, response, path, f"Updating node pool {name}", no_wait, timeout)
        output(result or response.json(), output_format, POOL_COLUMNS, pool_table_row)


@api_command(nodepool_app)
def scale(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    node_count: Annotated[int, typer.Option("--node-count", "-c", min=0, max=1000, help="Number of nodes.")],
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Scale a node pool to --node-count nodes."""
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        pool = client.json("GET", path)
        pool["properties"]["count"] = node_count
        response = client.request("PUT", path, json=pool)
        warn_without_continuous_attestation(client, pool)
        result = finish_or_wait(client, response, path, f"Scaling node pool {name}", no_wait, timeout)
        output(result or response.json(), output_format, POOL_COLUMNS, pool_table_row)


@api_command(nodepool_app, name="show")
def show_pool(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show a node pool."""
    with api.connect() as client:
        pool = client.json("GET", pool_resource_path(client, resource_group, cluster_name, name))
    output(pool, output_format, POOL_COLUMNS, pool_table_row)


@api_command(nodepool_app, name="list")
def list_pools(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    resource_group: GroupOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List the node pools of a cluster."""
    with api.connect() as client:
        pools = client.json(
            "GET", f"{cluster_resource_path(client, resource_group, cluster_name)}/{AGENT_POOLS}"
        )
    output(pools["value"], output_format, POOL_COLUMNS, pool_table_row)


@api_command(nodepool_app, name="wait")
def wait_pool(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    created: CreatedOption = False,
    updated: UpdatedOption = False,
    deleted: DeletedOption = False,
    exists: ExistsOption = False,
    custom: CustomOption = None,
    interval: IntervalOption = 30,
    timeout: WaitTimeoutOption = 3600,
) -> None:
    """Wait for a node pool to reach a desired state (as `az aks nodepool wait`): exit 0 then, 1 after
    --timeout seconds."""
    condition = WaitCondition(created, updated, deleted, exists, custom)
    condition.check()
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        wait_until(client, path, "node pool", condition, interval, timeout)


def _machine_row(machine: dict[str, Any]) -> list[object]:
    props = machine["properties"]
    security = props.get("securityProfile") or {}
    kubernetes = props.get("kubernetes") or {}
    return [
        machine["name"],
        props["provisioningState"],
        (props.get("powerState") or {}).get("code"),
        (props.get("health") or {}).get("state"),
        security.get("enableSecureBoot"),
        security.get("enableVTPM"),
        props.get("attestationStatus"),
        _pairs(props.get("labels")),
        _pairs(kubernetes.get("nodeLabels")),
        ",".join(kubernetes.get("nodeTaints") or []),
    ]


def _pairs(labels: dict[str, str] | None) -> str:
    """Labels as `key=value,...` (sorted), a table cell."""
    return ",".join(f"{key}={value}" for key, value in sorted((labels or {}).items()))


@api_command(machine_app, name="list")
def list_machines(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    nodepool_name: NodepoolNameOption,
    resource_group: GroupOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List the machines of a node pool: their state, attestation status and verdict labels, and the pool's
    node labels and taints on their Kubernetes Nodes (properties.kubernetes)."""
    with api.connect() as client:
        path = f"{pool_resource_path(client, resource_group, cluster_name, nodepool_name)}/machines"
        machines = client.json("GET", path)
    output(machines["value"], output_format, MACHINE_COLUMNS, _machine_row)


@api_command(machine_app, name="show")
def show_machine(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    nodepool_name: NodepoolNameOption,
    machine_name: MachineNameOption,
    resource_group: GroupOption,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show one machine of a node pool (Machines_Get): its state, attestation status and verdict labels, and
    the pool's node labels and taints on its Kubernetes Node (properties.kubernetes)."""
    with api.connect() as client:
        machine = client.json(
            "GET", _machine_path(client, resource_group, cluster_name, nodepool_name, machine_name)
        )
    output(machine, output_format, MACHINE_COLUMNS, _machine_row)


@api_command(nodepool_app, name="delete")
def delete_pool(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    ignore_pod_disruption_budget: Annotated[
        bool,
        typer.Option(
            "--ignore-pod-disruption-budget",
            help="Delete the pods of the pool's nodes without considering PodDisruptionBudgets (instead "
            "of evicting them), so that no budget can block the deletion.",
        ),
    ] = False,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
) -> None:
    """Delete a node pool (its nodes drained first)."""
    params = {"ignore-pod-disruption-budget": "true"} if ignore_pod_disruption_budget else None
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        _delete(client, path, f"Deleting node pool {name}", no_wait, timeout, params)


attestation_app = typer.Typer(
    name="attestation", help="Attestation history of a machine, with evidence.", no_args_is_help=True
)
machine_app.add_typer(attestation_app, name="attestation")


@api_command(nodepool_app)
def attest(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    name: PoolNameOption,
    resource_group: GroupOption,
    no_wait: NoWaitOption = False,
    timeout: TimeoutOption = DEFAULT_WAIT_SECONDS,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Re-attest every Ready node of a vTPM node pool now, wait for the results and print them (exit 1 if
    any node failed); --no-wait prints the request only."""
    with api.connect() as client:
        path = pool_resource_path(client, resource_group, cluster_name, name)
        request = client.json("POST", f"{path}/attest")
        if no_wait:
            print_json(request)
            return
        records, vanished = wait_for_attestation(client, path, request, timeout)
    output(records, output_format, ATTESTATION_COLUMNS, attestation_row)
    failed = [
        f"{record['properties']['machineName']} ({record['properties']['status']})"
        for record in records
        if not record["properties"]["passed"]
    ] + [f"{machine} (deleted before it was attested)" for machine in vanished]
    if failed:
        raise fail(
            f"{len(failed)} of {len(request['machines'])} machine(s) failed attestation: {', '.join(failed)}"
        )


@api_command(attestation_app, name="list")
def list_attestations(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    nodepool_name: NodepoolNameOption,
    machine_name: MachineNameOption,
    resource_group: GroupOption,
    top: Annotated[int, typer.Option("--top", min=1, max=1000, help="Newest records to list.")] = 50,
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """List a machine's attestations, newest first (also of a deleted machine)."""
    with api.connect() as client:
        path = _machine_path(client, resource_group, cluster_name, nodepool_name, machine_name)
        history = client.json("GET", f"{path}/attestations", params={"$top": str(top)})
    output(history["value"], output_format, ATTESTATION_COLUMNS, attestation_row)


@api_command(attestation_app, name="show")
def show_attestation(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    nodepool_name: NodepoolNameOption,
    machine_name: MachineNameOption,
    resource_group: GroupOption,
    attestation_id: Annotated[
        int, typer.Option("--attestation-id", "--id", help="Attestation id (`attestation list` Id column).")
    ],
    output_format: OutputOption = OutputFormat.json,
) -> None:
    """Show one attestation with its full evidence (base64), PCRs, findings and token."""
    with api.connect() as client:
        path = _machine_path(client, resource_group, cluster_name, nodepool_name, machine_name)
        record = client.json("GET", f"{path}/attestations/{attestation_id}")
    output(record, output_format, ATTESTATION_COLUMNS, attestation_row)


@api_command(machine_app, name="get-attestation-token")
def get_attestation_token(
    api: ApiTarget,
    cluster_name: ClusterNameOption,
    nodepool_name: NodepoolNameOption,
    machine_name: MachineNameOption,
    resource_group: GroupOption,
) -> None:
    """Print the machine's attestation token (a JWT, verifiable with the server's JWKS) with its expiry;
    refused when its newest attestation failed or the token expired."""
    with api.connect() as client:
        path = _machine_path(client, resource_group, cluster_name, nodepool_name, machine_name)
        print_json(client.json("POST", f"{path}/getAttestationToken"))
