"""Evidence: collection from a real swtpm, JSON round trip, and size / format errors."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.attest.evidence import (
    MAX_EVENT_LOG_SIZE,
    MAX_QUOTE_SIZE,
    Evidence,
    EvidenceError,
    collect_evidence,
    extend_event_log,
    load_evidence,
)
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import replay
from trustedlaunch.tpm.structures import parse_tpms_attest, parse_tpmt_public
from trustedlaunch.tpm.swtpm import Swtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14)
NONCE = bytes.fromhex("5eed0f1ce0ffee00")


@pytest.fixture(scope="module")
def swtpm_evidence(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    """Evidence from a real swtpm whose PCRs were extended with the rhel8-uefi log's events."""
    raw_log = (testdata / RHEL8).read_bytes()
    with Swtpm() as tpm:
        extend_event_log(tpm, parse_event_log(raw_log))
        yield collect_evidence(
            tpm,
            raw_log,
            nonce=NONCE,
            pcrs=PCRS,
            banks=("sha1", "sha256"),
            workdir=tmp_path_factory.mktemp("quote"),
        )


def test_swtpm_pcrs_equal_the_replayed_log(swtpm_evidence: Evidence) -> None:
    replayed = replay(parse_event_log(swtpm_evidence.event_log))
    assert swtpm_evidence.pcr_values is not None
    for bank in ("sha1", "sha256"):
        assert set(swtpm_evidence.pcr_values[bank]) == set(PCRS)
        assert swtpm_evidence.pcr_values[bank] == {pcr: replayed[bank][pcr] for pcr in PCRS}


def test_collected_structures_parse(swtpm_evidence: Evidence) -> None:
    attest = parse_tpms_attest(swtpm_evidence.quote)
    assert attest.extra_data == NONCE
    assert attest.quote is not None
    assert {s.bank: s.pcrs for s in attest.quote.pcr_select} == {"sha1": PCRS, "sha256": PCRS}
    ak = parse_tpmt_public(swtpm_evidence.ak_public)
    assert ak.raw == swtpm_evidence.ak_public


def test_json_round_trip(swtpm_evidence: Evidence, tmp_path: Path) -> None:
    text = swtpm_evidence.to_json()
    document = json.loads(text)
    assert base64.b64decode(document["eventLog"]) == swtpm_evidence.event_log
    assert swtpm_evidence.pcr_values is not None
    assert document["pcrValues"]["sha256"]["7"] == swtpm_evidence.pcr_values["sha256"][7].hex()
    assert Evidence.from_json(text) == swtpm_evidence
    path = tmp_path / "evidence.json"
    path.write_text(text)
    assert load_evidence(path) == swtpm_evidence


def test_round_trip_without_pcr_values(swtpm_evidence: Evidence) -> None:
    bare = Evidence(swtpm_evidence.ak_public, swtpm_evidence.quote, swtpm_evidence.signature, b"\x01")
    assert Evidence.from_json(bare.to_json()) == bare


def _document(evidence: Evidence, **changes: object) -> dict[str, object]:
    document = evidence.to_dict()
    document.update(changes)
    return document


def test_oversized_event_log_is_rejected_naming_the_field_and_limit(swtpm_evidence: Evidence) -> None:
    huge = base64.b64encode(bytes(MAX_EVENT_LOG_SIZE + 1)).decode()
    with pytest.raises(EvidenceError, match=rf"'eventLog'.*{MAX_EVENT_LOG_SIZE}-byte limit"):
        Evidence.from_dict(_document(swtpm_evidence, eventLog=huge), source="node-7")


def test_size_problems_lists_every_oversized_and_empty_field(swtpm_evidence: Evidence) -> None:
    evidence = Evidence(swtpm_evidence.ak_public, bytes(MAX_QUOTE_SIZE + 1), b"", swtpm_evidence.event_log)
    problems = evidence.size_problems()
    assert problems == [
        f"evidence field 'quote' is {MAX_QUOTE_SIZE + 1} bytes, above the {MAX_QUOTE_SIZE}-byte limit",
        "evidence field 'signature' is empty",
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"quote": "not base64!"}, r"field 'quote' is not valid base64"),
        ({"signature": 5}, r"field 'signature' must be a base64 string, got int"),
        ({"extra": 1}, r"unknown field\(s\) extra"),
        ({"pcrValues": {"md5": {}}}, r"'pcrValues.md5': unknown bank"),
        ({"pcrValues": {"sha256": {"24": "00" * 32}}}, r"PCR index '24' is not 0..23"),
        ({"pcrValues": {"sha256": {"\u00b2": "00" * 32}}}, r"PCR index '\u00b2' is not 0..23"),
        ({"pcrValues": {"sha256": {"7": "abcd"}}}, r"'pcrValues.sha256.7': expected 64 hex digits"),
    ],
)
def test_malformed_fields_are_named(
    swtpm_evidence: Evidence, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(EvidenceError, match=message):
        Evidence.from_dict(_document(swtpm_evidence, **changes))


def test_not_json_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="not a valid JSON document"):
        Evidence.from_json("{nope")
    with pytest.raises(EvidenceError, match="cannot read evidence file"):
        load_evidence(tmp_path / "absent.json")


def test_log_with_startup_locality_cannot_be_extended_into_swtpm(testdata: Path) -> None:
    log = parse_event_log((testdata / "go-tpm-tools/eventlogs/glinux-alex.bin").read_bytes())
    with Swtpm() as tpm, pytest.raises(EvidenceError, match="starts at locality 3"):
        extend_event_log(tpm, log)
