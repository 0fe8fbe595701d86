"""Parser of TCG PC Client event logs: the legacy SHA-1 format and the TPM 2.0 crypto-agile format.

The parser only decodes the framing (PCR, type, digests, data); event data is decoded on demand by
`eventlog.summary`. Every malformed input raises `EventLogError` naming the event index and byte offset.

Limits (a log beyond them is rejected, not swallowed):
  * MAX_LOG_SIZE bytes in the whole log, MAX_EVENTS events, MAX_EVENT_DATA_SIZE bytes of data per event;
  * measured events must target PCR 0..MAX_PCR_INDEX (EV_NO_ACTION events are not measured, any index goes);
  * the SpecID header may declare at most MAX_ALGORITHMS banks, each digest at most MAX_DIGEST_SIZE bytes.

A log may end with padding (firmware copies its log area, filled with 0x00 or 0xFF): an all-0x00 or
all-0xFF tail of at least PADDING_MIN_SIZE bytes ends the log. Any other incomplete tail is an error.
"""

from __future__ import annotations

import struct
from pathlib import Path

from trustedlaunch.eventlog.model import Event, EventLog, EventLogError
from trustedlaunch.eventlog.types import ALGORITHMS_BY_ID, EV_NO_ACTION, bank_name

MAX_LOG_SIZE = 64 * 1024 * 1024
MAX_EVENT_LOG_SIZE = (
    1024 * 1024
)  # the largest log attestation takes (agent answers, evidence): real ones 5-60 KiB
MAX_EVENTS = 100_000
MAX_EVENT_DATA_SIZE = 4 * 1024 * 1024
MAX_PCR_INDEX = 23
MAX_ALGORITHMS = 16
MAX_DIGEST_SIZE = 128
PADDING_MIN_SIZE = 8

SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"
SHA1_DIGEST_SIZE = 20

_LEGACY_HEADER = struct.Struct("<II20sI")  # pcrIndex, eventType, SHA-1 digest, eventDataSize
_AGILE_HEADER = struct.Struct("<III")  # pcrIndex, eventType, digest count
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_SPEC_ID_FIXED = struct.Struct("<16sIBBBBI")  # signature, class, minor, major, errata, uintnSize, count
_SPEC_ID_ALG = struct.Struct("<HH")  # algorithmId, digestSize


def parse_event_log_file(path: Path) -> EventLog:
    """Read and parse an event log file; unreadable or oversized files raise EventLogError."""
    try:
        size = path.stat().st_size
        if size > MAX_LOG_SIZE:
            raise EventLogError(f"{path}: event log is {size} bytes, above the {MAX_LOG_SIZE}-byte limit")
        data = path.read_bytes()
    except OSError as exc:
        raise EventLogError(f"cannot read event log {path}: {exc.strerror or exc}") from exc
    try:
        return parse_event_log(data)
    except EventLogError as exc:
        located = EventLogError(f"{path}: {exc}")
        located.offset, located.event_index = exc.offset, exc.event_index
        raise located from None


def parse_event_log(data: bytes) -> EventLog:
    """Parse a binary TCG event log (legacy SHA-1 or crypto-agile), as read from binary_bios_measurements."""
    if not data:
        raise EventLogError("event log is empty")
    if len(data) > MAX_LOG_SIZE:
        raise EventLogError(f"event log is {len(data)} bytes, above the {MAX_LOG_SIZE}-byte limit")
    data = bytes(data)
    try:
        first = _parse_legacy_event(data, 0, 0)
    except EventLogError as exc:
        _raise_if_agile_without_spec_id(data, exc)
        raise
    if first is None:
        raise EventLogError("event log holds only padding (all 0x00 or 0xFF bytes)", offset=0, event_index=0)
    header, end = first
    if header.event_type == EV_NO_ACTION and header.pcr == 0 and header.data.startswith(SPEC_ID_SIGNATURE):
        digest_sizes, spec_id_size = _parse_spec_id(data, header)
        if spec_id_size > len(header.data):
            # The header's size field leaves out its vendor info (tpm2-tools accepts such logs): the
            # vendor info bytes follow the event, so the header event is taken to include them.
            end = header.offset + _LEGACY_HEADER.size + spec_id_size
            header = Event(
                0, 0, 0, EV_NO_ACTION, header.digests, data[header.offset + _LEGACY_HEADER.size : end]
            )
        return _parse_agile(data, header, end, digest_sizes)
    try:
        return _parse_legacy(data, header, end)
    except EventLogError as exc:
        _raise_if_agile_without_spec_id(data, exc)
        raise


def _raise_if_agile_without_spec_id(data: bytes, failure: EventLogError) -> None:
    """Explain a SHA-1 format parse failure of a log that starts with a crypto-agile event."""
    if len(data) < _AGILE_HEADER.size + 2:
        return
    _, _, count = _AGILE_HEADER.unpack_from(data, 0)
    (first_alg,) = _U16.unpack_from(data, _AGILE_HEADER.size)
    if 1 <= count <= MAX_ALGORITHMS and first_alg in ALGORITHMS_BY_ID:
        raise EventLogError(
            "the log starts with a crypto-agile (TCG_PCR_EVENT2) event but has no 'Spec ID Event03' "
            f"header event declaring its hash algorithms (read as a SHA-1 format log: {failure})",
            offset=0,
            event_index=0,
        ) from failure


def _is_padding(data: bytes, offset: int) -> bool:
    """True when everything from offset on is 0x00 or 0xFF filler (at least PADDING_MIN_SIZE bytes)."""
    remaining = len(data) - offset
    if remaining < PADDING_MIN_SIZE:
        return False
    return data.count(0, offset) == remaining or data.count(0xFF, offset) == remaining


def _parse_legacy_event(data: bytes, offset: int, index: int) -> tuple[Event, int] | None:
    """One TCG_PCClientPCREvent at offset; None when the rest of the data is padding."""
    remaining = len(data) - offset
    if remaining < _LEGACY_HEADER.size:
        if _is_padding(data, offset):
            return None
        raise EventLogError(
            f"truncated event header: {remaining} bytes left, a SHA-1 format event header needs "
            f"{_LEGACY_HEADER.size}",
            offset=offset,
            event_index=index,
        )
    pcr, event_type, digest, size = _LEGACY_HEADER.unpack_from(data, offset)
    if ((pcr == 0 and event_type == 0) or (pcr == event_type == 0xFFFFFFFF)) and _is_padding(data, offset):
        return None
    _check_pcr(pcr, event_type, offset, index)
    start = offset + _LEGACY_HEADER.size
    end = _check_data_size(size, start, len(data), offset, index)
    event = Event(index, offset, pcr, event_type, {"sha1": digest}, data[start:end])
    return event, end


def _check_pcr(pcr: int, event_type: int, offset: int, index: int) -> None:
    if pcr > MAX_PCR_INDEX and event_type != EV_NO_ACTION:
        raise EventLogError(
            f"PCR index {pcr} (0x{pcr:08x}) is out of range 0..{MAX_PCR_INDEX} for a measured event "
            f"of type 0x{event_type:08x}: not a TCG event log, or a corrupted one",
            offset=offset,
            event_index=index,
        )


def _check_data_size(size: int, start: int, total: int, offset: int, index: int) -> int:
    """The end offset of an event's data, after checking its declared size."""
    if size > MAX_EVENT_DATA_SIZE:
        raise EventLogError(
            f"event data size {size} is above the {MAX_EVENT_DATA_SIZE}-byte limit",
            offset=offset,
            event_index=index,
        )
    end = start + size
    if end > total:
        raise EventLogError(
            f"event data of {size} bytes runs past the end of the log ({total - start} bytes left)",
            offset=offset,
            event_index=index,
        )
    return end


def _parse_legacy(data: bytes, first: Event, offset: int) -> EventLog:
    events = [first]
    startup_locality = _startup_locality(first) or 0
    while offset < len(data):
        index = len(events)
        if index >= MAX_EVENTS:
            raise EventLogError(
                f"more than {MAX_EVENTS} events: log rejected", offset=offset, event_index=index
            )
        parsed = _parse_legacy_event(data, offset, index)
        if parsed is None:
            break
        event, offset = parsed
        events.append(event)
        locality = _startup_locality(event)
        if locality is not None:
            startup_locality = locality
    return EventLog("sha1", ("sha1",), tuple(events), startup_locality)


def _startup_locality(event: Event) -> int | None:
    """The locality from a PCR0 EV_NO_ACTION "StartupLocality" event, None for any other event."""
    if (
        event.event_type != EV_NO_ACTION
        or event.pcr != 0
        or not event.data.startswith(STARTUP_LOCALITY_SIGNATURE)
    ):
        return None
    if len(event.data) < len(STARTUP_LOCALITY_SIGNATURE) + 1:
        raise EventLogError(
            "StartupLocality event has no locality byte", offset=event.offset, event_index=event.index
        )
    locality = event.data[len(STARTUP_LOCALITY_SIGNATURE)]
    if locality > 4:
        raise EventLogError(
            f"StartupLocality event names locality {locality}; TPM localities are 0..4",
            offset=event.offset,
            event_index=event.index,
        )
    return locality


def _parse_spec_id(data: bytes, header: Event) -> tuple[dict[int, tuple[str, int]], int]:
    """The banks declared by the TCG_EfiSpecIDEvent header (alg id -> (bank, digest size)) and its size."""
    spec, offset = header.data, header.offset
    if len(spec) < _SPEC_ID_FIXED.size:
        raise EventLogError(
            f"Spec ID Event03 header is {len(spec)} bytes, shorter than its fixed {_SPEC_ID_FIXED.size}",
            offset=offset,
            event_index=0,
        )
    count = _SPEC_ID_FIXED.unpack_from(spec, 0)[-1]
    if not 1 <= count <= MAX_ALGORITHMS:
        raise EventLogError(
            f"Spec ID Event03 declares {count} hash algorithms (expected 1..{MAX_ALGORITHMS})",
            offset=offset,
            event_index=0,
        )
    table_end = _SPEC_ID_FIXED.size + count * _SPEC_ID_ALG.size
    if table_end + 1 > len(spec):
        raise EventLogError(
            f"Spec ID Event03 header is truncated: {count} algorithms need {table_end + 1} bytes, "
            f"the event has {len(spec)}",
            offset=offset,
            event_index=0,
        )
    declared: dict[int, tuple[str, int]] = {}
    for position in range(count):
        alg_id, size = _SPEC_ID_ALG.unpack_from(spec, _SPEC_ID_FIXED.size + position * _SPEC_ID_ALG.size)
        known = ALGORITHMS_BY_ID.get(alg_id)
        if alg_id in declared:
            raise EventLogError(
                f"Spec ID Event03 declares algorithm 0x{alg_id:04x} twice", offset=offset, event_index=0
            )
        if known is not None and size != known.digest_size:
            raise EventLogError(
                f"Spec ID Event03 declares {known.bank} with a {size}-byte digest, "
                f"{known.bank} digests are {known.digest_size} bytes",
                offset=offset,
                event_index=0,
            )
        if not 1 <= size <= MAX_DIGEST_SIZE:
            raise EventLogError(
                f"Spec ID Event03 declares algorithm 0x{alg_id:04x} with a {size}-byte digest",
                offset=offset,
                event_index=0,
            )
        declared[alg_id] = (bank_name(alg_id), size)
    vendor_size = spec[table_end]
    spec_id_size = table_end + 1 + vendor_size
    if offset + _LEGACY_HEADER.size + spec_id_size > len(data):
        raise EventLogError(
            f"Spec ID Event03 vendor info of {vendor_size} bytes runs past the end of the log",
            offset=offset,
            event_index=0,
        )
    return declared, max(spec_id_size, len(spec))


def _parse_agile(data: bytes, header: Event, offset: int, declared: dict[int, tuple[str, int]]) -> EventLog:
    """The TCG_PCR_EVENT2 events following the SpecID header."""
    bank_count = len(declared)
    total = len(data)
    # Fast path: an event carrying every declared digest in SpecID order is read with one unpack.
    full_layout = struct.Struct("<III" + "".join(f"H{size}s" for _, size in declared.values()) + "I")
    unpack_full = full_layout.unpack_from
    full_size = full_layout.size
    declared_ids = tuple(declared)
    bank_names = tuple(name for name, _ in declared.values())
    digests_slice = slice(4, 3 + 2 * bank_count, 2)
    ids_slice = slice(3, 3 + 2 * bank_count, 2)
    unpack_header = _AGILE_HEADER.unpack_from
    single_bank = bank_names[0] if bank_count == 1 else None
    new_event = object.__new__
    set_fields = object.__setattr__  # frozen Event: all fields at once (its __init__ sets them one by one)
    events = [header]
    append = events.append
    startup_locality = 0
    index = 1
    while offset < total:
        if index >= MAX_EVENTS:
            raise EventLogError(
                f"more than {MAX_EVENTS} events: log rejected", offset=offset, event_index=index
            )
        if total - offset >= full_size:
            fields = unpack_full(data, offset)
            pcr, event_type, count = fields[0], fields[1], fields[2]
            fast = count == bank_count and fields[ids_slice] == declared_ids
        else:
            if total - offset < _AGILE_HEADER.size:
                if _is_padding(data, offset):
                    break
                raise EventLogError(
                    f"truncated event header: {total - offset} bytes left, an event header needs at least "
                    f"{_AGILE_HEADER.size + 4}",
                    offset=offset,
                    event_index=index,
                )
            pcr, event_type, count = unpack_header(data, offset)
            fast = False
        if fast:
            if single_bank is not None:
                digests = {single_bank: fields[4]}
            else:
                digests = dict(zip(bank_names, fields[digests_slice], strict=True))
            size = fields[-1]
            cursor = offset + full_size
        else:
            if not 1 <= count <= bank_count:
                if _is_padding(data, offset):
                    break
                raise EventLogError(
                    f"event has {count} digests, the Spec ID header declares {bank_count} hash algorithm(s)",
                    offset=offset,
                    event_index=index,
                )
            digests, size, cursor = _read_digests(data, offset, index, count, declared)
        if pcr > MAX_PCR_INDEX and event_type != EV_NO_ACTION:
            _check_pcr(pcr, event_type, offset, index)
        end = cursor + size
        if end > total or size > MAX_EVENT_DATA_SIZE:
            _check_data_size(size, cursor, total, offset, index)
        event = new_event(Event)
        set_fields(
            event,
            "__dict__",
            {
                "index": index,
                "offset": offset,
                "pcr": pcr,
                "event_type": event_type,
                "digests": digests,
                "data": data[cursor:end],
            },
        )
        if event_type == EV_NO_ACTION:
            locality = _startup_locality(event)
            if locality is not None:
                startup_locality = locality
        append(event)
        offset = end
        index += 1
    return EventLog("crypto-agile", bank_names, tuple(events), startup_locality)


def _read_digests(
    data: bytes, offset: int, index: int, count: int, declared: dict[int, tuple[str, int]]
) -> tuple[dict[str, bytes], int, int]:
    """The digests (in any order or number) and data size of the event at offset; also the data's offset."""
    total = len(data)
    cursor = offset + _AGILE_HEADER.size
    digests: dict[str, bytes] = {}
    for _ in range(count):
        if cursor + 2 > total:
            raise EventLogError("event is truncated inside its digest list", offset=offset, event_index=index)
        (alg_id,) = _U16.unpack_from(data, cursor)
        bank = declared.get(alg_id)
        if bank is None:
            raise EventLogError(
                f"event has a digest of algorithm 0x{alg_id:04x} ({bank_name(alg_id)}) at byte "
                f"offset {cursor}, which the Spec ID header does not declare",
                offset=offset,
                event_index=index,
            )
        name, size = bank
        cursor += 2
        if name in digests:
            raise EventLogError(f"event has two {name} digests", offset=offset, event_index=index)
        if cursor + size > total:
            raise EventLogError(
                f"event is truncated inside its {name} digest", offset=offset, event_index=index
            )
        digests[name] = data[cursor : cursor + size]
        cursor += size
    if cursor + 4 > total:
        raise EventLogError(
            "event is truncated before its event data size field", offset=offset, event_index=index
        )
    (size,) = _U32.unpack_from(data, cursor)
    return digests, size, cursor + 4
