"""The pure parts of the drain (control.node_drain): which pods a drain evicts (as `kubectl drain
--ignore-daemonsets`: not DaemonSet-managed or mirror pods), which PodDisruptionBudgets select a pod, and the
operation's progress note and failure message naming the node, the pod and the budget, what the failure left
of the node (undrainableNodeBehavior), and the soak's note."""

from __future__ import annotations

from typing import Any

import pytest

from trustedlaunch.control.node_drain import (
    AfterFailedDrain,
    PodRef,
    Refusal,
    after_failed_drain,
    budgets_of,
    describe_duration,
    drain_failure_message,
    pods_to_evict,
    progress_note,
    selector_matches,
    soak_note,
)

NODE = "aks-pool-00000001-vmss000000"


def pod(name: str, *, labels: dict[str, str] | None = None, **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "labels": labels or {}, **metadata}}


def test_daemon_set_and_mirror_pods_are_not_evicted() -> None:
    pods = [
        pod("web-1", ownerReferences=[{"kind": "ReplicaSet", "name": "web", "controller": True}]),
        pod("agent-x", ownerReferences=[{"kind": "DaemonSet", "name": "agent", "controller": True}]),
        pod("static-node", annotations={"kubernetes.io/config.mirror": "abc"}),
        pod("bare"),
        pod("leaving", deletionTimestamp="2026-12-06T07:00:00Z"),
        # a DaemonSet that owns the pod without controlling it does not keep it on the node
        pod("adopted", ownerReferences=[{"kind": "DaemonSet", "name": "agent", "controller": False}]),
    ]
    evicted = pods_to_evict(pods)
    assert [str(ref) for ref in evicted] == [
        "default/web-1",
        "default/bare",
        "default/leaving",
        "default/adopted",
    ]
    assert [ref.terminating for ref in evicted] == [False, False, True, False]


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ({"matchLabels": {"app": "web"}}, True),
        ({"matchLabels": {"app": "db"}}, False),
        ({"matchLabels": {"app": "web", "tier": "front"}}, True),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, False),
        ({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "Bogus", "values": ["web"]}]}, False),
        ({}, True),  # an empty selector selects every pod of the namespace (policy/v1)
        (None, False),
    ],
)
def test_budget_selectors(selector: dict[str, Any] | None, selected: bool) -> None:
    assert selector_matches(selector, {"app": "web", "tier": "front"}) is selected


def budget(name: str, namespace: str, match: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"selector": {"matchLabels": match}}}


def test_the_budgets_of_a_pod_are_those_of_its_namespace_that_select_it() -> None:
    ref = PodRef("default", "web-1", {"app": "web"}, terminating=False)
    budgets = [
        budget("web-b", "default", {"app": "web"}),
        budget("web-a", "default", {}),
        budget("db", "default", {"app": "db"}),
        budget("web-elsewhere", "other", {"app": "web"}),
    ]
    assert budgets_of(ref, budgets) == ("web-a", "web-b")


def test_progress_notes_name_what_the_drain_waits_for() -> None:
    web = PodRef("default", "web-1", {}, terminating=False)
    db = PodRef("data", "db-0", {}, terminating=True)
    refused = Refusal(web, "429 Cannot evict pod as it would violate the pod's disruption budget.", ("web",))
    assert progress_note(NODE, [web, db], [refused]) == (
        f"draining node {NODE}: 2 pods left; waiting for PodDisruptionBudget default/web"
    )
    assert (
        progress_note(NODE, [db], [])
        == f"draining node {NODE}: 1 pod left; waiting for data/db-0 to terminate"
    )
    no_budget = Refusal(web, "500 This pod has more than one PodDisruptionBudget", ())
    assert progress_note(NODE, [web], [no_budget]) == (
        f"draining node {NODE}: 1 pod left; evictions of default/web-1 refused"
    )
    many = [PodRef("default", f"p{i}", {}, terminating=True) for i in range(5)]
    assert progress_note(NODE, many, []).endswith(
        "waiting for default/p0, default/p1, default/p2 and 2 more to terminate"
    )


def test_the_failure_names_the_node_the_pod_and_the_budget() -> None:
    web = PodRef("default", "web-1", {}, terminating=False)
    refused = Refusal(web, "429 Cannot evict pod as it would violate the pod's disruption budget.", ("web",))
    message = drain_failure_message(NODE, 1800.0, [refused], [web])
    assert message.startswith(
        f"Drain node {NODE} failed when evicting pod default/web-1 within the drain timeout (30 min): the "
        "eviction was refused (429 Cannot evict pod as it would violate the pod's disruption budget.). "
        "PodDisruptionBudget: default/web."
    )
    assert message.endswith("PodDisruptionBudget: default/web.")  # what became of the node: the caller's
    terminating = PodRef("default", "slow", {}, terminating=True)
    assert drain_failure_message(NODE, 20.0, [], [terminating]).startswith(
        f"Drain node {NODE} failed within the drain timeout (20 s): pods still terminating: default/slow."
    )


@pytest.mark.parametrize(
    ("seconds", "shown"), [(1800.0, "30 min"), (60.0, "1 min"), (20.0, "20 s"), (90.0, "90 s")]
)
def test_durations(seconds: float, shown: str) -> None:
    assert describe_duration(seconds) == shown


def test_what_a_failed_drain_left_of_the_node() -> None:
    """The sentence ending the operation's error: per undrainableNodeBehavior in an upgrade (Cordon
    quarantines, Schedule uncordons unless the node was cordoned before), cordoned otherwise."""
    assert after_failed_drain(AfterFailedDrain.CORDONED).startswith(
        "The node stays cordoned and its VM running; relax the PodDisruptionBudget"
    )
    quarantined = after_failed_drain(AfterFailedDrain.QUARANTINED)
    assert "labelled kubernetes.azure.com/upgrade-status=Quarantined" in quarantined
    assert "a surge node takes its place" in quarantined
    assert after_failed_drain(AfterFailedDrain.SCHEDULABLE).startswith(
        "The node is schedulable again and was not upgraded (undrainableNodeBehavior Schedule)"
    )
    assert after_failed_drain(AfterFailedDrain.SCHEDULABLE, cordoned_by_drain=False).startswith(
        "The node stays cordoned (it was before the drain)"
    )


@pytest.mark.parametrize(
    ("seconds_left", "minutes"), [(1800.0, 30), (61.0, 2), (60.0, 1), (3.0, 1), (0.2, 1)]
)
def test_the_soak_note_counts_whole_minutes_down(seconds_left: float, minutes: int) -> None:
    assert soak_note(NODE, seconds_left) == f"soaking node {NODE} ({minutes} min left)"
