"""Replay of an event log into PCR values, comparison with quoted PCRs, and TPM2 quote PCR digests."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trustedlaunch.eventlog.model import EventLog, EventLogError
from trustedlaunch.eventlog.types import ALGORITHMS_BY_BANK, EV_NO_ACTION

PCR_COUNT = 24
# PCRs 17..22 (the DRTM PCRs) are reset to all-ones at TPM2_Startup; every other PCR to all-zeros.
_ONES_AT_STARTUP = range(17, 23)


@dataclass(frozen=True)
class PcrMismatch:
    """A PCR whose quoted value differs from the value the event log replays to."""

    bank: str
    pcr: int
    replayed: bytes
    quoted: bytes

    def __str__(self) -> str:
        return (
            f"{self.bank} PCR{self.pcr}: quoted {self.quoted.hex()}, "
            f"event log replays to {self.replayed.hex()}"
        )


def hash_function(bank: str) -> Callable[[bytes], Any] | None:
    """A hashlib constructor for a bank name, or None when the bank's algorithm is not computable here."""
    alg = ALGORITHMS_BY_BANK.get(bank)
    if alg is None or alg.hashlib_name is None or alg.hashlib_name not in hashlib.algorithms_available:
        return None
    constructor = getattr(hashlib, alg.hashlib_name, None)
    if constructor is not None:
        return constructor
    return functools.partial(hashlib.new, alg.hashlib_name)


def initial_pcr_value(bank: str, pcr: int, startup_locality: int = 0) -> bytes:
    """The value of a PCR right after TPM2_Startup (PCR0 holds the startup locality in its last byte)."""
    alg = ALGORITHMS_BY_BANK.get(bank)
    if alg is None:
        raise EventLogError(f"unknown PCR bank {bank!r}; known banks: {', '.join(ALGORITHMS_BY_BANK)}")
    if pcr in _ONES_AT_STARTUP:
        return b"\xff" * alg.digest_size
    if pcr == 0 and startup_locality:
        return bytes(alg.digest_size - 1) + bytes((startup_locality,))
    return bytes(alg.digest_size)


def replay(log: EventLog, banks: Iterable[str] | None = None) -> dict[str, dict[int, bytes]]:
    """Replay every measured event: bank -> PCR index -> final value, for the PCRs the log extends.

    EV_NO_ACTION events are not extended. Only `banks` (default: all of the log's) are replayed;
    banks whose hash Python cannot compute are left out.
    """
    by_pcr: dict[int, list[dict[str, bytes]]] = {}
    for event in log.events:
        if event.event_type != EV_NO_ACTION:
            by_pcr.setdefault(event.pcr, []).append(event.digests)
    result: dict[str, dict[int, bytes]] = {}
    for bank in log.banks if banks is None else [bank for bank in log.banks if bank in set(banks)]:
        hasher = hash_function(bank)
        if hasher is None:
            continue
        pcrs: dict[int, bytes] = {}
        for pcr, events in by_pcr.items():
            value = initial_pcr_value(bank, pcr, log.startup_locality)
            extended = False
            for digests in events:
                digest = digests.get(bank)
                if digest is not None:
                    value = hasher(value + digest).digest()
                    extended = True
            if extended:
                pcrs[pcr] = value
        result[bank] = dict(sorted(pcrs.items()))
    return result


def diff_pcrs(
    log: EventLog,
    bank: str,
    quoted: Mapping[int, bytes],
    replayed: Mapping[str, Mapping[int, bytes]] | None = None,
) -> list[PcrMismatch]:
    """The quoted PCRs (of one bank) whose values differ from the replayed log, in PCR order.

    A PCR the log never extends is expected at its TPM2_Startup value. Pass `replayed` to reuse a replay.
    """
    values = (replayed if replayed is not None else replay(log)).get(bank)
    if values is None:
        raise EventLogError(f"the event log has no replayable {bank} bank (it has: {', '.join(log.banks)})")
    mismatches = []
    for pcr in sorted(quoted):
        expected = values.get(pcr)
        if expected is None:
            expected = initial_pcr_value(bank, pcr, log.startup_locality)
        if quoted[pcr] != expected:
            mismatches.append(PcrMismatch(bank, pcr, expected, quoted[pcr]))
    return mismatches


def pcr_composite_digest(values: Mapping[int, bytes], pcrs: Iterable[int], hash_alg: str) -> bytes:
    """The TPM2 quote pcrDigest: hash_alg over the selected PCR values concatenated in ascending PCR order."""
    hasher = hash_function(hash_alg)
    if hasher is None:
        raise EventLogError(f"cannot compute a PCR digest with hash algorithm {hash_alg!r}")
    selected = sorted(set(pcrs))
    missing = [pcr for pcr in selected if pcr not in values]
    if missing:
        raise EventLogError(
            f"no value for PCR {', '.join(map(str, missing))} to compute the {hash_alg} PCR digest"
        )
    digest: bytes = hasher(b"".join(values[pcr] for pcr in selected)).digest()
    return digest
