"""Every AKS limitation in ONE table: code, target property, message and the predicate that detects it.

`check_pool` evaluates every rule that applies to a pool request and returns all violations (never only the
first), `check_flags` does the same for command-line flag combinations, and `raise_violations` turns them into
one 400 ARM error whose `details` lists each violation with the property at fault (`target`).

The location catalogue (LOCATIONS), the Kubernetes versions really installed (the pinned release of
control/kubernetes_release.py) and the per-subscription quotas (QUOTAS: clusters, nodes, and the guest vCPUs
and memory the node VMs really get) are rules of this table too (`check_cluster`, `check_location`,
`check_version`, `check_quota`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import astuple, dataclass
from functools import partial
from typing import Any

from trustedlaunch.control.errors import ArmError, bad_request
from trustedlaunch.control.kubernetes_release import KUBERNETES_VERSION
from trustedlaunch.control.labels import AKS_PREFIX, POOL_LABEL_KEYS
from trustedlaunch.control.node_images import OS_SKUS, NodeImageInfo
from trustedlaunch.control.resource_id import stored_name
from trustedlaunch.control.vm_sizes import VmSize, find_vm_size
from trustedlaunch.node.kubelet import DEFAULT_MAX_PODS as KUBELET_DEFAULT_MAX_PODS
from trustedlaunch.node.kubelet import MAX_REGISTRATION_TAINTS_SIZE, registration_taints_size
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS

TL_INCOMPATIBLE = "TrustedLaunchIncompatibleWithConfig"
FEATURE_NAMESPACE = "Microsoft.ContainerService"
FEATURE_NAME = "TrustedLaunchPreview"
FEATURE_REGISTER_COMMAND = f"tl feature register --namespace {FEATURE_NAMESPACE} --name {FEATURE_NAME}"
MIN_TRUSTED_LAUNCH_VERSION = (1, 25, 2)
MAX_POOL_NAME_LENGTH = {"Linux": 11, "Windows": 6}
# Our own error (not AKS's) for a Windows pool: AKS accepts osType Windows, this platform cannot boot it.
OS_TYPE_NOT_SUPPORTED = "OSTypeNotSupported"
LINUX_ONLY_MESSAGE = (
    "Pool '{pool}' is {os_type}: this platform boots only Linux node images (Debian's signed shim, GRUB and "
    "kernel with a dm-verity root filesystem: the boot chain Secure Boot and the vTPM attestation verify); "
    "no Windows node image can be booted here. Use osType Linux."
)


def boots_here(os_type: str) -> bool:
    """Whether nodes of a pool of `os_type` can boot on this platform: only Linux node images exist."""
    return os_type == "Linux"


VMGS_RESERVATION_GIB = 1  # the VM guest state of a trusted launch VM shares the ephemeral placement
LATEST_PATCH = 10**6  # the patch of a MAJOR.MINOR version: the newest one
KUBERNETES_VERSION_FORMAT = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")
# The versions clusters and pools may use: the release `make setup` installs, oldest first.
INSTALLED_KUBERNETES_VERSIONS = (KUBERNETES_VERSION.removeprefix("v"),)
DEFAULT_KUBERNETES_VERSION = INSTALLED_KUBERNETES_VERSIONS[-1]
IMMUTABLE_POOL_PROPERTIES = (
    ("vm_size", "vmSize"),
    ("os_type", "osType"),
    ("os_sku", "osSKU"),
    ("pool_type", "type"),
    ("enable_fips", "enableFIPS"),
    ("os_disk_type", "osDiskType"),
    ("os_disk_size_gb", "osDiskSizeGB"),
    ("gpu_driver", "gpuProfile.driver"),
    ("max_pods", "maxPods"),  # as AKS: the kubelet's maxPods is set when a node joins; a new pool changes it
)
MAX_SURGE = re.compile(r"^(\d{1,4})(%?)$")  # upgradeSettings.maxSurge: a node count or a percentage
MAX_SURGE_NODES = 1000  # a pool's largest node count
MAX_AGENT_POOLS = 100  # a cluster's most agent pools (AKS's limit; a cluster's `maxAgentPools`)
TOO_MANY_POOLS = (
    "The managed cluster would have {pool_count} agent pools; at most {max_agent_pools} are allowed "
    "(maxAgentPools)."
)
# upgradeSettings.drainTimeoutInMinutes: AKS's range (its REST API spec: 1 to 1440, a day); unset: 30
DRAIN_TIMEOUT_MINUTES = (1, 1440)
# upgradeSettings.nodeSoakDurationInMinutes: AKS's range (its REST API spec: 0 to 30); unset: 0
NODE_SOAK_DURATION_MINUTES = (0, 30)
# maxPods: AKS's range (10 to 250 pods per node) and its default for kubenet, the network this platform's
# nodes have (a bridge with host-local pod addresses, node/kubelet.py), where Azure CNI's default is 30.
MAX_PODS = (10, 250)
DEFAULT_MAX_PODS = KUBELET_DEFAULT_MAX_PODS  # kubelet's own default is AKS's for kubenet
# nodeLabels / nodeTaints: Kubernetes label syntax (a qualified name: an optional DNS subdomain prefix and a
# name; a value of at most 63 characters), taints as az and AKS write them ("key=value:Effect").
RESERVED_LABEL_PREFIX = AKS_PREFIX  # AKS's own labels and taints
_LABEL_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"(?=.{1,253}/)[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY = re.compile(rf"^(?:{_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$")
LABEL_VALUE = re.compile(rf"^(?:{_LABEL_NAME})?$")
# Node label keys in the kubernetes.io or k8s.io namespace a node may carry (Kubernetes >= 1.16, as AKS
# checks them): under these prefixes, or one of these labels.
KUBERNETES_LABEL_PREFIXES = ("kubelet.kubernetes.io", "node.kubernetes.io")
ALLOWED_KUBERNETES_LABELS = frozenset(
    (
        "beta.kubernetes.io/arch",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.kubernetes.io/region",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "failure-domain.kubernetes.io/zone",
        "kubernetes.io/hostname",
        "kubernetes.io/instance-type",
        "beta.kubernetes.io/instance-type",
    )
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
TAINT = re.compile(r"^(?P<key>[^=:\s]+)(?:=(?P<value>[^:\s]*))?:(?P<effect>[A-Za-z]+)$")
MAX_NODE_LABELS = 100  # per pool (bounds the request, the Node patch and the stored row)
MAX_NODE_TAINTS = 50
# ARM names (as az checks them); ARM compares ids case-insensitively
SUBSCRIPTION_ID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
RESOURCE_GROUP = re.compile(r"^[-\w._()]{0,89}[-\w_()]$")
CLUSTER_NAME = re.compile(r"^[a-zA-Z0-9]$|^[a-zA-Z0-9][-_a-zA-Z0-9]{0,61}[a-zA-Z0-9]$")
POOL_NAME = re.compile(rf"^[a-z][a-z0-9]{{0,{max(MAX_POOL_NAME_LENGTH.values()) - 1}}}$")  # any OS type
MACHINE_NAME = re.compile(r"^[a-z0-9][-a-z0-9]{0,79}$")  # aks-{pool}-{pool id}-vmss{ordinal}
# Azure public regions (ARM names): a cluster's location must be one of them (it is part of operation URLs).
LOCATIONS = frozenset(
    (
        "australiacentral",
        "australiacentral2",
        "australiaeast",
        "australiasoutheast",
        "austriaeast",
        "belgiumcentral",
        "brazilsouth",
        "brazilsoutheast",
        "canadacentral",
        "canadaeast",
        "centralindia",
        "centralus",
        "chilecentral",
        "eastasia",
        "eastus",
        "eastus2",
        "francecentral",
        "francesouth",
        "germanynorth",
        "germanywestcentral",
        "indonesiacentral",
        "israelcentral",
        "italynorth",
        "japaneast",
        "japanwest",
        "jioindiacentral",
        "jioindiawest",
        "koreacentral",
        "koreasouth",
        "malaysiawest",
        "mexicocentral",
        "newzealandnorth",
        "northcentralus",
        "northeurope",
        "norwayeast",
        "norwaywest",
        "polandcentral",
        "qatarcentral",
        "southafricanorth",
        "southafricawest",
        "southcentralus",
        "southeastasia",
        "southindia",
        "spaincentral",
        "swedencentral",
        "swedensouth",
        "switzerlandnorth",
        "switzerlandwest",
        "uaecentral",
        "uaenorth",
        "uksouth",
        "ukwest",
        "westcentralus",
        "westeurope",
        "westindia",
        "westus",
        "westus2",
        "westus3",
    )
)
# Hypervisor hosts (control/node_hosts.py): a lowercase DNS label names one; its libvirt URI uses one of
# libvirt's QEMU transports; its capacity and EK CA certificate are bounded (rows and checks).
HOST_NAME = re.compile(r"^[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?$")
HOST_URI_SCHEMES = ("qemu", "qemu+ssh", "qemu+tls", "qemu+tcp", "qemu+unix")
HOST_URI = re.compile(r"^(?P<scheme>[a-z+]{1,16})://[\x21-\x7e]*$")  # printable ASCII, no spaces
MAX_HOST_URI_LENGTH = 512  # store.models.NodeHost.uri
HOST_MEMORY_MIB = (512, 64 * 1024 * 1024)  # at least one node VM (node/qemu.py NODE_MEMORY_MIB); 64 TiB
HOST_VCPUS = (1, 4096)
MAX_EK_CA_PEM_BYTES = 16 * 1024  # one CA certificate in PEM
MAX_HOSTS = 1000  # hosts one control plane checks (each in its own thread, every check interval)
MAX_ECHOED_VALUE = 100  # characters of a refused name or URI said back in an error
DEFAULT_CLUSTER_QUOTA = 20
DEFAULT_NODE_QUOTA = 100
GUEST_VCPUS_PER_HOST_CPU = 16  # node VMs mostly idle between attestations: vCPUs are overcommitted
GUEST_MEMORY_SHARE = 0.75  # of the host's physical memory: guest memory is not overcommitted


def canonical_subscription_id(subscription_id: str) -> str:
    """The stored form of a subscription id: checked to be a GUID (400 otherwise) and lowercase, as ARM
    compares ids case-insensitively (`1111AAAA-...` and `1111aaaa-...` are one subscription)."""
    if not SUBSCRIPTION_ID.match(subscription_id):
        raise bad_request(
            "InvalidSubscriptionId",
            f"'{subscription_id}' is not a subscription id (a GUID such as "
            "00000000-0000-0000-0000-000000000000).",
            "subscriptionId",
        )
    return stored_name(subscription_id)


def normalize_location(location: str) -> str:
    """The ARM name of a location given as a name or a display name ("East US" -> "eastus")."""
    return location.lower().replace(" ", "")


def parse_kubernetes_version(version: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of "1.29.4"; "1.29" means the newest patch of 1.29. None if malformed."""
    match = KUBERNETES_VERSION_FORMAT.match(version)
    if not match:
        return None
    patch = int(match.group(3)) if match.group(3) is not None else LATEST_PATCH
    return int(match.group(1)), int(match.group(2)), patch


def installed_patch(version: str, installed: tuple[str, ...] = INSTALLED_KUBERNETES_VERSIONS) -> str | None:
    """The installed version `version` names: itself, or for MAJOR.MINOR the newest installed patch of that
    minor version; None when it names none (or is malformed)."""
    wanted = parse_kubernetes_version(version)
    if wanted is None:
        return None
    matching = {
        parsed: candidate
        for candidate in installed
        if (parsed := parse_kubernetes_version(candidate)) is not None
        and (parsed == wanted or (wanted[2] == LATEST_PATCH and parsed[:2] == wanted[:2]))
    }
    return matching[max(matching)] if matching else None


def kubernetes_upgrades(
    version: str, installed: tuple[str, ...] = INSTALLED_KUBERNETES_VERSIONS
) -> list[str]:
    """The installed versions a cluster or pool on `version` may upgrade to (every newer one)."""
    return [candidate for candidate in installed if _version_order(candidate, version) == 1]


def running_kubernetes_version(version: str) -> str:
    """The version a cluster or pool asking for `version` really runs: the installed patch it names, else
    (a version recorded before it stopped being installed) the default installed release."""
    return installed_patch(version) or DEFAULT_KUBERNETES_VERSION


def parse_max_surge(value: str) -> tuple[int, bool] | None:
    """(number, is_percentage) of a maxSurge such as "1" or "33%"; None unless it is an integer from 0 to
    1000 or a percentage from 0% to 100%."""
    match = MAX_SURGE.match(value)
    if not match:
        return None
    number, percentage = int(match.group(1)), match.group(2) == "%"
    if number > (100 if percentage else MAX_SURGE_NODES):
        return None
    return number, percentage


def surge_nodes(max_surge: str | None, count: int) -> int:
    """How many nodes a rolling reimage may create above `count`: the node count of maxSurge, or its
    percentage of `count` rounded up (as AKS does); 0 (reimage in place) when unset or invalid."""
    parsed = parse_max_surge(max_surge) if max_surge is not None else None
    if parsed is None:
        return 0
    number, percentage = parsed
    return -(-count * number // 100) if percentage else number


@dataclass(frozen=True)
class NodeTaint:
    """One of a pool's nodeTaints ("key=value:Effect", the value optional) as a Kubernetes taint."""

    key: str
    value: str
    effect: str

    def to_dict(self) -> dict[str, str]:
        """The Kubernetes JSON form (no value: none)."""
        return {"key": self.key, "effect": self.effect, **({"value": self.value} if self.value else {})}


def parse_taint(taint: str) -> NodeTaint | None:
    """The taint "key=value:Effect" (or "key:Effect") names; None unless its key is a label key, its value a
    label value and its effect NoSchedule, PreferNoSchedule or NoExecute."""
    match = TAINT.match(taint)
    if match is None:
        return None
    key, value, effect = match.group("key"), match.group("value") or "", match.group("effect")
    if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value) or effect not in TAINT_EFFECTS:
        return None
    return NodeTaint(key, value, effect)


def invalid_labels(labels: dict[str, str]) -> list[str]:
    """The labels ("key: value", as AKS names them) among `labels` whose key or value breaks Kubernetes'
    label syntax."""
    return [
        f"{key}: {value}"
        for key, value in labels.items()
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value)
    ]


def _in_namespace(prefix: str, domain: str) -> bool:
    return prefix == domain or prefix.endswith(f".{domain}")


def restricted_kubernetes_labels(keys: list[str]) -> list[str]:
    """The keys among `keys` in the kubernetes.io or k8s.io namespace that a node may not carry (since
    Kubernetes 1.16, as AKS refuses them): all but those under KUBERNETES_LABEL_PREFIXES and the ones of
    ALLOWED_KUBERNETES_LABELS."""
    restricted = []
    for key in keys:
        prefix = key.partition("/")[0].lower() if "/" in key else ""
        if not (_in_namespace(prefix, "kubernetes.io") or _in_namespace(prefix, "k8s.io")):
            continue
        allowed = any(_in_namespace(prefix, domain) for domain in KUBERNETES_LABEL_PREFIXES)
        if not allowed and key not in ALLOWED_KUBERNETES_LABELS:
            restricted.append(key)
    return restricted


def reserved_keys(keys: list[str]) -> list[str]:
    """The keys among `keys` under RESERVED_LABEL_PREFIX (AKS's own; no pool may set them)."""
    return [key for key in keys if key.lower().startswith(RESERVED_LABEL_PREFIX)]


def _taint_key(taint: str) -> str:
    return re.split(r"[=:]", taint, maxsplit=1)[0]


def join_taints_size(taints: tuple[str, ...]) -> int:
    """The bytes a pool's valid nodeTaints take in the join bundle (its kubelet registers with them)."""
    parsed = [parse_taint(taint) for taint in taints]
    return registration_taints_size([taint.to_dict() for taint in parsed if taint is not None])


def platform_label_keys(keys: list[str]) -> list[str]:
    """The keys among `keys` that the platform sets on every node from its pool's settings (osType, vmSize:
    control.labels.POOL_LABEL_KEYS): a pool's nodeLabels giving them would fight the join's values."""
    return [key for key in keys if key in POOL_LABEL_KEYS]


def repeated_taints(taints: tuple[str, ...]) -> list[str]:
    """The taints of `taints` whose key and effect an earlier one has (Kubernetes refuses a Node with two)."""
    seen: set[tuple[str, str]] = set()
    repeated = []
    for taint in taints:
        parsed = parse_taint(taint)
        if parsed is None:
            continue
        if (parsed.key, parsed.effect) in seen:
            repeated.append(taint)
        seen.add((parsed.key, parsed.effect))
    return repeated


@dataclass(frozen=True)
class Usage:
    """What a subscription holds on this host: clusters, nodes, and the nodes' guest vCPUs and memory."""

    clusters: int = 0
    nodes: int = 0
    cores: int = 0
    memory_mib: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(mine - theirs for mine, theirs in zip(astuple(self), astuple(other), strict=True)))


def pool_usage(count: int, max_surge: str | None) -> Usage:
    """What a pool reserves: its nodes plus the surge nodes a rolling reimage adds above them (at most one per
    node), each with the vCPUs and guest memory every node VM gets (node/qemu.py), whatever its VM size."""
    nodes = count + min(surge_nodes(max_surge, count), count)
    return Usage(nodes=nodes, cores=nodes * NODE_VCPUS, memory_mib=nodes * NODE_MEMORY_MIB)


def _host_cpus() -> int:
    return len(os.sched_getaffinity(0)) or 1


def _host_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)


@dataclass(frozen=True)
class Quota:
    """One per-subscription quota: the Usage field it limits, its name in errors, its setting and default."""

    attribute: str
    name: str
    unit: str
    setting: str
    default: Callable[[], int]


QUOTAS = (
    Quota("clusters", "Clusters", "managed clusters", "TL_QUOTA_CLUSTERS", lambda: DEFAULT_CLUSTER_QUOTA),
    Quota("nodes", "Nodes", "node VMs, surge nodes included", "TL_QUOTA_NODES", lambda: DEFAULT_NODE_QUOTA),
    Quota(
        "cores",
        "Cores",
        "vCPUs of the node VMs",
        "TL_QUOTA_CORES",
        lambda: GUEST_VCPUS_PER_HOST_CPU * _host_cpus(),
    ),
    Quota(
        "memory_mib",
        "MemoryMiB",
        "MiB of guest memory of the node VMs",
        "TL_QUOTA_MEMORY_MIB",
        lambda: int(GUEST_MEMORY_SHARE * _host_memory_mib()),
    ),
)


def configured_quotas() -> Usage:
    """Each subscription's limits: the TL_QUOTA_* environment variables (a whole number), else the defaults
    (20 clusters, 100 nodes, 16 vCPUs per host CPU, 75% of the host's memory)."""
    limits = {}
    for quota in QUOTAS:
        raw = os.environ.get(quota.setting, "").strip()
        limits[quota.attribute] = int(raw) if raw.isdecimal() else quota.default()
    return Usage(**limits)


@dataclass(frozen=True)
class QuotaRequest:
    """A subscription's usage now and once the request is done, and its limits."""

    subscription_id: str
    usage: Usage
    requested: Usage
    limits: Usage

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name: `{attribute}_limit`, `_usage`, `_required`, `_new_limit`."""
        values: dict[str, object] = {"subscription": self.subscription_id}
        for quota in QUOTAS:
            usage, requested = getattr(self.usage, quota.attribute), getattr(self.requested, quota.attribute)
            values[f"{quota.attribute}_limit"] = getattr(self.limits, quota.attribute)
            values[f"{quota.attribute}_usage"] = usage
            values[f"{quota.attribute}_required"] = requested - usage
            values[f"{quota.attribute}_new_limit"] = requested
        return values


def _quota_exceeded(attribute: str, request: QuotaRequest) -> bool:
    """Whether the request grows `attribute` past its limit (shrinking is allowed above a lowered limit)."""
    requested = getattr(request.requested, attribute)
    return requested > getattr(request.limits, attribute) and requested > getattr(request.usage, attribute)


@dataclass(frozen=True)
class PoolRequest:
    """A pool's desired configuration plus the surroundings the rules need (cluster, feature, image)."""

    name: str
    os_type: str
    os_sku: str
    vm_size: str
    pool_type: str
    orchestrator_version: str
    enable_fips: bool
    os_disk_type: str
    os_disk_size_gb: int
    gpu_driver: str | None
    enable_secure_boot: bool
    enable_vtpm: bool
    mode: str = "User"
    count: int = 1
    max_surge: str | None = None  # upgradeSettings.maxSurge as given ("1", "33%"); None: reimage in place
    drain_timeout_in_minutes: int | None = None  # upgradeSettings.drainTimeoutInMinutes; None: 30
    node_soak_duration_in_minutes: int | None = None  # upgradeSettings.nodeSoakDurationInMinutes; None: 0
    undrainable_node_behavior: str | None = None  # upgradeSettings.undrainableNodeBehavior; None: Schedule
    node_labels: tuple[tuple[str, str], ...] = ()  # nodeLabels, as (key, value) pairs (hashable)
    node_taints: tuple[str, ...] = ()  # nodeTaints, "key=value:Effect"
    max_pods: int = DEFAULT_MAX_PODS
    cluster_version: str | None = None  # the control plane's Kubernetes version
    other_system_pools: int = 0  # System pools of the cluster besides this one
    virtual_nodes: bool = False
    feature_registered: bool = True
    current_image: NodeImageInfo | None = None  # set on update: the image the pool already runs
    previous: PoolRequest | None = None  # set on update: the pool's current settings
    sibling_pool_names: tuple[str, ...] = ()  # the other pools of the cluster (or of the same request)
    # a pool PUT's count of its cluster's pools once done (pool_count_after); 0: counted by the ClusterRequest
    pool_count: int = 0

    @property
    def size(self) -> VmSize | None:
        """The catalogued VM size, or None when the size is unknown."""
        return find_vm_size(self.vm_size)

    @property
    def trusted_launch(self) -> bool:
        """Whether the request asks for any trusted launch setting (Secure Boot or vTPM)."""
        return self.enable_secure_boot or self.enable_vtpm

    @property
    def ephemeral_needed_gib(self) -> int:
        """Space an ephemeral OS disk of this pool needs on the VM's cache or temp disk."""
        return self.os_disk_size_gb + (VMGS_RESERVATION_GIB if self.trusted_launch else 0)

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        size = self.size
        return {
            "pool": self.name,
            "count": self.count,
            "pool_count": self.pool_count,
            "max_agent_pools": MAX_AGENT_POOLS,
            "vm_size": self.vm_size,
            "os_type": self.os_type,
            "os_sku": self.os_sku,
            "pool_type": self.pool_type,
            "version": self.orchestrator_version,
            "cluster_version": self.cluster_version,
            "previous_version": self.previous.orchestrator_version if self.previous else "",
            "min_version": ".".join(map(str, MIN_TRUSTED_LAUNCH_VERSION)),
            "max_name": MAX_POOL_NAME_LENGTH.get(self.os_type, 11),
            "image": self.current_image.version if self.current_image else "",
            "capacity": size.ephemeral_capacity_gib if size else 0,
            "needed": self.ephemeral_needed_gib,
            "arch": size.architecture if size else "",
            "gpu": size.gpu if size else "",
            "skus": ", ".join(OS_SKUS.get(self.os_type, ())),
            "command": FEATURE_REGISTER_COMMAND,
            "max_surge": self.max_surge,
            "max_surge_nodes": MAX_SURGE_NODES,
            "drain_timeout": self.drain_timeout_in_minutes,
            "min_drain_timeout": DRAIN_TIMEOUT_MINUTES[0],
            "max_drain_timeout": DRAIN_TIMEOUT_MINUTES[1],
            "node_soak": self.node_soak_duration_in_minutes,
            "invalid_labels": ", ".join(f"'{label}'" for label in invalid_labels(dict(self.node_labels))),
            "reserved_labels": ", ".join(reserved_keys([key for key, _ in self.node_labels])),
            "restricted_labels": ", ".join(restricted_kubernetes_labels([k for k, _ in self.node_labels])),
            "allowed_prefixes": ", ".join(KUBERNETES_LABEL_PREFIXES),
            "allowed_labels": ", ".join(sorted(ALLOWED_KUBERNETES_LABELS)),
            "invalid_taints": ", ".join(t for t in self.node_taints if parse_taint(t) is None),
            "reserved_taints": ", ".join(reserved_keys([_taint_key(t) for t in self.node_taints])),
            "reserved_prefix": RESERVED_LABEL_PREFIX,
            "platform_labels": ", ".join(platform_label_keys([key for key, _ in self.node_labels])),
            "repeated_taints": ", ".join(repeated_taints(self.node_taints)),
            "taints_size": join_taints_size(self.node_taints),
            "max_taints_size": MAX_REGISTRATION_TAINTS_SIZE,
            "max_pods": self.max_pods,
            "min_max_pods": MAX_PODS[0],
            "max_max_pods": MAX_PODS[1],
            "min_node_soak": NODE_SOAK_DURATION_MINUTES[0],
            "max_node_soak": NODE_SOAK_DURATION_MINUTES[1],
        }


@dataclass(frozen=True)
class ClusterRequest:
    """A whole-cluster request: its pools' modes once defaults are applied."""

    pool_count: int
    system_pool_count: int
    kubernetes_version: str = ""
    previous_version: str | None = None  # set on update
    location: str | None = None

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {
            "pool_count": self.pool_count,
            "max_agent_pools": MAX_AGENT_POOLS,
            "version": self.kubernetes_version,
            "previous_version": self.previous_version,
            "location": self.location,
            "resource_type": f"{FEATURE_NAMESPACE}/managedClusters",
            "locations": ",".join(sorted(LOCATIONS)),
        }


@dataclass(frozen=True)
class LocationRequest:
    """A request naming a location in its path, such as `.../locations/{location}/kubernetesVersions`."""

    location: str
    resource_type: str

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {
            "location": self.location,
            "resource_type": self.resource_type,
            "locations": ",".join(sorted(LOCATIONS)),
        }


@dataclass(frozen=True)
class VersionRequest:
    """A Kubernetes version a request chooses: for the control plane (`pool` None) or for one pool."""

    version: str
    location: str
    pool: str | None = None
    installed: tuple[str, ...] = INSTALLED_KUBERNETES_VERSIONS

    @property
    def not_installed(self) -> bool:
        """Whether the version is well formed but names no installed version."""
        return (
            parse_kubernetes_version(self.version) is not None
            and installed_patch(self.version, self.installed) is None
        )

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {
            "version": self.version,
            "location": normalize_location(self.location),
            "pool": self.pool,
            "available": ", ".join(self.installed),
            "example": self.installed[-1],
        }


@dataclass(frozen=True)
class PoolDeletion:
    """Deleting one pool of a cluster."""

    name: str
    mode: str
    other_system_pools: int

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {"pool": self.name}


@dataclass(frozen=True)
class NodePlacement:
    """Placing one new node VM on the registered node hosts (control.placement): `hosts` are registered,
    `with_room` of them are Ready, not cordoned, with the room one node VM needs; `cordoned_with_room` names
    the cordoned hosts that would have had room."""

    node: str
    hosts: int
    with_room: int
    cordoned_with_room: tuple[str, ...] = ()

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {
            "node": self.node,
            "hosts": self.hosts,
            "memory_mib": NODE_MEMORY_MIB,
            "vcpus": NODE_VCPUS,
            "cordoned": ", ".join(self.cordoned_with_room[:20]),
        }


@dataclass(frozen=True)
class HostDrain:
    """Draining host `host` (control.host_drain): `nodes` of its nodes are to be made again elsewhere, and the
    other Ready, uncordoned hosts have room for `with_room` of them."""

    host: str
    nodes: int
    with_room: int

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {
            "host": self.host,
            "nodes": self.nodes,
            "with_room": self.with_room,
            "memory_mib": NODE_MEMORY_MIB,
            "vcpus": NODE_VCPUS,
        }


@dataclass(frozen=True)
class SecurityFlags:
    """The enable/disable flags of one `tl aks nodepool update` call."""

    enable_secure_boot: bool = False
    disable_secure_boot: bool = False
    enable_vtpm: bool = False
    disable_vtpm: bool = False

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name (none)."""
        return {}


@dataclass(frozen=True)
class HostRequest:
    """A hypervisor host's registration or update (control/node_hosts.py): capacity None = to be probed."""

    name: str
    uri: str
    memory_mib: int | None = None
    vcpus: int | None = None
    ek_ca_pem_bytes: int = 0
    host_count: int = 0  # hosts registered once done

    @property
    def uri_scheme(self) -> str | None:
        """The URI's scheme if it is one of HOST_URI_SCHEMES and the URI fits its column, else None."""
        match = HOST_URI.match(self.uri)
        if match is None or len(self.uri) > MAX_HOST_URI_LENGTH:
            return None
        return match["scheme"] if match["scheme"] in HOST_URI_SCHEMES else None

    def message_values(self) -> dict[str, object]:
        """Values the rule messages may name."""
        return {
            "host": self.name[:MAX_ECHOED_VALUE],
            "uri": self.uri[:MAX_ECHOED_VALUE],
            "schemes": ", ".join(f"{scheme}://" for scheme in HOST_URI_SCHEMES),
            "max_uri": MAX_HOST_URI_LENGTH,
            "memory_mib": self.memory_mib,
            "min_memory": HOST_MEMORY_MIB[0],
            "max_memory": HOST_MEMORY_MIB[1],
            "vcpus": self.vcpus,
            "min_vcpus": HOST_VCPUS[0],
            "max_vcpus": HOST_VCPUS[1],
            "pem_bytes": self.ek_ca_pem_bytes,
            "max_pem_bytes": MAX_EK_CA_PEM_BYTES,
            "host_count": self.host_count,
            "max_hosts": MAX_HOSTS,
        }


@dataclass(frozen=True)
class Limitation:
    """One rule: `violated(context)` is true when a request of type `applies_to` breaks it."""

    code: str
    target: str
    message: str
    applies_to: type | tuple[type, ...]
    violated: Callable[[Any], bool]
    status: int = 400


def _name_invalid(r: PoolRequest) -> bool:
    limit = MAX_POOL_NAME_LENGTH.get(r.os_type, 11)
    return not re.fullmatch(rf"[a-z][a-z0-9]{{0,{limit - 1}}}", r.name)


def _version_too_old(r: PoolRequest) -> bool:
    parsed = parse_kubernetes_version(r.orchestrator_version)
    return r.trusted_launch and parsed is not None and parsed < MIN_TRUSTED_LAUNCH_VERSION


def _version_order(version: str, other: str | None) -> int:
    """-1, 0 or 1 as `version` is older than, equal to or newer than `other` (0 if either is unknown)."""
    mine = parse_kubernetes_version(version)
    theirs = parse_kubernetes_version(other) if other else None
    if mine is None or theirs is None:
        return 0
    if LATEST_PATCH in (mine[2], theirs[2]):  # "1.30" names any 1.30 patch: compare minor versions only
        mine, theirs = (mine[0], mine[1], 0), (theirs[0], theirs[1], 0)
    return (mine > theirs) - (mine < theirs)


def _changed(attr: str, r: PoolRequest) -> bool:
    return r.previous is not None and getattr(r, attr) != getattr(r.previous, attr)


def _size_is(r: PoolRequest, test: Callable[[VmSize], bool]) -> bool:
    size = r.size
    return size is not None and test(size)


LIMITATIONS: tuple[Limitation, ...] = (
    Limitation(
        "InvalidParameter",  # as AKS answers it
        "name",
        "The value of parameter agentPoolProfile.name is invalid. Error details: agent pool name '{pool}': "
        "{os_type} pool names must be 1-{max_name} lowercase letters or digits and start with a letter.",
        PoolRequest,
        _name_invalid,
    ),
    Limitation(
        "DuplicateAgentPoolName",
        "name",
        "Agent pool '{pool}' already exists in the cluster; pool names must be unique "
        "(use `tl aks nodepool update` to change an existing pool).",
        PoolRequest,
        lambda r: r.name.lower() in {n.lower() for n in r.sibling_pool_names},
        409,
    ),
    Limitation(
        "VMSizeNotSupported",
        "properties.vmSize",
        "VM size '{vm_size}' is not in the size catalogue; use a size listed in control/vm_sizes.json "
        "(e.g. Standard_D4s_v3).",
        PoolRequest,
        lambda r: r.size is None,
    ),
    Limitation(
        "InvalidOSSKU",
        "properties.osSKU",
        "osSKU '{os_sku}' does not exist for osType '{os_type}'; use one of: {skus}.",
        PoolRequest,
        lambda r: r.os_sku not in OS_SKUS.get(r.os_type, ()),
    ),
    # A new Windows pool, or more nodes for one an earlier version stored (its rows stay; GET and DELETE
    # work): refused. AKS's Windows limits above and below still apply, so a request gets those errors too.
    Limitation(
        OS_TYPE_NOT_SUPPORTED,
        "properties.osType",
        LINUX_ONLY_MESSAGE,
        PoolRequest,
        lambda r: not boots_here(r.os_type) and (r.previous is None or r.count > r.previous.count),
    ),
    Limitation(
        "InvalidKubernetesVersion",
        "properties.orchestratorVersion",
        f"Kubernetes version '{{version}}' is malformed; use MAJOR.MINOR or MAJOR.MINOR.PATCH "
        f"(e.g. {DEFAULT_KUBERNETES_VERSION}).",
        PoolRequest,
        lambda r: parse_kubernetes_version(r.orchestrator_version) is None,
    ),
    Limitation(
        "InvalidKubernetesVersion",
        "properties.orchestratorVersion",
        "Pool '{pool}' cannot run Kubernetes {version}, newer than the control plane ({cluster_version}); "
        "upgrade the cluster first.",
        PoolRequest,
        lambda r: _version_order(r.orchestrator_version, r.cluster_version) == 1,
    ),
    Limitation(
        "InvalidKubernetesVersion",
        "properties.orchestratorVersion",
        "Pool '{pool}' cannot be downgraded from Kubernetes {previous_version} to {version}.",
        PoolRequest,
        lambda r: (
            r.previous is not None
            and _version_order(r.orchestrator_version, r.previous.orchestrator_version) == -1
        ),
    ),
    Limitation(
        "EphemeralOSDiskSizeTooLarge",
        "properties.osDiskType",
        "An ephemeral OS disk for pool '{pool}' needs {needed} GiB but VM size '{vm_size}' has at most "
        "{capacity} GiB of cache or temp disk; use osDiskType Managed, a smaller osDiskSizeGB "
        "or a larger size.",
        PoolRequest,
        lambda r: (
            r.os_disk_type == "Ephemeral"
            and _size_is(r, lambda s: s.ephemeral_capacity_gib < r.ephemeral_needed_gib)
        ),
    ),
    Limitation(
        "PreviewFeatureNotRegistered",
        "properties.securityProfile",
        "Trusted launch (Secure Boot / vTPM) is a preview feature that is not registered in this "
        "subscription; run `{command}`, wait for the state Registered, then run "
        "`tl provider register --namespace Microsoft.ContainerService` (or send a GA api-version, "
        "2024-07-01 or later, which needs no registration).",
        PoolRequest,
        lambda r: r.trusted_launch and not r.feature_registered,
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.orchestratorVersion",
        "Trusted launch requires Kubernetes {min_version} or later; pool '{pool}' uses {version}.",
        PoolRequest,
        _version_too_old,
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.vmSize",
        "Trusted launch requires a Generation 2 VM size; '{vm_size}' supports Generation 1 only.",
        PoolRequest,
        lambda r: r.trusted_launch and _size_is(r, lambda s: not s.supports_gen2),
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.vmSize",
        "Trusted launch is not supported on Arm64 VM sizes; '{vm_size}' is {arch}.",
        PoolRequest,
        lambda r: r.trusted_launch and _size_is(r, lambda s: s.architecture == "Arm64"),
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.osType",
        "Trusted launch is not supported on Windows node pools; pool '{pool}' is {os_type}.",
        PoolRequest,
        lambda r: r.trusted_launch and r.os_type == "Windows",
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.enableFIPS",
        "Trusted launch is not supported on FIPS-enabled node pools; disable FIPS or trusted launch.",
        PoolRequest,
        lambda r: r.trusted_launch and r.enable_fips,
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.addonProfiles.aciConnectorLinux",
        "Trusted launch is not supported on clusters with virtual nodes (aciConnectorLinux addon enabled).",
        PoolRequest,
        lambda r: r.trusted_launch and r.virtual_nodes,
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.type",
        "Trusted launch is not supported on AvailabilitySet node pools; use VirtualMachineScaleSets.",
        PoolRequest,
        lambda r: r.trusted_launch and r.pool_type == "AvailabilitySet",
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.gpuProfile.driver",
        "Secure Boot on GPU size '{vm_size}' ({gpu}) needs the GPU driver installation skipped "
        "(gpuProfile.driver=None, `--gpu-driver None`): the driver AKS installs is not signed "
        "for Secure Boot.",
        PoolRequest,
        lambda r: (
            r.enable_secure_boot and r.gpu_driver != "None" and _size_is(r, lambda s: s.gpu is not None)
        ),
    ),
    Limitation(
        TL_INCOMPATIBLE,
        "properties.securityProfile",
        "Pool '{pool}' runs node image {image}, which is not trusted-launch capable (the pool "
        "was created before TrustedLaunchPreview was registered, or its configuration excluded it); it "
        "cannot be updated to trusted launch: create a new pool with --enable-secure-boot/--enable-vtpm "
        "and move the workloads.",
        PoolRequest,
        lambda r: (
            r.trusted_launch and r.current_image is not None and not r.current_image.trusted_launch_capable
        ),
    ),
    Limitation(
        "InvalidParameter",
        "properties.upgradeSettings.maxSurge",
        "upgradeSettings.maxSurge '{max_surge}' of pool '{pool}' is invalid: use a node count from 0 to "
        "{max_surge_nodes} (e.g. '1') or a percentage of the pool's node count from 0% to 100% (e.g. '33%').",
        PoolRequest,
        lambda r: r.max_surge is not None and parse_max_surge(r.max_surge) is None,
    ),
    Limitation(
        "InvalidParameter",
        "properties.upgradeSettings.drainTimeoutInMinutes",
        "upgradeSettings.drainTimeoutInMinutes {drain_timeout} of pool '{pool}' is out of range: use a "
        "number of minutes from {min_drain_timeout} to {max_drain_timeout} (unset: 30).",
        PoolRequest,
        lambda r: (
            r.drain_timeout_in_minutes is not None
            and not DRAIN_TIMEOUT_MINUTES[0] <= r.drain_timeout_in_minutes <= DRAIN_TIMEOUT_MINUTES[1]
        ),
    ),
    Limitation(
        "InvalidParameter",
        "properties.upgradeSettings.nodeSoakDurationInMinutes",
        "upgradeSettings.nodeSoakDurationInMinutes {node_soak} of pool '{pool}' is out of range: use a "
        "number of minutes from {min_node_soak} to {max_node_soak} (unset: 0).",
        PoolRequest,
        lambda r: (
            r.node_soak_duration_in_minutes is not None
            and not NODE_SOAK_DURATION_MINUTES[0]
            <= r.node_soak_duration_in_minutes
            <= NODE_SOAK_DURATION_MINUTES[1]
        ),
    ),
    # nodeLabels as AKS refuses them (its BadRequest and wording): Kubernetes label syntax, keys under
    # kubernetes.azure.com/ (AKS's own; here also the attestation verdict's, labels.py), kubernetes.io and
    # k8s.io keys a node may not carry. nodeTaints and maxPods in AKS's InvalidParameter form; AKS takes
    # taints under kubernetes.azure.com/ (e.g. its spot pools' scalesetpriority=spot:NoSchedule), this
    # platform refuses them with its own words.
    Limitation(
        "BadRequest",
        "properties.nodeLabels",
        "Node label {invalid_labels} does not meet syntax and character specifications. Please see "
        "https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/ for more details.",
        PoolRequest,
        lambda r: bool(invalid_labels(dict(r.node_labels))),
    ),
    Limitation(
        "BadRequest",
        "properties.nodeLabels",
        "Invalid node label key {reserved_labels}. The 'kubernetes.azure.com' prefix is preserved by aks "
        "system labels",  # AKS's exact words (no final period)
        PoolRequest,
        lambda r: bool(reserved_keys([key for key, _ in r.node_labels])),
    ),
    Limitation(
        "BadRequest",
        "properties.nodeLabels",
        "For Kubernetes version greater than or equal to 1.16, node label keys in the 'kubernetes.io' or "
        "'k8s.io' namespace must begin with an allowed prefix ({allowed_prefixes}) or be in the specifically "
        "allowed set ({allowed_labels}). Pool '{pool}' has {restricted_labels}.",
        PoolRequest,
        lambda r: bool(restricted_kubernetes_labels([key for key, _ in r.node_labels])),
    ),
    Limitation(
        "BadRequest",
        "properties.nodeLabels",
        "Node label key(s) {platform_labels} of pool '{pool}' are set on every node from the pool's osType "
        "and vmSize and cannot be given as nodeLabels.",
        PoolRequest,
        lambda r: bool(platform_label_keys([key for key, _ in r.node_labels])),
    ),
    Limitation(
        "InvalidParameter",
        "properties.nodeTaints",
        "The value of parameter agentPoolProfile.nodeTaints is invalid. Error details: taint(s) "
        "{repeated_taints} of pool '{pool}' repeat the key and effect of an earlier one (a node may have one "
        "taint per key and effect).",
        PoolRequest,
        lambda r: bool(repeated_taints(r.node_taints)),
    ),
    Limitation(
        "InvalidParameter",
        "properties.nodeTaints",
        "The value of parameter agentPoolProfile.nodeTaints is invalid. Error details: taint(s) "
        "{invalid_taints} of pool '{pool}' are not of the form key=value:Effect (or key:Effect), with a "
        "label key and value and the effect NoSchedule, PreferNoSchedule or NoExecute.",
        PoolRequest,
        lambda r: any(parse_taint(taint) is None for taint in r.node_taints),
    ),
    Limitation(
        "InvalidParameter",
        "properties.nodeTaints",
        "The value of parameter agentPoolProfile.nodeTaints is invalid. Error details: taint key(s) "
        "{reserved_taints} of pool '{pool}' use the prefix '{reserved_prefix}'. AKS takes such taints on a "
        "pool, but here that prefix belongs to the attestation verdict's taints (pending until a node is "
        "attested, NoExecute when it fails), which a pool may neither set nor lift.",
        PoolRequest,
        lambda r: bool(reserved_keys([_taint_key(taint) for taint in r.node_taints])),
    ),
    Limitation(  # the join bundle the agent accepts is bounded (node.kubelet.MAX_JOIN_BUNDLE_SIZE)
        "InvalidParameter",
        "properties.nodeTaints",
        "The value of parameter agentPoolProfile.nodeTaints is invalid. Error details: the nodeTaints of "
        "pool '{pool}' take {taints_size} bytes in the kubelet configuration its nodes join with; at most "
        "{max_taints_size} fit (use fewer or shorter taints).",
        PoolRequest,
        lambda r: join_taints_size(r.node_taints) > MAX_REGISTRATION_TAINTS_SIZE,
    ),
    Limitation(
        "InvalidParameter",
        "properties.maxPods",
        "The value of parameter agentPoolProfile.maxPods is invalid. Error details: maxPods {max_pods} of "
        "pool '{pool}' is out of range: use {min_max_pods} to {max_max_pods} pods per node "
        f"(unset: {DEFAULT_MAX_PODS}).",
        PoolRequest,
        lambda r: not MAX_PODS[0] <= r.max_pods <= MAX_PODS[1],
    ),
    Limitation(
        "InvalidParameter",  # as AKS answers it
        "properties.count",
        "The value of parameter agentPoolProfile.count was {count}. It must be greater than or equal to 1 "
        "for System pool '{pool}' (count 0 is only allowed for User pools).",
        PoolRequest,
        lambda r: r.mode == "System" and r.count < 1,
    ),
    Limitation(
        "SystemPoolRequired",
        "properties.mode",
        "Pool '{pool}' is the cluster's only System pool and cannot become a User pool; add another System "
        "pool first.",
        PoolRequest,
        lambda r: (
            r.mode == "User"
            and r.previous is not None
            and r.previous.mode == "System"
            and r.other_system_pools == 0
        ),
    ),
    Limitation(
        "InvalidParameter",
        "properties.agentPoolProfiles",
        TOO_MANY_POOLS,
        (ClusterRequest, PoolRequest),  # a cluster PUT or a pool PUT, counted alike (pool_count_after)
        lambda c: c.pool_count > MAX_AGENT_POOLS,
    ),
    Limitation(
        "SystemPoolRequired",
        "properties.agentPoolProfiles",
        "A managed cluster needs at least one System pool (mode System) in properties.agentPoolProfiles.",
        ClusterRequest,
        lambda c: c.pool_count > 0 and c.system_pool_count == 0,
    ),
    Limitation(
        "InvalidKubernetesVersion",
        "properties.kubernetesVersion",
        "The cluster cannot be downgraded from Kubernetes {previous_version} to {version}.",
        ClusterRequest,
        lambda c: _version_order(c.kubernetes_version, c.previous_version) == -1,
    ),
    Limitation(
        "LocationNotAvailableForResourceType",
        "location",
        "The provided location '{location}' is not available for resource type '{resource_type}'. List of "
        "available regions for the resource type is '{locations}'.",
        (ClusterRequest, LocationRequest),
        lambda c: c.location is not None and normalize_location(c.location) not in LOCATIONS,
    ),
    Limitation(
        "InvalidKubernetesVersion",
        "properties.kubernetesVersion",
        "Kubernetes version '{version}' is malformed; use MAJOR.MINOR or MAJOR.MINOR.PATCH (e.g. {example}).",
        VersionRequest,
        lambda v: v.pool is None and parse_kubernetes_version(v.version) is None,
    ),
    # AKS's wording, plus the versions installed here (`make setup` builds them; `tl aks get-versions`).
    Limitation(
        "K8sVersionNotSupported",
        "properties.kubernetesVersion",
        "Version {version} is not supported in this region({location}). Please use [tl aks get-versions] "
        "command to get the supported version list in this region. Supported versions: {available}.",
        VersionRequest,
        lambda v: v.pool is None and v.not_installed,
    ),
    Limitation(
        "AgentPoolK8sVersionNotSupported",
        "properties.orchestratorVersion",
        "Version {version} is not supported in this region({location}). Please use [tl aks get-versions] "
        "command to get the supported version list in this region. Agent pool '{pool}' cannot use it; "
        "supported versions: {available}.",
        VersionRequest,
        lambda v: v.pool is not None and v.not_installed,
    ),
    *(
        Limitation(
            "QuotaExceeded",
            "subscriptionId",
            f"Operation could not be completed as it results in exceeding the {quota.name} quota "
            f"({quota.unit}) of subscription '{{subscription}}'. "
            f"Current Limit: {{{quota.attribute}_limit}}, Current Usage: {{{quota.attribute}_usage}}, "
            f"Additional Required: {{{quota.attribute}_required}}, "
            f"(Minimum) New Limit Required: {{{quota.attribute}_new_limit}}. "
            f"Delete or scale down clusters or pools, or raise the limit ({quota.setting} of the server).",
            QuotaRequest,
            partial(_quota_exceeded, quota.attribute),
            409,
        )
        for quota in QUOTAS
    ),
    Limitation(
        "SystemPoolRequired",
        "agentPoolName",
        "Pool '{pool}' is the cluster's last System pool and cannot be deleted; add another System pool "
        "first, or delete the cluster.",
        PoolDeletion,
        lambda d: d.mode == "System" and d.other_system_pools == 0,
    ),
    *(
        Limitation(
            "PropertyChangeNotAllowed",
            f"properties.{prop}",
            f"Changing property '{prop}' of an existing pool is not allowed (pool '{{pool}}'); create a new "
            "pool with the new value and move the workloads.",
            PoolRequest,
            partial(_changed, attr),
        )
        for attr, prop in IMMUTABLE_POOL_PROPERTIES
    ),
    Limitation(
        "InvalidHostName",
        "name",
        "Host name '{host}' is not valid: use 1-63 lowercase letters, digits and '-', starting and ending "
        "with a letter or digit (a DNS label).",
        HostRequest,
        lambda h: not HOST_NAME.match(h.name),
    ),
    Limitation(
        "InvalidHostUri",
        "properties.uri",
        "Host '{host}': '{uri}' is not a libvirt URI of QEMU: use {schemes} (at most {max_uri} characters, "
        "no spaces), e.g. qemu+tls://host.example/system.",
        HostRequest,
        lambda h: h.uri_scheme is None,
    ),
    Limitation(
        "InvalidHostCapacity",
        "properties.capacity.memoryMiB",
        "Host '{host}': memoryMiB {memory_mib} is out of range: use {min_memory} to {max_memory} MiB (omit "
        "it to take the host's own memory).",
        HostRequest,
        lambda h: h.memory_mib is not None and not HOST_MEMORY_MIB[0] <= h.memory_mib <= HOST_MEMORY_MIB[1],
    ),
    Limitation(
        "InvalidHostCapacity",
        "properties.capacity.vCPUs",
        "Host '{host}': vCPUs {vcpus} is out of range: use {min_vcpus} to {max_vcpus} (omit it to take the "
        "host's own CPU count).",
        HostRequest,
        lambda h: h.vcpus is not None and not HOST_VCPUS[0] <= h.vcpus <= HOST_VCPUS[1],
    ),
    Limitation(
        "InvalidEkCaCertificate",
        "properties.ekCaCertificate",
        "Host '{host}': the EK CA certificate takes {pem_bytes} bytes; at most {max_pem_bytes} are allowed "
        "(one PEM certificate).",
        HostRequest,
        lambda h: h.ek_ca_pem_bytes > MAX_EK_CA_PEM_BYTES,
    ),
    Limitation(
        "TooManyHosts",
        "name",
        "Registering host '{host}' would make {host_count} hosts; at most {max_hosts} are allowed (remove "
        "hosts that are gone first).",
        HostRequest,
        lambda h: h.host_count > MAX_HOSTS,
        409,
    ),
    Limitation(
        "AllocationFailed",
        "nodeHosts",
        "Allocation failed: none of the {hosts} registered node hosts is Ready with room for node {node} "
        "({memory_mib} MiB of memory and {vcpus} vCPUs beside the nodes placed there; a vTPM node also needs "
        "a host on this machine or one registered with its EK CA). Register another host or raise a host's "
        "capacity, or scale a pool down.",
        NodePlacement,
        lambda p: p.hosts > 0 and p.with_room == 0 and not p.cordoned_with_room,
        409,
    ),
    Limitation(
        "AllocationFailed",
        "nodeHosts",
        "Allocation failed: of the {hosts} registered node hosts only cordoned ones have room for node "
        "{node} ({cordoned}); cordoned hosts take no new node VMs. Uncordon one (tl host uncordon), register "
        "another host or raise a host's capacity, or scale a pool down.",
        NodePlacement,
        lambda p: p.hosts > 0 and p.with_room == 0 and bool(p.cordoned_with_room),
        409,
    ),
    Limitation(
        "InsufficientHostCapacity",
        "name",
        "Host '{host}' cannot be drained: the other Ready, uncordoned node hosts have room for {with_room} "
        "of the {nodes} node(s) to move ({memory_mib} MiB of memory and {vcpus} vCPUs each; a vTPM node "
        "needs a host on this machine or one registered with its EK CA), and a reimaged node with no room "
        "would fail. Register or uncordon a host or raise a host's capacity first (tl host cordon keeps "
        "new nodes off it meanwhile).",
        HostDrain,
        lambda d: d.with_room < d.nodes,
        409,
    ),
    Limitation(
        "MutuallyExclusiveArguments",
        "--enable-secure-boot/--disable-secure-boot",
        "--enable-secure-boot and --disable-secure-boot cannot be used in the same call.",
        SecurityFlags,
        lambda f: f.enable_secure_boot and f.disable_secure_boot,
    ),
    Limitation(
        "MutuallyExclusiveArguments",
        "--enable-vtpm/--disable-vtpm",
        "--enable-vtpm and --disable-vtpm cannot be used in the same call.",
        SecurityFlags,
        lambda f: f.enable_vtpm and f.disable_vtpm,
    ),
)


Context = (
    PoolRequest
    | ClusterRequest
    | LocationRequest
    | VersionRequest
    | PoolDeletion
    | SecurityFlags
    | QuotaRequest
    | HostRequest
    | NodePlacement
    | HostDrain
)


def _target(prefix: str, target: str) -> str:
    """A rule's target inside the request body: a pool's `properties.x` is `x` of its flat entry in a
    cluster body's `properties.agentPoolProfiles[i]` (the `prefix`)."""
    return prefix + target.removeprefix("properties.") if prefix else target


def _violations(context: Context, target_prefix: str = "") -> list[ArmError]:
    values = context.message_values()
    return [
        ArmError(rule.status, rule.code, rule.message.format(**values), _target(target_prefix, rule.target))
        for rule in LIMITATIONS
        if isinstance(context, rule.applies_to) and rule.violated(context)
    ]


def check_pool(request: PoolRequest, target_prefix: str = "") -> list[ArmError]:
    """Every limitation the pool request breaks; `target_prefix` locates the pool inside a cluster body."""
    return _violations(request, target_prefix)


def check_cluster(request: ClusterRequest) -> list[ArmError]:
    """Every limitation a whole-cluster request breaks."""
    return _violations(request)


def check_location(request: LocationRequest) -> list[ArmError]:
    """Every limitation a location named in a request path breaks (a location outside LOCATIONS)."""
    return _violations(request)


def check_version(request: VersionRequest, target_prefix: str = "") -> list[ArmError]:
    """Every limitation a chosen Kubernetes version breaks: malformed (cluster version; a pool's is a pool
    rule), or naming no installed version (K8sVersionNotSupported / AgentPoolK8sVersionNotSupported)."""
    return _violations(request, target_prefix)


def check_quota(request: QuotaRequest) -> list[ArmError]:
    """Every quota the request grows past its limit (409 QuotaExceeded, naming the limit and the usage)."""
    return _violations(request)


def check_deletion(deletion: PoolDeletion) -> list[ArmError]:
    """Every limitation deleting the pool breaks."""
    return _violations(deletion)


def check_host(request: HostRequest) -> list[ArmError]:
    """Every limitation a host registration or update breaks (name, URI, capacity, EK CA size, host count)."""
    return _violations(request)


def check_placement(placement: NodePlacement) -> list[ArmError]:
    """The limitation a new node's placement breaks: hosts are registered but none has room for it."""
    return _violations(placement)


def check_drain(drain: HostDrain) -> list[ArmError]:
    """The limitation a host's drain breaks: the other hosts lack room for the nodes it would move."""
    return _violations(drain)


def check_flags(flags: SecurityFlags) -> list[ArmError]:
    """Every limitation a flag combination breaks (enable and disable of the same setting)."""
    return _violations(flags)


def raise_violations(violations: list[ArmError]) -> None:
    """Raise one ArmError listing every violation in `details` (409 when every violation is a 409, such as a
    quota or a duplicate pool; else 400); do nothing if there is none."""
    if not violations:
        return
    first = violations[0]
    message = first.message
    if len(violations) > 1:
        message = f"{len(violations)} problems with the request: " + " ".join(v.message for v in violations)
    statuses = {v.status for v in violations}
    status = statuses.pop() if len(statuses) == 1 else 400
    raise ArmError(status, first.code, message, first.target, list(violations))
