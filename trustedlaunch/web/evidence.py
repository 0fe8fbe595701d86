"""The evidence view of one attestation: its event log as rows, each finding mapped to the events it blames.

A finding blames the event it names (`eventIndex`: the policy checks name the event they read, e.g. the
SecureBoot variable, the kernel command line, a boot application); a PCR mismatch also marks every event
measured into that PCR as its context (the first differing event, when named, is blamed exactly).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trustedlaunch.attest.policy import Policy, PolicyError, boot_app_components
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.describe import boot_app_labels, describe_event
from trustedlaunch.eventlog.model import BootSummary, EventLog
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.eventlog.types import EV_NO_ACTION
from trustedlaunch.findings import Check, Finding

_PCR_CHECKS = frozenset({Check.PCR_VALUE.value, Check.PCR_DIGEST.value})


@dataclass(frozen=True)
class FindingView:
    """A stored finding (Finding.to_dict()) as the page shows it, with the events it blames."""

    number: int  # 1-based, the anchor of the finding on the page
    check: str
    component: str
    pcr: int | None
    event_index: int | None
    message: str
    blamed_events: tuple[int, ...] = ()


@dataclass(frozen=True)
class EventRow:
    """One event of the log as a table row."""

    index: int
    pcr: int
    type_name: str
    digest_bank: str
    digest: str
    description: str
    findings: tuple[int, ...] = ()  # numbers of the findings that blame this event exactly
    in_failed_pcr: bool = False  # measured into a PCR whose value a finding rejects

    @property
    def failed(self) -> bool:
        """True when a finding blames this event."""
        return bool(self.findings)


@dataclass(frozen=True)
class EvidenceView:
    """Everything the evidence page shows about the event log and the findings."""

    findings: tuple[FindingView, ...]
    rows: tuple[EventRow, ...] = ()
    log_format: str | None = None
    banks: tuple[str, ...] = ()
    log_error: str | None = None  # the event log did not parse
    notes: tuple[str, ...] = field(default=())


def _finding_view(number: int, document: Mapping[str, object]) -> FindingView:
    try:
        finding = Finding.from_dict(document)
    except ValueError:  # a damaged record: show its message, blanks for the rest
        message = document.get("message")
        return FindingView(number, "", "", None, None, "" if message is None else str(message))
    return FindingView(
        number, finding.check.value, finding.component, finding.pcr, finding.event_index, finding.message
    )


def finding_views(findings: Sequence[Mapping[str, object]]) -> list[FindingView]:
    """Stored findings (Finding.to_dict()) as views, numbered from 1; an unreadable one shows blanks."""
    return [_finding_view(number, finding) for number, finding in enumerate(findings, start=1)]


def blamed_events(finding: FindingView, log: EventLog) -> tuple[int, ...]:
    """The event a finding blames exactly: the one it names (`eventIndex`: the policy checks name the
    event they read, e.g. the SecureBoot variable or the kernel command line), if the log has it."""
    if finding.event_index is not None and 0 <= finding.event_index < len(log.events):
        return (finding.event_index,)
    return ()


def build_evidence_view(event_log: bytes | None, findings: Sequence[Mapping[str, object]]) -> EvidenceView:
    """Parse a stored event log and map the stored findings onto its events."""
    views = finding_views(findings)
    if not event_log:
        return EvidenceView(tuple(views))
    try:
        log = parse_event_log(event_log)
    except TrustedLaunchError as exc:
        return EvidenceView(tuple(views), log_error=str(exc))
    try:
        summary: BootSummary | None = summarize(log)
    except TrustedLaunchError:
        summary = None
    boot_apps = {} if summary is None else boot_app_labels(summary, boot_app_components(summary.boot_apps))
    views = [dataclasses.replace(view, blamed_events=blamed_events(view, log)) for view in views]
    blamed: dict[int, list[int]] = {}
    for view in views:
        for index in view.blamed_events:
            blamed.setdefault(index, []).append(view.number)
    failed_pcrs = {view.pcr for view in views if view.check in _PCR_CHECKS and view.pcr is not None}
    digest_bank = "sha256" if "sha256" in log.banks else log.banks[0]
    rows = tuple(
        EventRow(
            index=event.index,
            pcr=event.pcr,
            type_name=event.type_name,
            digest_bank=digest_bank,
            digest=event.digests.get(digest_bank, b"").hex(),
            description=describe_event(event, boot_apps),
            findings=tuple(blamed.get(event.index, ())),
            in_failed_pcr=event.pcr in failed_pcrs and event.event_type != EV_NO_ACTION,
        )
        for event in log.events
    )
    notes = summary.notes if summary is not None else ()
    return EvidenceView(tuple(views), rows, log.format, log.banks, notes=notes)


@dataclass(frozen=True)
class PcrRow:
    """One PCR as the node quoted it next to the value its predicted policy expects (None: not quoted, or
    no value predicted)."""

    bank: str
    index: int
    quoted: str | None
    expected: str | None

    @property
    def mismatch(self) -> bool:
        """True when a value was predicted and the quote holds another."""
        return (
            self.expected is not None
            and self.quoted is not None
            and self.quoted.lower() != self.expected.lower()
        )


def expected_pcrs(policy_json: str | None) -> tuple[dict[tuple[str, int], str], str | None]:
    """The golden PCR values of a predicted policy document by (bank, PCR), and why there are none (no
    policy stored, or one that does not load)."""
    if policy_json is None:
        return {}, (
            "No predicted policy is stored for the VM this attestation came from (the node was replaced "
            "since, or an older release provisioned it): only the quoted values are shown."
        )
    try:
        policy = Policy.from_json(policy_json, source="the node's predicted policy")
    except PolicyError as exc:
        return {}, str(exc)
    if not policy.golden_pcrs:
        return {}, "The node's predicted policy sets no PCR value."
    return {(golden.bank, golden.pcr): golden.value for golden in policy.golden_pcrs}, None


def pcr_rows(
    quoted: Mapping[str, Mapping[str, str]] | None, expected: Mapping[tuple[str, int], str]
) -> list[PcrRow]:
    """Quoted and expected PCRs side by side, by bank and index."""
    values = {
        (bank, int(index)): value
        for bank, indexes in (quoted or {}).items()
        for index, value in indexes.items()
        if str(index).isdigit()
    }
    return [
        PcrRow(bank, index, values.get((bank, index)), expected.get((bank, index)))
        for bank, index in sorted(values.keys() | expected.keys())
    ]
