"""End to end: golden PCRs predicted from the image match real boots; a Secure Boot + vTPM node enrolls
(EK certificate from its TPM's NV, credential activation) and attests against the predicted policy;
replayed quotes, swapped logs and another TPM's quotes are rejected with the right finding."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.remote import NodeAttestation, NodeState, attest_node, evidence_from_quote
from trustedlaunch.attest.verifier import verify
from trustedlaunch.eventlog.predict import predict_pcrs
from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.node.agent_client import NodeQuote
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import FIRMWARE, NodeVM
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca, verify_ek_certificate
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow
NONCE = bytes.fromhex("a77e57a77e57")


def varstore_template(secure_boot: bool) -> Path:
    return FIRMWARE[secure_boot][1]


@pytest.fixture(scope="module")
def secure_policy(node_image: NodeImage) -> Policy:
    return policy_for_image(node_image.esp_dir, varstore_template(True))


@pytest.fixture(scope="module")
def insecure_policy(node_image: NodeImage) -> Policy:
    return policy_for_image(node_image.esp_dir, varstore_template(False))


@pytest.fixture(scope="module")
def secure_quote(secure_node: NodeVM) -> NodeQuote:
    return secure_node.request_quote(NONCE)


@pytest.fixture(scope="module")
def insecure_quote(insecure_node: NodeVM) -> NodeQuote:
    return insecure_node.request_quote(NONCE)


@pytest.fixture(scope="module")
def enrollment(secure_node: NodeVM, secure_policy: Policy, node_ek_ca: EkCa) -> NodeAttestation:
    return attest_node(secure_node, policy=secure_policy, ek_ca=[node_ek_ca.certificate])


@pytest.mark.parametrize("secure_boot", [True, False], ids=["secure-boot", "no-secure-boot"])
def test_predicted_pcrs_equal_the_quoted_ones(
    secure_boot: bool, secure_quote: NodeQuote, insecure_quote: NodeQuote, node_image: NodeImage
) -> None:
    quote = secure_quote if secure_boot else insecure_quote
    banks = tuple(bank for bank in ("sha1", "sha256") if bank in quote.pcr_values)
    assert "sha256" in banks
    predicted = predict_pcrs(node_image.esp_dir, varstore_template(secure_boot), banks)
    for bank in banks:
        assert sorted(predicted.values[bank]) == [4, 7, 9]  # 9: GRUB's configuration, kernel and initramfs
        for pcr in (4, 7, 9):
            assert predicted.values[bank][pcr] == quote.pcr_values[bank][pcr], f"{bank} PCR{pcr}"


def test_node_enrolls_and_passes_the_predicted_policy(
    enrollment: NodeAttestation, secure_quote: NodeQuote
) -> None:
    assert enrollment.ok, [str(finding) for finding in enrollment.result.findings]
    assert enrollment.enrolled
    assert enrollment.state.ak_name == secure_quote.ak_name  # the AK is kept in the TPM between quotes
    assert enrollment.state.clock is not None
    assert NodeState.from_dict(enrollment.state.to_dict()) == enrollment.state


def test_next_attestation_uses_the_stored_state(
    secure_node: NodeVM, secure_policy: Policy, node_ek_ca: EkCa, enrollment: NodeAttestation
) -> None:
    again = attest_node(
        secure_node, policy=secure_policy, ek_ca=[node_ek_ca.certificate], node_state=enrollment.state
    )
    assert again.ok and not again.enrolled
    assert again.state.ak_name == enrollment.state.ak_name
    assert again.state.clock is not None and enrollment.state.clock is not None
    assert again.state.clock.clock >= enrollment.state.clock.clock


def test_agent_reads_the_ek_certificate_of_our_platform_ca(
    secure_node: NodeVM, node_vtpm: Vtpm, node_ek_ca: EkCa, tmp_path: Path
) -> None:
    certificate = x509.load_der_x509_certificate(secure_node.ek_certificate())
    assert certificate.public_bytes(serialization.Encoding.DER) in {
        p.read_bytes() for p in node_vtpm.ek_certificates()
    }
    verify_ek_certificate(certificate, [node_ek_ca.certificate])
    with pytest.raises(AttestationError) as failure:
        verify_ek_certificate(certificate, [create_ek_ca(tmp_path / "foreign").certificate])
    assert failure.value.finding.check == Check.EK_CERTIFICATE


def test_foreign_platform_ca_fails_enrollment(
    secure_node: NodeVM, secure_policy: Policy, tmp_path: Path
) -> None:
    foreign = create_ek_ca(tmp_path / "foreign")
    attestation = attest_node(secure_node, policy=secure_policy, ek_ca=[foreign.certificate])
    assert not attestation.ok and attestation.state.ak_name is None
    assert [finding.check for finding in attestation.result.findings] == [Check.EK_CERTIFICATE]


def test_replayed_quote_is_rejected(secure_quote: NodeQuote, secure_policy: Policy) -> None:
    """An old quote answered to a new challenge: the nonce inside the signed quote is the old one."""
    result = verify(evidence_from_quote(secure_quote), nonce=secrets.token_bytes(32), policy=secure_policy)
    assert not result.ok
    assert [finding.check for finding in result.findings] == [Check.NONCE]


def test_swapped_event_log_is_rejected(
    secure_quote: NodeQuote, insecure_quote: NodeQuote, secure_policy: Policy
) -> None:
    """The Secure-Boot-off log sent with the Secure-Boot-on quote: the PCR digest gives it away."""
    assert insecure_quote.event_log is not None
    evidence = evidence_from_quote(secure_quote)
    swapped = type(evidence)(evidence.ak_public, evidence.quote, evidence.signature, insecure_quote.event_log)
    result = verify(swapped, nonce=NONCE, policy=secure_policy)
    assert [finding.check for finding in result.findings] == [Check.PCR_DIGEST]


@dataclass
class RelayingAgent:
    """A man in the middle: answers quotes with another node's TPM, everything else with the real node."""

    node: NodeVM
    quoting_node: NodeVM

    def request_quote(self, nonce: bytes) -> NodeQuote:
        return self.quoting_node.request_quote(nonce)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        return self.node.activate(credential_blob, encrypted_secret)

    def ek_certificate(self) -> bytes:
        return self.node.ek_certificate()


def test_quote_from_another_nodes_tpm_is_rejected(
    secure_node: NodeVM,
    insecure_node: NodeVM,
    insecure_policy: Policy,
    node_ek_ca: EkCa,
    enrollment: NodeAttestation,
) -> None:
    relay = RelayingAgent(secure_node, insecure_node)
    ca = [node_ek_ca.certificate]
    # enrolled node: the other TPM's AK is not the enrolled one
    attestation = attest_node(relay, policy=insecure_policy, ek_ca=ca, node_state=enrollment.state)
    assert [finding.check for finding in attestation.result.findings] == [Check.AK_BINDING]
    assert "enrolled AK" in attestation.result.findings[0].message
    assert attestation.state == enrollment.state
    # first contact: the certified EK is not the EK the quoting TPM reports
    first = attest_node(relay, policy=insecure_policy, ek_ca=ca)
    assert [finding.check for finding in first.result.findings] == [Check.EK_CERTIFICATE]


def test_secure_boot_off_node_passes_its_own_predicted_policy(
    insecure_node: NodeVM, insecure_policy: Policy, node_ek_ca: EkCa
) -> None:
    attestation = attest_node(insecure_node, policy=insecure_policy, ek_ca=[node_ek_ca.certificate])
    assert attestation.ok, [str(finding) for finding in attestation.result.findings]


def test_secure_boot_off_node_fails_the_secure_boot_policy(
    insecure_quote: NodeQuote, secure_policy: Policy
) -> None:
    result = verify(evidence_from_quote(insecure_quote), nonce=NONCE, policy=secure_policy)
    assert not result.ok
    secure_boot = [finding for finding in result.findings if finding.check == Check.SECURE_BOOT]
    assert len(secure_boot) == 1 and secure_boot[0].pcr == 7
    assert "Secure Boot is disabled" in secure_boot[0].message
    golden = {finding.pcr: finding for finding in result.findings if finding.check == Check.PCR_VALUE}
    assert set(golden) == {4, 7}
    assert golden[7].component == "firmware" and "SecureBoot variable = 1" in golden[7].message
    assert golden[7].event_index is not None
