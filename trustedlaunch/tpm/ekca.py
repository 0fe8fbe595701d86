"""The platform EK CA: a root key + certificate that signs the EK certificates of our vTPMs.

`create_ek_ca` makes (or `load_ek_ca` reads) the CA in a directory; `write_swtpm_setup_config` writes
the swtpm_setup / swtpm_localca configuration that makes `swtpm_setup --create-ek-cert` issue EK
certificates signed by it; `verify_ek_certificate` checks an EK certificate against trusted CAs.
"""

from __future__ import annotations

import datetime
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import AttestationError, Check, Finding
from trustedlaunch.tpm.certificates import CertificateChainError, verify_tpm_certificate_chain
from trustedlaunch.tpm.structures import TpmtPublic

CA_KEY_FILE = "ek-ca-key.pem"
CA_CERT_FILE = "ek-ca-cert.pem"
CA_SERIAL_FILE = "ek-cert-serial"
SETUP_CONFIG_FILE = "swtpm_setup.conf"
LOCALCA_CONFIG_FILE = "swtpm-localca.conf"
LOCALCA_OPTIONS_FILE = "swtpm-localca.options"
CA_VALIDITY = datetime.timedelta(days=20 * 365)
# TCG EK credential profile: NV indices where the TPM manufacturer (here swtpm_setup) stores EK certs.
NV_RSA_EK_CERT = 0x01C00002
NV_ECC_EK_CERT = 0x01C0000A


class EkCaError(TrustedLaunchError):
    """The EK CA directory is missing, unreadable or incomplete."""


@dataclass(frozen=True)
class EkCa:
    """A platform EK CA stored in `directory` (private key file readable by its owner only)."""

    directory: Path
    certificate: x509.Certificate

    @property
    def key_path(self) -> Path:
        """The CA private key (PEM, PKCS#8, unencrypted; protect the directory)."""
        return self.directory / CA_KEY_FILE

    @property
    def certificate_path(self) -> Path:
        """The CA certificate (PEM): what verifiers trust."""
        return self.directory / CA_CERT_FILE


def create_ek_ca(directory: Path, *, common_name: str = "trustedlaunch platform EK CA") -> EkCa:
    """Create a new EK CA (RSA 3072 root key and self-signed certificate) in an empty or new directory."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / CA_KEY_FILE).exists():
        raise EkCaError(f"{directory}: an EK CA already exists here (refusing to overwrite {CA_KEY_FILE})")
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(directory / CA_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as key_file:
        key_file.write(key_pem)
    (directory / CA_CERT_FILE).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return EkCa(directory, certificate)


def load_ek_ca(directory: Path) -> EkCa:
    """Load an EK CA created by `create_ek_ca`."""
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        raise EkCaError(f"{directory / CA_CERT_FILE}: cannot load the EK CA certificate ({exc})") from None
    if not (directory / CA_KEY_FILE).is_file():
        raise EkCaError(f"{directory / CA_KEY_FILE}: the EK CA private key is missing")
    return EkCa(directory, certificate)


def write_swtpm_setup_config(
    ca: EkCa,
    config_dir: Path,
    *,
    pcr_banks: Sequence[str] = ("sha256",),
    platform_manufacturer: str = "trustedlaunch",
    platform_model: str = "swtpm",
) -> Path:
    """Write swtpm_setup.conf + swtpm-localca.conf/.options so EK certs are signed by `ca`; returns
    the path to pass as `swtpm_setup --config`."""
    localca = shutil.which("swtpm_localca")
    if localca is None:
        raise EkCaError("swtpm_localca is not installed (Debian package swtpm-tools)")
    for text in (platform_manufacturer, platform_model, *pcr_banks):
        if not text or any(c.isspace() or c in "=#" for c in text):
            raise EkCaError(f"invalid value {text!r} for the swtpm configuration (no spaces, '=' or '#')")
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / LOCALCA_CONFIG_FILE).write_text(
        f"statedir = {ca.directory}\n"
        f"signingkey = {ca.key_path}\n"
        f"issuercert = {ca.certificate_path}\n"
        f"certserial = {ca.directory / CA_SERIAL_FILE}\n"
    )
    (config_dir / LOCALCA_OPTIONS_FILE).write_text(
        f"--platform-manufacturer {platform_manufacturer}\n--platform-version 2.1\n"
        f"--platform-model {platform_model}\n"
    )
    setup = config_dir / SETUP_CONFIG_FILE
    setup.write_text(
        f"create_certs_tool = {localca}\n"
        f"create_certs_tool_config = {config_dir / LOCALCA_CONFIG_FILE}\n"
        f"create_certs_tool_options = {config_dir / LOCALCA_OPTIONS_FILE}\n"
        f"active_pcr_banks = {','.join(pcr_banks)}\n"
    )
    return setup


def _ek_failure(message: str) -> AttestationError:
    return AttestationError(Finding(Check.EK_CERTIFICATE, "EK", message))


def verify_ek_certificate(
    certificate: x509.Certificate,
    ca_certs: Sequence[x509.Certificate],
    *,
    intermediates: Sequence[x509.Certificate] = (),
    ek: TpmtPublic | None = None,
    at: datetime.datetime | None = None,
) -> None:
    """Check that an EK certificate chains to one of `ca_certs` and, if `ek` is given, certifies that key.

    Raises AttestationError(Finding(EK_CERTIFICATE, "EK", ...)).
    """
    try:
        verify_tpm_certificate_chain(certificate, ca_certs, intermediates, at=at)
    except CertificateChainError as exc:
        raise _ek_failure(f"the EK certificate is not from a trusted EK CA: {exc}") from None
    if ek is None:
        return
    encoding, public_format = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    try:
        certified = certificate.public_key().public_bytes(encoding, public_format)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _ek_failure(f"the EK certificate's public key is unusable: {exc}") from None
    if certified != ek.public_key().public_bytes(encoding, public_format):
        raise _ek_failure("the EK certificate certifies another key than this TPM's EK")
