"""Kubernetes adapter: what the control plane sets on a node's Node object (labels, taints, cordon) through
lightkube and a kubeconfig, and the one owner of its cordon state.

Each kind of change touches only its own keys:
- the attestation verdict: the labels, taint and annotation of `control.labels.VERDICT_KEYS`, and
  `spec.unschedulable` when it cordons a node itself (`quarantine`, `restore`);
- the labels that follow from the node's row (`control.labels.POOL_LABEL_KEYS`), set when they differ
  (`set_pool_labels`);
- the pool's nodeLabels and nodeTaints (`set_node_settings`): set, and removed when the pool drops one the
  control plane set before (recorded on the node's row), never anyone else's;
- a drain (control.node_drain) cordons the node, and an upgrade that could not drain it holds it
  (undrainableNodeBehavior Cordon: labelled upgrade-status=Quarantined); `upgrade_release_patch` ends that
  hold (the label removed, uncordoned) but never lifts a cordon the attestation verdict made, and
  `restore` keeps a node cordoned while an upgrade holds it: a cordon always wins over an uncordon;
- a quarantine records whether it made the node's cordon (QUARANTINE_CORDON_ANNOTATION), and `restore`
  lifts only such a cordon (never a failed drain's or an operator's).
Changes are JSON merge patches carrying the `resourceVersion` that was read, so a concurrent change to the
node makes the API server answer 409 and the change is recomputed on the fresh node (CONFLICT_RETRIES times).
A node already in the wanted state is not patched.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from lightkube import ApiError, Client, ConfigError, KubeConfig
from lightkube.resources.core_v1 import Node
from lightkube.types import PatchType

from trustedlaunch.control.labels import (
    LABEL_UPGRADE_STATUS,
    LEGACY_PREFIX,
    LEGACY_QUARANTINE_ANNOTATION,
    POOL_LABEL_KEYS,
    QUARANTINE_ANNOTATION,
    QUARANTINE_CORDON_ANNOTATION,
    QUARANTINE_TAINT_KEY,
    VERDICT_KEYS,
)
from trustedlaunch.errors import TrustedLaunchError

CONFLICT_RETRIES = 3
FIELD_MANAGER = "trustedlaunch"


class KubernetesAdapterError(TrustedLaunchError):
    """The API server refused or failed a request; the message names the node and the server's reason."""


@dataclass(frozen=True)
class Taint:
    """A node taint (key=value:effect)."""

    key: str
    value: str
    effect: str = "NoSchedule"

    def to_dict(self) -> dict[str, str]:
        """The Kubernetes JSON form."""
        return {"key": self.key, "value": self.value, "effect": self.effect}


# NoExecute: besides no new pods, the controller-manager's taint eviction controller evicts the pods
# already there that do not tolerate it (a quarantined node runs no workload).
QUARANTINE_TAINT = Taint(QUARANTINE_TAINT_KEY, "true", "NoExecute")


def _owned(key: str) -> bool:
    """A key the verdict decides, or one an earlier release wrote (removed, never set)."""
    return key in VERDICT_KEYS or key.startswith(LEGACY_PREFIX)


def node_patch(
    node: dict[str, Any],
    *,
    labels: Mapping[str, str],
    taints: Sequence[Taint],
    cordon: bool | None,
    annotations: Mapping[str, str | None],
) -> dict[str, Any] | None:
    """The merge patch that gives `node` exactly `labels` and `taints` among the keys we own, the given
    annotations (None removes one) and `spec.unschedulable = cordon` (None leaves it); None when the node
    already is in that state."""
    for key in (*labels, *(taint.key for taint in taints)):
        if key not in VERDICT_KEYS:
            raise ValueError(f"{key!r} is not one of our keys ({', '.join(sorted(VERDICT_KEYS))})")
    metadata = node.get("metadata", {})
    spec = node.get("spec", {})
    current_labels: dict[str, str] = metadata.get("labels") or {}
    label_changes: dict[str, str | None] = {
        key: None for key in current_labels if _owned(key) and key not in labels
    }
    label_changes |= {key: value for key, value in labels.items() if current_labels.get(key) != value}
    current_annotations: dict[str, str] = metadata.get("annotations") or {}
    annotation_changes = {
        key: value for key, value in annotations.items() if current_annotations.get(key) != value
    }
    current_taints: list[dict[str, Any]] = spec.get("taints") or []
    wanted_taints = [
        *(taint for taint in current_taints if not _owned(taint["key"])),
        *(taint.to_dict() for taint in taints),
    ]
    own_now = sorted((t["key"], t.get("value"), t["effect"]) for t in current_taints if _owned(t["key"]))
    own_wanted = sorted((taint.key, taint.value, taint.effect) for taint in taints)

    patch_metadata: dict[str, Any] = {}
    patch_spec: dict[str, Any] = {}
    if label_changes:
        patch_metadata["labels"] = label_changes
    if annotation_changes:
        patch_metadata["annotations"] = annotation_changes
    if own_now != own_wanted:
        patch_spec["taints"] = wanted_taints  # a merge patch replaces the whole list
    if cordon is not None and bool(spec.get("unschedulable", False)) != cordon:
        patch_spec["unschedulable"] = cordon
    if not patch_metadata and not patch_spec:
        return None
    if "resourceVersion" in metadata:
        patch_metadata["resourceVersion"] = metadata["resourceVersion"]
    patch: dict[str, Any] = {"metadata": patch_metadata}
    if patch_spec:
        patch["spec"] = patch_spec
    return patch


def pool_labels_patch(node: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The merge patch that gives `node` the values of `labels` (keys of POOL_LABEL_KEYS only) where it has
    others or none (any other label kept); None when it has them all."""
    for key in labels:
        if key not in POOL_LABEL_KEYS:
            raise ValueError(f"{key!r} is not a pool label ({', '.join(sorted(POOL_LABEL_KEYS))})")
    metadata = node.get("metadata", {})
    current: dict[str, str] = metadata.get("labels") or {}
    changes = {key: value for key, value in labels.items() if current.get(key) != value}
    if not changes:
        return None
    patch_metadata: dict[str, Any] = {"labels": changes}
    if "resourceVersion" in metadata:
        patch_metadata["resourceVersion"] = metadata["resourceVersion"]
    return {"metadata": patch_metadata}


def attestation_quarantined(node: dict[str, Any]) -> bool:
    """Whether the attestation verdict quarantined `node` (its annotation, or an earlier release's)."""
    annotations = node.get("metadata", {}).get("annotations") or {}
    return QUARANTINE_ANNOTATION in annotations or LEGACY_QUARANTINE_ANNOTATION in annotations


def quarantine_patch(node: dict[str, Any], reason: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The merge patch that quarantines `node` (KubernetesNodeAdapter.quarantine), recording in
    QUARANTINE_CORDON_ANNOTATION whether the quarantine made the cordon: "false" when the node was cordoned
    already (a drain, an upgrade's hold, an operator), kept as first recorded while the node stays
    quarantined."""
    annotations = node.get("metadata", {}).get("annotations") or {}
    cordoned_by_us = annotations.get(QUARANTINE_CORDON_ANNOTATION)
    if cordoned_by_us is None or not attestation_quarantined(node):
        cordoned_by_us = "false" if node.get("spec", {}).get("unschedulable") else "true"
    return node_patch(
        node,
        labels=labels,
        taints=[QUARANTINE_TAINT],
        cordon=True,
        annotations={QUARANTINE_ANNOTATION: reason, QUARANTINE_CORDON_ANNOTATION: cordoned_by_us},
    )


def restore_patch(node: dict[str, Any], labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The merge patch that restores an attested `node` (KubernetesNodeAdapter.restore): uncordoned only if
    its quarantine made the cordon (QUARANTINE_CORDON_ANNOTATION "true"; a quarantine an earlier release
    wrote, without that record, always did) and no upgrade holds it (LABEL_UPGRADE_STATUS); a cordon made
    otherwise (a drain, an operator) stays."""
    metadata = node.get("metadata", {})
    annotations = metadata.get("annotations") or {}
    cordoned_by_us = annotations.get(QUARANTINE_CORDON_ANNOTATION, "true") == "true"
    held = LABEL_UPGRADE_STATUS in (metadata.get("labels") or {})
    return node_patch(
        node,
        labels=labels,
        taints=[],
        cordon=False if attestation_quarantined(node) and cordoned_by_us and not held else None,
        annotations=dict.fromkeys(
            (QUARANTINE_ANNOTATION, QUARANTINE_CORDON_ANNOTATION, LEGACY_QUARANTINE_ANNOTATION)
        ),
    )


def upgrade_release_patch(node: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch that ends an upgrade's hold on `node` (undrainableNodeBehavior Schedule after a failed
    drain, or a Cordon quarantine no longer needed): its upgrade-status label removed and the node
    uncordoned, unless the attestation verdict quarantined it: the cordon stays, handed to the quarantine
    (QUARANTINE_CORDON_ANNOTATION "true": a passing attestation lifts it); None when nothing is left to
    change."""
    metadata = node.get("metadata", {})
    patch: dict[str, Any] = {}
    if LABEL_UPGRADE_STATUS in (metadata.get("labels") or {}):
        patch["metadata"] = {"labels": {LABEL_UPGRADE_STATUS: None}}
    if node.get("spec", {}).get("unschedulable"):
        if not attestation_quarantined(node):
            patch["spec"] = {"unschedulable": None}
        elif (metadata.get("annotations") or {}).get(QUARANTINE_CORDON_ANNOTATION) == "false":
            patch.setdefault("metadata", {})["annotations"] = {QUARANTINE_CORDON_ANNOTATION: "true"}
    if not patch:
        return None
    if "resourceVersion" in metadata:
        patch.setdefault("metadata", {})["resourceVersion"] = metadata["resourceVersion"]
    return patch


def patch_node(
    client: Client,
    node_name: str,
    compute: Callable[[dict[str, Any]], dict[str, Any] | None],
    read: Callable[[str], dict[str, Any]] | None = None,
) -> bool:
    """Patch the Node with `compute(node as read)` (None: nothing to change; `read`, by default the
    client's GET), recomputed on the fresh node when it changed meanwhile (409), CONFLICT_RETRIES times;
    True when a patch was needed. Raises the client's httpx2.HTTPError, KubernetesAdapterError after
    CONFLICT_RETRIES conflicts."""
    for _attempt in range(CONFLICT_RETRIES):
        node = read(node_name) if read is not None else client.get(Node, node_name).to_dict()
        patch = compute(node)
        if patch is None:
            return False
        try:
            client.patch(Node, node_name, patch, patch_type=PatchType.MERGE)
        except httpx2.HTTPStatusError as exc:
            if exc.response.status_code == 409:
                continue
            raise
        return True
    raise KubernetesAdapterError(
        f"node {node_name}: changed by someone else during {CONFLICT_RETRIES} attempts to update it"
    )


def _taint_identity(taint: Mapping[str, Any]) -> tuple[str, str]:
    return str(taint.get("key")), str(taint.get("effect"))


def node_settings_patch(
    node: dict[str, Any],
    labels: Mapping[str, str],
    taints: Sequence[Mapping[str, str]],
    previous_labels: Mapping[str, str],
    previous_taints: Sequence[Mapping[str, str]],
) -> dict[str, Any] | None:
    """The merge patch that gives `node` a pool's nodeLabels `labels` and nodeTaints `taints` (Kubernetes
    JSON form) and removes those it set before (`previous_labels`, `previous_taints`) that the pool no longer
    has; any other label or taint (kubelet's, an operator's, the attestation verdict's, the join's) is kept.
    A taint is one per key and effect, as Kubernetes has them. None when the node has them all already."""
    metadata = node.get("metadata", {})
    current_labels: dict[str, str] = metadata.get("labels") or {}
    label_changes: dict[str, str | None] = {
        key: None for key in previous_labels if key in current_labels and key not in labels
    }
    label_changes |= {key: value for key, value in labels.items() if current_labels.get(key) != value}
    current_taints: list[dict[str, Any]] = node.get("spec", {}).get("taints") or []
    managed = {_taint_identity(taint) for taint in (*previous_taints, *taints)}
    kept = [taint for taint in current_taints if _taint_identity(taint) not in managed]
    wanted_taints = [*kept, *(dict(taint) for taint in taints)]
    patch: dict[str, Any] = {}
    if label_changes:
        patch["metadata"] = {"labels": label_changes}
    if sorted(map(_taint_comparable, current_taints)) != sorted(map(_taint_comparable, wanted_taints)):
        patch["spec"] = {"taints": wanted_taints or None}  # a merge patch replaces the whole list
    if not patch:
        return None
    if "resourceVersion" in metadata:
        patch.setdefault("metadata", {})["resourceVersion"] = metadata["resourceVersion"]
    return patch


def _taint_comparable(taint: Mapping[str, Any]) -> tuple[str, str, str]:
    return str(taint.get("key")), str(taint.get("value") or ""), str(taint.get("effect"))


def _adapter_error(node_name: str, error: httpx2.HTTPError) -> KubernetesAdapterError:
    """The error for a failed request about a node: the API server's Status message when it sent one."""
    if isinstance(error, ApiError):
        return KubernetesAdapterError(f"node {node_name}: {error.status.code} {error.status.message}")
    if isinstance(error, httpx2.HTTPStatusError):
        response = error.response
        return KubernetesAdapterError(f"node {node_name}: {response.status_code} {response.reason_phrase}")
    return KubernetesAdapterError(f"node {node_name}: {type(error).__name__}: {error}")


class KubernetesNodeAdapter:
    """Labels, taints and cordons the nodes of the cluster a kubeconfig (and optional context) names."""

    def __init__(self, kubeconfig_path: Path, context: str | None = None) -> None:
        try:
            config = KubeConfig.from_file(kubeconfig_path).get(context_name=context)
        except ConfigError as exc:
            raise KubernetesAdapterError(f"{kubeconfig_path}: {exc}") from None
        if config is None:
            raise KubernetesAdapterError(f"{kubeconfig_path}: no context {context or '(current)'}")
        self.client = Client(config, field_manager=FIELD_MANAGER, trust_env=False)

    def close(self) -> None:
        """Close the HTTP connections."""
        self.client.close()

    def __enter__(self) -> KubernetesNodeAdapter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _read(self, node_name: str) -> dict[str, Any]:
        try:
            node: dict[str, Any] = self.client.get(Node, node_name).to_dict()
        except httpx2.HTTPError as exc:
            raise _adapter_error(node_name, exc) from None
        return node

    def _patch(self, node_name: str, compute: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bool:
        """patch_node with the API server's failures as KubernetesAdapterError."""
        try:
            return patch_node(self.client, node_name, compute, self._read)
        except httpx2.HTTPError as exc:
            raise _adapter_error(node_name, exc) from None

    def release_upgrade_hold(self, node_name: str) -> bool:
        """End an upgrade's hold on the node (upgrade_release_patch); True when it changed."""
        return self._patch(node_name, upgrade_release_patch)

    def set_pool_labels(self, node_name: str, labels: Mapping[str, str]) -> dict[str, str | None]:
        """Give the node the pool labels `labels` (POOL_LABEL_KEYS) where it has other values or none; each
        label changed with the value it had (None: it had none). Raise KubernetesAdapterError."""
        before: dict[str, str] = {}  # the labels of the node as last read, the one patched

        def compute(node: dict[str, Any]) -> dict[str, Any] | None:
            before.clear()
            before.update(node.get("metadata", {}).get("labels") or {})
            return pool_labels_patch(node, labels)

        if not self._patch(node_name, compute):
            return {}
        return {key: before.get(key) for key, value in labels.items() if before.get(key) != value}

    def set_node_settings(
        self,
        node_name: str,
        labels: Mapping[str, str],
        taints: Sequence[Mapping[str, str]],
        previous_labels: Mapping[str, str],
        previous_taints: Sequence[Mapping[str, str]],
    ) -> bool:
        """Give the node its pool's nodeLabels and nodeTaints and remove the ones set before that the pool
        dropped (node_settings_patch); True when a patch was needed. Raise KubernetesAdapterError."""
        return self._patch(
            node_name,
            lambda node: node_settings_patch(node, labels, taints, previous_labels, previous_taints),
        )

    def apply_node_state(
        self,
        node_name: str,
        *,
        labels: Mapping[str, str],
        taints: Sequence[Taint] = (),
        cordon: bool | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> bool:
        """Give the node exactly `labels` and `taints` among our keys (others are kept), the annotations
        and the cordon state (None: unchanged); True when a patch was needed. Raise KubernetesAdapterError."""
        return self._patch(
            node_name,
            lambda node: node_patch(
                node, labels=labels, taints=taints, cordon=cordon, annotations=annotations or {}
            ),
        )

    def quarantine(self, node_name: str, reason: str, labels: Mapping[str, str] | None = None) -> bool:
        """A node that failed attestation: cordoned, tainted QUARANTINE_TAINT (NoExecute: its pods without a
        toleration are evicted), our labels but `labels` (its attestation status) removed, the reason in
        QUARANTINE_ANNOTATION and whether this cordoned it in QUARANTINE_CORDON_ANNOTATION; True when it
        changed."""
        return self._patch(node_name, lambda node: quarantine_patch(node, reason, labels or {}))

    def restore(self, node_name: str, labels: Mapping[str, str]) -> bool:
        """A node that attested: our `labels` set, the quarantine taint and annotations removed, and
        uncordoned if the quarantine cordoned it (restore_patch); True when it changed."""
        return self._patch(node_name, lambda node: restore_patch(node, labels))
