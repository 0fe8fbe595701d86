"""NodeTpm (the verifier's TSS for a node's TPM) on a real swtpm manufactured like a node's vTPM: the AK is
made once under the EK and persisted, quotes verify, credential activation proves the AK and EK share a
TPM, and no session or transient object is left loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from tpm2_pytss import TCTILdr
from tpm2_pytss.constants import TPM2_CAP, TPM2_HC

from trustedlaunch.attest.quote import verify_quote
from trustedlaunch.findings import AttestationError
from trustedlaunch.tpm.credential import check_ak_attributes, make_credential, new_activation_secret
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca, verify_ek_certificate
from trustedlaunch.tpm.node_tpm import AK_HANDLE, QUOTED_PCRS, NodeTpm, NodeTpmError
from trustedlaunch.tpm.structures import ALG_ECC, parse_tpm2b_public
from trustedlaunch.tpm.swtpm import Swtpm
from trustedlaunch.tpm.vtpm import Vtpm


@pytest.fixture(scope="module")
def ek_ca(tmp_path_factory: pytest.TempPathFactory) -> EkCa:
    return create_ek_ca(tmp_path_factory.mktemp("node-tpm") / "ek-ca")


@pytest.fixture
def vtpm_state(tmp_path: Path, ek_ca: EkCa) -> Path:
    return Vtpm.create(tmp_path / "vtpm", ek_ca=ek_ca).state_dir


@pytest.fixture
def node_tpm(vtpm_state: Path) -> Iterator[NodeTpm]:
    with Swtpm(vtpm_state) as tpm, NodeTpm(TCTILdr("swtpm", tpm.tcti.removeprefix("swtpm:"))) as node:
        yield node


def loaded_handles(node: NodeTpm) -> list[int]:
    """Transient objects and sessions loaded in the TPM."""
    esapi = node._esapi
    handles: list[int] = []
    for first in (TPM2_HC.TRANSIENT_FIRST, TPM2_HC.HMAC_SESSION_FIRST, TPM2_HC.POLICY_SESSION_FIRST):
        _, data = esapi.get_capability(TPM2_CAP.HANDLES, first, 64)
        handles += [int(handle) for handle in data.data.handles if handle >> 24 == first >> 24]
    return handles


def test_a_fresh_tpm_gets_its_ak_without_tss_errors_on_stderr(
    node_tpm: NodeTpm, capfd: pytest.CaptureFixture[str]
) -> None:
    """The absent AK is found by listing the persistent handles, not by a failing ReadPublic (which the
    TSS reports as ERROR lines on stderr, alarming in an operator's logs)."""
    node_tpm.attestation_key()
    node_tpm.quote(b"nonce")
    assert "esys" not in capfd.readouterr().err


def test_ak_is_a_restricted_ecc_signing_key_made_once_and_persisted(vtpm_state: Path) -> None:
    with Swtpm(vtpm_state) as tpm, NodeTpm(TCTILdr("swtpm", tpm.tcti.removeprefix("swtpm:"))) as node:
        ak = node.attestation_key()
        public = parse_tpm2b_public(ak.public)
        assert public.type == ALG_ECC and public.name() == ak.name
        check_ak_attributes(public)
        assert node.attestation_key() == ak
        assert loaded_handles(node) == []
    with Swtpm(vtpm_state) as tpm, NodeTpm(TCTILdr("swtpm", tpm.tcti.removeprefix("swtpm:"))) as node:
        assert node.attestation_key() == ak  # the TPM restarted (VM reboot): same AK at 0x81000003
        _, data = node._esapi.get_capability(TPM2_CAP.HANDLES, AK_HANDLE, 1)
        assert list(data.data.handles) == [AK_HANDLE]


def test_quote_verifies_against_the_read_pcrs(node_tpm: NodeTpm) -> None:
    ak = node_tpm.attestation_key()
    attest, signature = node_tpm.quote(b"fresh nonce")
    values = node_tpm.pcr_values()
    assert sorted(values) == list(QUOTED_PCRS)
    verified = verify_quote(
        parse_tpm2b_public(ak.public), attest, signature, nonce=b"fresh nonce", pcr_values={"sha256": values}
    )
    assert verified.selected == {"sha256": QUOTED_PCRS}
    with pytest.raises(AttestationError):
        verify_quote(parse_tpm2b_public(ak.public), attest, signature, nonce=b"other", pcr_values={})


def test_quote_before_the_ak_exists_says_so(node_tpm: NodeTpm) -> None:
    with pytest.raises(NodeTpmError, match="no attestation key at 0x81000003"):
        node_tpm.quote(b"nonce")


def test_activation_returns_the_secret_only_for_this_ak(node_tpm: NodeTpm) -> None:
    ak = node_tpm.attestation_key()
    ek = parse_tpm2b_public(node_tpm.ek_public())
    secret = new_activation_secret()
    challenge = make_credential(ek, ak.name, secret)
    assert node_tpm.activate_credential(challenge.credential_blob, challenge.encrypted_secret) == secret
    other = make_credential(ek, ak.name[:2] + bytes(len(ak.name) - 2), secret)
    with pytest.raises(NodeTpmError, match="TPM2_ActivateCredential failed"):
        node_tpm.activate_credential(other.credential_blob, other.encrypted_secret)
    assert loaded_handles(node_tpm) == []  # both policy sessions ended (by the TPM, or flushed)


def test_ek_certificate_is_the_platform_cas_for_this_ek(node_tpm: NodeTpm, ek_ca: EkCa) -> None:
    certificate = x509.load_der_x509_certificate(node_tpm.ek_certificate())
    verify_ek_certificate(certificate, [ek_ca.certificate], ek=parse_tpm2b_public(node_tpm.ek_public()))


def test_tpm_without_provisioned_ek_is_named() -> None:
    with (
        Swtpm() as tpm,
        NodeTpm(TCTILdr("swtpm", tpm.tcti.removeprefix("swtpm:"))) as node,
        pytest.raises(NodeTpmError, match="no EK at persistent handle 0x81010001"),
    ):
        node.attestation_key()
