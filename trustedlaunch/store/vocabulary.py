"""The values the control plane writes to status columns and ARM documents, spelled once: long-running
operation statuses, resource provisioning states, node attestation statuses, and integrity alert states
and severities (Defender for Cloud's words). Plain `StrEnum`s: a member compares equal to, and is stored
as, its string."""

from __future__ import annotations

from enum import StrEnum


class OperationStatus(StrEnum):
    """A long-running operation's status (`Operation.status`, the Azure-AsyncOperation document)."""

    IN_PROGRESS = "InProgress"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


TERMINAL_OPERATION_STATUSES = (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELED)


class ProvisioningState(StrEnum):
    """A cluster's or agent pool's `provisioningState`: in flight while an operation runs, then the
    operation's terminal status."""

    CREATING = "Creating"
    UPDATING = "Updating"
    UPGRADING_NODE_IMAGE_VERSION = "UpgradingNodeImageVersion"  # AKS's, while a node image upgrade runs
    DELETING = "Deleting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELED = "Canceled"


class HostState(StrEnum):
    """A node host's state (`NodeHost.state`): Ready while its libvirt daemon answers; Lost once it has not
    answered for several checks in a row (its nodes are then lost and made again on other hosts)."""

    READY = "Ready"
    LOST = "Lost"


class UndrainableNodeBehavior(StrEnum):
    """upgradeSettings.undrainableNodeBehavior: what an upgrade does with a node it could not drain (AKS's
    values; unset: Schedule)."""

    CORDON = (
        "Cordon"  # kept cordoned, labelled Quarantined; a surge node takes its place, the upgrade goes on
    )
    SCHEDULE = "Schedule"  # made schedulable again, not upgraded; the operation fails


class AlertStatus(StrEnum):
    """Defender for Cloud alert states: Active, InProgress (acknowledged by an operator), Resolved."""

    ACTIVE = "Active"
    IN_PROGRESS = "InProgress"
    RESOLVED = "Resolved"


OPEN_ALERT_STATUSES = (AlertStatus.ACTIVE, AlertStatus.IN_PROGRESS)  # not resolved yet


class AlertType(StrEnum):
    """What an integrity alert is about (its Defender `alertType`): one open alert per node and type."""

    ATTESTATION_FAILURE = "VM_AttestationFailure"  # the node's evidence failed the policy
    NODE_UNREACHABLE = "VM_AttestationUnreachable"  # the node's agent gave no evidence at all
    NODE_UNHEALTHY = "VM_NodeUnhealthy"  # the node's VM is gone or paused, or its agent stopped answering
    BOOT_INTEGRITY = "VM_BootIntegrityFailure"  # a boot stage refused the next one, or dm-verity a read
    HOST_LOST = "Host_Lost"  # a hypervisor host with nodes stopped answering (its nodes are made elsewhere)


class AlertSeverity(StrEnum):
    """Defender for Cloud alert severities, most severe first."""

    HIGH = "High"
    MEDIUM = "Medium"
    LOW = "Low"


class AttestationStatus(StrEnum):
    """A node's attestation status (`Node.attestation_status`, an attestation record's `status`, the
    `kubernetes.azure.com/attestation-status` label)."""

    ATTESTED = "Attested"
    ATTESTATION_FAILED = "AttestationFailed"
    UNREACHABLE = "Unreachable"  # a record whose node's agent did not answer (no evidence)
    NOT_APPLICABLE = "NotApplicable"  # no vTPM: nothing to attest
