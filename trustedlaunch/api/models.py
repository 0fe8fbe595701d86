"""Request bodies shaped like the AKS REST API (camelCase property names, as ARM sends them)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from trustedlaunch.control.limits import MAX_NODE_LABELS, MAX_NODE_TAINTS
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, UndrainableNodeBehavior

# AKS's osType values: a Windows pool passes validation to meet the limits table, which refuses it with
# OSTypeNotSupported (only Linux node images boot here) along with AKS's own Windows errors
OsType = Literal["Linux", "Windows"]
# AKS's OSSKU values (control.node_images.OS_SKUS: every Linux one runs the Debian node image; the Windows
# ones belong to osType Windows, refused)
OsSku = Literal[
    "Ubuntu",
    "Ubuntu2204",
    "Ubuntu2404",
    "AzureLinux",
    "AzureLinux3",
    "CBLMariner",
    "Mariner",
    "Flatcar",
    "Windows2019",
    "Windows2022",
]
PoolType = Literal["VirtualMachineScaleSets", "AvailabilitySet", "VirtualMachines"]
# ARM's tag limits: 50 tags, names up to 512 characters, values up to 256
TagName = Annotated[str, StringConstraints(min_length=1, max_length=512)]
TagValue = Annotated[str, StringConstraints(max_length=256)]
Tags = Annotated[dict[TagName, TagValue], Field(max_length=50)]


class ArmModel(BaseModel):
    """Unknown and read-only properties (from a GET-modify-PUT) are ignored, as ARM does."""

    model_config = ConfigDict(extra="ignore")


class ErrorDetail(BaseModel):
    """An ARM error: what failed (`code`, `message`) and which property (`target`); `details` lists each
    violation when a request breaks several rules."""

    code: str
    message: str
    target: str | None = None
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The ARM error envelope every failure is answered with."""

    error: ErrorDetail


class SecurityProfile(ArmModel):
    """`properties.securityProfile` of an agent pool."""

    enableSecureBoot: bool | None = None
    enableVTPM: bool | None = None


class GpuProfile(ArmModel):
    """`properties.gpuProfile`: `driver=None` skips the GPU driver installation."""

    driver: Literal["Install", "None"] | None = None


class UpgradeSettings(ArmModel):
    """`properties.upgradeSettings`: `maxSurge` is a node count ("1") or a percentage of the pool's count
    ("33%") of extra nodes a rolling reimage creates before deleting outdated ones (checked in limits.py)."""

    maxSurge: str | None = Field(default=None, max_length=64)
    # how long a node's cordon and drain may take (checked in limits.py); AKS's default 30 when unset
    drainTimeoutInMinutes: int | None = None
    # how long an upgrade waits after a node's drain before it moves on (checked in limits.py); unset: 0
    nodeSoakDurationInMinutes: int | None = None
    # what an upgrade does with a node it cannot drain
    undrainableNodeBehavior: UndrainableNodeBehavior | None = None


class AgentPoolProperties(ArmModel):
    """`properties` of an agent pool (also the fields of a cluster's agentPoolProfiles entry)."""

    count: int | None = Field(default=None, ge=0, le=1000)
    vmSize: str | None = Field(default=None, min_length=1, max_length=64)
    osType: OsType | None = None
    osSKU: OsSku | None = None
    type: PoolType | None = None
    mode: Literal["System", "User"] | None = None
    enableFIPS: bool | None = None
    orchestratorVersion: str | None = Field(default=None, min_length=1, max_length=32)
    osDiskType: Literal["Managed", "Ephemeral"] | None = None
    osDiskSizeGB: int | None = Field(default=None, ge=30, le=2048)
    gpuProfile: GpuProfile | None = None
    securityProfile: SecurityProfile | None = None
    upgradeSettings: UpgradeSettings | None = None
    # the pool's Kubernetes Node labels and taints ("key=value:Effect") and the kubelet's maxPods; their
    # syntax, reserved prefix and range are checked in limits.py
    nodeLabels: dict[str, str] | None = Field(default=None, max_length=MAX_NODE_LABELS)
    nodeTaints: list[str] | None = Field(default=None, max_length=MAX_NODE_TAINTS)
    maxPods: int | None = Field(default=None, ge=0, le=100_000)
    tags: Tags | None = None  # the pool's ARM tags (AKS's properties.tags of an agent pool)

    def to_spec(self, name: str) -> PoolSpec:
        """The control layer's pool request."""
        security = self.securityProfile or SecurityProfile()
        return PoolSpec(
            name=name,
            count=self.count,
            vm_size=self.vmSize,
            os_type=self.osType,
            os_sku=self.osSKU,
            pool_type=self.type,
            mode=self.mode,
            enable_fips=self.enableFIPS,
            orchestrator_version=self.orchestratorVersion,
            os_disk_type=self.osDiskType,
            os_disk_size_gb=self.osDiskSizeGB,
            gpu_driver=self.gpuProfile.driver if self.gpuProfile else None,
            enable_secure_boot=security.enableSecureBoot,
            enable_vtpm=security.enableVTPM,
            max_surge=self.upgradeSettings.maxSurge if self.upgradeSettings else None,
            drain_timeout_in_minutes=(
                self.upgradeSettings.drainTimeoutInMinutes if self.upgradeSettings else None
            ),
            node_soak_duration_in_minutes=(
                self.upgradeSettings.nodeSoakDurationInMinutes if self.upgradeSettings else None
            ),
            undrainable_node_behavior=(
                self.upgradeSettings.undrainableNodeBehavior if self.upgradeSettings else None
            ),
            node_labels=self.nodeLabels,
            node_taints=self.nodeTaints,
            max_pods=self.maxPods,
            tags=self.tags,
        )


class AgentPoolBody(ArmModel):
    """PUT body of `.../agentPools/{name}`."""

    properties: AgentPoolProperties | None = None

    def to_spec(self, name: str) -> PoolSpec:
        """The control layer's pool request (no properties: all defaults)."""
        return (self.properties or AgentPoolProperties()).to_spec(name)


class AgentPoolProfile(AgentPoolProperties):
    """One entry of `properties.agentPoolProfiles` of a cluster."""

    name: str = Field(min_length=1, max_length=64)


class SshPublicKey(ArmModel):
    """An SSH public key."""

    keyData: str = Field(max_length=8192)


class SshConfiguration(ArmModel):
    """`linuxProfile.ssh`."""

    publicKeys: list[SshPublicKey] = Field(default_factory=list, max_length=1)


class LinuxProfile(ArmModel):
    """`properties.linuxProfile`."""

    adminUsername: str = "azureuser"
    ssh: SshConfiguration = Field(default_factory=SshConfiguration)


class AddonProfile(ArmModel):
    """One `properties.addonProfiles` entry (`aciConnectorLinux` = virtual nodes)."""

    enabled: bool = False


class ManagedClusterProperties(ArmModel):
    """`properties` of a managed cluster."""

    kubernetesVersion: str | None = Field(default=None, min_length=1, max_length=32)
    dnsPrefix: str | None = Field(default=None, pattern=r"^[a-zA-Z0-9][-a-zA-Z0-9]{0,52}[a-zA-Z0-9]$")
    agentPoolProfiles: list[AgentPoolProfile] = Field(default_factory=list, max_length=100)
    linuxProfile: LinuxProfile | None = None
    addonProfiles: dict[str, AddonProfile] | None = None


class TagsBody(ArmModel):
    """PATCH body of `.../managedClusters/{name}` (TagsObject): the tags that replace the cluster's."""

    tags: Tags | None = None


class ResourceGroupBody(ArmModel):
    """PUT body of `/subscriptions/{sub}/resourceGroups/{name}`."""

    location: str = Field(min_length=1, max_length=64)
    tags: Tags | None = None


class ManagedClusterBody(ArmModel):
    """PUT body of `.../managedClusters/{name}`."""

    location: str = Field(min_length=1, max_length=64)
    tags: Tags | None = None
    properties: ManagedClusterProperties | None = None

    def to_spec(self) -> ClusterSpec:
        """The control layer's cluster request."""
        props = self.properties or ManagedClusterProperties()
        keys = props.linuxProfile.ssh.publicKeys if props.linuxProfile else []
        addons = {name.lower(): addon for name, addon in (props.addonProfiles or {}).items()}
        virtual_nodes = addons["aciconnectorlinux"].enabled if "aciconnectorlinux" in addons else None
        return ClusterSpec(
            location=self.location,
            kubernetes_version=props.kubernetesVersion,
            dns_prefix=props.dnsPrefix,
            ssh_public_key=keys[0].keyData if keys else None,
            virtual_nodes=virtual_nodes,
            tags=self.tags,
            agent_pools=[profile.to_spec(profile.name) for profile in props.agentPoolProfiles],
        )
