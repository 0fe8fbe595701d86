"""verify_tpm_certificate_chain rules that the real GCE and swtpm chains do not exercise."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustedlaunch.tpm.certificates import CertificateChainError, verify_tpm_certificate_chain

NOW = datetime.datetime.now(datetime.UTC)


def _certificate(
    name: str,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
    path_length: int | None = None,
    extra: x509.ExtensionType | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer_name, issuer_key = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    if extra is not None:
        builder = builder.add_extension(extra, critical=True)
    return builder.sign(issuer_key, hashes.SHA256()), key


def test_chain_through_an_intermediate() -> None:
    root, root_key = _certificate("root", None, ca=True)
    intermediate, intermediate_key = _certificate("intermediate", ("root", root_key), ca=True)
    leaf, _ = _certificate("ek", ("intermediate", intermediate_key), ca=False)
    assert verify_tpm_certificate_chain(leaf, [root], [intermediate]) == [leaf, intermediate, root]


def test_a_non_ca_issuer_is_rejected() -> None:
    root, root_key = _certificate("root", None, ca=True)
    not_ca, not_ca_key = _certificate("end entity", ("root", root_key), ca=False)
    leaf, _ = _certificate("ek", ("end entity", not_ca_key), ca=False)
    with pytest.raises(CertificateChainError, match="is not a CA"):
        verify_tpm_certificate_chain(leaf, [root], [not_ca])


def test_path_length_is_enforced() -> None:
    root, root_key = _certificate("root", None, ca=True, path_length=0)
    intermediate, intermediate_key = _certificate("intermediate", ("root", root_key), ca=True)
    leaf, _ = _certificate("ek", ("intermediate", intermediate_key), ca=False)
    with pytest.raises(CertificateChainError, match="pathLenConstraint 0"):
        verify_tpm_certificate_chain(leaf, [root], [intermediate])


def test_unknown_critical_extension_is_rejected() -> None:
    root, root_key = _certificate("root", None, ca=True)
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    leaf, _ = _certificate("ek", ("root", root_key), ca=False, extra=unknown)
    with pytest.raises(
        CertificateChainError, match=r"unrecognised critical extension 1\.3\.6\.1\.4\.1\.99999\.1"
    ):
        verify_tpm_certificate_chain(leaf, [root])


def test_same_name_but_other_key_is_not_an_issuer() -> None:
    root, _ = _certificate("root", None, ca=True)
    impostor, impostor_key = _certificate("root", None, ca=True)
    leaf, _ = _certificate("ek", ("root", impostor_key), ca=False)
    assert impostor.subject == root.subject
    with pytest.raises(CertificateChainError, match="no trusted root"):
        verify_tpm_certificate_chain(leaf, [root])
    with pytest.raises(CertificateChainError, match="no trusted root certificate was given"):
        verify_tpm_certificate_chain(leaf, [])
