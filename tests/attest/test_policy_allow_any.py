"""A policy document that sets no rule is refused unless it says `"allowAny": true` (and one with rules must
not say it): a missing field never silently means "any boot passes"."""

from __future__ import annotations

import pytest

from trustedlaunch.attest.policy import Policy, PolicyError


@pytest.mark.parametrize(
    "document",
    [{}, {"version": 1}, {"requireValidSeparators": False}, {"secureBoot": None, "pk": None, "pcrs": None}],
)
def test_a_policy_without_rules_is_refused(document: dict[str, object]) -> None:
    with pytest.raises(PolicyError, match=r'sets no rule .* "allowAny": true'):
        Policy.from_dict(document)


def test_allow_any_accepts_any_boot_explicitly_and_round_trips() -> None:
    policy = Policy.from_dict({"allowAny": True})
    assert policy.allow_any and not policy.has_rules
    assert Policy.from_json(policy.to_json()) == policy
    assert "allowAny" not in Policy(secure_boot=True).to_dict()  # documents with rules stay as they were


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"allowAny": True, "secureBoot": True}, "a policy with rules must not set it"),
        ({"allowAny": "yes"}, "expected true or false"),
    ],
)
def test_allow_any_must_be_a_lone_boolean(document: dict[str, object], words: str) -> None:
    with pytest.raises(PolicyError, match=f"field 'allowAny': .*{words}"):
        Policy.from_dict(document)


def test_each_rule_alone_is_a_policy() -> None:
    digest = "ab" * 32
    for document in (
        {"secureBoot": False},
        {"dbx": {"requiredEntries": [digest]}},
        {"bootApplications": [{"component": "shim", "digests": [digest]}]},
        {"kernelCmdline": {"forbiddenTokens": ["init="]}},
        {"pcrs": {"sha256": {"7": digest}}},
        {"db": {"allowedEntries": [digest]}},
    ):
        assert Policy.from_dict(document).has_rules, document
