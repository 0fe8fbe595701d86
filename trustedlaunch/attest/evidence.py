"""Attestation evidence sent by a node: AK public area, quote, signature, event log and PCR values.

JSON form (binary fields base64, PCR values hex)::

    {"akPublic": b64 TPMT_PUBLIC, "quote": b64 TPMS_ATTEST, "signature": b64 TPMT_SIGNATURE,
     "eventLog": b64 binary event log, "pcrValues": {"sha256": {"0": hex, ...}, ...} | null}
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import EventLog
from trustedlaunch.eventlog.parser import MAX_EVENT_LOG_SIZE
from trustedlaunch.eventlog.types import EV_NO_ACTION
from trustedlaunch.tpm.swtpm import Swtpm

MAX_AK_PUBLIC_SIZE = 2048  # an RSA-4096 TPMT_PUBLIC with a policy digest is ~600 bytes
MAX_QUOTE_SIZE = 1024  # a TPMS_ATTEST quote is ~150-300 bytes
MAX_SIGNATURE_SIZE = 1024  # an RSA-4096 TPMT_SIGNATURE is 518 bytes
MAX_JSON_SIZE = 2 * MAX_EVENT_LOG_SIZE  # base64 + the other fields fit well below this
PCR_BANKS = ("sha1", "sha256", "sha384", "sha512", "sm3_256")
PCR_DIGEST_SIZES = {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64, "sm3_256": 32}
MAX_PCR_INDEX = 23
# The nodes of a pool send the same event log on every attestation (until they reboot): the verifier keeps
# the last few decoded, so that a re-attestation neither decodes nor re-hashes it (the same bytes object
# also hits the verifier's cache of parsed logs at once). Only logs of a real firmware's size are kept, so
# that the cache stays small (a few MB) whatever callers send.
DECODED_EVENT_LOG_CACHE_SIZE = 16
MAX_CACHED_EVENT_LOG_SIZE = 128 * 1024

_FIELD_LIMITS = (
    ("akPublic", "ak_public", MAX_AK_PUBLIC_SIZE),
    ("quote", "quote", MAX_QUOTE_SIZE),
    ("signature", "signature", MAX_SIGNATURE_SIZE),
    ("eventLog", "event_log", MAX_EVENT_LOG_SIZE),
)

PcrValues = dict[str, dict[int, bytes]]


class EvidenceError(TrustedLaunchError):
    """Evidence that is malformed or too large; the message names the field and the limit."""


@dataclass(frozen=True)
class Evidence:
    """What a node sends to be attested."""

    ak_public: bytes  # TPMT_PUBLIC of the attestation key
    quote: bytes  # TPMS_ATTEST as signed by the TPM
    signature: bytes  # TPMT_SIGNATURE over `quote`
    event_log: bytes  # binary TCG event log (binary_bios_measurements)
    pcr_values: PcrValues | None = None  # PCR values the node read, per bank (diagnostics only)

    def size_problems(self) -> list[str]:
        """Every field over its size limit, worded for an operator (empty when all fit)."""
        problems = []
        for json_name, attribute, limit in _FIELD_LIMITS:
            size = len(getattr(self, attribute))
            if size > limit:
                problems.append(f"evidence field '{json_name}' is {size} bytes, above the {limit}-byte limit")
            elif size == 0:
                problems.append(f"evidence field '{json_name}' is empty")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (base64 binaries, hex PCR values)."""
        return {
            "akPublic": base64.b64encode(self.ak_public).decode(),
            "quote": base64.b64encode(self.quote).decode(),
            "signature": base64.b64encode(self.signature).decode(),
            "eventLog": base64.b64encode(self.event_log).decode(),
            "pcrValues": None
            if self.pcr_values is None
            else {
                bank: {str(index): value.hex() for index, value in sorted(values.items())}
                for bank, values in self.pcr_values.items()
            },
        }

    def to_json(self) -> str:
        """The evidence as a JSON document."""
        return json.dumps(self.to_dict(), indent=1) + "\n"

    @classmethod
    def from_dict(cls, document: object, *, source: str = "evidence") -> Evidence:
        """Build evidence from its JSON form; raise EvidenceError naming `source` and the bad field."""
        if not isinstance(document, dict):
            raise EvidenceError(f"{source}: expected a JSON object, got {type(document).__name__}")
        unknown = sorted(set(document) - {name for name, _, _ in _FIELD_LIMITS} - {"pcrValues"})
        if unknown:
            raise EvidenceError(f"{source}: unknown field(s) {', '.join(unknown)}")
        fields = {
            attribute: _base64_field(
                document, name, limit, source, _decoded_event_log if name == "eventLog" else _decoded
            )
            for name, attribute, limit in _FIELD_LIMITS
        }
        evidence = cls(**fields, pcr_values=_pcr_values_field(document.get("pcrValues"), source))
        problems = evidence.size_problems()
        if problems:
            raise EvidenceError(f"{source}: {'; '.join(problems)}")
        return evidence

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "evidence") -> Evidence:
        """Parse an evidence JSON document (at most MAX_JSON_SIZE bytes)."""
        if len(text) > MAX_JSON_SIZE:
            raise EvidenceError(
                f"{source}: evidence document is {len(text)} bytes, above the {MAX_JSON_SIZE}-byte limit"
            )
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EvidenceError(f"{source}: not a valid JSON document: {exc}") from None
        return cls.from_dict(document, source=source)


def load_evidence(path: Path) -> Evidence:
    """Read an evidence JSON file; raise EvidenceError naming the file and the bad field."""
    try:
        if path.stat().st_size > MAX_JSON_SIZE:
            raise EvidenceError(f"evidence file {path} is above the {MAX_JSON_SIZE}-byte limit")
        text = path.read_bytes()
    except OSError as exc:
        raise EvidenceError(f"cannot read evidence file {path}: {exc.strerror or exc}") from None
    return Evidence.from_json(text, source=f"evidence file {path}")


def _decoded(text: str) -> bytes:
    """Strict base64 (no whitespace or other characters, correct padding)."""
    return binascii.a2b_base64(text, strict_mode=True)


_cached_decoded = functools.lru_cache(maxsize=DECODED_EVENT_LOG_CACHE_SIZE)(_decoded)


def _decoded_event_log(text: str) -> bytes:
    """The event log field decoded, from the cache for a log of a real firmware's size."""
    if len(text) > MAX_CACHED_EVENT_LOG_SIZE * 4 // 3 + 4:
        return _decoded(text)
    return _cached_decoded(text)


def _base64_field(
    document: dict[str, Any], name: str, limit: int, source: str, decode: Callable[[str], bytes]
) -> bytes:
    value = document.get(name)
    if not isinstance(value, str):
        raise EvidenceError(f"{source}: field '{name}' must be a base64 string, got {type(value).__name__}")
    if len(value) > (limit + 2) // 3 * 4:
        raise EvidenceError(f"{source}: field '{name}' decodes to more than the {limit}-byte limit")
    try:
        return decode(value)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceError(f"{source}: field '{name}' is not valid base64: {exc}") from None


def _pcr_values_field(value: object, source: str) -> PcrValues | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EvidenceError(
            f"{source}: field 'pcrValues' must be an object of banks, got {type(value).__name__}"
        )
    result: PcrValues = {}
    for bank, values in value.items():
        path = f"pcrValues.{bank}"
        if bank not in PCR_DIGEST_SIZES:
            raise EvidenceError(f"{source}: field '{path}': unknown bank (known: {', '.join(PCR_BANKS)})")
        if not isinstance(values, dict):
            raise EvidenceError(f"{source}: field '{path}' must map PCR indexes to hex values")
        bank_values: dict[int, bytes] = {}
        for index_text, hex_value in values.items():
            # isascii: int() would also take Unicode digits such as '²' that str.isdigit() accepts
            is_number = isinstance(index_text, str) and index_text.isascii() and index_text.isdigit()
            index = int(index_text) if is_number else -1
            if not 0 <= index <= MAX_PCR_INDEX:
                raise EvidenceError(
                    f"{source}: field '{path}': PCR index {index_text!r} is not 0..{MAX_PCR_INDEX}"
                )
            size = PCR_DIGEST_SIZES[bank]
            try:
                digest = bytes.fromhex(hex_value) if isinstance(hex_value, str) else b""
            except ValueError:
                digest = b""
            if len(digest) != size:
                raise EvidenceError(
                    f"{source}: field '{path}.{index_text}': "
                    f"expected {size * 2} hex digits, got {hex_value!r}"
                )
            bank_values[index] = digest
        result[bank] = bank_values
    return result


# --- collecting evidence from a TPM with tpm2-tools -------------------------------------------------

AK_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"
_PCRREAD_BANK = re.compile(r"^\s*(sha1|sha256|sha384|sha512|sm3_256):\s*$")
_PCRREAD_VALUE = re.compile(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")


def extend_event_log(tpm: Swtpm, log: EventLog, banks: Sequence[str] = ("sha1", "sha256")) -> None:
    """Extend a TPM's PCRs with every measured event of a log, in order, so they equal its replay.

    Used to make a software TPM reflect a recorded boot (tests, benchmarks, policy dry runs). The TPM
    must be fresh and the log must not start at a non-zero locality (swtpm's PCR0 starts at zero).
    """
    if log.startup_locality:
        raise EvidenceError(
            f"the event log starts at locality {log.startup_locality}; a TPM started at locality 0 "
            "cannot reproduce its PCR0"
        )
    specs = []
    for event in log.events:
        if event.event_type == EV_NO_ACTION:
            continue
        digests = [f"{bank}={event.digests[bank].hex()}" for bank in banks if bank in event.digests]
        if digests:
            specs.append(f"{event.pcr}:{','.join(digests)}")
    for start in range(0, len(specs), 64):  # keep each command line short
        tpm.run(["tpm2_pcrextend", *specs[start : start + 64]])


def collect_evidence(
    tpm: Swtpm,
    event_log: bytes,
    *,
    nonce: bytes,
    pcrs: Sequence[int],
    banks: Sequence[str] = ("sha256",),
    workdir: Path,
) -> Evidence:
    """Create an RSA-2048 restricted signing AK on `tpm`, quote `pcrs` of `banks` over `nonce`, and
    return the evidence (with the PCR values read back) for the given event log."""
    selection = "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank in banks)
    create_ak = ["tpm2_createprimary", "-C", "o", "-G", "rsa2048:rsassa-sha256:null", "-a", AK_ATTRIBUTES]
    tpm.run([*create_ak, "-c", "ak.ctx"], cwd=workdir)
    tpm.run(["tpm2_readpublic", "-c", "ak.ctx", "-f", "tpmt", "-o", "ak.tpmt"], cwd=workdir)
    quote = ["tpm2_quote", "-c", "ak.ctx", "-l", selection, "-q", nonce.hex(), "-g", "sha256"]
    tpm.run([*quote, "-m", "quote.attest", "-s", "quote.sig", "-o", "quote.pcrs"], cwd=workdir)
    pcr_read = tpm.run(["tpm2_pcrread", selection], cwd=workdir).stdout.decode()
    tpm.flush_transient_objects()
    return Evidence(
        ak_public=(workdir / "ak.tpmt").read_bytes(),
        quote=(workdir / "quote.attest").read_bytes(),
        signature=(workdir / "quote.sig").read_bytes(),
        event_log=event_log,
        pcr_values=parse_pcrread_output(pcr_read),
    )


def parse_pcrread_output(text: str) -> PcrValues:
    """PCR values from the text `tpm2_pcrread` prints (bank -> PCR index -> value)."""
    values: PcrValues = {}
    bank: dict[int, bytes] | None = None
    for line in text.splitlines():
        bank_match = _PCRREAD_BANK.match(line)
        if bank_match:
            bank = values.setdefault(bank_match.group(1), {})
            continue
        value_match = _PCRREAD_VALUE.match(line)
        if value_match and bank is not None:
            bank[int(value_match.group(1))] = bytes.fromhex(value_match.group(2))
    return values
