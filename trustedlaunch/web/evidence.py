"""The evidence view of one attestation: its event log as rows, each finding mapped to the events it blames.

A finding names its event when the check knows it (`eventIndex`); otherwise it is mapped by its check:
Secure Boot to the SecureBoot variable event, the kernel command line to the event it was read from, and a
PCR mismatch to every event measured into that PCR (the first differing event, when named, is blamed
exactly, the rest of the PCR is marked as its context).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from trustedlaunch.attest.policy import boot_app_components
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import BootSummary, Event, EventLog
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import (
    SEPARATOR_NORMAL,
    VariableDataError,
    decode_variable,
    describe_ipl,
    summarize,
)
from trustedlaunch.eventlog.types import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
)
from trustedlaunch.findings import Check

DESCRIPTION_LIMIT = 240
_VARIABLE_TYPES = frozenset(
    {EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_VARIABLE_BOOT, EV_EFI_VARIABLE_BOOT2, EV_EFI_VARIABLE_AUTHORITY}
)
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


def _text(data: bytes) -> str:
    text = data.rstrip(b"\x00")
    if text and text.isascii() and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in text):
        return text.decode("ascii")
    return f"{len(data)} bytes"


def _variable_description(event: Event) -> str:
    try:
        variable = decode_variable(event)
    except VariableDataError as exc:
        return f"variable does not decode: {exc}"
    if variable.name == "SecureBoot" and variable.data:
        return f"SecureBoot = {'enabled' if variable.data[0] == 1 else 'disabled'}"
    return f"{variable.name} ({len(variable.data)} bytes)"


def describe_event(event: Event, boot_apps: Mapping[int, str]) -> str:
    """One line saying what an event measured: the boot application, the variable, the string, ..."""
    if event.event_type == EV_EFI_BOOT_SERVICES_APPLICATION and event.index in boot_apps:
        text = boot_apps[event.index]
    elif event.event_type in _VARIABLE_TYPES:
        text = _variable_description(event)
    elif event.event_type == EV_IPL:
        text = describe_ipl(event.data)
    elif event.event_type == EV_SEPARATOR:
        state = "normal" if event.data == SEPARATOR_NORMAL else "not the normal value"
        text = f"separator {event.data.hex()} ({state})"
    else:
        text = _text(event.data)
    text = " ".join(text.split())
    return text if len(text) <= DESCRIPTION_LIMIT else text[: DESCRIPTION_LIMIT - 1] + "…"


def _optional_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def finding_views(findings: Sequence[Mapping[str, object]]) -> list[FindingView]:
    """Stored findings (Finding.to_dict()) as views, numbered from 1; missing fields become blanks."""
    return [
        FindingView(
            number=number,
            check=str(finding.get("check", "")),
            component=str(finding.get("component", "")),
            pcr=_optional_int(finding.get("pcr")),
            event_index=_optional_int(finding.get("eventIndex")),
            message=str(finding.get("message", "")),
        )
        for number, finding in enumerate(findings, start=1)
    ]


def blamed_events(finding: FindingView, log: EventLog, summary: BootSummary | None) -> tuple[int, ...]:
    """The indexes of the events a finding blames exactly (see the module docstring)."""
    if finding.event_index is not None and 0 <= finding.event_index < len(log.events):
        return (finding.event_index,)
    event: Event | None = None
    if summary is not None and finding.check == Check.SECURE_BOOT.value:
        variable = summary.variables.get("SecureBoot")
        event = variable.event if variable else None
    elif summary is not None and finding.check == Check.KERNEL_CMDLINE.value:
        event = summary.kernel_cmdline_event
    return (event.index,) if event is not None else ()


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
    boot_apps: dict[int, str] = {}
    if summary is not None:
        for app, component in zip(summary.boot_apps, boot_app_components(summary.boot_apps), strict=True):
            boot_apps[app.event.index] = f"{component}: {app.device_path or '(loaded from memory)'}"
    views = [dataclasses.replace(view, blamed_events=blamed_events(view, log, summary)) for view in views]
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
