"""The one label table: the Kubernetes node labels, taint and annotation this control plane sets, under
the keys the AKS documentation names (`kubernetes.azure.com/...`, so the documented nodeSelectors match).

The attestation verdict owns LABEL_TRUSTED_LAUNCH, LABEL_SECURE_BOOT, LABEL_ATTESTATION, the
QUARANTINE_TAINT key and the QUARANTINE_ANNOTATION and QUARANTINE_CORDON_ANNOTATION on a Node (VERDICT_KEYS):
the Kubernetes adapter adds and removes those and never touches any other key, so labels kubelet or an
operator set (agentpool among them) stay as they are. Keys under LEGACY_PREFIX (what earlier releases
wrote) are only ever removed. The labels that follow from the node's row and pool (POOL_LABEL_KEYS: pool,
mode, node image version, OS SKU, instance type, OS) are set at the join and brought back to the row when
they differ (a Node joined under a name an earlier release gave its image keeps it otherwise).
"""

from __future__ import annotations

from trustedlaunch.store.vocabulary import AttestationStatus

AKS_PREFIX = "kubernetes.azure.com/"
LABEL_AGENT_POOL = f"{AKS_PREFIX}agentpool"
LABEL_TRUSTED_LAUNCH = f"{AKS_PREFIX}trusted-launch"
LABEL_SECURE_BOOT = f"{AKS_PREFIX}secure-boot"
LABEL_ATTESTATION = f"{AKS_PREFIX}attestation-status"
LABEL_MODE = f"{AKS_PREFIX}mode"
LABEL_NODE_IMAGE_VERSION = f"{AKS_PREFIX}node-image-version"
LABEL_OS_SKU = f"{AKS_PREFIX}os-sku"
LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
LABEL_OS = "kubernetes.io/os"
# An upgrade that could not drain a node labels it so (undrainableNodeBehavior Cordon, as AKS does); the
# drain (control.node_drain) owns this key, the attestation verdict never touches it.
LABEL_UPGRADE_STATUS = f"{AKS_PREFIX}upgrade-status"
UPGRADE_QUARANTINED = "Quarantined"
QUARANTINE_TAINT_KEY = f"{AKS_PREFIX}attestation-failed"
QUARANTINE_ANNOTATION = f"{AKS_PREFIX}quarantine-reason"
# Whether the quarantine itself cordoned the node ("true"), or found it cordoned already ("false": by a drain,
# an upgrade's hold or an operator): a passing attestation uncordons the node only in the first case.
QUARANTINE_CORDON_ANNOTATION = f"{AKS_PREFIX}quarantine-cordoned"
# The labels a passed attestation gives a node in Kubernetes (a failed one takes them away).
VERDICT_LABELS = (LABEL_TRUSTED_LAUNCH, LABEL_SECURE_BOOT, LABEL_ATTESTATION)
VERDICT_KEYS = frozenset(
    {*VERDICT_LABELS, QUARANTINE_TAINT_KEY, QUARANTINE_ANNOTATION, QUARANTINE_CORDON_ANNOTATION}
)
# Where releases before the AKS keys wrote the same labels, taint and annotation: the adapter removes them.
LEGACY_PREFIX = "trustedlaunch.io/"
LEGACY_QUARANTINE_ANNOTATION = f"{LEGACY_PREFIX}quarantine-reason"


def node_labels(
    pool_name: str, secure_boot: bool, vtpm: bool, attestation_status: str, *, healthy: bool = True
) -> dict[str, str]:
    """The labels of a node: agent pool, attestation status, and the trusted launch features that are on
    (a feature that is off has no label, as AKS). A node that failed attestation, or is not `healthy`
    (control.node_health), has none of the latter."""
    labels = {LABEL_AGENT_POOL: pool_name, LABEL_ATTESTATION: attestation_status}
    if attestation_status == AttestationStatus.ATTESTATION_FAILED or not healthy:
        return labels
    if vtpm:
        labels[LABEL_TRUSTED_LAUNCH] = "true"
    if secure_boot:
        labels[LABEL_SECURE_BOOT] = "true"
    return labels


def quarantined_labels(labels: dict[str, str]) -> dict[str, str]:
    """The verdict labels a quarantined node keeps in Kubernetes: its attestation status only (never the
    trusted launch labels, whatever its row says)."""
    return {key: value for key, value in labels.items() if key == LABEL_ATTESTATION}


def verdict_labels(labels: dict[str, str]) -> dict[str, str]:
    """The labels among a node's `labels` that the attestation verdict decides in Kubernetes."""
    return {key: value for key, value in labels.items() if key in VERDICT_LABELS}


def pool_labels(pool_name: str, mode: str, image_version: str, os_sku: str, vm_size: str) -> dict[str, str]:
    """The labels of a joined node that follow from its row and pool (POOL_LABEL_KEYS), as AKS sets them: its
    pool, mode, node image version (the Debian image's name, control.node_images.linux_image_version), OS SKU
    (the pool's, as given: every Linux SKU runs that image), instance type and OS."""
    return {
        LABEL_AGENT_POOL: pool_name,
        LABEL_MODE: mode.lower(),
        LABEL_NODE_IMAGE_VERSION: image_version,
        LABEL_OS_SKU: os_sku,
        LABEL_INSTANCE_TYPE: vm_size,
        LABEL_OS: "linux",
    }


POOL_LABEL_KEYS = frozenset(pool_labels("", "", "", "", ""))


def join_labels(
    pool_name: str,
    mode: str,
    image_version: str,
    os_sku: str,
    vm_size: str,
    node_labels: dict[str, str],
    custom: dict[str, str] | None = None,
) -> dict[str, str]:
    """The labels the control plane sets on a node's Kubernetes Node once it joined (as AKS sets them): its
    pool's nodeLabels (`custom`: never under AKS_PREFIX, control.limits refuses those), its pool_labels,
    and the attestation status and verdict labels of its row's `node_labels`."""
    return {
        **(custom or {}),
        **pool_labels(pool_name, mode, image_version, os_sku, vm_size),
        **verdict_labels(node_labels),
    }
