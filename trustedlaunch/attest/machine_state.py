"""Verify: evidence in, the verified machine state out (the first half of the verifier).

As go-tpm-tools splits attestation into verify (evidence -> machine state) and evaluate (state x policy),
`verify_boot` runs every check that binds an event log to a quote, in this order: size limits -> AK
parsing -> quote selection, signature, origin and nonce (no event log is read for a quote that fails
these) -> event-log parsing and replay -> the quote's PCR digest against the replayed PCRs, clock -> the
quote covers every PCR the log extends -> the data of every event the policy reads hashes to its digest
-> boot summary. Its answer is a `VerifiedBoot`, which only this module makes, or the `Rejected` reason:
policy evaluation (`attest.evaluation`) takes nothing but a VerifiedBoot, so a summary of a log no quote
vouches for can never be evaluated against a policy.

A node re-attests with the same event log until it reboots, and the nodes of a pool boot the same
images, so parsed logs (replay and summary included) are cached by their exact bytes, least recently
used dropped first, up to BOOT_CACHE_BYTES of estimated memory (a parsed log costs several times its
size: see `_Boot.cost`). Callers keep logs of AKs they do not know out of it (`cache_log=False`), so
that such evidence can neither fill the cache nor evict the nodes' boots. Everything tied to the quote
(signature, nonce, PCR digest, clock) runs on every call.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import InitVar, dataclass

from trustedlaunch.attest.evidence import Evidence, PcrValues
from trustedlaunch.attest.policy import BOOT_APPLICATION_PCR, KERNEL_CMDLINE_PCR
from trustedlaunch.attest.quote import ClockState, authenticate_quote, check_quoted_pcrs
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import BootSummary, Event, EventLog, EventLogError
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import PCR_COUNT, initial_pcr_value, replay
from trustedlaunch.eventlog.summary import GRUB_CMDLINE_PREFIXES, GRUB_COMMAND_PREFIXES, summarize
from trustedlaunch.eventlog.types import (
    EV_EFI_ACTION,
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_NO_ACTION,
    EV_SEPARATOR,
)
from trustedlaunch.findings import AttestationError, Check, Finding
from trustedlaunch.tpm.structures import TpmStructureError, TpmtPublic, parse_tpmt_public

REQUIRED_BANK = "sha256"
BOOT_CACHE_BYTES = 32 * 1024 * 1024  # estimated memory of the cached parsed logs, per process
EVENT_COST = 500  # estimated bytes of one parsed event besides its data (objects, digest dict, replay)
_BOOT_APPLICATION_PCR_TYPES = frozenset(
    {EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_ACTION, EV_SEPARATOR, EV_NO_ACTION}
)
_DATA_HASHED_TYPES = frozenset({EV_EFI_VARIABLE_DRIVER_CONFIG, EV_SEPARATOR, EV_EFI_ACTION})
STUB_CMDLINE_PCR = 12  # systemd-boot / the EFI stub measure the kernel command line here
# GRUB measures its commands and the kernel command line as a string logged after one of these prefixes.
GRUB_STRING_PREFIXES = tuple(prefix.encode() for prefix in (*GRUB_COMMAND_PREFIXES, *GRUB_CMDLINE_PREFIXES))


_SEAL = object()  # held by this module only: what makes a VerifiedBoot


@dataclass(frozen=True)
class VerifiedBoot:
    """A boot an authentic quote vouches for: its parsed event log, its summary, the PCR values (bank ->
    PCR -> value) the quote binds the log to, and the quote's clock. Only `verify_boot` makes one: the
    seal it passes is this module's own (and `dataclasses.replace` cannot copy it)."""

    seal: InitVar[object]
    log: EventLog
    summary: BootSummary
    pcr_values: Mapping[str, Mapping[int, bytes]]  # the PCRs the quote selected (nothing vouches for others)
    replayed_pcrs: PcrValues  # bank -> PCR -> value the log replays to (the caller's own copy)
    clock: ClockState | None  # store it for the node and pass it as last_clock next time

    def __post_init__(self, seal: object) -> None:
        if seal is not _SEAL:
            raise TypeError("a VerifiedBoot is made only by attest.machine_state.verify_boot")


@dataclass(frozen=True)
class Rejected:
    """Evidence that failed before the policy: one finding (or one per edited event) and the replay so far."""

    findings: tuple[Finding, ...]
    replayed_pcrs: PcrValues


def _rejected(finding: Finding, replayed: PcrValues | None = None) -> Rejected:
    return Rejected((finding,), replayed or {})


def _log_finding(error: TrustedLaunchError) -> Finding:
    event_index = error.event_index if isinstance(error, EventLogError) else None
    return Finding(Check.EVIDENCE_FORMAT, "event log", str(error), event_index=event_index)


@functools.lru_cache(maxsize=1024)
def _parse_ak(ak_public: bytes) -> TpmtPublic:
    """Parse an AK public area once per distinct key (a verifier sees the same node AKs again and again)."""
    return parse_tpmt_public(ak_public)


@functools.lru_cache(maxsize=64)
def _startup_values(bank: str, startup_locality: int) -> dict[int, bytes]:
    return {pcr: initial_pcr_value(bank, pcr, startup_locality) for pcr in range(PCR_COUNT)}


class _Boot:
    """A parsed and replayed event log; its summary is made on first use (after the quote passed)."""

    def __init__(self, event_log: bytes):
        self.log = parse_event_log(event_log)
        # the raw log (the cache key), the events' data copies, the summary's, and each event's objects
        self.cost = 4 * len(event_log) + EVENT_COST * len(self.log.events)
        self.replayed = replay(self.log)
        startup = self.log.startup_locality
        # the quote may also select PCRs the log never extends: those hold their TPM2_Startup value
        self.expected = {
            bank: _startup_values(bank, startup) | values for bank, values in self.replayed.items()
        }
        self.unbound_events = event_data_findings(self.log)
        self._summary: BootSummary | None = None

    def summary(self) -> BootSummary:
        if self._summary is None:
            self._summary = summarize(self.log)
        return self._summary


def _data_is_measured(event: Event, digest: bytes) -> bool | None:
    """Whether the event's digest is the SHA-256 of its data, for the events the summary and policy read
    (None for other events). GRUB strings are hashed with or without their NUL, depending on the version."""
    event_type = event.event_type
    if event_type in _DATA_HASHED_TYPES or (event_type == EV_IPL and event.pcr == STUB_CMDLINE_PCR):
        return hashlib.sha256(event.data).digest() == digest
    if event_type == EV_IPL and event.pcr == KERNEL_CMDLINE_PCR:
        for prefix in GRUB_STRING_PREFIXES:
            if event.data.startswith(prefix):
                text = event.data[len(prefix) :]
                return digest in (
                    hashlib.sha256(text).digest(),
                    hashlib.sha256(text.rstrip(b"\x00")).digest(),
                )
    return None


def event_data_findings(log: EventLog) -> list[Finding]:
    """Events whose content the quote does not vouch for: data (Secure Boot variables, separators, actions,
    GRUB strings, cmdline) that does not hash to its SHA-256 digest, and PCR4 events of a type that hides
    what was loaded (a boot application re-labelled keeps its digest, so the replay still matches)."""
    findings = []
    for event in log.events:
        digest = event.digests.get(REQUIRED_BANK)
        if digest is None:
            continue
        if _data_is_measured(event, digest) is False:
            problem = (
                f"{event.type_name} data does not hash to its measured SHA-256 digest {digest.hex()}: "
                "the event was edited after it was measured"
            )
        elif event.pcr == BOOT_APPLICATION_PCR and event.event_type not in _BOOT_APPLICATION_PCR_TYPES:
            problem = (
                f"{event.type_name} in PCR{event.pcr} is not a boot application, an EV_EFI_ACTION or a "
                "separator: what it loaded cannot be checked (a re-labelled boot application?)"
            )
        else:
            continue
        findings.append(
            Finding(Check.EVENT_DATA, "event log", problem, pcr=event.pcr, event_index=event.index)
        )
    return findings


class _BootCache:
    """Parsed logs by their exact bytes, least recently used first out, within `max_bytes` of estimated
    memory (a log above it alone is not kept). Safe across threads (the API's loop, the reconciler)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._boots: OrderedDict[bytes, _Boot] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, event_log: bytes) -> _Boot:
        with self._lock:
            boot = self._boots.get(event_log)
            if boot is not None:
                self._boots.move_to_end(event_log)
                return boot
        boot = _Boot(event_log)  # parsed outside the lock: a long log does not hold up other threads
        if boot.cost <= self.max_bytes:
            with self._lock:
                if event_log not in self._boots:
                    self._boots[event_log] = boot
                    self.size += boot.cost
                while self.size > self.max_bytes:
                    _, dropped = self._boots.popitem(last=False)
                    self.size -= dropped.cost
        return boot

    def clear(self) -> None:
        with self._lock:
            self._boots.clear()
            self.size = 0


_boots = _BootCache(BOOT_CACHE_BYTES)


def clear_boot_cache() -> None:
    """Forget every cached parsed event log (e.g. to bound memory, or to time the cold path)."""
    _boots.clear()


def boot_cache_bytes() -> int:
    """The estimated memory the cached parsed logs take now (at most BOOT_CACHE_BYTES)."""
    return _boots.size


def verify_boot(
    evidence: Evidence,
    *,
    nonce: bytes,
    last_clock: ClockState | None = None,
    cache_log: bool = True,
) -> VerifiedBoot | Rejected:
    """Verify evidence against a nonce and the node's last clock state; never raises on bad evidence
    (every problem becomes a finding). `cache_log=False` parses the event log for this call only
    (evidence of an AK the caller does not know must not take the cache's room)."""
    problems = evidence.size_problems()
    if problems:
        return _rejected(Finding(Check.EVIDENCE_FORMAT, "evidence", "; ".join(problems)))
    try:
        ak = _parse_ak(evidence.ak_public)
    except TpmStructureError as exc:
        return _rejected(Finding(Check.EVIDENCE_FORMAT, "AK", f"the AK public area does not parse: {exc}"))
    try:
        authentic = authenticate_quote(ak, evidence.quote, evidence.signature, nonce=nonce)
    except AttestationError as exc:
        return _rejected(exc.finding)
    try:
        boot = _boots.get(evidence.event_log) if cache_log else _Boot(evidence.event_log)
    except TrustedLaunchError as exc:
        return _rejected(_log_finding(exc))
    replayed = {bank: dict(values) for bank, values in boot.replayed.items()}  # the caller's own copy
    try:
        quote = check_quoted_pcrs(
            authentic, pcr_values=boot.expected, last_clock=last_clock, quoted_pcr_values=evidence.pcr_values
        )
    except AttestationError as exc:
        return _rejected(exc.finding, replayed)
    uncovered = sorted(set(replayed.get(REQUIRED_BANK, {})) - set(quote.selected.get(REQUIRED_BANK, ())))
    if uncovered:
        names = ", ".join(f"PCR{pcr}" for pcr in uncovered)
        return _rejected(
            Finding(
                Check.PCR_SELECTION,
                "quote",
                f"the quote does not cover {names}, which the event log extends: the events measured "
                "there cannot be trusted; quote every PCR the log uses",
                pcr=uncovered[0] if len(uncovered) == 1 else None,
            ),
            replayed,
        )
    if boot.unbound_events:
        return Rejected(tuple(boot.unbound_events), replayed)
    try:
        summary = boot.summary()
    except TrustedLaunchError as exc:
        return _rejected(_log_finding(exc), replayed)
    return VerifiedBoot(
        _SEAL,
        log=boot.log,
        summary=summary,
        pcr_values={
            bank: {pcr: boot.expected[bank][pcr] for pcr in pcrs} for bank, pcrs in quote.selected.items()
        },
        replayed_pcrs=replayed,
        clock=quote.clock,
    )
