"""verify_gce_attestation against the two real GCE attestations shipped with go-tpm-tools.

Tampering: one byte at a time is changed in every evidence field at sampled positions; each change
must be rejected with a named reason, or lie in a part of the evidence that is explicitly not vouched
for (explained next to the rule that allows it).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from trustedlaunch.attest.gce import (
    AttestationMessage,
    GceFormatError,
    load_certificates,
    parse_gce_attestation,
    verify_gce_attestation,
)
from trustedlaunch.attest.quote import ClockState
from trustedlaunch.eventlog.model import EventLogError
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.types import (
    EV_EFI_BOOT_SERVICES_APPLICATION,
    EV_EFI_VARIABLE_AUTHORITY,
    EV_EFI_VARIABLE_DRIVER_CONFIG,
    EV_IPL,
    EV_NO_ACTION,
    EV_S_CRTM_VERSION,
)
from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.tpm.structures import TpmStructureError, parse_tpmt_public

ATTESTATIONS = {"gce-cos-85-no-nonce.pb": b"", "gce-cos-85-nonce9009.pb": bytes.fromhex("9009")}
SAMPLES_PER_FIELD = 40

Roots = tuple[list[x509.Certificate], list[x509.Certificate]]


@pytest.fixture(scope="module")
def trust(testdata: Path) -> Roots:
    ca = testdata / "go-tpm-tools" / "ca-certs"
    return load_certificates([ca / "tpm_ek_root_1.cer"]), load_certificates(
        [ca / "tpm_ek_intermediate_2.crt"]
    )


@pytest.fixture(params=sorted(ATTESTATIONS))
def attestation(request: pytest.FixtureRequest, testdata: Path) -> tuple[bytes, bytes]:
    name: str = request.param
    return (testdata / "go-tpm-tools" / "attestations" / name).read_bytes(), ATTESTATIONS[name]


def test_real_gce_attestations_verify(attestation: tuple[bytes, bytes], trust: Roots) -> None:
    data, nonce = attestation
    result = verify_gce_attestation(data, nonce, *trust)
    assert sorted(bank for q in result.quotes.quotes for bank in q.selected) == ["sha1", "sha256", "sha384"]
    assert all(q.selected[bank] == tuple(range(24)) for q in result.quotes.quotes for bank in q.selected)
    assert sorted(result.replayed_pcrs["sha256"]) == list(range(10))
    assert result.ak_certificate.not_valid_before_utc.year == 2021
    assert result.event_log.banks == ("sha1", "sha256", "sha384")


def test_nonce_is_the_raw_bytes(attestation: tuple[bytes, bytes], trust: Roots) -> None:
    data, nonce = attestation
    for wrong in (nonce + b"\x00", b"\x90\x08", bytes(2) if nonce else b"\x00"):
        with pytest.raises(AttestationError) as caught:
            verify_gce_attestation(data, wrong, *trust)
        assert caught.value.finding.check == Check.NONCE


def test_foreign_or_missing_roots_reject_the_ak_certificate(
    attestation: tuple[bytes, bytes], testdata: Path
) -> None:
    data, nonce = attestation
    ca = testdata / "go-tpm-tools" / "ca-certs"
    gcp_roots = load_certificates([ca / "gcp_ek_ak_ca_root.crt"])
    for roots, intermediates in ((gcp_roots, load_certificates([ca / "gcp_ek_ak_ca_intermediate_v3.crt"])),):
        with pytest.raises(AttestationError) as caught:
            verify_gce_attestation(data, nonce, roots, intermediates)
        assert caught.value.finding.check == Check.AK_CERTIFICATE
    # The right root without the intermediate that issued the AK certificate is not enough.
    with pytest.raises(AttestationError, match="no trusted root or given intermediate"):
        verify_gce_attestation(data, nonce, load_certificates([ca / "tpm_ek_root_1.cer"]))


def test_clock_must_not_go_back(attestation: tuple[bytes, bytes], trust: Roots) -> None:
    data, nonce = attestation
    result = verify_gce_attestation(data, nonce, *trust)
    earliest = min(q.clock for q in result.quotes.quotes)
    assert result.quotes.clock > earliest  # the three quotes were taken one after the other
    assert (
        verify_gce_attestation(data, nonce, *trust, last_clock=earliest).quotes.clock == result.quotes.clock
    )
    # Presenting the same evidence again after it was accepted is a replay.
    with pytest.raises(AttestationError) as caught:
        verify_gce_attestation(data, nonce, *trust, last_clock=result.quotes.clock)
    assert caught.value.finding.check == Check.CLOCK
    rebooted = ClockState(earliest.reset_count + 1, 0)
    with pytest.raises(AttestationError, match="resetCount went backwards"):
        verify_gce_attestation(data, nonce, *trust, last_clock=rebooted)


def test_expired_chain_is_rejected(attestation: tuple[bytes, bytes], trust: Roots) -> None:
    data, nonce = attestation
    before_issue = datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC)
    with pytest.raises(AttestationError, match="not valid at 2021-01-01") as caught:
        verify_gce_attestation(data, nonce, *trust, at=before_issue)
    assert caught.value.finding.check == Check.AK_CERTIFICATE


def test_not_a_protobuf_is_a_format_error(trust: Roots) -> None:
    with pytest.raises(GceFormatError, match="not a go-tpm-tools Attestation"):
        verify_gce_attestation(b"\xff\xff\xff\xff", b"", *trust)
    with pytest.raises(GceFormatError, match="no ak_pub or no quotes"):
        verify_gce_attestation(b"", b"", *trust)


def _positions(length: int) -> list[int]:
    step = max(1, length // SAMPLES_PER_FIELD)
    return sorted({*range(0, length, step), length - 1})


def _tamper(data: bytes, edit: Callable[[object], None]) -> bytes:
    message = AttestationMessage()
    message.ParseFromString(data)
    edit(message)
    return message.SerializeToString()


def _flip(value: bytes, position: int) -> bytes:
    changed = bytearray(value)
    changed[position] ^= 0x5A
    return bytes(changed)


def _outcome(data: bytes, nonce: bytes, trust: Roots) -> Check | None:
    try:
        verify_gce_attestation(data, nonce, *trust)
    except AttestationError as error:
        assert error.finding.message, "a rejection must say why"
        return error.finding.check
    return None


def test_every_changed_quote_signature_or_pcr_byte_is_rejected(
    attestation: tuple[bytes, bytes], trust: Roots
) -> None:
    data, nonce = attestation
    message = parse_gce_attestation(data)
    for index, quote in enumerate(message.quotes):  # type: ignore[attr-defined]
        for field_name in ("quote", "raw_sig"):
            for position in _positions(len(getattr(quote, field_name))):

                def edit(
                    m: object, index: int = index, field_name: str = field_name, position: int = position
                ) -> None:
                    target = m.quotes[index]  # type: ignore[attr-defined]
                    setattr(target, field_name, _flip(getattr(target, field_name), position))

                check = _outcome(_tamper(data, edit), nonce, trust)
                assert check in {Check.QUOTE_SIGNATURE, Check.EVIDENCE_FORMAT, Check.PCR_SELECTION}, (
                    f"quote #{index} {field_name} byte {position}: {check}"
                )
        for pcr in (0, 7, 9, 14, 23):

            def edit_pcr(m: object, index: int = index, pcr: int = pcr) -> None:
                values = m.quotes[index].pcrs.pcrs  # type: ignore[attr-defined]
                values[pcr] = _flip(values[pcr], 0)

            assert _outcome(_tamper(data, edit_pcr), nonce, trust) == Check.PCR_DIGEST, (
                f"quote #{index} PCR{pcr}"
            )


def test_every_changed_certificate_byte_is_rejected(attestation: tuple[bytes, bytes], trust: Roots) -> None:
    data, nonce = attestation
    certificate = parse_gce_attestation(data).ak_cert  # type: ignore[attr-defined]
    for position in _positions(len(certificate)):

        def edit(m: object, position: int = position) -> None:
            m.ak_cert = _flip(m.ak_cert, position)  # type: ignore[attr-defined]

        assert _outcome(_tamper(data, edit), nonce, trust) == Check.AK_CERTIFICATE, f"ak_cert byte {position}"


# TPMT_PUBLIC of an RSA AK: type(2) nameAlg(2) objectAttributes(4) authPolicy(2+0) symmetric(2)
# scheme(2) scheme hash(2) keyBits(2) exponent(4) unique(2+256).
_OBJECT_ATTRIBUTES = range(4, 8)
_SCHEME = range(12, 16)


def test_every_changed_ak_pub_byte_is_rejected_or_explained(
    attestation: tuple[bytes, bytes], trust: Roots
) -> None:
    data, nonce = attestation
    ak_pub = parse_gce_attestation(data).ak_pub  # type: ignore[attr-defined]
    original_key = parse_tpmt_public(ak_pub).public_key().public_numbers()
    for position in range(len(ak_pub)) if len(ak_pub) < 300 else _positions(len(ak_pub)):
        changed = _flip(ak_pub, position)

        def edit(m: object, changed: bytes = changed) -> None:
            m.ak_pub = changed  # type: ignore[attr-defined]

        check = _outcome(_tamper(data, edit), nonce, trust)
        if check is not None:
            continue
        # Allowed: the AK certificate vouches for the public key only. objectAttributes bits that
        # check_ak_attributes does not require (e.g. userWithAuth, noDA) and the AK's default signing
        # scheme are not bound by anything a verifier receives (each quote's TPMT_SIGNATURE names its
        # own scheme), so changing them changes nothing that is trusted: the key is unchanged.
        assert position in _OBJECT_ATTRIBUTES or position in _SCHEME, f"ak_pub byte {position} was accepted"
        assert parse_tpmt_public(changed).public_key().public_numbers() == original_key


def _locate(data: bytes, offset: int) -> tuple[int, str]:
    """(event index, "type" | "data" | "other") for byte `offset` of a log: which part of which event."""
    events = list(parse_event_log(data).events)
    for event, following in zip(events, [*events[1:], None], strict=True):
        end = following.offset if following is not None else len(data)
        if event.offset <= offset < end:
            if event.offset + 4 <= offset < event.offset + 8:
                return event.index, "type"
            return event.index, "data" if offset >= end - len(event.data) else "other"
    return -1, "other"


# Event data that is not what the TPM measured: replay cannot vouch for it, and nothing trusted uses it.
#  - EV_NO_ACTION: never extended (the SpecID header's vendor fields, SP800-155 references).
#  - EV_EFI_BOOT_SERVICES_APPLICATION: the digest is the image's Authenticode hash; the data is
#    the load address/device path, which is a description only.
#  - EV_IPL in PCR9 (GRUB file names): the digest is the file content's hash, the data its name.
_UNMEASURED_DATA = {EV_NO_ACTION, EV_EFI_BOOT_SERVICES_APPLICATION, EV_IPL}


def test_every_changed_event_log_byte_is_rejected_or_explained(
    attestation: tuple[bytes, bytes], trust: Roots
) -> None:
    data, nonce = attestation
    log = parse_gce_attestation(data).event_log  # type: ignore[attr-defined]
    original = parse_event_log(log)
    rejected = 0
    for position in _positions(len(log)) + [len(log) // 3 + i for i in range(40)]:
        changed = _flip(log, position)

        def edit(m: object, changed: bytes = changed) -> None:
            m.event_log = changed  # type: ignore[attr-defined]

        check = _outcome(_tamper(data, edit), nonce, trust)
        if check is not None:
            assert check in {Check.EVIDENCE_FORMAT, Check.EVENT_DATA, Check.PCR_DIGEST, Check.PCR_BANK}, (
                f"log byte {position}"
            )
            rejected += 1
            continue
        tampered = parse_event_log(changed)
        assert [(e.pcr, e.digests) for e in tampered.events] == [(e.pcr, e.digests) for e in original.events]
        index, part = _locate(changed, position)
        if part == "type":
            # The event type is not measured (go-tpm-tools calls it "untrusted_type"): a changed type
            # still replays. The event-data checks reject re-typed PCR4 events and re-typed events the
            # summary reads lose their meaning (policy then finds e.g. no SecureBoot variable).
            continue
        assert part == "data", f"log byte {position} (event #{index} {part}) was accepted"
        event = tampered.events[index]
        assert event.event_type in _UNMEASURED_DATA, f"log byte {position} in {event.type_name} accepted"
        if event.event_type == EV_IPL:
            assert event.pcr == 9 and not event.data.startswith((b"grub_cmd", b"kernel_cmdline"))
    assert rejected > SAMPLES_PER_FIELD // 2


def test_structure_errors_in_parsing_helpers_are_trustedlaunch_errors(
    attestation: tuple[bytes, bytes],
) -> None:
    data, _ = attestation
    message = parse_gce_attestation(data)
    with pytest.raises(TpmStructureError):
        parse_tpmt_public(message.ak_pub[:-1])  # type: ignore[attr-defined]
    with pytest.raises(EventLogError):
        parse_event_log(message.event_log[:-7])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "event_type", [EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_VARIABLE_AUTHORITY, EV_S_CRTM_VERSION]
)
def test_edited_event_data_is_named(attestation: tuple[bytes, bytes], trust: Roots, event_type: int) -> None:
    data, nonce = attestation
    log = parse_gce_attestation(data).event_log  # type: ignore[attr-defined]
    events = list(parse_event_log(log).events)
    index = next(i for i, e in enumerate(events) if e.event_type == event_type)
    data_end = events[index + 1].offset
    position = data_end - len(events[index].data) // 2

    def edit(m: object) -> None:
        m.event_log = _flip(log, position)  # type: ignore[attr-defined]

    with pytest.raises(AttestationError) as caught:
        verify_gce_attestation(_tamper(data, edit), nonce, *trust)
    assert caught.value.finding.check == Check.EVENT_DATA
    assert caught.value.finding.event_index == index
