"""Platform EK CA: swtpm_setup issues EK certificates signed by it; verify_ek_certificate checks them."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trustedlaunch.findings import AttestationError, Check
from trustedlaunch.tpm.ekca import (
    NV_RSA_EK_CERT,
    EkCa,
    EkCaError,
    create_ek_ca,
    load_ek_ca,
    verify_ek_certificate,
    write_swtpm_setup_config,
)
from trustedlaunch.tpm.structures import TpmtPublic, parse_tpm2b_public
from trustedlaunch.tpm.swtpm import Swtpm


@dataclasses.dataclass(frozen=True)
class Provisioned:
    ca: EkCa
    rsa_cert: x509.Certificate
    ecc_cert: x509.Certificate
    rsa_cert_from_nv: bytes
    rsa_ek: TpmtPublic


def _swtpm_setup(state: Path, config: Path) -> None:
    state.mkdir()
    command = [
        "swtpm_setup",
        "--tpm2",
        "--tpmstate",
        str(state),
        "--create-ek-cert",
        "--create-platform-cert",
    ]
    command += ["--ecc", "--config", str(config), "--write-ek-cert-files", str(state)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provisioned]:
    base = tmp_path_factory.mktemp("ekca")
    ca = create_ek_ca(base / "ca")
    config = write_swtpm_setup_config(ca, base / "config")
    state = base / "vtpm"
    _swtpm_setup(state, config)
    rsa_cert = x509.load_der_x509_certificate((state / "ek-rsa2048.crt").read_bytes())
    ecc_cert = x509.load_der_x509_certificate(next(state.glob("ek-secp*.crt")).read_bytes())
    with Swtpm(state) as tpm:
        tpm.run(["tpm2_nvread", hex(NV_RSA_EK_CERT), "-C", "o", "-o", base / "nv-ek.der"])
        tpm.run(["tpm2_createek", "-c", base / "ek.ctx", "-G", "rsa", "-u", base / "ek.pub"])
        tpm.flush_transient_objects()
    yield Provisioned(
        ca,
        rsa_cert,
        ecc_cert,
        (base / "nv-ek.der").read_bytes(),
        parse_tpm2b_public((base / "ek.pub").read_bytes()),
    )


def test_swtpm_setup_issues_ek_certificates_signed_by_our_ca(provisioned: Provisioned) -> None:
    for certificate in (provisioned.rsa_cert, provisioned.ecc_cert):
        assert certificate.issuer == provisioned.ca.certificate.subject
        verify_ek_certificate(certificate, [provisioned.ca.certificate])
    assert isinstance(provisioned.rsa_cert.public_key(), rsa.RSAPublicKey)
    assert isinstance(provisioned.ecc_cert.public_key(), ec.EllipticCurvePublicKey)
    # TPM EK certificates carry a critical subjectAltName: a directoryName of TCG attributes.
    san = provisioned.rsa_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    (directory_name,) = san.value.get_values_for_type(x509.DirectoryName)
    tpm_manufacturer = x509.ObjectIdentifier("2.23.133.2.1")
    assert directory_name.get_attributes_for_oid(tpm_manufacturer)[0].value == "id:00001014"  # IBM swtpm


def test_the_certificate_is_stored_in_the_tpm_and_certifies_its_ek(provisioned: Provisioned) -> None:
    stored = x509.load_der_x509_certificate(provisioned.rsa_cert_from_nv)
    assert stored == provisioned.rsa_cert
    verify_ek_certificate(stored, [provisioned.ca.certificate], ek=provisioned.rsa_ek)


def test_foreign_ca_is_rejected(provisioned: Provisioned, tmp_path: Path) -> None:
    foreign = create_ek_ca(tmp_path / "foreign", common_name="trustedlaunch platform EK CA")
    with pytest.raises(AttestationError) as caught:
        verify_ek_certificate(provisioned.rsa_cert, [foreign.certificate])
    assert caught.value.finding.check == Check.EK_CERTIFICATE
    assert caught.value.finding.component == "EK"


def test_certificate_for_another_ek_is_rejected(provisioned: Provisioned) -> None:
    with Swtpm() as other:
        work = provisioned.ca.directory.parent
        other.run(["tpm2_createek", "-c", work / "other.ctx", "-G", "rsa", "-u", work / "other.pub"])
        other_ek = parse_tpm2b_public((work / "other.pub").read_bytes())
    with pytest.raises(AttestationError, match="another key") as caught:
        verify_ek_certificate(provisioned.rsa_cert, [provisioned.ca.certificate], ek=other_ek)
    assert caught.value.finding.check == Check.EK_CERTIFICATE


def test_ca_directory_round_trip_and_protection(provisioned: Provisioned) -> None:
    loaded = load_ek_ca(provisioned.ca.directory)
    assert loaded.certificate == provisioned.ca.certificate
    assert provisioned.ca.key_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(EkCaError, match="already exists"):
        create_ek_ca(provisioned.ca.directory)


def test_missing_ca_is_an_operator_error(tmp_path: Path) -> None:
    with pytest.raises(EkCaError, match="cannot load the EK CA certificate"):
        load_ek_ca(tmp_path)
