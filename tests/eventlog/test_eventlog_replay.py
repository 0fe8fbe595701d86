"""Replay tests: every shared log replays to the PCR values its upstream project expects."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import yaml
from eventlog_files import ALL_LOGS, STARTUP_LOCALITY_3_LOGS

from trustedlaunch.eventlog.model import EventLogError
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import (
    diff_pcrs,
    initial_pcr_value,
    pcr_composite_digest,
    replay,
)
from trustedlaunch.eventlog.types import digest_size


def _expected_go_tpm_tools(testdata: Path) -> dict[str, dict[str, object]]:
    return json.loads((testdata / "go-tpm-tools" / "expected_pcrs.json").read_text())  # type: ignore[no-any-return]


GO_TPM_TOOLS_CASES = [
    "Rhel8GCE",
    "UbuntuAmdSevGCE",
    "Ubuntu2104NoDbxGCE",
    "Ubuntu2104NoSecureBootGCE",
    "Ubuntu2404AmdSevSnp",
    "GlinuxNoSecureBootLaptop",
    "ArchLinuxWorkstation",
    "Debian10GCE",
    "COS85AmdSev",
    "COS93AmdSev",
    "COS101AmdSev",
    "GdcHost",
    "SP800155EventLog",
    "CGKE251000",
]


def test_every_go_tpm_tools_case_is_covered(testdata: Path) -> None:
    assert sorted(_expected_go_tpm_tools(testdata)) == sorted(GO_TPM_TOOLS_CASES)


@pytest.mark.parametrize("case", GO_TPM_TOOLS_CASES)
def test_go_tpm_tools_logs_replay_to_expected_pcrs(testdata: Path, case: str) -> None:
    expected = _expected_go_tpm_tools(testdata)[case]
    log = parse_event_log((testdata / "go-tpm-tools" / str(expected["file"])).read_bytes())
    replayed = replay(log)
    banks: dict[str, dict[str, str]] = expected["pcrs"]  # type: ignore[assignment]
    assert banks
    for bank, pcrs in banks.items():
        assert {int(pcr): value.hex() for pcr, value in replayed[bank].items() if str(pcr) in pcrs} == {
            int(pcr): value for pcr, value in pcrs.items()
        }


def _go_attestation_expected(testdata: Path, name: str, bank: str) -> dict[int, bytes]:
    expected = json.loads((testdata / "go-attestation" / "expected_pcrs.json").read_text())[name]
    return {int(pcr): bytes.fromhex(value) for pcr, value in expected[bank].items()}


@pytest.mark.parametrize("bank", ["sha1", "sha256"])
def test_sb_cert_log_matches_all_24_quoted_pcrs_except_ima_pcr10(testdata: Path, bank: str) -> None:
    log = parse_event_log((testdata / "go-attestation" / "sb_cert_eventlog").read_bytes())
    quoted = _go_attestation_expected(testdata, "sb_cert_eventlog", bank)
    assert len(quoted) == 24
    # PCR10 holds IMA measurements, which are not in the firmware log (upstream eventlog_test.go).
    assert [mismatch.pcr for mismatch in diff_pcrs(log, bank, quoted)] == [10]


def test_option_rom_log_replays_to_expected_sha1_pcrs(testdata: Path) -> None:
    log = parse_event_log((testdata / "go-attestation" / "option_rom_eventlog").read_bytes())
    quoted = _go_attestation_expected(testdata, "option_rom_eventlog", "sha1")
    assert sorted(quoted) == list(range(8))
    assert diff_pcrs(log, "sha1", quoted) == []


def test_ebs_missing_log_mismatches_pcr5_until_exit_boot_services_is_added(testdata: Path) -> None:
    log = parse_event_log((testdata / "go-attestation" / "ebs_event_missing_eventlog").read_bytes())
    quoted = _go_attestation_expected(testdata, "ebs_event_missing_eventlog", "sha1")
    mismatches = diff_pcrs(log, "sha1", quoted)
    assert [m.pcr for m in mismatches] == [5]
    assert "PCR5" in str(mismatches[0])
    # go-attestation's workaround: the two Exit Boot Services EV_EFI_ACTION events the firmware forgot.
    value = replay(log)["sha1"][5]
    for action in (b"Exit Boot Services Invocation", b"Exit Boot Services Returned with Success"):
        value = hashlib.sha1(value + hashlib.sha1(action).digest()).digest()
    assert value == quoted[5]


def _quote_pcr_digest(attest: bytes) -> tuple[list[int], str, bytes]:
    """PCR selection (one bank) and pcrDigest of a TPMS_ATTEST quote, read field by field."""
    offset = 6  # magic, type
    for _ in range(2):  # qualifiedSigner, extraData
        (size,) = struct.unpack_from(">H", attest, offset)
        offset += 2 + size
    offset += 17 + 8  # clockInfo, firmwareVersion
    (count,) = struct.unpack_from(">I", attest, offset)
    assert count == 1
    alg, select_size = struct.unpack_from(">HB", attest, offset + 4)
    bitmap = attest[offset + 7 : offset + 7 + select_size]
    offset += 7 + select_size
    (digest_len,) = struct.unpack_from(">H", attest, offset)
    pcrs = [pcr for pcr in range(select_size * 8) if bitmap[pcr // 8] & (1 << (pcr % 8))]
    bank = {0x0004: "sha1", 0x000B: "sha256"}[alg]
    return pcrs, bank, attest[offset + 2 : offset + 2 + digest_len]


def test_windows_quote_pcr_digest_and_replay(testdata: Path) -> None:
    dump = json.loads((testdata / "go-attestation" / "windows_gcp_shielded_vm.json").read_text())
    quoted = {entry["Index"]: base64.b64decode(entry["Digest"]) for entry in dump["Log"]["PCRs"]}
    selected, bank, pcr_digest = _quote_pcr_digest(base64.b64decode(dump["Quote"]["Quote"]))
    assert bank == "sha1"
    assert pcr_composite_digest(quoted, selected, bank) == pcr_digest
    assert pcr_composite_digest(quoted, list(reversed(selected)), bank) == pcr_digest
    assert pcr_composite_digest(quoted, selected[1:], bank) != pcr_digest
    log = parse_event_log(base64.b64decode(dump["Log"]["Raw"]))
    assert diff_pcrs(log, bank, quoted) == []


def test_pcr_composite_digest_rejects_missing_values() -> None:
    with pytest.raises(EventLogError, match="no value for PCR 7"):
        pcr_composite_digest({0: bytes(32)}, [0, 7], "sha256")
    with pytest.raises(EventLogError, match="md5"):
        pcr_composite_digest({0: bytes(32)}, [0], "md5")


@pytest.mark.parametrize("name", STARTUP_LOCALITY_3_LOGS)
def test_pcr0_starts_at_the_startup_locality(testdata: Path, name: str) -> None:
    log = parse_event_log((testdata / name).read_bytes())
    assert (
        initial_pcr_value(log.banks[0], 0, log.startup_locality)
        == bytes(digest_size(log.banks[0]) - 1) + b"\x03"
    )


def test_initial_values() -> None:
    assert initial_pcr_value("sha256", 17) == b"\xff" * 32
    assert initial_pcr_value("sha1", 7, 3) == bytes(20)
    with pytest.raises(EventLogError, match="unknown PCR bank"):
        initial_pcr_value("crc32", 0)


def _extended_banks(replayed: dict[str, dict[int, bytes]]) -> dict[str, dict[int, bytes]]:
    """Banks that at least one event extends (tpm2-tools leaves out banks without a digest)."""
    return {bank: pcrs for bank, pcrs in replayed.items() if pcrs}


def _tpm2_tools_pcrs(raw: dict[str, dict[int, int]]) -> dict[str, dict[int, bytes]]:
    return {
        bank: {pcr: value.to_bytes(digest_size(bank), "big") for pcr, value in pcrs.items()}
        for bank, pcrs in raw.items()
    }


@pytest.mark.parametrize(
    "name",
    [
        "event-arch-linux.bin",
        "event-bootorder.bin",
        "event-gce-ubuntu-2104-log.bin",
        "event-moklisttrusted.bin",
        "event-postcode.bin",
        "event-sd-boot-fedora37.bin",
        "event-uefi-sha1-log.bin",
        "event-uefiaction.bin",
        "event-uefiservices.bin",
        "event-uefivar.bin",
    ],
)
def test_replay_matches_tpm2_tools_golden_yaml(testdata: Path, name: str) -> None:
    text = (testdata / "tpm2-tools" / "pretty" / f"{name}.yaml").read_text()
    golden = yaml.safe_load(text[text.index("\npcrs:") :])["pcrs"]
    log = parse_event_log((testdata / "tpm2-tools" / name).read_bytes())
    assert log.startup_locality == 0  # the golden files hold no StartupLocality log (tpm2-tools 5.4 bug)
    assert _extended_banks(replay(log)) == _tpm2_tools_pcrs(golden)


# tpm2_eventlog 5.4 ignores StartupLocality for PCR0 and disagrees with go-tpm-tools on the SP800-155 logs;
# short_no_action (SHA-1 format, no SpecID) and option_rom are rejected by it.
TPM2_EVENTLOG_WRONG_OR_FAILS = {
    *STARTUP_LOCALITY_3_LOGS,
    "go-tpm-tools/eventlogs/eventlogwithsp800155.bin",
    "go-tpm-tools/eventlogs/confidential-gke-debug-251000_eventlog.bin",
    "go-attestation/option_rom_eventlog",
}


@pytest.mark.skipif(shutil.which("tpm2_eventlog") is None, reason="tpm2-tools not installed")
@pytest.mark.parametrize("name", [n for n in ALL_LOGS if n not in TPM2_EVENTLOG_WRONG_OR_FAILS])
def test_replay_matches_installed_tpm2_eventlog(testdata: Path, name: str) -> None:
    run = subprocess.run(
        ["tpm2_eventlog", str(testdata / name)], capture_output=True, text=True, check=True, timeout=60
    )
    golden = yaml.safe_load(run.stdout).get("pcrs") or {}
    replayed = replay(parse_event_log((testdata / name).read_bytes()))
    assert _extended_banks(replayed) == _tpm2_tools_pcrs(golden)
