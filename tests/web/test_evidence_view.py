"""Findings of the real policy on real event logs, mapped onto the events the evidence page highlights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from verified_boots import vouched
from web_helpers import RHEL8, grub_policy

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evaluation import evaluate
from trustedlaunch.attest.policy import CmdlineRules, ExpectedEvent, GoldenPcr, Policy
from trustedlaunch.eventlog.model import BootSummary, EventLog
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.eventlog.types import EV_NO_ACTION
from trustedlaunch.findings import Check, Finding
from trustedlaunch.web.evidence import EvidenceView, build_evidence_view


@dataclasses.dataclass(frozen=True)
class Boot:
    raw: bytes
    log: EventLog
    summary: BootSummary
    policy: Policy

    def view(self, policy: Policy) -> tuple[list[Finding], EvidenceView]:
        """Evaluate the real policy and build the view of its findings (as stored: Finding.to_dict())."""
        findings = evaluate(policy, vouched(self.summary, log=self.log, pcr_values=replay(self.log)))
        return findings, build_evidence_view(self.raw, [finding.to_dict() for finding in findings])


@pytest.fixture(scope="module")
def rhel8(testdata: Path) -> Boot:
    raw = (testdata / RHEL8).read_bytes()
    log = parse_event_log(raw)
    summary = summarize(log)
    return Boot(raw, log, summary, policy_from_summary(summary))


def failed_rows(view: EvidenceView) -> list[int]:
    return [row.index for row in view.rows if row.failed]


def test_the_log_s_own_policy_highlights_nothing(rhel8: Boot) -> None:
    findings, view = rhel8.view(rhel8.policy)
    assert findings == [] and view.findings == ()
    assert len(view.rows) == len(rhel8.log.events) and failed_rows(view) == []
    assert not any(row.in_failed_pcr for row in view.rows)
    assert view.log_format == "crypto-agile" and view.banks == ("sha1", "sha256", "sha384")


def test_a_boot_application_finding_blames_that_application_s_event(rhel8: Boot) -> None:
    findings, view = rhel8.view(grub_policy(rhel8.policy))
    assert [finding.check for finding in findings] == [Check.BOOT_APPLICATION]
    grub = rhel8.summary.boot_apps[1]
    assert failed_rows(view) == [grub.event.index]
    row = view.rows[grub.event.index]
    assert row.pcr == 4 and row.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert row.digest == grub.digest("sha256").hex() and row.digest_bank == "sha256"
    assert row.description == "grub: \\EFI\\redhat\\grubx64.efi" and row.findings == (1,)
    assert view.findings[0].blamed_events == (grub.event.index,)
    assert view.findings[0].message == findings[0].message


def test_a_secure_boot_finding_blames_the_secure_boot_variable(rhel8: Boot) -> None:
    findings, view = rhel8.view(dataclasses.replace(rhel8.policy, secure_boot=False))
    assert [finding.check for finding in findings] == [Check.SECURE_BOOT]
    variable = rhel8.summary.variables["SecureBoot"].event
    assert failed_rows(view) == [variable.index]
    assert view.rows[variable.index].description == "SecureBoot = enabled"
    assert findings[0].event_index == variable.index  # the blame comes from the finding


def test_a_cmdline_finding_blames_the_command_line_event(rhel8: Boot) -> None:
    policy = dataclasses.replace(
        rhel8.policy, kernel_cmdline=CmdlineRules(required_tokens=("lockdown=integrity",))
    )
    findings, view = rhel8.view(policy)
    assert [finding.check for finding in findings] == [Check.KERNEL_CMDLINE]
    event = rhel8.summary.kernel_cmdline_event
    assert event is not None and rhel8.summary.kernel_cmdline is not None
    assert failed_rows(view) == [event.index]
    assert rhel8.summary.kernel_cmdline in view.rows[event.index].description
    assert findings[0].event_index == event.index  # the blame comes from the finding


def test_a_pcr_mismatch_marks_the_events_of_that_pcr(rhel8: Boot) -> None:
    findings, view = rhel8.view(Policy(golden_pcrs=(GoldenPcr("sha256", 4, "00" * 32),)))
    assert [(finding.check, finding.pcr, finding.event_index) for finding in findings] == [
        (Check.PCR_VALUE, 4, None)
    ]
    pcr4 = [e.index for e in rhel8.log.events if e.pcr == 4 and e.event_type != EV_NO_ACTION]
    assert [row.index for row in view.rows if row.in_failed_pcr] == pcr4 and len(pcr4) > 3
    assert failed_rows(view) == []


def test_a_pcr_mismatch_with_expected_events_blames_the_first_difference(rhel8: Boot) -> None:
    grub = rhel8.summary.boot_apps[1].event
    expected = tuple(
        ExpectedEvent(
            e.type_name, "firmware", f"event {e.index}", "cd" * 32 if e is grub else e.digests["sha256"].hex()
        )
        for e in rhel8.log.events
        if e.pcr == 4 and e.event_type != EV_NO_ACTION
    )
    findings, view = rhel8.view(Policy(golden_pcrs=(GoldenPcr("sha256", 4, "00" * 32, expected),)))
    assert [(finding.check, finding.event_index) for finding in findings] == [(Check.PCR_VALUE, grub.index)]
    assert failed_rows(view) == [grub.index]
    assert all(row.in_failed_pcr == (row.pcr == 4) for row in view.rows if row.type_name != "EV_NO_ACTION")


def test_findings_without_an_event_blame_none(rhel8: Boot) -> None:
    quote_level = Finding(Check.NONCE, "quote", "the quote's nonce is not the one sent").to_dict()
    out_of_range = Finding(Check.EVENT_DATA, "event log", "edited", pcr=4, event_index=10_000).to_dict()
    view = build_evidence_view(rhel8.raw, [quote_level, out_of_range, {"message": "a row with no fields"}])
    assert failed_rows(view) == [] and [f.blamed_events for f in view.findings] == [(), (), ()]
    assert view.findings[2].check == "" and view.findings[2].pcr is None


def test_an_unreadable_or_missing_log_keeps_the_findings(rhel8: Boot) -> None:
    finding = Finding(Check.EVIDENCE_FORMAT, "event log", "does not parse").to_dict()
    broken = build_evidence_view(rhel8.raw[:200], [finding])
    assert broken.rows == () and broken.log_error and "event" in broken.log_error
    assert [f.message for f in broken.findings] == ["does not parse"]
    missing = build_evidence_view(None, [finding])
    assert missing.rows == () and missing.log_error is None and len(missing.findings) == 1


def test_descriptions_of_other_logs(testdata: Path) -> None:
    raw = (testdata / "tpm2-tools/event-sd-boot-fedora37.bin").read_bytes()
    view = build_evidence_view(raw, [])
    log = parse_event_log(raw)
    summary = summarize(log)
    cmdline = summary.kernel_cmdline_event
    assert cmdline is not None and cmdline.pcr == 12
    assert view.rows[cmdline.index].description == " ".join(summary.kernel_cmdline.split())  # type: ignore[union-attr]
    separators = [row for row in view.rows if row.type_name == "EV_SEPARATOR"]
    assert separators and all(row.description == "separator 00000000 (normal)" for row in separators)
    assert all(len(row.description) <= 240 for row in view.rows)
