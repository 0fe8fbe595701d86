"""Verification of TPM2_Quote evidence: AK signature, nonce, PCR digest and clock monotonicity.

Checks run cheapest first; each failure raises `AttestationError` with its own `Check` code and
component "quote". `authenticate_quote` does what needs no PCR value (selection, signature, origin, nonce)
and `check_quoted_pcrs` the rest, so that a verifier reads an event log only for an authentic quote.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from trustedlaunch.findings import AttestationError, Check, Finding
from trustedlaunch.tpm.structures import (
    ALG_ECDSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    HashAlgorithm,
    PcrSelection,
    PcrSelectionError,
    TpmsAttest,
    TpmStructureError,
    TpmtPublic,
    TpmtSignature,
    parse_tpms_attest,
    parse_tpmt_signature,
)

COMPONENT = "quote"
REQUIRED_BANK = "sha256"

PcrValues = Mapping[str, Mapping[int, bytes]]


@dataclass(frozen=True, order=True)
class ClockState:
    """The TPM clock seen in the last accepted quote of a node; store it and pass it to the next check."""

    reset_count: int
    clock: int


@dataclass(frozen=True)
class VerifiedQuote:
    """An accepted quote: the parsed attest, the PCRs it covers per bank, and the clock state to store."""

    attest: TpmsAttest
    selected: dict[str, tuple[int, ...]]
    clock: ClockState


@dataclass(frozen=True)
class VerifiedQuoteSet:
    """Several accepted quotes of one attestation (e.g. one per PCR bank) and the latest clock state."""

    quotes: tuple[VerifiedQuote, ...]
    clock: ClockState


def _reject(check: Check, message: str, pcr: int | None = None) -> AttestationError:
    return AttestationError(Finding(check, COMPONENT, message, pcr=pcr))


def _parse(attest: bytes, signature: bytes) -> tuple[TpmsAttest, TpmtSignature]:
    try:
        return parse_tpms_attest(attest), parse_tpmt_signature(signature)
    except PcrSelectionError as exc:
        raise _reject(Check.PCR_SELECTION, f"the quote's PCR selection is invalid: {exc}") from None
    except TpmStructureError as exc:
        raise _reject(Check.EVIDENCE_FORMAT, f"the quote does not parse: {exc}") from None


def _verify_signature(ak: TpmtPublic, attest: bytes, signature: TpmtSignature) -> None:
    key = ak.public_key()
    hash_alg = signature.hash.crypto_hash()
    try:
        if isinstance(key, rsa.RSAPublicKey) and signature.sig_alg == ALG_RSASSA:
            key.verify(signature.signature, attest, padding.PKCS1v15(), hash_alg)
        elif isinstance(key, rsa.RSAPublicKey) and signature.sig_alg == ALG_RSAPSS:
            pss = padding.PSS(mgf=padding.MGF1(signature.hash.crypto_hash()), salt_length=padding.PSS.AUTO)
            key.verify(signature.signature, attest, pss, hash_alg)
        elif isinstance(key, ec.EllipticCurvePublicKey) and signature.sig_alg == ALG_ECDSA:
            der = encode_dss_signature(int.from_bytes(signature.r, "big"), int.from_bytes(signature.s, "big"))
            key.verify(der, attest, ec.ECDSA(hash_alg))
        else:
            key_kind = "RSA" if isinstance(key, rsa.RSAPublicKey) else "ECC"
            raise _reject(
                Check.QUOTE_SIGNATURE,
                f"signature algorithm 0x{signature.sig_alg:04x} cannot come from the {key_kind} AK",
            )
    except InvalidSignature:
        raise _reject(
            Check.QUOTE_SIGNATURE,
            f"the quote signature ({signature.hash.name}) does not verify with the AK "
            f"(AK name {ak.name().hex()}): the quote was altered or signed by another key",
        ) from None


def _pcr_digest(
    hash_alg: HashAlgorithm, selection: Sequence[PcrSelection], values: PcrValues, source: str
) -> bytes:
    """H(concatenation of the selected PCR values, bank by bank in selection order, PCRs ascending)."""
    parts: list[bytes] = []
    for bank_selection in selection:
        bank = values.get(bank_selection.bank)
        for pcr in bank_selection.pcrs:
            value = None if bank is None else bank.get(pcr)
            if value is None:
                raise _reject(
                    Check.PCR_DIGEST,
                    f"the quote covers {bank_selection.bank} PCR{pcr} but {source} has no value for it",
                    pcr,
                )
            parts.append(value)
    return hash_alg.digest(b"".join(parts))


def _check_pcr_digest(
    attest: TpmsAttest,
    hash_alg: HashAlgorithm,
    selection: Sequence[PcrSelection],
    expected: PcrValues,
    quoted: PcrValues | None,
) -> None:
    assert attest.quote is not None
    if hmac.compare_digest(
        _pcr_digest(hash_alg, selection, expected, "the expected PCR set"), attest.quote.pcr_digest
    ):
        return
    if quoted is None:
        raise _reject(
            Check.PCR_DIGEST, "the quoted PCR digest does not match the PCR values of the replayed log"
        )
    if not hmac.compare_digest(
        _pcr_digest(hash_alg, selection, quoted, "the quoted PCR set"), attest.quote.pcr_digest
    ):
        raise _reject(
            Check.PCR_DIGEST,
            "the quoted PCR digest matches neither the replayed log nor the PCR values sent with the quote",
        )
    differing = [
        (s.bank, pcr)
        for s in selection
        for pcr in s.pcrs
        if not hmac.compare_digest(quoted[s.bank][pcr], expected[s.bank][pcr])
    ]
    names = ", ".join(f"{bank} PCR{pcr}" for bank, pcr in differing)
    raise _reject(
        Check.PCR_DIGEST,
        f"the TPM's PCR values differ from the replayed log in {names}",
        differing[0][1] if len(differing) == 1 else None,
    )


def _check_clock(attest: TpmsAttest, last_clock: ClockState | None) -> ClockState:
    info = attest.clock_info
    now = ClockState(info.reset_count, info.clock)
    if last_clock is None:
        return now
    if now.reset_count < last_clock.reset_count:
        raise _reject(
            Check.CLOCK,
            f"resetCount went backwards ({last_clock.reset_count} -> {now.reset_count}): "
            "the quote is a replay or comes from another TPM",
        )
    if now.reset_count == last_clock.reset_count and now.clock < last_clock.clock:
        raise _reject(
            Check.CLOCK,
            f"the TPM clock went backwards ({last_clock.clock} -> {now.clock} ms, "
            f"resetCount {now.reset_count}): the quote is a replay",
        )
    return now


@dataclass(frozen=True)
class AuthenticQuote:
    """A quote the AK signed, made by a TPM (TPM_GENERATED_VALUE, a TPM2_Quote) over the expected nonce; its
    PCR digest and clock are not checked yet (`check_quoted_pcrs`)."""

    attest: TpmsAttest
    hash: HashAlgorithm  # the signature's hash: the PCR digest's too
    selection: tuple[PcrSelection, ...]
    selected: dict[str, tuple[int, ...]]


def authenticate_quote(
    ak: TpmtPublic, attest_bytes: bytes, signature_bytes: bytes, *, nonce: bytes, require_sha256: bool = True
) -> AuthenticQuote:
    """Check a quote's PCR selection, its signature by `ak`, its origin and its nonce: everything that needs
    no PCR value, so that a verifier parses nothing else (no event log) for a quote that fails here."""
    attest, signature = _parse(attest_bytes, signature_bytes)
    selection = tuple(attest.quote.pcr_select) if attest.quote is not None else ()
    selected = {s.bank: s.pcrs for s in selection}
    if attest.quote is not None:
        if not any(s.pcrs for s in selection):
            raise _reject(Check.PCR_SELECTION, "the quote selects no PCR at all")
        if require_sha256 and not selected.get(REQUIRED_BANK):
            banks = ", ".join(sorted(b for b, pcrs in selected.items() if pcrs))
            raise _reject(
                Check.PCR_BANK, f"the quote covers only the {banks} bank(s); a SHA-256 quote is required"
            )
    _verify_signature(ak, attest_bytes, signature)
    if attest.magic != TPM_GENERATED_VALUE:
        raise _reject(
            Check.QUOTE_TYPE, f"magic is 0x{attest.magic:08x}, not TPM_GENERATED_VALUE: not produced by a TPM"
        )
    if attest.type != TPM_ST_ATTEST_QUOTE or attest.quote is None:
        raise _reject(Check.QUOTE_TYPE, f"attestation type is 0x{attest.type:04x}, not TPM_ST_ATTEST_QUOTE")
    if not hmac.compare_digest(attest.extra_data, nonce):
        raise _reject(
            Check.NONCE,
            f"the quote answers nonce {attest.extra_data.hex() or '(empty)'}, not the expected "
            f"{nonce.hex() or '(empty)'}: stale or replayed evidence",
        )
    return AuthenticQuote(attest, signature.hash, selection, selected)


def check_quoted_pcrs(
    quote: AuthenticQuote,
    *,
    pcr_values: PcrValues,
    last_clock: ClockState | None = None,
    quoted_pcr_values: PcrValues | None = None,
) -> VerifiedQuote:
    """Finish verifying an authentic quote: its PCR digest against the expected `pcr_values` (see
    `verify_quote`) and its clock against the node's last one."""
    _check_pcr_digest(quote.attest, quote.hash, quote.selection, pcr_values, quoted_pcr_values)
    return VerifiedQuote(quote.attest, quote.selected, _check_clock(quote.attest, last_clock))


def _verify(
    ak: TpmtPublic,
    attest_bytes: bytes,
    signature_bytes: bytes,
    nonce: bytes,
    pcr_values: PcrValues,
    last_clock: ClockState | None,
    quoted_pcr_values: PcrValues | None,
    require_sha256: bool,
) -> VerifiedQuote:
    quote = authenticate_quote(ak, attest_bytes, signature_bytes, nonce=nonce, require_sha256=require_sha256)
    return check_quoted_pcrs(
        quote, pcr_values=pcr_values, last_clock=last_clock, quoted_pcr_values=quoted_pcr_values
    )


def verify_quote(
    ak: TpmtPublic,
    attest: bytes,
    signature: bytes,
    *,
    nonce: bytes,
    pcr_values: PcrValues,
    last_clock: ClockState | None = None,
    quoted_pcr_values: PcrValues | None = None,
) -> VerifiedQuote:
    """Verify a TPMS_ATTEST quote and its TPMT_SIGNATURE by `ak` against the expected PCR values.

    `pcr_values` are the values the verifier expects (e.g. the replayed event log) by bank name and PCR;
    `quoted_pcr_values`, when given (the values the attester sent), lets a mismatch name the PCRs.
    The quote must cover the SHA-256 bank. Raises AttestationError on the first failed check.
    """
    return _verify(ak, attest, signature, nonce, pcr_values, last_clock, quoted_pcr_values, True)


def verify_quotes(
    ak: TpmtPublic,
    quotes: Sequence[tuple[bytes, bytes]],
    *,
    nonce: bytes,
    pcr_values: PcrValues,
    last_clock: ClockState | None = None,
    quoted_pcr_values: PcrValues | None = None,
) -> VerifiedQuoteSet:
    """Verify several (attest, signature) quotes by one AK (e.g. one per bank); one must cover SHA-256."""
    if not quotes:
        raise _reject(Check.EVIDENCE_FORMAT, "the attestation carries no quote")
    verified = tuple(
        _verify(ak, attest, signature, nonce, pcr_values, last_clock, quoted_pcr_values, False)
        for attest, signature in quotes
    )
    if not any(q.selected.get(REQUIRED_BANK) for q in verified):
        banks = ", ".join(sorted({b for q in verified for b, pcrs in q.selected.items() if pcrs}))
        raise _reject(
            Check.PCR_BANK, f"the quotes cover only the {banks} bank(s); a SHA-256 quote is required"
        )
    return VerifiedQuoteSet(verified, max(q.clock for q in verified))
