"""The reconciler's pure planning: one step at a time, interrupted steps first, rolling reimage in place or
with a surge node, scale up/down, delete."""

from __future__ import annotations

from dataclasses import replace

from trustedlaunch.control.node_plan import Action, DesiredPool, NodePhase, ObservedNode, plan_next_step

IMAGE = "TLDebian12gen2TLcontainerd-202612.06.0"
TL = DesiredPool(count=2, secure_boot=True, vtpm=True, image_version=IMAGE)


def node(node_id: int, ordinal: int, state: str = NodePhase.READY, secure_boot: bool = True) -> ObservedNode:
    return ObservedNode(node_id, ordinal, state, secure_boot, True, IMAGE)


def test_creates_missing_nodes_at_the_first_free_ordinal_then_is_done() -> None:
    step = plan_next_step(TL, [])
    assert (step.action, step.ordinal, step.note) == (Action.CREATE, 0, "creating node 1/2")
    assert plan_next_step(TL, [node(7, 1)]).ordinal == 0
    assert plan_next_step(TL, [node(1, 0), node(2, 1)]).action == Action.DONE


def test_interrupted_steps_are_resumed_before_anything_else() -> None:
    provisioning = [node(1, 0), node(2, 1, NodePhase.PROVISIONING)]
    step = plan_next_step(TL, provisioning)
    assert (step.action, step.node_id, step.note) == (Action.RESUME, 2, "creating node 2/2")
    for state, action in ((NodePhase.DELETING, Action.DELETE), (NodePhase.REIMAGING, Action.REIMAGE)):
        interrupted = [node(1, 0, NodePhase.PROVISIONING), node(2, 1, state)]
        assert (plan_next_step(TL, interrupted).action, plan_next_step(TL, interrupted).node_id) == (
            action,
            2,
        )
        # an interrupted delete or reimage is finished even when the pool is being deleted or scaled
        assert plan_next_step(replace(TL, deleting=True), interrupted).node_id == 2


def test_rolling_reimage_in_place_one_node_at_a_time() -> None:
    outdated = [node(1, 0, secure_boot=False), node(2, 1, secure_boot=False)]
    step = plan_next_step(TL, outdated)
    assert (step.action, step.node_id, step.note) == (Action.REIMAGE, 1, "reimaging node 1/2")
    step = plan_next_step(TL, [node(1, 0), node(2, 1, secure_boot=False)])
    assert (step.action, step.node_id, step.note) == (Action.REIMAGE, 2, "reimaging node 2/2")


def test_failed_nodes_are_replaced() -> None:
    step = plan_next_step(TL, [node(1, 0), node(2, 1, NodePhase.FAILED)])
    assert (step.action, step.node_id) == (Action.REIMAGE, 2)


def test_max_surge_creates_the_replacement_before_deleting_the_old_node() -> None:
    outdated = [node(1, 0, secure_boot=False), node(2, 1, secure_boot=False)]
    step = plan_next_step(TL, outdated, max_surge=1)
    assert (step.action, step.ordinal) == (Action.CREATE, 2)
    surged = [*outdated, node(3, 2)]
    step = plan_next_step(TL, surged, max_surge=1)
    assert (step.action, step.node_id) == (Action.DELETE, 2)  # an outdated node goes, never the new one
    step = plan_next_step(TL, [node(1, 0, secure_boot=False), node(3, 2)], max_surge=1)
    assert (step.action, step.ordinal) == (Action.CREATE, 1)


def _roll(desired: DesiredPool, nodes: list[ObservedNode], max_surge: int) -> tuple[list[Action], int]:
    """Apply plan_next_step until DONE (creations succeed at once); the actions taken and the peak count."""
    actions: list[Action] = []
    peak = len(nodes)
    next_id = 100
    while (step := plan_next_step(desired, nodes, max_surge)).action != Action.DONE:
        actions.append(step.action)
        if step.action == Action.CREATE:
            assert step.ordinal is not None
            nodes.append(node(next_id, step.ordinal))
            next_id += 1
        elif step.action == Action.DELETE:
            nodes = [n for n in nodes if n.node_id != step.node_id]
        else:
            assert step.action == Action.REIMAGE
            nodes = [node(n.node_id, n.ordinal) if n.node_id == step.node_id else n for n in nodes]
        peak = max(peak, len(nodes))
        assert len(actions) < 50, "the plan does not converge"
    assert len(nodes) == desired.count and all(n.secure_boot for n in nodes)
    assert len({n.ordinal for n in nodes}) == desired.count  # unique (surge nodes keep their new ordinals)
    return actions, peak


def test_max_surge_above_one_creates_that_many_replacements_first() -> None:
    three = replace(TL, count=3)
    outdated = [node(i, i, secure_boot=False) for i in range(3)]
    actions, peak = _roll(three, list(outdated), max_surge=2)
    assert actions[:2] == [Action.CREATE, Action.CREATE]
    assert peak == 5 and actions.count(Action.CREATE) == 3 and actions.count(Action.DELETE) == 3
    _, peak_one = _roll(three, list(outdated), max_surge=1)
    assert peak_one == 4
    in_place, peak_in_place = _roll(three, list(outdated), max_surge=0)
    assert in_place == [Action.REIMAGE] * 3 and peak_in_place == 3
    # surge never grows a pool past count + surge, also while it scales
    _, peak_scaling = _roll(replace(TL, count=4), list(outdated), max_surge=2)
    assert peak_scaling == 6


def test_scale_down_deletes_outdated_then_highest_ordinals() -> None:
    one = replace(TL, count=1)
    assert plan_next_step(one, [node(1, 0), node(2, 1)]).node_id == 2
    assert plan_next_step(one, [node(1, 0, secure_boot=False), node(2, 1)]).node_id == 1


def test_pool_deletion_deletes_every_node_then_is_done() -> None:
    deleting = replace(TL, deleting=True)
    step = plan_next_step(deleting, [node(1, 0), node(2, 1)])
    assert (step.action, step.node_id) == (Action.DELETE, 1)
    assert plan_next_step(deleting, []).action == Action.DONE


def test_a_node_with_a_reimage_reason_is_outdated_whatever_its_settings() -> None:
    """A node whose older agent cannot renew its kubelet credentials: reimaged (in place or with a surge
    node), the reason in the step's note; once reimaged (no reason) the pool is done."""
    reason = "its agent (an older node image's initramfs) cannot renew its kubelet credentials"
    older = replace(node(2, 1), reimage_reason=reason)
    step = plan_next_step(TL, [node(1, 0), older])
    assert (step.action, step.node_id) == (Action.REIMAGE, 2)
    assert step.note == f"reimaging node 2/2 ({reason})"
    step = plan_next_step(TL, [node(1, 0), older], max_surge=1)
    assert (step.action, step.ordinal) == (Action.CREATE, 2) and reason in step.note
    step = plan_next_step(TL, [node(1, 0), older, node(3, 2)], max_surge=1)
    assert (step.action, step.node_id) == (Action.DELETE, 2) and reason in step.note
    interrupted = replace(older, state=NodePhase.REIMAGING)
    assert reason in plan_next_step(TL, [node(1, 0), interrupted]).note
    assert plan_next_step(TL, [node(1, 0), node(2, 1)]).action == Action.DONE


def test_a_quarantined_node_is_left_in_place_beside_its_surge_node() -> None:
    """undrainableNodeBehavior Cordon: the node the operation could not drain is planned as if it were not
    there (its surge node stays in its place, the other outdated nodes go on being replaced); a pool's
    deletion takes it all the same."""
    blocked = replace(node(1, 0, secure_boot=False), quarantined=True)
    pool = [blocked, node(2, 1, secure_boot=False), node(3, 2)]  # node 3: the surge node that replaced 1
    step = plan_next_step(TL, pool, max_surge=1)
    assert (step.action, step.ordinal) == (Action.CREATE, 3)  # the surge node for node 2
    replaced = [*pool, node(4, 3)]
    step = plan_next_step(TL, replaced, max_surge=1)
    assert (step.action, step.node_id) == (Action.DELETE, 2)
    assert plan_next_step(TL, [blocked, node(3, 2), node(4, 3)], max_surge=1).action == Action.DONE
    assert plan_next_step(replace(TL, deleting=True), [blocked]).node_id == 1


def test_a_step_says_whether_it_upgrades_or_shrinks_the_pool() -> None:
    """Only an upgrade (a reimage, the deletion of a node a surge node replaced) soaks and quarantines: a
    scale down's deletion is none, even of an outdated node (a Failed one, one with a reimage reason)."""
    outdated = node(1, 0, secure_boot=False)
    assert plan_next_step(TL, [outdated, node(2, 1)]).upgrade is True  # a reimage in place
    replaced = plan_next_step(TL, [outdated, node(2, 1), node(3, 2)], max_surge=1)
    assert (replaced.action, replaced.node_id, replaced.upgrade) == (Action.DELETE, 1, True)
    assert replaced.note == "deleting node 0 (replaced by a surge node)"
    scaled = [  # scaled to 2: the failed node goes as the surplus (more of it than maxSurge could have made)
        ([node(1, 0, NodePhase.FAILED), node(2, 1), node(3, 2)], 0),
        ([node(1, 0, NodePhase.FAILED), node(2, 1), node(3, 2), node(4, 3)], 1),
    ]
    for nodes, max_surge in scaled:
        shrink = plan_next_step(TL, nodes, max_surge)
        assert (shrink.action, shrink.node_id, shrink.upgrade) == (Action.DELETE, 1, False)
        assert shrink.note == "deleting node 0 (scaling to 2)"
    current = plan_next_step(replace(TL, count=1), [node(1, 0), node(2, 1)], max_surge=1)
    assert (current.action, current.upgrade) == (Action.DELETE, False)
    assert plan_next_step(replace(TL, deleting=True), [outdated]).upgrade is False
    assert plan_next_step(TL, [node(1, 0, NodePhase.DELETING)]).upgrade is False
    assert plan_next_step(TL, [node(1, 0, NodePhase.REIMAGING)]).upgrade is True


def test_a_pool_scaled_down_while_it_upgrades_shrinks_by_the_surplus_and_upgrades_the_rest() -> None:
    """Three outdated nodes, the count lowered to 2: one deletion is the shrink, two replace a node."""
    outdated = [node(i, i, secure_boot=False) for i in range(3)]
    for max_surge in (1, 2):
        nodes = list(outdated)
        upgrades = shrinks = 0
        next_id = 100
        while (step := plan_next_step(TL, nodes, max_surge)).action != Action.DONE:
            if step.action == Action.CREATE:
                assert step.ordinal is not None
                nodes.append(node(next_id, step.ordinal))
                next_id += 1
            else:
                assert step.action == Action.DELETE
                nodes = [n for n in nodes if n.node_id != step.node_id]
                upgrades, shrinks = upgrades + step.upgrade, shrinks + (not step.upgrade)
        assert (upgrades, shrinks) == (2, 1), max_surge
