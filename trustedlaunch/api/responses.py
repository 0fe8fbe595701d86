"""Response models: the shape of every JSON answer, for the OpenAPI document and checked on the way out.

Fields are declared in the order the views (views.py, monitoring_views.py) write them and routes serialize
with `response_model_exclude_unset=True`, so a property the view leaves out (an agent pool's gpuProfile,
an operation's error, ...) stays out and the JSON clients see is the views' JSON, byte for byte.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel

Item = TypeVar("Item")


class ArmList(BaseModel, Generic[Item]):
    """An ARM list: every item in `value`."""

    value: list[Item]


class PowerState(BaseModel):
    """`powerState`: Running or Stopped."""

    code: str


class SecurityProfileOut(BaseModel):
    """Trusted launch settings of a pool or a node."""

    enableSecureBoot: bool
    enableVTPM: bool


class UpgradeSettingsOut(BaseModel):
    """`upgradeSettings`: each setting only when set."""

    maxSurge: str | None = None
    drainTimeoutInMinutes: int | None = None
    nodeSoakDurationInMinutes: int | None = None
    undrainableNodeBehavior: str | None = None


class GpuProfileOut(BaseModel):
    """`gpuProfile` (only on pools with a GPU driver setting)."""

    driver: str


class AgentPoolPropertiesOut(BaseModel):
    """`properties` of an agent pool. `osSKU` is the one the pool was created with (every Linux osSKU runs the
    Debian node image `nodeImageVersion`, TLDebian<release>gen2[TL]containerd-<image release>)."""

    count: int
    vmSize: str
    osType: str
    osSKU: str
    type: str
    mode: str
    enableFIPS: bool
    orchestratorVersion: str
    currentOrchestratorVersion: str
    osDiskType: str
    osDiskSizeGB: int
    securityProfile: SecurityProfileOut
    nodeImageVersion: str
    upgradeSettings: UpgradeSettingsOut
    maxPods: int
    provisioningState: str
    powerState: PowerState
    gpuProfile: GpuProfileOut | None = None
    nodeLabels: dict[str, str] | None = None  # only when the pool has some, as AKS
    nodeTaints: list[str] | None = None
    tags: dict[str, str] | None = None  # only when the pool has some
    eTag: str | None = None  # on the pool resource (`GET .../agentPools/{name}`), not in agentPoolProfiles


class SystemDataOut(BaseModel):
    """`systemData`: who created the resource and who changed it last through the API (ARM's caller types:
    an API token is an Application), and when; the callers only where known."""

    createdBy: str | None = None
    createdByType: str | None = None
    createdAt: str | None
    lastModifiedBy: str | None = None
    lastModifiedByType: str | None = None
    lastModifiedAt: str | None


class _Named(BaseModel):
    name: str


class AgentPoolProfileOut(AgentPoolPropertiesOut, _Named):
    """One entry of a cluster's `agentPoolProfiles`: the pool's name, then its properties."""


class AgentPoolResource(BaseModel):
    """An agent pool."""

    id: str
    name: str
    type: str
    systemData: SystemDataOut
    properties: AgentPoolPropertiesOut


class AddonProfileOut(BaseModel):
    """An add-on's state."""

    enabled: bool


class SshPublicKeyOut(BaseModel):
    """An SSH public key."""

    keyData: str


class SshConfigurationOut(BaseModel):
    """`linuxProfile.ssh`."""

    publicKeys: list[SshPublicKeyOut]


class LinuxProfileOut(BaseModel):
    """`linuxProfile` (only on clusters with an SSH key)."""

    adminUsername: str
    ssh: SshConfigurationOut


class NetworkProfileOut(BaseModel):
    """`networkProfile`: the pods' and services' address ranges."""

    networkPlugin: str
    podCidr: str
    serviceCidr: str
    podCidrs: list[str]
    serviceCidrs: list[str]
    ipFamilies: list[str]


class UserAssignedIdentityOut(BaseModel):
    """An identity of `identityProfile` (the kubelet's, by AKS's name for it)."""

    resourceId: str
    clientId: str
    objectId: str


class OidcIssuerProfileOut(BaseModel):
    """`oidcIssuerProfile`: no OIDC issuer for workload identity here."""

    enabled: bool


class SkuOut(BaseModel):
    """`sku` of a managed cluster."""

    name: str
    tier: str


class IdentityOut(BaseModel):
    """`identity` of a managed cluster: its system-assigned identity."""

    principalId: str
    tenantId: str
    type: str


class ManagedClusterPropertiesOut(BaseModel):
    """`properties` of a managed cluster."""

    provisioningState: str
    powerState: PowerState
    maxAgentPools: int
    kubernetesVersion: str
    currentKubernetesVersion: str
    dnsPrefix: str
    fqdn: str
    nodeResourceGroup: str
    agentPoolProfiles: list[AgentPoolProfileOut]
    addonProfiles: dict[str, AddonProfileOut]
    azurePortalFQDN: str
    enableRBAC: bool
    supportPlan: str
    networkProfile: NetworkProfileOut
    identityProfile: dict[str, UserAssignedIdentityOut]
    oidcIssuerProfile: OidcIssuerProfileOut
    linuxProfile: LinuxProfileOut | None = None


class ManagedClusterResource(BaseModel):
    """A managed cluster."""

    id: str
    name: str
    type: str
    location: str
    tags: dict[str, str]
    sku: SkuOut
    identity: IdentityOut
    systemData: SystemDataOut
    properties: ManagedClusterPropertiesOut
    eTag: str


class KubernetesPatchVersionOut(BaseModel):
    """One installed patch version and the versions it may upgrade to."""

    upgrades: list[str]


class KubernetesVersionCapabilitiesOut(BaseModel):
    """The support plans of a minor version."""

    supportPlan: list[str]


class KubernetesVersionOut(BaseModel):
    """One MAJOR.MINOR version and its installed patches; `isDefault` only on the default one."""

    version: str
    capabilities: KubernetesVersionCapabilitiesOut
    isDefault: bool | None = None
    isPreview: bool
    patchVersions: dict[str, KubernetesPatchVersionOut]


class KubernetesVersionListResult(BaseModel):
    """The body of `GET .../locations/{location}/kubernetesVersions` (ARM spells the list `values`)."""

    values: list[KubernetesVersionOut]


class Kubeconfig(BaseModel):
    """One kubeconfig, base64."""

    name: str
    value: str


class CredentialResults(BaseModel):
    """The body of listClusterUserCredential / listClusterAdminCredential."""

    kubeconfigs: list[Kubeconfig]


class RepairOut(BaseModel):
    """One auto-repair step of a node."""

    time: str
    action: str
    cause: str
    outcome: str


class MachineHealthOut(BaseModel):
    """A node's liveness: Healthy or Unhealthy, why, since when, and the auto-repairs done on it."""

    state: str
    cause: str | None
    failedChecks: int
    unhealthySince: str | None
    repairs: list[RepairOut]


class MachineIpAddressOut(BaseModel):
    """One address of a machine's NIC."""

    family: str
    ip: str


class MachineNetworkOut(BaseModel):
    """`network` of a machine: its NIC's addresses (none before its VM runs)."""

    ipAddresses: list[MachineIpAddressOut]


class MachineKubernetesOut(BaseModel):
    """`kubernetes` of a machine (AKS's MachineKubernetesProfile): its Node's name, the pool's labels and
    taints on that Node, maxPods, Kubernetes version."""

    nodeName: str
    nodeLabels: dict[str, str]
    nodeTaints: list[str]
    maxPods: int
    orchestratorVersion: str
    currentOrchestratorVersion: str


class MachinePropertiesOut(BaseModel):
    """`properties` of a node (machine) of an agent pool: AKS's `network`, `resourceId`, `kubernetes` and
    `mode`, then this server's state, trusted launch settings, verdict labels and attestation."""

    network: MachineNetworkOut
    resourceId: str
    kubernetes: MachineKubernetesOut
    mode: str
    provisioningState: str
    powerState: PowerState
    health: MachineHealthOut
    nodeImageVersion: str
    securityProfile: SecurityProfileOut
    attestationStatus: str | None
    lastAttestedAt: str | None
    attestationRequestedAt: str | None
    labels: dict[str, str]
    message: str


class MachineResource(BaseModel):
    """A node (machine) of an agent pool."""

    id: str
    name: str
    type: str
    properties: MachinePropertiesOut


class OperationPropertiesOut(BaseModel):
    """What an operation works on."""

    resourceId: str
    kind: str
    note: str


class OperationStatusResult(BaseModel):
    """The Azure-AsyncOperation status body; `error` only when the operation failed."""

    id: str
    name: str
    status: str
    startTime: str | None
    endTime: str | None
    properties: OperationPropertiesOut
    error: dict[str, Any] | None = None


class FeatureProperties(BaseModel):
    """A feature's registration state."""

    state: str


class FeatureResult(BaseModel):
    """A preview feature."""

    id: str
    name: str
    type: str
    properties: FeatureProperties


class ProviderResult(BaseModel):
    """A resource provider's registration."""

    id: str
    namespace: str
    registrationState: str


class SkippedMachine(BaseModel):
    """A node an attestation request left out (not Ready)."""

    name: str
    provisioningState: str


class AttestationRequestResult(BaseModel):
    """The 202 body of `POST .../agentPools/{pool}/attest`."""

    id: str
    requestedAt: str | None
    machines: list[str]
    skipped: list[SkippedMachine]


class AttestationEvidenceOut(BaseModel):
    """The raw evidence of an attestation: nonce hex, the rest base64 (null when the node sent none)."""

    nonce: str | None
    akPublic: str | None
    quote: str | None
    signature: str | None
    eventLog: str | None


class AttestationPropertiesOut(BaseModel):
    """`properties` of an attestation; pcrs, evidence and token only when one attestation is read."""

    machineName: str
    time: str | None
    trigger: str
    passed: bool
    status: str
    secureBoot: bool | None
    durationMs: float
    findings: list[dict[str, Any]]
    tokenIssued: bool
    pcrs: dict[str, dict[str, str]] | None = None
    evidence: AttestationEvidenceOut | None = None
    token: str | None = None


class AttestationResource(BaseModel):
    """One attestation of a machine."""

    id: str
    name: str
    type: str
    properties: AttestationPropertiesOut


class AttestationTokenResult(BaseModel):
    """A machine's current attestation token and the attestation it came from."""

    token: str
    attestationId: str
    attestedAt: str | None
    expiresOn: int | None


class AlertResource(BaseModel):
    """An integrity alert, shaped like a Defender for Cloud alert (`properties` as Defender writes it, with
    status, resolvedTimeUtc and the webhook delivery in extendedProperties)."""

    id: str
    name: str
    type: str | None = None
    properties: dict[str, Any]


class WebhookPropertiesOut(BaseModel):
    """The alert webhook's URL and creation time."""

    url: str
    createdAt: str | None


class WebhookResource(BaseModel):
    """The subscription's alert webhook."""

    id: str
    name: str
    type: str
    properties: WebhookPropertiesOut


class TokenProperties(BaseModel):
    """A token's scope (null: admin) and creation time; its plaintext only in the response creating it."""

    scope: str | None
    createdAt: str
    token: str | None = None


class TokenResource(BaseModel):
    """An API token (never its digest)."""

    id: str
    name: str
    type: str
    properties: TokenProperties


class ResourceGroupPropertiesOut(BaseModel):
    """`properties` of a resource group."""

    provisioningState: str


class ResourceGroupResource(BaseModel):
    """A resource group (`Microsoft.Resources/resourceGroups`)."""

    id: str
    name: str
    type: str
    location: str
    tags: dict[str, str]
    properties: ResourceGroupPropertiesOut


class AgentPoolUpgradeProfileUpgrade(BaseModel):
    """A Kubernetes version the pool may be upgraded to."""

    kubernetesVersion: str
    isPreview: bool


class UpgradeComponent(BaseModel):
    """A component of an offered version: for a node image, one of the Debian packages of its boot chain."""

    name: str
    version: str


class ComponentsByRelease(BaseModel):
    """The components a node of a Kubernetes version (major.minor) gets on the latest node image version."""

    kubernetesVersion: str
    components: list[UpgradeComponent]


class AgentPoolUpgradeProfileProperties(BaseModel):
    """The pool's Kubernetes version, OS type, the versions it may move to, its latest node image and the
    packages that image is built from per Kubernetes version (`componentsByReleases`)."""

    kubernetesVersion: str
    osType: str
    upgrades: list[AgentPoolUpgradeProfileUpgrade]
    latestNodeImageVersion: str
    componentsByReleases: list[ComponentsByRelease]


class AgentPoolUpgradeProfile(BaseModel):
    """AKS's AgentPoolUpgradeProfile."""

    id: str
    name: str
    type: str
    properties: AgentPoolUpgradeProfileProperties
