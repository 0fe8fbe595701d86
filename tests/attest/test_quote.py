"""verify_quote against real quotes made by tpm2_quote in a real swtpm (RSA and ECC AKs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trustedlaunch.attest.quote import ClockState, verify_quote, verify_quotes
from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.tpm.structures import (
    HASH_BY_NAME,
    PcrSelection,
    TpmtPublic,
    parse_tpm2b_public,
    parse_tpms_attest,
)
from trustedlaunch.tpm.swtpm import Swtpm

PCRS = range(8)
SELECTION = "sha256:0,1,2,3,4,5,6,7+sha1:0,1,2,3,4,5,6,7"
NONCE = bytes.fromhex("5e1ec7ed0123456789abcdef")
EXTENDED_PCR = 4


@dataclass(frozen=True)
class Quote:
    attest: bytes
    signature: bytes


@dataclass(frozen=True)
class QuoteLab:
    rsa_ak: TpmtPublic
    ecc_ak: TpmtPublic
    other_rsa_ak: TpmtPublic
    pcrs: dict[str, dict[int, bytes]]  # read before the extend
    pcrs_after_extend: dict[str, dict[int, bytes]]
    rsa: Quote
    rsa_later: Quote
    ecc: Quote
    sha1_only: Quote
    after_extend: Quote


def _read_pcrs(tpm: Swtpm, work: Path, bank: str) -> dict[int, bytes]:
    out = work / f"pcrs-{bank}.bin"
    tpm.run(["tpm2_pcrread", f"{bank}:{','.join(map(str, PCRS))}", "-o", out])
    raw = out.read_bytes()
    size = HASH_BY_NAME[bank].digest_size
    assert len(raw) == size * len(PCRS)
    return {pcr: raw[pcr * size : (pcr + 1) * size] for pcr in PCRS}


def _quote(tpm: Swtpm, work: Path, ak_ctx: str, name: str, selection: str = SELECTION) -> Quote:
    tpm.run(
        [
            "tpm2_quote",
            "-c",
            ak_ctx,
            "-l",
            selection,
            "-q",
            NONCE.hex(),
            "-m",
            f"{name}.msg",
            "-s",
            f"{name}.sig",
        ],
        cwd=work,
    )
    tpm.flush_transient_objects()
    return Quote((work / f"{name}.msg").read_bytes(), (work / f"{name}.sig").read_bytes())


def _create_ak(tpm: Swtpm, work: Path, name: str, key_alg: str, scheme: str) -> TpmtPublic:
    tpm.run(
        [
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            f"{name}.ctx",
            "-G",
            key_alg,
            "-s",
            scheme,
            "-u",
            f"{name}.pub",
        ],
        cwd=work,
    )
    tpm.flush_transient_objects()
    return parse_tpm2b_public((work / f"{name}.pub").read_bytes())


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QuoteLab]:
    work = tmp_path_factory.mktemp("quote")
    with Swtpm() as tpm:
        # Give the PCRs non-trivial values first, so that PCR sets really differ from each other.
        tpm.run(["tpm2_pcrextend", "1:sha256=" + "11" * 32 + ",sha1=" + "11" * 20])
        tpm.run(["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"], cwd=work)
        tpm.flush_transient_objects()
        rsa_ak = _create_ak(tpm, work, "ak-rsa", "rsa", "rsassa")
        ecc_ak = _create_ak(tpm, work, "ak-ecc", "ecc", "ecdsa")
        other_rsa_ak = _create_ak(tpm, work, "ak-other", "rsa", "rsassa")
        pcrs = {bank: _read_pcrs(tpm, work, bank) for bank in ("sha1", "sha256")}
        rsa = _quote(tpm, work, "ak-rsa.ctx", "rsa")
        ecc = _quote(tpm, work, "ak-ecc.ctx", "ecc")
        sha1_only = _quote(tpm, work, "ak-rsa.ctx", "sha1-only", "sha1:0,1,2,3,4,5,6,7")
        rsa_later = _quote(tpm, work, "ak-rsa.ctx", "rsa-later")
        tpm.run(["tpm2_pcrextend", f"{EXTENDED_PCR}:sha256=" + "ab" * 32 + ",sha1=" + "ab" * 20])
        pcrs_after = {bank: _read_pcrs(tpm, work, bank) for bank in ("sha1", "sha256")}
        after_extend = _quote(tpm, work, "ak-rsa.ctx", "after-extend")
    yield QuoteLab(
        rsa_ak, ecc_ak, other_rsa_ak, pcrs, pcrs_after, rsa, rsa_later, ecc, sha1_only, after_extend
    )


def _rejected(check: Check, ak: TpmtPublic, quote: Quote, **kwargs: object) -> AttestationError:
    kwargs.setdefault("nonce", NONCE)
    with pytest.raises(AttestationError) as caught:
        verify_quote(ak, quote.attest, quote.signature, **kwargs)  # type: ignore[arg-type]
    assert caught.value.finding.check == check, str(caught.value)
    assert caught.value.finding.component == "quote"
    return caught.value


def test_rsa_and_ecc_quotes_verify_against_pcrread_values(lab: QuoteLab) -> None:
    for ak, quote in ((lab.rsa_ak, lab.rsa), (lab.ecc_ak, lab.ecc)):
        verified = verify_quote(ak, quote.attest, quote.signature, nonce=NONCE, pcr_values=lab.pcrs)
        assert verified.selected == {"sha256": tuple(PCRS), "sha1": tuple(PCRS)}
        assert verified.attest.extra_data == NONCE
        assert verified.clock.reset_count == verified.attest.clock_info.reset_count


def test_wrong_nonce_is_rejected(lab: QuoteLab) -> None:
    error = _rejected(Check.NONCE, lab.rsa_ak, lab.rsa, nonce=NONCE[:-1] + b"\x00", pcr_values=lab.pcrs)
    assert NONCE.hex() in str(error)


@pytest.mark.parametrize("field", ["attest", "signature"])
def test_any_flipped_byte_is_rejected(lab: QuoteLab, field: str) -> None:
    original = getattr(lab.rsa, field)
    for position in range(0, len(original), 7):
        tampered = bytearray(original)
        tampered[position] ^= 0x01
        quote = dataclasses.replace(lab.rsa, **{field: bytes(tampered)})
        with pytest.raises(AttestationError) as caught:
            verify_quote(lab.rsa_ak, quote.attest, quote.signature, nonce=NONCE, pcr_values=lab.pcrs)
        # A flip either breaks the structure, the selection or the signature; never anything later.
        assert caught.value.finding.check in {
            Check.EVIDENCE_FORMAT,
            Check.PCR_SELECTION,
            Check.PCR_BANK,
            Check.QUOTE_SIGNATURE,
        }, f"{field} byte {position}: {caught.value}"


def test_flipped_signature_byte_names_the_signature_check(lab: QuoteLab) -> None:
    tampered = bytearray(lab.rsa.signature)
    tampered[-1] ^= 0x80
    _rejected(Check.QUOTE_SIGNATURE, lab.rsa_ak, Quote(lab.rsa.attest, bytes(tampered)), pcr_values=lab.pcrs)


def test_flipped_extra_data_byte_fails_the_signature(lab: QuoteLab) -> None:
    attest = parse_tpms_attest(lab.rsa.attest)
    forged = dataclasses.replace(attest, extra_data=NONCE[:-1] + b"\xff").to_bytes()
    _rejected(Check.QUOTE_SIGNATURE, lab.rsa_ak, Quote(forged, lab.rsa.signature), pcr_values=lab.pcrs)


def test_quote_by_a_different_ak_is_rejected(lab: QuoteLab) -> None:
    _rejected(Check.QUOTE_SIGNATURE, lab.other_rsa_ak, lab.rsa, pcr_values=lab.pcrs)
    _rejected(Check.QUOTE_SIGNATURE, lab.ecc_ak, lab.rsa, pcr_values=lab.pcrs)


def test_pcr_values_after_extend_are_rejected_and_named(lab: QuoteLab) -> None:
    _rejected(Check.PCR_DIGEST, lab.rsa_ak, lab.after_extend, pcr_values=lab.pcrs)
    named = _rejected(
        Check.PCR_DIGEST,
        lab.rsa_ak,
        lab.after_extend,
        pcr_values=lab.pcrs,
        quoted_pcr_values=lab.pcrs_after_extend,
    )
    assert "sha256 PCR4" in str(named) and "sha1 PCR4" in str(named)
    assert "PCR3" not in str(named)
    verify_quote(
        lab.rsa_ak,
        lab.after_extend.attest,
        lab.after_extend.signature,
        nonce=NONCE,
        pcr_values=lab.pcrs_after_extend,
    )


def test_missing_expected_pcr_value_is_named(lab: QuoteLab) -> None:
    partial = {"sha256": lab.pcrs["sha256"], "sha1": {k: v for k, v in lab.pcrs["sha1"].items() if k != 6}}
    error = _rejected(Check.PCR_DIGEST, lab.rsa_ak, lab.rsa, pcr_values=partial)
    assert error.finding.pcr == 6


def test_sha1_only_quote_is_rejected(lab: QuoteLab) -> None:
    _rejected(Check.PCR_BANK, lab.rsa_ak, lab.sha1_only, pcr_values=lab.pcrs)


def test_duplicate_selection_is_rejected_before_signature_work(lab: QuoteLab) -> None:
    attest = parse_tpms_attest(lab.rsa.attest)
    assert attest.quote is not None
    sha256 = PcrSelection(HASH_BY_NAME["sha256"], tuple(PCRS))
    duplicated = dataclasses.replace(
        attest, quote=dataclasses.replace(attest.quote, pcr_select=(sha256, sha256))
    )
    error = _rejected(
        Check.PCR_SELECTION, lab.rsa_ak, Quote(duplicated.to_bytes(), lab.rsa.signature), pcr_values={}
    )
    assert "more than once" in str(error)


def test_malformed_size_of_select_is_rejected(lab: QuoteLab) -> None:
    attest = parse_tpms_attest(lab.rsa.attest)
    assert attest.quote is not None
    oversized = PcrSelection(HASH_BY_NAME["sha256"], tuple(PCRS), size_of_select=9)
    bad = dataclasses.replace(attest, quote=dataclasses.replace(attest.quote, pcr_select=(oversized,)))
    error = _rejected(
        Check.PCR_SELECTION, lab.rsa_ak, Quote(bad.to_bytes(), lab.rsa.signature), pcr_values={}
    )
    assert "sizeofSelect 9" in str(error)


def test_truncated_attest_is_evidence_format(lab: QuoteLab) -> None:
    error = _rejected(
        Check.EVIDENCE_FORMAT, lab.rsa_ak, Quote(lab.rsa.attest[:-3], lab.rsa.signature), pcr_values={}
    )
    assert "TPMS_ATTEST" in str(error) and "offset" in str(error)


def test_clock_going_backwards_is_rejected(lab: QuoteLab) -> None:
    later = verify_quote(
        lab.rsa_ak, lab.rsa_later.attest, lab.rsa_later.signature, nonce=NONCE, pcr_values=lab.pcrs
    ).clock
    earlier = verify_quote(
        lab.rsa_ak, lab.rsa.attest, lab.rsa.signature, nonce=NONCE, pcr_values=lab.pcrs
    ).clock
    assert earlier.reset_count == later.reset_count and earlier.clock <= later.clock
    # Accepted in order; the newer state is returned for storage.
    assert (
        verify_quote(
            lab.rsa_ak,
            lab.rsa_later.attest,
            lab.rsa_later.signature,
            nonce=NONCE,
            pcr_values=lab.pcrs,
            last_clock=earlier,
        ).clock
        == later
    )
    ahead = ClockState(later.reset_count, later.clock + 1)
    _rejected(Check.CLOCK, lab.rsa_ak, lab.rsa_later, pcr_values=lab.pcrs, last_clock=ahead)
    newer_boot = ClockState(later.reset_count + 1, 0)
    error = _rejected(Check.CLOCK, lab.rsa_ak, lab.rsa, pcr_values=lab.pcrs, last_clock=newer_boot)
    assert "resetCount" in str(error)


def test_quote_set_requires_a_sha256_quote(lab: QuoteLab) -> None:
    both = verify_quotes(
        lab.rsa_ak,
        [(lab.sha1_only.attest, lab.sha1_only.signature), (lab.rsa_later.attest, lab.rsa_later.signature)],
        nonce=NONCE,
        pcr_values=lab.pcrs,
    )
    assert both.clock == both.quotes[1].clock
    with pytest.raises(AttestationError) as caught:
        verify_quotes(
            lab.rsa_ak, [(lab.sha1_only.attest, lab.sha1_only.signature)], nonce=NONCE, pcr_values=lab.pcrs
        )
    assert caught.value.finding.check == Check.PCR_BANK
    with pytest.raises(AttestationError) as caught:
        verify_quotes(lab.rsa_ak, [], nonce=NONCE, pcr_values=lab.pcrs)
    assert caught.value.finding.check == Check.EVIDENCE_FORMAT
