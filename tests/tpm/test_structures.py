"""TPM 2.0 structure parsing against public areas, quotes and signatures produced by a real swtpm."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustedlaunch.tpm.structures import (
    ALG_AES,
    ALG_CFB,
    ALG_ECC,
    ALG_ECDSA,
    ALG_RSA,
    ALG_RSASSA,
    ECC_NIST_P256,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    EccParameters,
    PcrSelectionError,
    RsaParameters,
    TpmStructureError,
    encode_pcr_selection_list,
    parse_pcr_selection_list,
    parse_tpm2b_public,
    parse_tpms_attest,
    parse_tpmt_public,
    parse_tpmt_signature,
)
from trustedlaunch.tpm.swtpm import Swtpm


@dataclass(frozen=True)
class Artifacts:
    work: Path

    def read(self, name: str) -> bytes:
        return (self.work / name).read_bytes()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Artifacts]:
    work = tmp_path_factory.mktemp("structures")
    with Swtpm() as tpm:

        def run(*args: str) -> None:
            tpm.run(list(args), cwd=work)
            tpm.flush_transient_objects()

        for alg in ("rsa", "ecc"):
            run("tpm2_createek", "-c", f"ek-{alg}.ctx", "-G", alg, "-u", f"ek-{alg}.pub")
            run(
                "tpm2_readpublic",
                "-c",
                f"ek-{alg}.ctx",
                "-n",
                f"ek-{alg}.name",
                "-f",
                "pem",
                "-o",
                f"ek-{alg}.pem",
            )
        for alg, scheme in (("rsa", "rsassa"), ("ecc", "ecdsa")):
            run("tpm2_createak", "-C", "ek-rsa.ctx", "-c", f"ak-{alg}.ctx", "-G", alg, "-s", scheme)
            run("tpm2_readpublic", "-c", f"ak-{alg}.ctx", "-n", f"ak-{alg}.name", "-o", f"ak-{alg}.pub")
            run("tpm2_readpublic", "-c", f"ak-{alg}.ctx", "-f", "pem", "-o", f"ak-{alg}.pem")
            quote = ["tpm2_quote", "-c", f"ak-{alg}.ctx", "-l", "sha256:0,7,16+sha1:1", "-q", "c0ffee"]
            run(*quote, "-m", f"q-{alg}.msg", "-s", f"q-{alg}.sig")
    yield Artifacts(work)


@pytest.mark.parametrize("name", ["ek-rsa", "ek-ecc", "ak-rsa", "ak-ecc"])
def test_public_area_name_and_key_match_tpm2_tools(artifacts: Artifacts, name: str) -> None:
    public = parse_tpm2b_public(artifacts.read(f"{name}.pub"))
    assert public.name() == artifacts.read(f"{name}.name")
    pem = serialization.load_pem_public_key(artifacts.read(f"{name}.pem"))
    assert public.public_key().public_numbers() == pem.public_numbers()  # type: ignore[union-attr]
    assert public.public_key() is public.public_key()  # built once, cached
    assert parse_tpmt_public(public.raw) == public
    assert public.to_tpm2b() == artifacts.read(f"{name}.pub")


def test_rsa_ek_template_l1_parameters(artifacts: Artifacts) -> None:
    ek = parse_tpm2b_public(artifacts.read("ek-rsa.pub"))
    assert ek.type == ALG_RSA and isinstance(ek.parameters, RsaParameters)
    assert (ek.parameters.symmetric.algorithm, ek.parameters.symmetric.key_bits) == (ALG_AES, 128)
    assert ek.parameters.symmetric.mode == ALG_CFB
    assert ek.parameters.key_bits == 2048 and ek.parameters.exponent == 65537
    assert isinstance(ek.public_key(), rsa.RSAPublicKey)
    assert ek.name_alg.name == "sha256" and len(ek.auth_policy) == 32


def test_ecc_ak_parameters(artifacts: Artifacts) -> None:
    ak = parse_tpm2b_public(artifacts.read("ak-ecc.pub"))
    assert ak.type == ALG_ECC and isinstance(ak.parameters, EccParameters)
    assert ak.parameters.curve_id == ECC_NIST_P256
    assert ak.parameters.scheme.scheme == ALG_ECDSA
    assert isinstance(ak.public_key(), ec.EllipticCurvePublicKey)


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_quote_attest_and_signature_parse(artifacts: Artifacts, alg: str) -> None:
    raw = artifacts.read(f"q-{alg}.msg")
    attest = parse_tpms_attest(raw)
    assert attest.magic == TPM_GENERATED_VALUE and attest.type == TPM_ST_ATTEST_QUOTE
    assert attest.extra_data == bytes.fromhex("c0ffee")
    assert attest.quote is not None
    assert [(s.bank, s.pcrs) for s in attest.quote.pcr_select] == [("sha256", (0, 7, 16)), ("sha1", (1,))]
    assert len(attest.quote.pcr_digest) == 32
    assert attest.to_bytes() == raw
    signature = parse_tpmt_signature(artifacts.read(f"q-{alg}.sig"))
    assert signature.sig_alg == (ALG_RSASSA if alg == "rsa" else ALG_ECDSA)
    assert signature.hash.name == "sha256"


@pytest.mark.parametrize(
    ("name", "parse"),
    [
        ("ak-rsa.pub", parse_tpm2b_public),
        ("ek-ecc.pub", parse_tpm2b_public),
        ("q-rsa.msg", parse_tpms_attest),
        ("q-rsa.sig", parse_tpmt_signature),
        ("q-ecc.sig", parse_tpmt_signature),
    ],
)
def test_every_truncation_and_trailing_byte_is_a_structure_error(
    artifacts: Artifacts, name: str, parse: object
) -> None:
    raw = artifacts.read(name)
    assert callable(parse)
    for length in range(len(raw)):
        with pytest.raises(TpmStructureError) as caught:
            parse(raw[:length])
        assert "byte offset" in str(caught.value)
    with pytest.raises(TpmStructureError, match=r"trailing|declares"):
        parse(raw + b"\x00")


def test_tpm2b_and_bare_public_are_not_confused(artifacts: Artifacts) -> None:
    sized = artifacts.read("ak-rsa.pub")
    with pytest.raises(TpmStructureError, match=r"TPMT_PUBLIC\.type"):
        parse_tpmt_public(sized)
    with pytest.raises(TpmStructureError, match=r"TPM2B_PUBLIC\.size"):
        parse_tpm2b_public(sized[2:])


def test_unsupported_values_name_their_field(artifacts: Artifacts) -> None:
    ak = bytearray(artifacts.read("ak-rsa.pub")[2:])
    ak[2:4] = b"\x00\x99"  # nameAlg
    with pytest.raises(TpmStructureError, match=r"nameAlg at byte offset 2 .*0x0099"):
        parse_tpmt_public(bytes(ak))
    signature = bytearray(artifacts.read("q-rsa.sig"))
    signature[0:2] = b"\x00\x05"  # HMAC
    with pytest.raises(TpmStructureError, match=r"sigAlg .*0x0005"):
        parse_tpmt_signature(bytes(signature))


def test_pcr_selection_list_rejects_duplicates_and_bad_sizes() -> None:
    good = bytes.fromhex("00000002" + "000b03ff0000" + "000403010000")
    selections = parse_pcr_selection_list(good)
    assert [(s.bank, s.pcrs) for s in selections] == [("sha256", tuple(range(8))), ("sha1", (0,))]
    assert encode_pcr_selection_list(selections) == good
    with pytest.raises(
        PcrSelectionError, match=r"pcrSelections\[1\]\.hash at byte offset 10 .*more than once"
    ):
        parse_pcr_selection_list(bytes.fromhex("00000002" + "000b03ff0000" + "000b03010000"))
    with pytest.raises(PcrSelectionError, match="sizeofSelect 0"):
        parse_pcr_selection_list(bytes.fromhex("00000001" + "000b00"))
    with pytest.raises(PcrSelectionError, match="sizeofSelect 200"):
        parse_pcr_selection_list(bytes.fromhex("00000001" + "000bc8") + bytes(200))
    with pytest.raises(PcrSelectionError, match="exceeds the maximum"):
        parse_pcr_selection_list(bytes.fromhex("ffffffff"))
