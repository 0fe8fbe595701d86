"""Google Compute Engine attestations (go-tpm-tools `attest.Attestation` protobuf) and their verification.

The protobuf schema is the subset of go-tpm-tools proto/attest.proto and proto/tpm.proto we need, built
at runtime with descriptor_pb2 in a private descriptor pool (same field numbers as upstream; fields we do
not declare, such as the SEV-SNP/TDX attestations, are kept as unknown fields and not trusted).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message

from trustedlaunch.attest.machine_state import event_data_findings
from trustedlaunch.attest.quote import ClockState, VerifiedQuoteSet, verify_quotes
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import Event, EventLog, EventLogError
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.replay import hash_function, replay
from trustedlaunch.eventlog.types import (
    EV_EFI_GPT_EVENT,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_BOOT,
    EV_EFI_VARIABLE_BOOT2,
    EV_S_CRTM_VERSION,
)
from trustedlaunch.findings import AttestationError, Check, Finding
from trustedlaunch.tpm.certificates import CertificateChainError, verify_tpm_certificate_chain
from trustedlaunch.tpm.credential import check_ak_attributes
from trustedlaunch.tpm.structures import HASH_ALGORITHMS, TpmStructureError, TpmtPublic, parse_tpmt_public

_FD = descriptor_pb2.FieldDescriptorProto


class GceFormatError(TrustedLaunchError):
    """The input is not a go-tpm-tools Attestation protobuf at all, or a certificate file is unreadable."""


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, **extra: Any) -> None:
    message.field.add(
        name=name, number=number, type=kind, label=extra.pop("label", _FD.LABEL_OPTIONAL), **extra
    )


def _build_schema() -> tuple[type[Message], type[Message]]:
    proto = descriptor_pb2.FileDescriptorProto(
        name="trustedlaunch/attest/gce_attestation.proto", package="trustedlaunch.gce", syntax="proto3"
    )
    pcrs = proto.message_type.add(name="PCRs")
    _field(pcrs, "hash", 1, _FD.TYPE_UINT32)  # upstream enum tpm.HashAlgo: same varint encoding
    entry = pcrs.nested_type.add(name="PcrsEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, _FD.TYPE_UINT32)
    _field(entry, "value", 2, _FD.TYPE_BYTES)
    _field(
        pcrs,
        "pcrs",
        2,
        _FD.TYPE_MESSAGE,
        type_name=".trustedlaunch.gce.PCRs.PcrsEntry",
        label=_FD.LABEL_REPEATED,
    )

    quote = proto.message_type.add(name="Quote")
    _field(quote, "quote", 1, _FD.TYPE_BYTES)
    _field(quote, "raw_sig", 2, _FD.TYPE_BYTES)
    _field(quote, "pcrs", 3, _FD.TYPE_MESSAGE, type_name=".trustedlaunch.gce.PCRs")

    info = proto.message_type.add(name="GCEInstanceInfo")
    for number, (name, kind) in enumerate(
        [
            ("zone", _FD.TYPE_STRING),
            ("project_id", _FD.TYPE_STRING),
            ("project_number", _FD.TYPE_UINT64),
            ("instance_name", _FD.TYPE_STRING),
            ("instance_id", _FD.TYPE_UINT64),
        ],
        start=1,
    ):
        _field(info, name, number, kind)

    attestation = proto.message_type.add(name="Attestation")
    _field(attestation, "ak_pub", 1, _FD.TYPE_BYTES)
    _field(
        attestation,
        "quotes",
        2,
        _FD.TYPE_MESSAGE,
        type_name=".trustedlaunch.gce.Quote",
        label=_FD.LABEL_REPEATED,
    )
    _field(attestation, "event_log", 3, _FD.TYPE_BYTES)
    _field(attestation, "instance_info", 4, _FD.TYPE_MESSAGE, type_name=".trustedlaunch.gce.GCEInstanceInfo")
    _field(attestation, "canonical_event_log", 5, _FD.TYPE_BYTES)
    _field(attestation, "ak_cert", 6, _FD.TYPE_BYTES)
    _field(attestation, "intermediate_certs", 7, _FD.TYPE_BYTES, label=_FD.LABEL_REPEATED)

    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("trustedlaunch.gce.Attestation")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("trustedlaunch.gce.Quote")),
    )


AttestationMessage, QuoteMessage = _build_schema()


def parse_gce_attestation(data: bytes) -> Message:
    """Decode a go-tpm-tools `Attestation` protobuf; GceFormatError when it is not one."""
    message = AttestationMessage()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise GceFormatError(f"GCE attestation: not a go-tpm-tools Attestation protobuf ({exc})") from None
    if not message.ak_pub or not message.quotes:  # type: ignore[attr-defined]
        raise GceFormatError("GCE attestation: the protobuf has no ak_pub or no quotes (wrong message type?)")
    return message


def load_certificates(paths: Sequence[Path]) -> list[x509.Certificate]:
    """Load DER or PEM certificates (e.g. go-tpm-tools server/ca-certs/*) for use as roots/intermediates."""
    certificates: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
            if b"-----BEGIN CERTIFICATE-----" in data:
                certificates.extend(x509.load_pem_x509_certificates(data))
            else:
                certificates.append(x509.load_der_x509_certificate(data))
        except (OSError, ValueError, x509.InvalidVersion) as exc:
            raise GceFormatError(f"{path}: not a readable DER or PEM certificate ({exc})") from None
    return certificates


@dataclass(frozen=True)
class GceVerification:
    """A verified GCE attestation: the AK, its certificate, the quotes, and the replayed event log."""

    ak: TpmtPublic
    ak_certificate: x509.Certificate
    instance_info: dict[str, str | int]
    quotes: VerifiedQuoteSet
    event_log: EventLog
    replayed_pcrs: dict[str, dict[int, bytes]]


def _reject(check: Check, component: str, message: str, pcr: int | None = None) -> AttestationError:
    return AttestationError(Finding(check, component, message, pcr=pcr))


def _verify_ak_certificate(
    der: bytes,
    extra_intermediates: Sequence[bytes],
    ak: TpmtPublic,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    at: datetime.datetime | None,
) -> x509.Certificate:
    if not der:
        raise _reject(Check.AK_CERTIFICATE, "AK", "the attestation carries no AK certificate")
    try:
        certificate = x509.load_der_x509_certificate(der)
        sent = [x509.load_der_x509_certificate(c) for c in extra_intermediates]
    except (ValueError, x509.InvalidVersion) as exc:
        raise _reject(Check.AK_CERTIFICATE, "AK", f"the AK certificate is not valid DER: {exc}") from None
    try:
        verify_tpm_certificate_chain(certificate, roots, [*intermediates, *sent], at=at)
    except CertificateChainError as exc:
        raise _reject(
            Check.AK_CERTIFICATE, "AK", f"the AK certificate does not chain to a trusted root: {exc}"
        ) from None
    encoding, public_format = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        certified_key = certificate.public_key().public_bytes(encoding, public_format)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _reject(
            Check.AK_CERTIFICATE, "AK", f"the AK certificate's public key is unusable: {exc}"
        ) from None
    if certified_key != ak.public_key().public_bytes(encoding, public_format):
        raise _reject(Check.AK_CERTIFICATE, "AK", "the AK certificate is for another key than ak_pub")
    return certificate


def _quoted_pcrs(message: Message) -> dict[str, dict[int, bytes]]:
    quoted: dict[str, dict[int, bytes]] = {}
    for index, quote in enumerate(message.quotes):  # type: ignore[attr-defined]
        algorithm = HASH_ALGORITHMS.get(quote.pcrs.hash)
        if algorithm is None:
            raise _reject(
                Check.EVIDENCE_FORMAT,
                "quote",
                f"quote #{index}: unsupported PCR hash algorithm {quote.pcrs.hash}",
            )
        for pcr, value in quote.pcrs.pcrs.items():
            if len(value) != algorithm.digest_size:
                raise _reject(
                    Check.EVIDENCE_FORMAT,
                    "quote",
                    f"quote #{index}: {algorithm.name} PCR{pcr} value is {len(value)} bytes, "
                    f"not {algorithm.digest_size}",
                    pcr,
                )
        bank = quoted.setdefault(algorithm.name, {})
        bank.update(quote.pcrs.pcrs)
    return quoted


def verify_gce_attestation(
    data: bytes,
    nonce: bytes,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    *,
    at: datetime.datetime | None = None,
    last_clock: ClockState | None = None,
) -> GceVerification:
    """Verify a GCE Attestation protobuf: AK certificate chain, AK key, every quote, and the event log.

    Checks: AK cert chains to `roots` and holds ak_pub; the AK is a restricted signing key; every quote is
    signed by the AK over `nonce` with pcrDigest == digest of its PCR map; a SHA-256 quote exists; the event
    log replays to the quoted values of every PCR it extends; the TPM clock did not go back from
    `last_clock` (the `quotes.clock` of the previous accepted attestation of this VM).
    Raises AttestationError (or GceFormatError).
    """
    message = parse_gce_attestation(data)
    try:
        ak = parse_tpmt_public(message.ak_pub)  # type: ignore[attr-defined]
    except TpmStructureError as exc:
        raise _reject(Check.EVIDENCE_FORMAT, "AK", f"ak_pub does not parse: {exc}") from None
    certificate = _verify_ak_certificate(
        message.ak_cert,  # type: ignore[attr-defined]
        message.intermediate_certs,  # type: ignore[attr-defined]
        ak,
        roots,
        intermediates,
        at,
    )
    check_ak_attributes(ak)
    quoted = _quoted_pcrs(message)
    quotes = verify_quotes(
        ak,
        [(q.quote, q.raw_sig) for q in message.quotes],  # type: ignore[attr-defined]
        nonce=nonce,
        pcr_values=quoted,
        last_clock=last_clock,
    )
    try:
        event_log = parse_event_log(message.event_log)  # type: ignore[attr-defined]
    except EventLogError as exc:
        raise _reject(Check.EVIDENCE_FORMAT, "event log", f"the event log does not parse: {exc}") from None
    replayed = replay(event_log)
    _check_replay(replayed, quoted, quotes)
    _check_event_data(event_log)
    info = message.instance_info  # type: ignore[attr-defined]
    instance_info: dict[str, str | int] = {
        descriptor.name: value for descriptor, value in info.ListFields() if isinstance(value, str | int)
    }
    return GceVerification(ak, certificate, instance_info, quotes, event_log, replayed)


def _check_replay(
    replayed: dict[str, dict[int, bytes]], quoted: dict[str, dict[int, bytes]], quotes: VerifiedQuoteSet
) -> None:
    """Every PCR the log extends, in every bank both the log and a verified quote cover, must match."""
    covered = {bank for q in quotes.quotes for bank in q.selected}
    compared = 0
    for bank in sorted(set(replayed) & covered):
        selected = {pcr for q in quotes.quotes for pcr in q.selected.get(bank, ())}
        for pcr, value in sorted(replayed[bank].items()):
            if pcr not in selected:
                raise _reject(
                    Check.PCR_DIGEST,
                    "event log",
                    f"the event log extends {bank} PCR{pcr} but no quote covers it",
                    pcr,
                )
            compared += 1
            if quoted[bank][pcr] != value:
                raise _reject(
                    Check.PCR_DIGEST,
                    "event log",
                    f"{bank} PCR{pcr}: the event log replays to {value.hex()} but the TPM quoted "
                    f"{quoted[bank][pcr].hex()}: the log was altered or is from another boot",
                    pcr,
                )
    if "sha256" not in replayed or not compared:
        raise _reject(
            Check.PCR_BANK,
            "event log",
            "the event log has no SHA-256 measurements to check against the quotes "
            f"(banks: {', '.join(sorted(replayed))})",
        )


# Event data the verifier's shared check (`event_data_findings`) does not vouch for yet but the boot
# summary reads: S-CRTM version, GPT, Boot#### variables and EV_EFI_VARIABLE_AUTHORITY (which
# certificate verified each boot application). Their digest must be a hash of (part of) their data.
_DATA_HASHED = {EV_S_CRTM_VERSION, EV_EFI_GPT_EVENT}
_VARIABLES = {EV_EFI_VARIABLE_BOOT, EV_EFI_VARIABLE_BOOT2, EV_EFI_VARIABLE_AUTHORITY}
_UEFI_VARIABLE_HEADER = 16 + 8 + 8  # VariableName GUID, UnicodeNameLength, VariableDataLength


def _measured_forms(event: Event) -> list[bytes] | None:
    """The byte strings one of which the event's digests must hash, or None when not checked here."""
    data = event.data
    if event.event_type in _DATA_HASHED:
        return [data]
    if event.event_type in _VARIABLES:
        # Firmware and shim differ: the whole UEFI_VARIABLE_DATA, or only its VariableData.
        name_length = int.from_bytes(data[16:24], "little") if len(data) >= _UEFI_VARIABLE_HEADER else 0
        forms = [data, data[_UEFI_VARIABLE_HEADER + 2 * name_length :]]
        if event.event_type == EV_EFI_VARIABLE_AUTHORITY:
            # Observed in real GCE COS logs: shim logs one byte more than it measured.
            forms.append(data[:-1])
        return forms
    return None


def _check_event_data(event_log: EventLog) -> None:
    """Events whose digest is defined as a hash of their data must carry exactly the measured data."""
    unbound = event_data_findings(event_log)
    if unbound:
        raise AttestationError(unbound[0])
    for event in event_log.events:
        forms = _measured_forms(event)
        if forms is None:
            continue
        for bank, digest in event.digests.items():
            hasher = hash_function(bank)
            if hasher is None or any(hasher(form).digest() == digest for form in forms):
                continue
            raise AttestationError(
                Finding(
                    Check.EVENT_DATA,
                    "event log",
                    f"{event.type_name} data does not hash to its {bank} digest: the event's content was "
                    "altered after measurement (the PCRs still match, the description does not)",
                    pcr=event.pcr,
                    event_index=event.index,
                )
            )
