"""MakeCredential in Python, activated by tpm2_activatecredential in a real swtpm (RSA and ECC EKs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.tpm.credential import (
    CredentialError,
    check_ak_attributes,
    make_credential,
    new_activation_secret,
    verify_activation,
)
from trustedlaunch.tpm.structures import TpmtPublic, parse_tpm2b_public
from trustedlaunch.tpm.swtpm import Swtpm, SwtpmError


@dataclasses.dataclass
class Node:
    """A swtpm with an EK (of one algorithm) and an AK created under it."""

    tpm: Swtpm
    work: Path
    ek: TpmtPublic
    ak: TpmtPublic

    def activate(self, credential_file: bytes) -> bytes:
        (self.work / "cred.in").write_bytes(credential_file)
        out = self.work / "secret.out"
        out.unlink(missing_ok=True)
        session = self.work / "session.ctx"
        self.tpm.run(["tpm2_startauthsession", "--policy-session", "-S", session])
        try:
            self.tpm.run(["tpm2_policysecret", "-S", session, "-c", "e"])
            auth = f"session:{session}"
            activate = ["tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-P", auth]
            self.tpm.run([*activate, "-i", "cred.in", "-o", out], cwd=self.work)
        finally:
            self.tpm.flush_transient_objects()
        return out.read_bytes()


def _node(tmp_path_factory: pytest.TempPathFactory, ek_alg: str, ak_alg: str) -> Iterator[Node]:
    work = tmp_path_factory.mktemp(f"credential-{ek_alg}")
    with Swtpm() as tpm:
        tpm.run(["tpm2_createek", "-c", "ek.ctx", "-G", ek_alg, "-u", "ek.pub"], cwd=work)
        tpm.flush_transient_objects()
        tpm.run(["tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", ak_alg, "-u", "ak.pub"], cwd=work)
        tpm.flush_transient_objects()
        ek = parse_tpm2b_public((work / "ek.pub").read_bytes())
        ak = parse_tpm2b_public((work / "ak.pub").read_bytes())
        yield Node(tpm, work, ek, ak)


@pytest.fixture(scope="module")
def rsa_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _node(tmp_path_factory, "rsa", "rsa")


@pytest.fixture(scope="module")
def ecc_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    yield from _node(tmp_path_factory, "ecc", "ecc")


@pytest.fixture(params=["rsa", "ecc"])
def node(request: pytest.FixtureRequest) -> Node:
    return request.getfixturevalue(f"{request.param}_node")  # type: ignore[no-any-return]


def test_swtpm_recovers_the_secret(node: Node) -> None:
    secret = new_activation_secret()
    challenge = make_credential(node.ek, node.ak.name(), secret)
    recovered = node.activate(challenge.to_tpm2_tools())
    assert recovered == secret
    verify_activation(secret, recovered)
    check_ak_attributes(node.ak)


def test_each_challenge_is_fresh(node: Node) -> None:
    secret = new_activation_secret()
    first = make_credential(node.ek, node.ak.name(), secret)
    second = make_credential(node.ek, node.ak.name(), secret)
    assert first.encrypted_secret != second.encrypted_secret
    assert first.credential_blob != second.credential_blob


def test_credential_for_another_tpms_ek_does_not_activate(rsa_node: Node, ecc_node: Node) -> None:
    with Swtpm() as other_tpm:
        work = rsa_node.work
        other_tpm.run(["tpm2_createek", "-c", "other-ek.ctx", "-G", "rsa", "-u", "other-ek.pub"], cwd=work)
        other_ek = parse_tpm2b_public((work / "other-ek.pub").read_bytes())
    assert other_ek != rsa_node.ek
    challenge = make_credential(other_ek, rsa_node.ak.name(), new_activation_secret())
    with pytest.raises(SwtpmError, match="tpm2_activatecredential"):
        rsa_node.activate(challenge.to_tpm2_tools())


def test_credential_for_another_ak_name_does_not_activate(rsa_node: Node, ecc_node: Node) -> None:
    challenge = make_credential(rsa_node.ek, ecc_node.ak.name(), new_activation_secret())
    with pytest.raises(SwtpmError, match="integrity"):
        rsa_node.activate(challenge.to_tpm2_tools())


def test_tampered_credential_blob_does_not_activate(rsa_node: Node) -> None:
    challenge = make_credential(rsa_node.ek, rsa_node.ak.name(), new_activation_secret())
    blob = bytearray(challenge.credential_blob)
    blob[-1] ^= 1
    with pytest.raises(SwtpmError, match="tpm2_activatecredential"):
        rsa_node.activate(dataclasses.replace(challenge, credential_blob=bytes(blob)).to_tpm2_tools())


def test_wrong_recovered_secret_is_an_ak_binding_finding() -> None:
    secret = new_activation_secret()
    with pytest.raises(AttestationError) as caught:
        verify_activation(secret, secret[:-1] + bytes([secret[-1] ^ 1]))
    assert caught.value.finding.check == Check.AK_BINDING


def test_an_ek_is_not_an_attestation_key(rsa_node: Node) -> None:
    # The EK is restricted but a decryption key: quotes "signed" by it must not be trusted.
    with pytest.raises(AttestationError) as caught:
        check_ak_attributes(rsa_node.ek)
    assert caught.value.finding.check == Check.AK_BINDING
    assert "missing sign" in str(caught.value) and "has decrypt" in str(caught.value)


def test_bad_inputs_are_credential_errors(rsa_node: Node) -> None:
    with pytest.raises(CredentialError, match=r"1\.\.32 bytes"):
        make_credential(rsa_node.ek, rsa_node.ak.name(), bytes(33))
    with pytest.raises(CredentialError, match="AK name"):
        make_credential(rsa_node.ek, rsa_node.ak.name()[:-1], bytes(32))
    with pytest.raises(CredentialError, match="not AES-CFB"):
        make_credential(rsa_node.ak, rsa_node.ak.name(), bytes(32))
