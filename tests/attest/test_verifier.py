"""The verifier end to end on evidence quoted by a real swtpm whose PCRs replay a real event log."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import MAX_EVENT_LOG_SIZE, Evidence, collect_evidence, extend_event_log
from trustedlaunch.attest.machine_state import event_data_findings
from trustedlaunch.attest.policy import CmdlineRules, Policy
from trustedlaunch.attest.quote import ClockState
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.eventlog.types import EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR
from trustedlaunch.findings import Check
from trustedlaunch.tpm.swtpm import Swtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
ALL_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14)
NONCE = bytes.fromhex("0badc0ffee15600d")
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003


@dataclasses.dataclass(frozen=True)
class SwtpmEvidence:
    full: Evidence  # sha1 + sha256 quote of every PCR the log extends
    firmware_only: Evidence  # sha256 quote of PCR0-7 only
    policy: Policy  # derived from the same log


@pytest.fixture(scope="module")
def quoted(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwtpmEvidence]:
    raw_log = (testdata / RHEL8).read_bytes()
    log = parse_event_log(raw_log)
    with Swtpm() as tpm:
        extend_event_log(tpm, log)
        full = collect_evidence(
            tpm,
            raw_log,
            nonce=NONCE,
            pcrs=ALL_PCRS,
            banks=("sha1", "sha256"),
            workdir=tmp_path_factory.mktemp("q"),
        )
        firmware_only = collect_evidence(
            tpm, raw_log, nonce=NONCE, pcrs=range(8), banks=("sha256",), workdir=tmp_path_factory.mktemp("q")
        )
    yield SwtpmEvidence(full, firmware_only, policy_from_summary(summarize(log)))


def test_real_quote_of_a_real_log_passes(quoted: SwtpmEvidence) -> None:
    result = verify(quoted.full, nonce=NONCE, policy=quoted.policy)
    assert result.findings == ()
    assert result.ok
    assert result.summary is not None and result.summary.secure_boot is True
    assert quoted.full.pcr_values is not None
    for bank in ("sha1", "sha256"):
        assert {pcr: result.replayed_pcrs[bank][pcr] for pcr in ALL_PCRS} == quoted.full.pcr_values[bank]
    assert result.clock is not None and result.clock.clock > 0


def test_clock_state_is_carried_between_verifications(quoted: SwtpmEvidence) -> None:
    first = verify(quoted.full, nonce=NONCE, policy=quoted.policy)
    assert first.clock is not None
    again = verify(quoted.full, nonce=NONCE, policy=quoted.policy, last_clock=first.clock)
    assert again.ok
    later = ClockState(first.clock.reset_count, first.clock.clock + 60_000)
    replayed = verify(quoted.full, nonce=NONCE, policy=quoted.policy, last_clock=later)
    assert [f.check for f in replayed.findings] == [Check.CLOCK]
    assert not replayed.ok and replayed.summary is None


def test_wrong_nonce_is_rejected_before_the_policy(quoted: SwtpmEvidence) -> None:
    result = verify(quoted.full, nonce=bytes.fromhex("0badc0ffee15600e"), policy=Policy(secure_boot=False))
    assert [(f.check, f.component) for f in result.findings] == [(Check.NONCE, "quote")]
    assert NONCE.hex() in result.findings[0].message
    assert result.summary is None and not result.ok


def _edit_app_digest(raw_log: bytes, index: int) -> tuple[bytes, int]:
    """The log with the sha256 digest of boot-application event `index` changed; and that event's PCR."""
    event = parse_event_log(raw_log).events[index]
    digest = event.digests["sha256"]
    at = raw_log.index(digest, event.offset)
    edited = raw_log[:at] + bytes([digest[0] ^ 0xFF]) + raw_log[at + 1 :]
    return edited, event.pcr


def test_edited_event_digest_makes_the_replay_differ_from_the_quote(quoted: SwtpmEvidence) -> None:
    log = parse_event_log(quoted.full.event_log)
    grub = [e for e in log.events if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION][1]
    edited, pcr = _edit_app_digest(quoted.full.event_log, grub.index)
    assert replay(parse_event_log(edited))["sha256"][pcr] != replay(log)["sha256"][pcr]
    result = verify(dataclasses.replace(quoted.full, event_log=edited), nonce=NONCE, policy=quoted.policy)
    assert [(f.check, f.pcr) for f in result.findings] == [(Check.PCR_DIGEST, pcr)]
    assert f"sha256 PCR{pcr}" in result.findings[0].message and "sha1" not in result.findings[0].message
    without_values = dataclasses.replace(quoted.full, event_log=edited, pcr_values=None)
    [finding] = verify(without_values, nonce=NONCE, policy=quoted.policy).findings
    assert finding.check is Check.PCR_DIGEST


@pytest.mark.parametrize("field", ["quote", "signature"])
def test_forged_quote_stops_with_one_finding(quoted: SwtpmEvidence, field: str) -> None:
    original: bytes = getattr(quoted.full, field)
    forged = original[:-5] + bytes([original[-5] ^ 0x01]) + original[-4:]
    result = verify(
        dataclasses.replace(quoted.full, **{field: forged}), nonce=NONCE, policy=Policy(secure_boot=False)
    )
    assert [f.check for f in result.findings] == [Check.QUOTE_SIGNATURE]
    assert result.summary is None


def test_quote_must_cover_every_pcr_the_log_extends(quoted: SwtpmEvidence) -> None:
    result = verify(quoted.firmware_only, nonce=NONCE, policy=quoted.policy)
    [finding] = result.findings
    assert finding.check is Check.PCR_SELECTION
    assert "does not cover PCR8, PCR9, PCR14" in finding.message


def test_policy_failures_after_a_good_quote_are_all_reported(quoted: SwtpmEvidence) -> None:
    policy = dataclasses.replace(
        quoted.policy, secure_boot=False, kernel_cmdline=CmdlineRules(forbidden_tokens=("ro",))
    )
    result = verify(quoted.full, nonce=NONCE, policy=policy)
    assert [f.check for f in result.findings] == [Check.SECURE_BOOT, Check.KERNEL_CMDLINE]
    assert result.summary is not None and result.clock is not None and not result.ok


def test_malformed_inputs_become_evidence_findings(quoted: SwtpmEvidence) -> None:
    truncated = dataclasses.replace(quoted.full, event_log=quoted.full.event_log[:1000])
    [finding] = verify(truncated, nonce=NONCE, policy=quoted.policy).findings
    assert (finding.check, finding.component) == (Check.EVIDENCE_FORMAT, "event log")
    assert finding.event_index is not None and "event #" in finding.message

    huge = dataclasses.replace(quoted.full, event_log=bytes(MAX_EVENT_LOG_SIZE + 1))
    [finding] = verify(huge, nonce=NONCE, policy=quoted.policy).findings
    assert (finding.check, finding.component) == (Check.EVIDENCE_FORMAT, "evidence")
    assert "'eventLog'" in finding.message

    bad_ak = dataclasses.replace(quoted.full, ak_public=quoted.full.ak_public[:40])
    [finding] = verify(bad_ak, nonce=NONCE, policy=quoted.policy).findings
    assert (finding.check, finding.component) == (Check.EVIDENCE_FORMAT, "AK")


def test_result_and_evidence_json_round_trip(quoted: SwtpmEvidence) -> None:
    evidence = Evidence.from_json(quoted.full.to_json())
    result = verify(evidence, nonce=NONCE, policy=quoted.policy)
    document = result.to_dict()
    assert json.loads(json.dumps(document)) == document
    assert document["ok"] is True and document["findings"] == []
    assert quoted.full.pcr_values is not None
    assert document["replayedPcrs"]["sha256"]["7"] == quoted.full.pcr_values["sha256"][7].hex()
    assert [app["component"] for app in document["boot"]["bootApplications"]] == ["shim", "grub", "kernel"]
    failed: AttestationResult = verify(evidence, nonce=b"", policy=quoted.policy)
    assert json.loads(json.dumps(failed.to_dict()))["findings"][0]["check"] == "NonceMismatch"


def _real_logs(testdata: Path) -> list[Path]:
    logs = [
        *testdata.glob("*/eventlogs/*.bin"),
        *testdata.glob("qemu-ovmf/*.bin"),
        *testdata.glob("keylime/*"),
    ]
    return sorted(
        p for p in logs if p.suffix not in (".b64", ".json") and "bogus" not in p.name and p.name != "LICENSE"
    )


def test_no_event_of_a_real_log_is_reported_as_edited(testdata: Path) -> None:
    logs = _real_logs(testdata)
    assert len(logs) >= 20
    for path in logs:
        assert event_data_findings(parse_event_log(path.read_bytes())) == [], path


def _edit_event_data(raw_log: bytes, index: int, old: bytes, new: bytes) -> bytes:
    event = parse_event_log(raw_log).events[index]
    at = raw_log.index(old, event.offset)
    assert len(old) == len(new) and at < event.offset + 200 + len(event.data)
    return raw_log[:at] + new + raw_log[at + len(old) :]


def test_edited_cmdline_text_with_the_original_digest_is_caught(quoted: SwtpmEvidence) -> None:
    log = parse_event_log(quoted.full.event_log)
    cmdline_events = [e for e in log.events if e.pcr == 8 and e.data.startswith(b"grub_kernel_cmdline ")]
    assert len(cmdline_events) == 1
    target = cmdline_events[0]
    edited = _edit_event_data(quoted.full.event_log, target.index, b" ro ", b" rw ")
    assert replay(parse_event_log(edited)) == replay(log)  # digests untouched: the quote still matches
    result = verify(dataclasses.replace(quoted.full, event_log=edited), nonce=NONCE, policy=quoted.policy)
    assert [(f.check, f.pcr, f.event_index) for f in result.findings] == [(Check.EVENT_DATA, 8, target.index)]
    assert result.summary is None and result.clock is None


def test_edited_db_variable_data_is_caught(quoted: SwtpmEvidence) -> None:
    db = summarize(parse_event_log(quoted.full.event_log)).variables["db"].event
    assert db.pcr == 7
    tail = db.data[-8:]
    edited = _edit_event_data(quoted.full.event_log, db.index, tail, bytes(b ^ 0x55 for b in tail))
    [finding] = verify(
        dataclasses.replace(quoted.full, event_log=edited), nonce=NONCE, policy=quoted.policy
    ).findings
    assert (finding.check, finding.pcr, finding.event_index) == (Check.EVENT_DATA, 7, db.index)
    assert "EV_EFI_VARIABLE_DRIVER_CONFIG" in finding.message


def _must_reject_positions(raw_log: bytes) -> set[int]:
    """Byte positions of the log whose change must be rejected: every sha256 digest, and the data of the
    Secure Boot variables and separators the policy reads."""
    positions: set[int] = set()
    events = parse_event_log(raw_log).events
    for event, following in zip(events[1:], [*events[2:], None], strict=True):
        end = following.offset if following is not None else len(raw_log)
        digest_at = raw_log.index(event.digests["sha256"], event.offset)
        positions.update(range(digest_at, digest_at + 32))
        if event.event_type in (EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR):
            positions.update(range(end - len(event.data), end))
    return positions


def test_corrupted_event_log_never_raises_and_measured_bytes_are_rejected(quoted: SwtpmEvidence) -> None:
    raw_log = quoted.full.event_log
    must_reject = _must_reject_positions(raw_log)
    checked = 0
    for position in range(0, len(raw_log), 7):
        corrupted = raw_log[:position] + bytes([raw_log[position] ^ 0xA5]) + raw_log[position + 1 :]
        result = verify(
            dataclasses.replace(quoted.full, event_log=corrupted), nonce=NONCE, policy=quoted.policy
        )
        assert result.ok == (not result.findings)
        if position in must_reject:
            assert not result.ok, f"byte {position} changed but the evidence was accepted"
            checked += 1
    assert checked > 1000


@pytest.mark.parametrize("field", ["quote", "signature", "ak_public"])
def test_corrupted_quote_parts_never_raise_and_are_rejected(quoted: SwtpmEvidence, field: str) -> None:
    original: bytes = getattr(quoted.full, field)
    # the AK's attributes, nameAlg and policy are not bound by the quote (AK_BINDING checks them); its
    # RSA modulus, the last 256 bytes, is
    must_reject = range(len(original) - 256, len(original)) if field == "ak_public" else range(len(original))
    for position in range(len(original)):
        corrupted = original[:position] + bytes([original[position] ^ 0xA5]) + original[position + 1 :]
        evidence = dataclasses.replace(quoted.full, **{field: corrupted})
        result = verify(evidence, nonce=NONCE, policy=quoted.policy)
        assert result.ok == (not result.findings)
        if position in must_reject:
            assert not result.ok and len(result.findings) == 1, (field, position, result.findings)


@pytest.mark.parametrize("new_type", [0x80000007, 0x80000004])  # EV_EFI_ACTION, EV_EFI_BOOT_SERVICES_DRIVER
def test_relabelled_boot_application_is_caught(quoted: SwtpmEvidence, new_type: int) -> None:
    raw_log = quoted.full.event_log
    grub = [e for e in parse_event_log(raw_log).events if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION][1]
    type_at = grub.offset + 4  # TCG_PCR_EVENT2: pcrIndex, eventType, ...
    relabelled = raw_log[:type_at] + new_type.to_bytes(4, "little") + raw_log[type_at + 4 :]
    assert replay(parse_event_log(relabelled)) == replay(parse_event_log(raw_log))
    result = verify(dataclasses.replace(quoted.full, event_log=relabelled), nonce=NONCE, policy=quoted.policy)
    assert [(f.check, f.pcr, f.event_index) for f in result.findings] == [(Check.EVENT_DATA, 4, grub.index)]
