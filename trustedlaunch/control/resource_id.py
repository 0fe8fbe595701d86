"""ARM resource ids: parsed, built and compared in one place.

An id is `/subscriptions/{sub}[/resourceGroups/{group}][/providers/{namespace}[/{type}/{name}]...]`. ARM
compares ids case-insensitively: `ResourceId`s are equal when their canonical forms are equal ignoring
case, and `canonical` is the form the store keeps (subscription, `resourcegroups`, group and names
lowercase; namespace and types as spelled, e.g. `.../providers/Microsoft.ContainerService/managedClusters/k`).
`ResourceId.of` is the id of a stored cluster, pool or machine as ARM answers it: its resource group and
cluster spelled as they were created (ARM keeps the casing given at creation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from trustedlaunch.store.models import AgentPool, ManagedCluster, Node

CONTAINER_SERVICE = "Microsoft.ContainerService"
MANAGED_CLUSTERS = "managedClusters"
AGENT_POOLS = "agentPools"
MACHINES = "machines"


def stored_name(name: str) -> str:
    """The stored form of a subscription id, resource group or resource name: ARM compares them ignoring
    case, so the store keeps and looks them up lowercase."""
    return name.lower()


def _verbatim(name: str) -> str:
    return name


def path_within(path: str, prefix: str) -> bool:
    """Whether the ARM path `path` is `prefix` or lies below it, ignoring case; a path with a '.' or '..'
    segment lies nowhere (it could climb out of the prefix)."""
    lowered = path.lower()
    if any(segment in (".", "..") for segment in lowered.split("/")):
        return False
    prefix = prefix.lower()
    return lowered == prefix or lowered.startswith(prefix + "/")


@dataclass(frozen=True, eq=False)
class ResourceId:
    """An ARM resource id, spelled as given; compare with `==` (case-insensitive) or `encloses`."""

    subscription_id: str
    resource_group: str | None = None
    namespace: str | None = None
    resources: tuple[tuple[str, str], ...] = ()  # (type, name) pairs below the namespace

    @classmethod
    def parse(cls, text: str) -> ResourceId | None:
        """The id `text` spells (segments in any case), or None when it is not an id's shape. Names are
        not checked against the ARM name rules (control.limits): that is the caller's job."""
        parts = text.split("/")
        if len(parts) < 3 or parts[0] != "" or parts[1].lower() != "subscriptions" or "" in parts[2:]:
            return None
        subscription, rest = parts[2], parts[3:]
        group = None
        if rest[:1] and rest[0].lower() == "resourcegroups":
            if len(rest) < 2:
                return None
            group, rest = rest[1], rest[2:]
        if not rest:
            return cls(subscription, group)
        if rest[0].lower() != "providers" or len(rest) < 2 or len(rest) % 2:
            return None
        pairs = tuple((rest[index], rest[index + 1]) for index in range(2, len(rest), 2))
        return cls(subscription, group, rest[1], pairs)

    @classmethod
    def cluster(cls, subscription_id: str, resource_group: str, name: str) -> ResourceId:
        """The id of a managed cluster."""
        return cls(subscription_id, resource_group, CONTAINER_SERVICE, ((MANAGED_CLUSTERS, name),))

    @classmethod
    def of(cls, resource: ManagedCluster | AgentPool | Node) -> ResourceId:
        """The id of a stored cluster, pool or machine (node) as ARM answers it: the resource group and the
        cluster as their creators spelled them (the stored, lowercase group once the group is gone)."""
        if isinstance(resource, Node):
            return cls.of(resource.pool).child(MACHINES, resource.name)
        if isinstance(resource, AgentPool):
            return cls.of(resource.cluster).child(AGENT_POOLS, resource.name)
        group = resource.resource_group if resource.group is None else resource.group.display_name
        return cls.cluster(resource.subscription_id, group, resource.display_name)

    def provider(self, namespace: str) -> ResourceId:
        """The id of the resource provider `namespace` in this subscription or resource group."""
        return replace(self, namespace=namespace, resources=())

    def child(self, resource_type: str, name: str) -> ResourceId:
        """The id of the resource `name` of type `resource_type` inside this one (e.g. a cluster's pool)."""
        return ResourceId(
            self.subscription_id,
            self.resource_group,
            self.namespace,
            (*self.resources, (resource_type, name)),
        )

    def names(self, namespace: str, *resource_types: str) -> tuple[str, ...] | None:
        """The names in this id when it is a resource of `namespace` with exactly these nested types (any
        case), e.g. `names(CONTAINER_SERVICE, MANAGED_CLUSTERS, AGENT_POOLS)` is (cluster, pool) for a pool's
        id; None when it is another kind of id."""
        types = tuple(kind.lower() for kind, _ in self.resources)
        if not self.in_namespace(namespace) or types != tuple(kind.lower() for kind in resource_types):
            return None
        return tuple(name for _, name in self.resources)

    def in_namespace(self, namespace: str) -> bool:
        """Whether the id's provider namespace is `namespace` (any case)."""
        return self.namespace is not None and self.namespace.lower() == namespace.lower()

    def path(self, quote: Callable[[str], str] = _verbatim) -> str:
        """The id as ARM spells it (`resourceGroups`), the namespace and each name passed through `quote`
        (the CLI quotes them as one path segment each)."""
        text = f"/subscriptions/{quote(self.subscription_id)}"
        if self.resource_group is not None:
            text += f"/resourceGroups/{quote(self.resource_group)}"
        if self.namespace is not None:
            text += f"/providers/{quote(self.namespace)}"
        return text + "".join(f"/{kind}/{quote(name)}" for kind, name in self.resources)

    @property
    def canonical(self) -> str:
        """The stored form: subscription, `resourcegroups`, group and names lowercase."""
        text = f"/subscriptions/{stored_name(self.subscription_id)}"
        if self.resource_group is not None:
            text += f"/resourcegroups/{stored_name(self.resource_group)}"
        if self.namespace is not None:
            text += f"/providers/{self.namespace}"
        return text + "".join(f"/{kind}/{stored_name(name)}" for kind, name in self.resources)

    def encloses(self, path: str) -> bool:
        """Whether the ARM path or id `path` (any case) is this resource or lies inside it."""
        return path_within(path, self.canonical)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceId) and self.canonical.lower() == other.canonical.lower()

    def __hash__(self) -> int:
        return hash(self.canonical.lower())
