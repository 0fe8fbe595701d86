"""SQLAlchemy 2 models of the control plane. Subscriptions are implicit (path parts)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from trustedlaunch.store.vocabulary import AlertStatus, AlertType, HostState, ProvisioningState


def utc_now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp column that always hands back an aware UTC datetime: SQLite keeps no zone (its values
    are written as UTC here) and PostgreSQL answers in the session's time zone. A naive value written is
    taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """`value` in UTC (naive: already UTC)."""
        return None if value is None else _in_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        """The stored value as an aware UTC datetime."""
        return None if value is None else _in_utc(value)


def _in_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of every table."""


def new_uuid() -> str:
    """A random UUID as ARM writes ids (lowercase, hyphenated)."""
    return str(uuid.uuid4())


class Installation(Base):
    """This installation's one row: the tenant id its identities report when TL_TENANT_ID is not set
    (made once, by migration 0022)."""

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(36))


class ResourceGroup(Base):
    """A resource group (`Microsoft.Resources/resourceGroups`), which holds managed clusters."""

    __tablename__ = "resource_groups"

    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(90), primary_key=True)  # stored lowercase
    display_name: Mapped[str] = mapped_column(String(90))  # as the caller spelled it
    location: Mapped[str] = mapped_column(String(64))
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    # Succeeded, or Deleting until the last of its clusters is deleted (ARM keeps a group being deleted)
    provisioning_state: Mapped[str] = mapped_column(
        String(16), default=ProvisioningState.SUCCEEDED, server_default=ProvisioningState.SUCCEEDED.value
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class ManagedCluster(Base):
    """A managed cluster (`Microsoft.ContainerService/managedClusters`)."""

    __tablename__ = "managed_clusters"
    __table_args__ = (UniqueConstraint("subscription_id", "resource_group", "name", name="uq_cluster_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(36), index=True)
    resource_group: Mapped[str] = mapped_column(
        String(90)
    )  # stored lowercase: ARM names are case-insensitive
    name: Mapped[str] = mapped_column(String(63))  # stored lowercase
    display_name: Mapped[str] = mapped_column(String(63))  # as the caller spelled it
    location: Mapped[str] = mapped_column(String(64))
    kubernetes_version: Mapped[str] = mapped_column(String(32))
    dns_prefix: Mapped[str] = mapped_column(String(54))
    fqdn: Mapped[str] = mapped_column(String(255))
    ssh_public_key: Mapped[str | None] = mapped_column(String(8192), nullable=True)
    virtual_nodes_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    kube_token: Mapped[str] = mapped_column(String(128))
    provisioning_state: Mapped[str] = mapped_column(String(32))
    power_state: Mapped[str] = mapped_column(String(16), default="Running")
    # the system-assigned identity (`identity`) and the kubelet identity (`identityProfile.kubeletidentity`):
    # random ids made at creation and kept; the tenant id the installation's when the cluster was created
    # (nullable columns, as migration 0022 added them, and always set: it filled the clusters before it)
    identity_principal_id: Mapped[str | None] = mapped_column(String(36), nullable=True, default=new_uuid)
    identity_tenant_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    kubelet_client_id: Mapped[str | None] = mapped_column(String(36), nullable=True, default=new_uuid)
    kubelet_object_id: Mapped[str | None] = mapped_column(String(36), nullable=True, default=new_uuid)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # systemData: who created and last changed the resource through the API (the authenticated caller) and
    # when; None for resources from before migration 0022 (their creator is unknown)
    created_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_by_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_modified_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_modified_by_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_modified_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, default=utc_now)

    agent_pools: Mapped[list[AgentPool]] = relationship(
        back_populates="cluster", cascade="all, delete-orphan", order_by="AgentPool.id"
    )
    # its resource group (by subscription and stored name; None once the group is deleted while the cluster
    # is still being deleted, or for a cluster made without the API): ids spell the group as it was created
    group: Mapped[ResourceGroup | None] = relationship(
        primaryjoin="and_(ManagedCluster.subscription_id == foreign(ResourceGroup.subscription_id), "
        "ManagedCluster.resource_group == foreign(ResourceGroup.name))",
        viewonly=True,
        uselist=False,
    )
    control_plane: Mapped[ClusterControlPlane | None] = relationship(
        back_populates="cluster", cascade="all, delete-orphan"
    )


class ClusterControlPlane(Base):
    """The hosted Kubernetes control plane of a managed cluster (control/cluster_planes.py): where its data
    lives (PKI, etcd, logs), the loopback ports of its processes and its phase. Recorded before any of
    its processes starts (write-ahead), so the next reconciler finds, adopts or removes them."""

    __tablename__ = "cluster_control_planes"

    cluster_id: Mapped[int] = mapped_column(
        ForeignKey("managed_clusters.id", ondelete="CASCADE"), primary_key=True
    )
    data_dir: Mapped[str] = mapped_column(String(1024), unique=True)
    phase: Mapped[str] = mapped_column(String(16))  # ControlPlanePhase
    apiserver_port: Mapped[int] = mapped_column(Integer)
    etcd_client_port: Mapped[int] = mapped_column(Integer)
    etcd_peer_port: Mapped[int] = mapped_column(Integer)
    controller_manager_port: Mapped[int] = mapped_column(Integer)
    scheduler_port: Mapped[int] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(String(4000), default="")
    ready_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # create to /readyz
    server_version: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its /version
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)

    cluster: Mapped[ManagedCluster] = relationship(back_populates="control_plane")


class NodeImage(Base):
    """A node image version and whether it can boot trusted launch (Secure Boot + vTPM) VMs."""

    __tablename__ = "node_images"

    version: Mapped[str] = mapped_column(String(128), primary_key=True)
    os_type: Mapped[str] = mapped_column(String(16))
    os_sku: Mapped[str] = mapped_column(String(32))
    hyper_v_generation: Mapped[str] = mapped_column(String(4))
    architecture: Mapped[str] = mapped_column(String(8))
    trusted_launch_capable: Mapped[bool] = mapped_column(Boolean)
    fips: Mapped[bool] = mapped_column(Boolean, default=False)
    # What a Linux version is built from (control.node_image_versions.ImageBuild as JSON: its boot chain's
    # Debian packages, the Kubernetes and runtime releases); None for the Windows names.
    build_record: Mapped[str | None] = mapped_column(Text, nullable=True)


class ImagePolicy(Base):
    """The attestation policy of a node image booted with Secure Boot on or off, as the reconciler derived
    it (trustedlaunch.attest.derivation.policy_for_image): what the verifier API checks a pool's nodes against
    when a caller names the pool (`poolId`)."""

    __tablename__ = "image_policies"

    node_image_version: Mapped[str] = mapped_column(ForeignKey("node_images.version"), primary_key=True)
    secure_boot: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    policy: Mapped[str] = mapped_column(Text)  # Policy.to_json()
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class AgentPool(Base):
    """An agent (node) pool of a managed cluster: the desired state the reconciler drives nodes to."""

    __tablename__ = "agent_pools"
    __table_args__ = (UniqueConstraint("cluster_id", "name", name="uq_pool_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("managed_clusters.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(12))
    mode: Mapped[str] = mapped_column(String(8))
    count: Mapped[int] = mapped_column(Integer)
    vm_size: Mapped[str] = mapped_column(String(64))
    os_type: Mapped[str] = mapped_column(String(16))
    os_sku: Mapped[str] = mapped_column(String(32))
    pool_type: Mapped[str] = mapped_column(String(32))
    enable_fips: Mapped[bool] = mapped_column(Boolean, default=False)
    orchestrator_version: Mapped[str] = mapped_column(String(32))
    os_disk_type: Mapped[str] = mapped_column(String(16))
    os_disk_size_gb: Mapped[int] = mapped_column(Integer)
    gpu_driver: Mapped[str | None] = mapped_column(String(16), nullable=True)
    enable_secure_boot: Mapped[bool] = mapped_column(Boolean, default=False)
    enable_vtpm: Mapped[bool] = mapped_column(Boolean, default=False)
    node_image_version: Mapped[str] = mapped_column(ForeignKey("node_images.version"))
    provisioning_state: Mapped[str] = mapped_column(String(32))
    power_state: Mapped[str] = mapped_column(String(16), default="Running")
    # upgradeSettings.maxSurge as az takes it: a node count ("1") or a percentage of count ("33%");
    # None: reimage in place, one node at a time.
    max_surge: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # upgradeSettings.drainTimeoutInMinutes: how long a node's drain may take; None: AKS's default (30).
    drain_timeout_in_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # upgradeSettings.nodeSoakDurationInMinutes: how long an upgrade waits after a node's drain before it
    # reimages or deletes that node and moves on; None: AKS's default (0).
    node_soak_duration_in_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # upgradeSettings.undrainableNodeBehavior (vocabulary.UndrainableNodeBehavior); None: Schedule.
    undrainable_node_behavior: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # nodeLabels ({key: value}) and nodeTaints (["key=value:Effect"]) the pool's Kubernetes Nodes carry, and
    # maxPods (the kubelet's, set at the join); None: none / AKS's default (control.limits.DEFAULT_MAX_PODS).
    node_labels: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    node_taints: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    max_pods: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # properties.tags of the pool (ARM tags: no effect on its nodes); None for pools from before 0022
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # systemData: who created and last changed the resource through the API (the authenticated caller) and
    # when; None for resources from before migration 0022 (their creator is unknown)
    created_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_by_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_modified_by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_modified_by_type: Mapped[str | None] = mapped_column(String(256), nullable=True)
    last_modified_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, default=utc_now)

    cluster: Mapped[ManagedCluster] = relationship(back_populates="agent_pools")
    nodes: Mapped[list[Node]] = relationship(
        back_populates="pool", cascade="all, delete-orphan", order_by="Node.ordinal"
    )


class NodeHost(Base):
    """A hypervisor host that runs node VMs through libvirt (registered by an administrator). Nodes with no
    host run on the control plane's own machine under the direct QEMU driver."""

    __tablename__ = "node_hosts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)  # lowercase DNS label
    uri: Mapped[str] = mapped_column(String(512))  # libvirt connection URI (qemu+tls://, qemu+ssh://, ...)
    # What node VMs may take of the host (memory in MiB, vCPUs): placement counts the nodes placed on it.
    memory_mib: Mapped[int] = mapped_column(Integer)
    vcpus: Mapped[int] = mapped_column(Integer)
    # PEM of the CA that issues the EK certificates of the vTPMs this host's libvirt creates (its
    # swtpm_setup.conf): the verifier accepts only this CA for a node this host made. None: the host's vTPMs
    # are started by the control plane with the platform EK CA.
    ek_ca_certificate: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(
        String(16), default=HostState.READY, server_default=HostState.READY.value
    )
    state_cause: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # why Lost
    failed_checks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # cordoned (`tl host cordon`/`drain`): placement puts no new node VM here; the nodes on it stay
    cordoned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    nodes: Mapped[list[Node]] = relationship(back_populates="host")


class Node(Base):
    """One VM of a pool as last observed by the reconciler (rows are written by the reconciler)."""

    __tablename__ = "nodes"
    __table_args__ = (UniqueConstraint("pool_id", "ordinal", name="uq_node_ordinal"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("agent_pools.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    node_image_version: Mapped[str] = mapped_column(ForeignKey("node_images.version"))
    # the pool's settings when the node was made (column names from before they were spelled as the pool's)
    enable_secure_boot: Mapped[bool] = mapped_column("secure_boot_enabled", Boolean, default=False)
    enable_vtpm: Mapped[bool] = mapped_column("vtpm_enabled", Boolean, default=False)
    state: Mapped[str] = mapped_column(String(32))
    attestation_status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # The VM's run directory (also the marker on its qemu/swtpm command lines), written before the VM is
    # started, so that a restarted reconciler finds its processes (and, with `handle`, its VM).
    run_dir: Mapped[str | None] = mapped_column(String(512), nullable=True)
    attestation_state: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)  # NodeState
    # Hex TPM name of the AK the platform enrolled for this node's vTPM (EK certificate from the platform EK
    # CA + credential activation); None before enrollment and from a reimage on (a new vTPM, a new AK). The
    # verifier API issues tokens only for evidence signed by such an AK.
    enrolled_ak_name: Mapped[str | None] = mapped_column(String(132), nullable=True, index=True)
    message: Mapped[str] = mapped_column(String(4096), default="", server_default="")  # progress/diagnosis
    last_attested_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Set by `tl aks nodepool attest` (on-demand re-attestation), cleared by the reconciler once done.
    attestation_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # Liveness (control.node_health): checks failed in a row, the latest failure, since when the node is
    # Unhealthy, and the auto-repairs done on it ({"time", "action", "cause", "outcome"}, newest last).
    failed_checks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    health_cause: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    unhealthy_since: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    repairs: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list, server_default="[]")
    # The host loopback port forwarded to the node's kubelet (control.node_join), recorded before its VM
    # starts; None for a node that does not join a hosted control plane.
    kubelet_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The policy (JSON document) the node's VM was provisioned against: predicted from the image build it
    # booted. Its re-attestations use it, so a later build of its image version (another agent, kubelet or
    # operator images) changes no running node's verdict; None for nodes an older release provisioned.
    attestation_policy: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Why the reconciler reimages this node although it has its pool's settings (its agent, an older
    # image's initramfs, cannot renew its kubelet credentials): it is outdated until reimaged (None then).
    reimage_reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    # The upgrade operation that could not drain this node and quarantined it (undrainableNodeBehavior
    # Cordon: cordoned, labelled upgrade-status=Quarantined, a surge node in its place); that operation
    # leaves it as it is, a later one drains it again. None: not quarantined.
    quarantined_by_operation: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # The pool's nodeLabels and nodeTaints the control plane last set on this node's Kubernetes Node
    # (control.node_join): a pool update removes those the pool no longer has. None: none set yet.
    applied_node_labels: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    applied_node_taints: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # An upgrade drained this node and soaks it (upgradeSettings.nodeSoakDurationInMinutes) until then: the
    # reconciler checks the deadline on each pass (nothing waits meanwhile) and a restarted one resumes the
    # soak of the same operation. None: not soaking.
    soak_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    soaked_by_operation: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # The node driver that runs its VM ("qemu": direct, on this machine; "libvirt": on `host`) and the
    # driver's handle that finds the VM again after a control-plane restart (QEMU's pid for the direct
    # driver, the domain UUID for libvirt); the handle is None before its VM starts.
    driver: Mapped[str] = mapped_column(String(16), default="qemu", server_default="qemu")
    host_id: Mapped[int | None] = mapped_column(ForeignKey("node_hosts.id"), nullable=True, index=True)
    handle: Mapped[str | None] = mapped_column(String(64), nullable=True)

    pool: Mapped[AgentPool] = relationship(back_populates="nodes")
    host: Mapped[NodeHost | None] = relationship(back_populates="nodes")


OPERATION_NOTE_LENGTH = 512


class Operation(Base):
    """A long-running operation (PUT/DELETE) as reported by the Azure-AsyncOperation endpoint."""

    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(36), index=True)
    location: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str] = mapped_column(String(512), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # Create | Update | Delete
    status: Mapped[str] = mapped_column(String(16))  # store.vocabulary.OperationStatus
    note: Mapped[str] = mapped_column(String(OPERATION_NOTE_LENGTH), default="")
    error: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)
    start_time: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # A Delete's ignore-pod-disruption-budget=true: its drains delete the pods instead of evicting them.
    ignore_pod_disruption_budget: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    @validates("note")
    def _bounded_note(self, _key: str, note: str) -> str:
        """A progress note longer than its column (a reason or pod name given by a node, a PDB's message)
        is cut to fit: PostgreSQL refuses a longer value where SQLite would keep it."""
        return note[:OPERATION_NOTE_LENGTH]


class FeatureRegistration(Base):
    """A preview feature's registration state in a subscription (`az feature register`)."""

    __tablename__ = "feature_registrations"

    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))  # NotRegistered | Registering | Registered
    requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    registered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ProviderRegistration(Base):
    """A resource provider's registration in a subscription (`az provider register`)."""

    __tablename__ = "provider_registrations"

    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    registered_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApiToken(Base):
    """A bearer token for the REST API, stored as its SHA-256 digest only."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    # ARM scope the token may act on, lowercase: None = every subscription (admin), else
    # "/subscriptions/{id}" or "/subscriptions/{id}/resourcegroups/{name}".
    scope: Mapped[str | None] = mapped_column(String(256), nullable=True)


class AttestationRecord(Base):
    """One attestation of a node (at provisioning, on the interval or on demand) with its full evidence.

    Rows outlive the node (no foreign key to nodes): the history of a deleted or reimaged node stays
    readable. Evidence fields are None when the node answered nothing usable (transport error).
    """

    __tablename__ = "attestations"
    # a node's latest attestation at a time: one index seek (the dashboard's fleet chart)
    __table_args__ = (Index("ix_attestations_node_time", "pool_id", "node_name", "time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("agent_pools.id", ondelete="CASCADE"), index=True)
    node_name: Mapped[str] = mapped_column(String(128), index=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, index=True)
    trigger: Mapped[str] = mapped_column(String(16))  # Provisioning | Interval | OnDemand
    ok: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(32))  # Attested | AttestationFailed | Unreachable
    findings: Mapped[list[dict[str, object]]] = mapped_column(JSON, default=list)  # Finding.to_dict()
    secure_boot: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # as the event log says
    pcrs: Mapped[dict[str, dict[str, str]] | None] = mapped_column(JSON, nullable=True)  # bank->index->hex
    nonce: Mapped[str | None] = mapped_column(String(128), nullable=True)  # hex
    ak_public: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # TPM2B_PUBLIC
    quote: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # TPMS_ATTEST
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # TPMT_SIGNATURE
    event_log: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    token: Mapped[str | None] = mapped_column(Text, nullable=True)  # attestation JWT issued when ok


class AlertRecord(Base):
    """An integrity alert (trustedlaunch.attest.alerts.Alert) and the state of its webhook delivery. One
    open (Active or InProgress) alert per node and type: a repeat raises `count` and `last_seen`."""

    __tablename__ = "alerts"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # Alert.id
    attestation_id: Mapped[int | None] = mapped_column(
        ForeignKey("attestations.id", ondelete="SET NULL"), nullable=True
    )
    subscription_id: Mapped[str] = mapped_column(String(36), index=True)
    resource_group: Mapped[str] = mapped_column(String(90))  # lowercase
    cluster_name: Mapped[str] = mapped_column(String(63))  # lowercase
    pool_name: Mapped[str] = mapped_column(String(12))
    node_name: Mapped[str] = mapped_column(String(128), index=True)
    severity: Mapped[str] = mapped_column(String(8))  # store.vocabulary.AlertSeverity
    status: Mapped[str] = mapped_column(String(16), default=AlertStatus.ACTIVE)  # AlertStatus
    alert_type: Mapped[str] = mapped_column(String(64), default=AlertType.ATTESTATION_FAILURE)  # AlertType
    time: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now, index=True)  # first seen
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    count: Mapped[int] = mapped_column(Integer, default=1)  # failed attestations this alert stands for
    acknowledged_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    document: Mapped[dict[str, object]] = mapped_column(JSON)  # Alert.to_dict()
    delivery_state: Mapped[str] = mapped_column(String(16), default="Pending")  # Pending|Delivered|Failed
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivery_error: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class AlertWebhook(Base):
    """Where a subscription's integrity alerts are POSTed (one URL per subscription)."""

    __tablename__ = "alert_webhooks"

    subscription_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)


class UiSession(Base):
    """A dashboard sign-in, shared by every API worker process: the SHA-256 of its random session id (the
    browser's cookie holds the id itself), the API token it was opened with (revoking the token ends it)
    and when it ends. Signing out deletes the row."""

    __tablename__ = "ui_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utc_now)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
