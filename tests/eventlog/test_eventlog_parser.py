"""Parser tests against the real third-party event logs and against malformed input."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from eventlog_files import ALL_LOGS, STARTUP_LOCALITY_3_LOGS
from hypothesis import given, settings
from hypothesis import strategies as st

from trustedlaunch.eventlog.model import EventLog, EventLogError
from trustedlaunch.eventlog.parser import (
    MAX_EVENT_DATA_SIZE,
    MAX_EVENTS,
    parse_event_log,
    parse_event_log_file,
)
from trustedlaunch.eventlog.types import EV_NO_ACTION, event_type_name

PRETTY_YAML_LOGS = [
    "event-arch-linux.bin",
    "event-bootorder.bin",
    "event-gce-ubuntu-2104-log.bin",
    "event-moklisttrusted.bin",
    "event-postcode.bin",
    "event-sd-boot-fedora37.bin",
    "event-uefiaction.bin",
    "event-uefiservices.bin",
    "event-uefivar.bin",
]


def _load(testdata: Path, name: str) -> bytes:
    return (testdata / name).read_bytes()


@pytest.mark.parametrize("name", ALL_LOGS)
def test_every_shared_log_parses_into_contiguous_events(testdata: Path, name: str) -> None:
    data = _load(testdata, name)
    log = parse_event_log(data)
    assert [event.index for event in log.events] == list(range(len(log.events)))
    assert log.events[0].offset == 0
    # Each event starts where the previous one's data ends: header + digests + 4-byte size + data.
    for previous, event in zip(log.events, log.events[1:], strict=False):
        assert event.offset > previous.offset + len(previous.data)
        assert data[event.offset - len(previous.data) : event.offset] == previous.data
    last = log.events[-1]
    assert data.endswith(last.data)
    for event in log.events[1:]:
        if event.event_type != EV_NO_ACTION:
            assert set(event.digests) <= set(log.banks)


@pytest.mark.parametrize("name", PRETTY_YAML_LOGS)
def test_events_match_tpm2_tools_golden_yaml_field_by_field(testdata: Path, name: str) -> None:
    golden = yaml.safe_load((testdata / "tpm2-tools" / "pretty" / f"{name}.yaml").read_text())
    log = parse_event_log(_load(testdata, f"tpm2-tools/{name}"))
    expected_events: list[dict[str, Any]] = golden["events"]
    assert len(log.events) == len(expected_events)
    for event, expected in zip(log.events, expected_events, strict=True):
        assert event.index == expected["EventNum"]
        assert event.pcr == expected["PCRIndex"]
        assert event.type_name == expected["EventType"]
        assert len(event.data) == expected["EventSize"]
        if "Digests" in expected:
            assert {d["AlgorithmId"]: d["Digest"] for d in expected["Digests"]} == {
                bank: digest.hex() for bank, digest in event.digests.items()
            }
        else:
            assert event.digests["sha1"].hex() == expected["Digest"]


def test_sha1_format_log_is_detected(testdata: Path) -> None:
    log = parse_event_log(_load(testdata, "tpm2-tools/event-uefi-sha1-log.bin"))
    assert log.format == "sha1"
    assert log.banks == ("sha1",)
    assert log.events[0].type_name == "EV_S_CRTM_VERSION"
    # The golden YAML of tpm2-tools (version 1 format) lists this digest first.
    assert log.events[0].digests["sha1"].hex() == "c42fedad268200cb1d15f97841c344e79dae3320"


def test_spec_id_header_declares_banks_in_order(testdata: Path) -> None:
    assert parse_event_log(_load(testdata, "tpm2-tools/event-uefivar.bin")).banks == (
        "sha1",
        "sha256",
        "sha384",
        "sha512",
    )
    assert parse_event_log(_load(testdata, "go-tpm-tools/eventlogs/gdc-host.bin")).banks == ("sha256",)


def test_spec_id_vendor_info_outside_the_event_size_is_accepted_like_tpm2_tools(testdata: Path) -> None:
    log = parse_event_log(_load(testdata, "tpm2-tools/specid-vendordata.bin"))
    assert log.format == "crypto-agile"
    assert log.banks == ("sha1", "sha256")
    assert log.events[0].data.endswith(bytes.fromhex("04deadbeef"))


@pytest.mark.parametrize("name", STARTUP_LOCALITY_3_LOGS)
def test_startup_locality_event_sets_the_locality(testdata: Path, name: str) -> None:
    assert parse_event_log(_load(testdata, name)).startup_locality == 3


def test_logs_without_startup_locality_event_start_at_locality_0(testdata: Path) -> None:
    assert parse_event_log(_load(testdata, "go-tpm-tools/eventlogs/rhel8-uefi.bin")).startup_locality == 0


def test_short_non_spec_id_no_action_log_parses(testdata: Path) -> None:
    log = parse_event_log(_load(testdata, "go-attestation/short_no_action_eventlog"))
    assert log.format == "sha1"
    assert len(log.events) == 1
    assert log.events[0].event_type == EV_NO_ACTION
    assert log.events[0].data == b"StartupLocality\x00\x03"


def test_sp800_155_no_action_events_are_kept_unmeasured(testdata: Path) -> None:
    log = parse_event_log(_load(testdata, "go-tpm-tools/eventlogs/eventlogwithsp800155.bin"))
    sp800_155 = [e for e in log.events if e.data.startswith(b"SP800-155 Event")]
    assert sp800_155
    assert all(e.event_type == EV_NO_ACTION for e in sp800_155)


def test_event_type_names() -> None:
    assert event_type_name(0x80000001) == "EV_EFI_VARIABLE_DRIVER_CONFIG"
    assert event_type_name(0x8000000A) == "EV_EFI_PLATFORM_FIRMWARE_BLOB2"
    assert event_type_name(0x800000E0) == "EV_EFI_VARIABLE_AUTHORITY"
    assert event_type_name(0x800000E1) == "EV_EFI_SPDM_FIRMWARE_BLOB"
    assert event_type_name(0x0D) == "EV_IPL"
    assert event_type_name(0x1234) == "EV_UNKNOWN_0x00001234"


# --- padding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("filler", [b"\x00", b"\xff"])
@pytest.mark.parametrize(
    "name", ["go-tpm-tools/eventlogs/rhel8-uefi.bin", "go-tpm-tools/eventlogs/debian-10.bin"]
)
def test_padding_at_the_end_of_a_log_is_ignored(testdata: Path, name: str, filler: bytes) -> None:
    data = _load(testdata, name)
    plain = parse_event_log(data)
    padded = parse_event_log(data + filler * 4096)
    assert padded.events == plain.events


def test_padding_only_is_rejected() -> None:
    with pytest.raises(EventLogError, match="only padding"):
        parse_event_log(bytes(4096))


# --- malformed input ------------------------------------------------------------------------------


def test_empty_log_is_rejected() -> None:
    with pytest.raises(EventLogError, match="empty"):
        parse_event_log(b"")


def test_text_garbage_is_rejected_at_offset_0(testdata: Path) -> None:
    with pytest.raises(EventLogError) as caught:
        parse_event_log(_load(testdata, "keylime/binary_bios_measurements-bogus"))
    assert caught.value.offset == 0
    assert "byte offset 0" in str(caught.value)


def test_agile_log_without_spec_id_header_is_rejected(testdata: Path) -> None:
    data = _load(testdata, "go-tpm-tools/eventlogs/rhel8-uefi.bin")
    second = parse_event_log(data).events[1].offset
    with pytest.raises(EventLogError, match="no 'Spec ID Event03' header"):
        parse_event_log(data[second:])


def _agile_event(data: bytes, log: EventLog, index: int) -> tuple[int, int]:
    """Offset of event `index` and of its digest count field."""
    offset = log.events[index].offset
    return offset, offset + 8


def test_digest_count_above_the_bank_count_names_event_and_offset(testdata: Path) -> None:
    data = bytearray(_load(testdata, "go-tpm-tools/eventlogs/rhel8-uefi.bin"))
    log = parse_event_log(bytes(data))
    offset, count_at = _agile_event(bytes(data), log, 5)
    struct.pack_into("<I", data, count_at, 4)
    with pytest.raises(EventLogError, match="4 digests, the Spec ID header declares 3") as caught:
        parse_event_log(bytes(data))
    assert (caught.value.event_index, caught.value.offset) == (5, offset)


def test_undeclared_algorithm_is_named(testdata: Path) -> None:
    data = bytearray(_load(testdata, "go-tpm-tools/eventlogs/rhel8-uefi.bin"))
    log = parse_event_log(bytes(data))
    _, count_at = _agile_event(bytes(data), log, 7)
    struct.pack_into("<H", data, count_at + 4, 0x0099)
    with pytest.raises(EventLogError, match="algorithm 0x0099") as caught:
        parse_event_log(bytes(data))
    assert caught.value.event_index == 7


def test_sha512_digest_in_a_log_that_does_not_declare_it_is_rejected(testdata: Path) -> None:
    data = bytearray(_load(testdata, "go-tpm-tools/eventlogs/gdc-host.bin"))  # declares sha256 only
    log = parse_event_log(bytes(data))
    _, count_at = _agile_event(bytes(data), log, 3)
    struct.pack_into("<H", data, count_at + 4, 0x000D)
    with pytest.raises(EventLogError, match=r"0x000d \(sha512\).*does not declare"):
        parse_event_log(bytes(data))


def test_event_size_past_the_end_is_rejected(testdata: Path) -> None:
    data = _load(testdata, "go-tpm-tools/eventlogs/debian-10.bin")
    log = parse_event_log(data)
    last = log.events[-1]
    size_at = last.offset + 28
    corrupted = data[:size_at] + struct.pack("<I", len(last.data) + 1) + data[size_at + 4 :]
    with pytest.raises(EventLogError, match="runs past the end") as caught:
        parse_event_log(corrupted)
    assert caught.value.event_index == last.index


def test_absurd_event_size_is_rejected_before_reading(testdata: Path) -> None:
    data = _load(testdata, "go-tpm-tools/eventlogs/debian-10.bin")
    size_at = parse_event_log(data).events[3].offset + 28
    corrupted = data[:size_at] + struct.pack("<I", MAX_EVENT_DATA_SIZE + 1) + data[size_at + 4 :]
    with pytest.raises(EventLogError, match="above the"):
        parse_event_log(corrupted)


def test_too_many_events_are_rejected() -> None:
    event = struct.pack("<II20sI", 4, 0x80000007, bytes(20), 0)
    with pytest.raises(EventLogError, match=f"more than {MAX_EVENTS} events"):
        parse_event_log(event * (MAX_EVENTS + 1))


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "short.bin"
    bad.write_bytes(b"\x00\x00\x00\x00\x08\x00\x00\x00")
    with pytest.raises(EventLogError, match=r"short\.bin: truncated event header") as caught:
        parse_event_log_file(bad)
    assert caught.value.offset == 0
    with pytest.raises(EventLogError, match="cannot read"):
        parse_event_log_file(tmp_path / "missing.bin")


@pytest.mark.parametrize(
    "name",
    [
        "go-tpm-tools/eventlogs/arch-linux-workstation.bin",
        "go-tpm-tools/eventlogs/debian-10.bin",
        "tpm2-tools/event-sd-boot-fedora37.bin",
    ],
)
def test_truncation_at_every_offset_fails_cleanly_or_cuts_on_an_event_boundary(
    testdata: Path, name: str
) -> None:
    data = _load(testdata, name)
    full = parse_event_log(data)
    boundaries = {event.offset: event.index for event in full.events}
    for cut in range(len(data)):
        if cut in boundaries and cut > 0:
            assert parse_event_log(data[:cut]).events == full.events[: boundaries[cut]]
        else:
            with pytest.raises(EventLogError):
                parse_event_log(data[:cut])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_raise_only_event_log_errors(blob: bytes) -> None:
    with contextlib.suppress(EventLogError):
        parse_event_log(blob)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_corrupted_real_logs_raise_only_event_log_errors(testdata: Path, data: st.DataObject) -> None:
    raw = bytearray(_load(testdata, "go-tpm-tools/eventlogs/cos-85-amd-sev.bin"))
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    with contextlib.suppress(EventLogError):
        parse_event_log(bytes(raw[:cut]))
