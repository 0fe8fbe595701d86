"""Cordon and drain a Node through the Eviction API before its VM is torn down, as `kubectl drain` and
AKS's rolling upgrade do.

The Node is cordoned (`spec.unschedulable`), then every pod bound to it is evicted through the pod's policy/v1
Eviction subresource, except the pods `kubectl drain` leaves too: those a DaemonSet manages (their
controller would put them back, and they go with the node) and mirror pods (the kubelet's static pods).
An eviction a PodDisruptionBudget refuses (429 Too Many Requests) is retried every DRAIN_POLL_SECONDS until
the drain timeout; evicted pods are then waited for until they are gone (their grace period runs on the
node). When the timeout passes first, the drain fails naming the node, the pod and the budget that blocked
it (AKS: "Drain node ... failed when evicting pod ..."): the Node stays cordoned and nothing is deleted.
With `ignore_pod_disruption_budget` (AKS's ignore-pod-disruption-budget=true on a pool's deletion) the
pods are deleted instead of evicted: no budget is consulted.

What an upgrade does with a node it could not drain is the pool's upgradeSettings.undrainableNodeBehavior:
`quarantine` keeps it cordoned and labels it kubernetes.azure.com/upgrade-status=Quarantined (Cordon),
`uncordon` makes it schedulable again (Schedule). After a drain an upgrade soaks the node
(upgradeSettings.nodeSoakDurationInMinutes: `soak_note` says how long is left).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node as KubernetesNode
from lightkube.resources.core_v1 import Pod
from lightkube.resources.policy_v1 import PodDisruptionBudget
from lightkube.types import PatchType

from trustedlaunch.control.kubernetes import patch_node, upgrade_release_patch
from trustedlaunch.control.labels import LABEL_UPGRADE_STATUS, UPGRADE_QUARANTINED
from trustedlaunch.errors import TrustedLaunchError

DEFAULT_DRAIN_TIMEOUT_MINUTES = 30  # AKS's default upgradeSettings.drainTimeoutInMinutes
DRAIN_POLL_SECONDS = 2.0  # between eviction rounds (refused evictions are retried) and checks for gone pods
MIRROR_POD_ANNOTATION = "kubernetes.io/config.mirror"
MAX_NAMES_SHOWN = 3  # pods or budgets named in a progress note


class NodeDrainFailedError(TrustedLaunchError):
    """A drain did not end within its timeout (or the API server failed it); the message names the node, the
    pod and, when one refused the eviction, the PodDisruptionBudget. `cordoned_by_drain`: the Node was
    schedulable before the drain cordoned it (else an operator or the attestation quarantine had)."""

    def __init__(self, message: str, cordoned_by_drain: bool = True) -> None:
        super().__init__(message)
        self.cordoned_by_drain = cordoned_by_drain


@dataclass(frozen=True)
class PodRef:
    """A pod to evict, as the drain names it."""

    namespace: str
    name: str
    labels: Mapping[str, str]
    terminating: bool  # evicted (or deleted) already: its grace period runs on the node

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Refusal:
    """An eviction the API server refused: its message and the budgets that select the pod."""

    pod: PodRef
    reason: str
    budgets: tuple[str, ...]


def _is_daemon_set_pod(pod: Mapping[str, Any]) -> bool:
    owners = pod.get("metadata", {}).get("ownerReferences") or []
    return any(owner.get("kind") == "DaemonSet" and owner.get("controller") for owner in owners)


def _is_mirror_pod(pod: Mapping[str, Any]) -> bool:
    return MIRROR_POD_ANNOTATION in (pod.get("metadata", {}).get("annotations") or {})


def pods_to_evict(pods: Iterable[Mapping[str, Any]]) -> list[PodRef]:
    """The pods (Kubernetes JSON) a drain evicts and waits for: all but DaemonSet-managed and mirror pods, as
    `kubectl drain --ignore-daemonsets` does."""
    return [
        PodRef(
            pod["metadata"]["namespace"],
            pod["metadata"]["name"],
            pod["metadata"].get("labels") or {},
            pod["metadata"].get("deletionTimestamp") is not None,
        )
        for pod in pods
        if not _is_daemon_set_pod(pod) and not _is_mirror_pod(pod)
    ]


def _expression_matches(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
    if operator == "In":
        return key in labels and labels[key] in values
    if operator == "NotIn":
        return key not in labels or labels[key] not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False  # an operator the API server would not have accepted


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a PodDisruptionBudget's label `selector` (matchLabels, matchExpressions) selects `labels`; an
    empty selector selects every pod of the namespace (policy/v1), a missing one none."""
    if selector is None:
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    return all(labels.get(key) == value for key, value in match_labels.items()) and all(
        _expression_matches(expression, labels) for expression in expressions
    )


def budgets_of(pod: PodRef, budgets: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The names of the PodDisruptionBudgets (Kubernetes JSON) of the pod's namespace that select it."""
    return tuple(
        sorted(
            budget["metadata"]["name"]
            for budget in budgets
            if budget["metadata"].get("namespace") == pod.namespace
            and selector_matches(budget.get("spec", {}).get("selector"), pod.labels)
        )
    )


def describe_duration(seconds: float) -> str:
    """A drain timeout as an operator set it: whole minutes, else seconds."""
    return f"{seconds / 60:g} min" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g} s"


def _names(items: Sequence[object]) -> str:
    shown = ", ".join(str(item) for item in items[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(items) - MAX_NAMES_SHOWN} more" if len(items) > MAX_NAMES_SHOWN else "")


def progress_note(node_name: str, left: Sequence[PodRef], refusals: Sequence[Refusal]) -> str:
    """The operation's note while the node drains: the pods left and the budgets that refuse an eviction."""
    note = f"draining node {node_name}: {len(left)} pod{'' if len(left) == 1 else 's'} left"
    budgets = sorted({f"{r.pod.namespace}/{b}" for r in refusals for b in r.budgets})
    if budgets:
        note += f"; waiting for PodDisruptionBudget {_names(budgets)}"
    elif refusals:
        note += f"; evictions of {_names([r.pod for r in refusals])} refused"
    elif left:
        note += f"; waiting for {_names(left)} to terminate"
    return note


def drain_failure_message(
    node_name: str, timeout: float, refusals: Sequence[Refusal], left: Sequence[PodRef]
) -> str:
    """Why the drain of `node_name` failed at its timeout, shaped as AKS's drain failure: the first refused
    pod and its budget, else the pods still terminating (what became of the node is the caller's to say:
    `after_failed_drain`)."""
    within = f"within the drain timeout ({describe_duration(timeout)})"
    if refusals:
        refusal = refusals[0]
        budgets = ", ".join(f"{refusal.pod.namespace}/{budget}" for budget in refusal.budgets) or "none found"
        return (
            f"Drain node {node_name} failed when evicting pod {refusal.pod} {within}: the eviction was "
            f"refused ({refusal.reason}). PodDisruptionBudget: {budgets}."
        )
    return f"Drain node {node_name} failed {within}: pods still terminating: {_names(left)}."


class AfterFailedDrain(StrEnum):
    """What became of a node whose drain failed."""

    CORDONED = "cordoned"  # a scale down or a pool's deletion: it stays cordoned, its VM running
    QUARANTINED = "quarantined"  # an upgrade with undrainableNodeBehavior Cordon
    SCHEDULABLE = "schedulable"  # an upgrade with undrainableNodeBehavior Schedule (AKS's default)


def after_failed_drain(outcome: AfterFailedDrain, cordoned_by_drain: bool = True) -> str:
    """The sentence a failed drain's operation error ends with: what became of the node, what to do."""
    retry = (
        "relax the PodDisruptionBudget or raise upgradeSettings.drainTimeoutInMinutes, then retry the "
        "operation."
    )
    if outcome == AfterFailedDrain.QUARANTINED:
        return (
            f"The node stays cordoned, labelled {LABEL_UPGRADE_STATUS}={UPGRADE_QUARANTINED}, its VM "
            f"running, and was not upgraded (undrainableNodeBehavior Cordon): a surge node takes its "
            f"place; {retry}"
        )
    if outcome == AfterFailedDrain.SCHEDULABLE:
        state = "is schedulable again" if cordoned_by_drain else "stays cordoned (it was before the drain)"
        return f"The node {state} and was not upgraded (undrainableNodeBehavior Schedule); {retry}"
    return f"The node stays cordoned and its VM running; {retry}"


def soak_note(node_name: str, seconds_left: float) -> str:
    """The operation's note while an upgrade soaks a drained node: whole minutes left, rounded up."""
    return f"soaking node {node_name} ({max(1, math.ceil(seconds_left / 60))} min left)"


class NodeDrainer:
    """Cordons and drains Nodes through `client` (a cluster admin); a drain waits `timeout` seconds at most
    and reports its progress to `progress` every round."""

    def __init__(
        self,
        client: Client,
        timeout: float,
        progress: Callable[[str], None],
        poll_seconds: float = DRAIN_POLL_SECONDS,
        ignore_pod_disruption_budget: bool = False,
    ) -> None:
        self.client = client
        self.timeout = timeout
        self.progress = progress
        self.poll_seconds = poll_seconds
        self.ignore_pod_disruption_budget = ignore_pod_disruption_budget

    def cordon(self, node_name: str) -> bool:
        """Mark the Node unschedulable (new pods go elsewhere); whether it was schedulable before."""
        node = self.client.get(KubernetesNode, node_name)
        was_schedulable = not (node.spec and node.spec.unschedulable)
        patch = {"spec": {"unschedulable": True}}
        self.client.patch(KubernetesNode, node_name, patch, patch_type=PatchType.MERGE)
        return was_schedulable

    def quarantine(self, node_name: str) -> None:
        """Keep the Node cordoned and label it upgrade-status=Quarantined (undrainableNodeBehavior Cordon)."""
        patch = {
            "metadata": {"labels": {LABEL_UPGRADE_STATUS: UPGRADE_QUARANTINED}},
            "spec": {"unschedulable": True},
        }
        self.client.patch(KubernetesNode, node_name, patch, patch_type=PatchType.MERGE)

    def uncordon(self, node_name: str) -> None:
        """Make the Node schedulable again, without a quarantine label (undrainableNodeBehavior Schedule),
        unless the attestation verdict cordoned it meanwhile (kubernetes.upgrade_release_patch)."""
        patch_node(self.client, node_name, upgrade_release_patch)

    def drain(self, node_name: str) -> None:
        """Cordon the Node, evict its pods (but DaemonSet and mirror pods), retrying refused evictions, and
        wait until they are gone; raise NodeDrainFailedError at the timeout. A Node that does not exist
        has nothing to drain."""
        deadline = time.monotonic() + self.timeout
        cordoned_by_drain = True
        try:
            try:
                cordoned_by_drain = self.cordon(node_name)
            except ApiError as exc:
                if exc.status.code == 404:
                    return
                raise
            while True:
                left = pods_to_evict(
                    pod.to_dict()
                    for pod in self.client.list(Pod, namespace=ALL_NS, fields={"spec.nodeName": node_name})
                )
                if not left:
                    return
                refusals = [refusal for pod in left if not pod.terminating and (refusal := self._evict(pod))]
                self.progress(progress_note(node_name, left, refusals))
                if time.monotonic() >= deadline:
                    raise NodeDrainFailedError(
                        drain_failure_message(node_name, self.timeout, refusals, left), cordoned_by_drain
                    )
                time.sleep(self.poll_seconds)
        except httpx2.HTTPError as exc:
            reason = exc.status.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            raise NodeDrainFailedError(
                f"Drain node {node_name} failed: kube-apiserver: {reason}", cordoned_by_drain
            ) from exc

    def _evict(self, pod: PodRef) -> Refusal | None:
        """Ask the API server to evict `pod` (or delete it, ignoring PodDisruptionBudgets); the refusal when
        a disruption budget (429) or the server (500: e.g. more than one budget selects the pod) refuses it
        for now."""
        eviction = Pod.Eviction(metadata=ObjectMeta(name=pod.name, namespace=pod.namespace))
        try:
            if self.ignore_pod_disruption_budget:
                self.client.delete(Pod, pod.name, namespace=pod.namespace)
            else:
                self.client.create(eviction, pod.name, namespace=pod.namespace)
        except ApiError as exc:
            if exc.status.code == 404:  # gone meanwhile
                return None
            if exc.status.code not in (429, 500):
                raise
            budgets = budgets_of(
                pod,
                (
                    budget.to_dict()
                    for budget in self.client.list(PodDisruptionBudget, namespace=pod.namespace)
                ),
            )
            return Refusal(pod, f"{exc.status.code} {exc.status.message}"[:500], budgets)
        return None
