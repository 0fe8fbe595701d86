"""Chain validation for TPM EK and AK certificates.

TPM certificates are outside the web PKI profile that `cryptography.x509.verification` enforces: EK/AK
certificates have an empty subject, a critical subjectAltName holding a directoryName with TCG attributes,
and TCG extended key usages (2.23.133.8.x) instead of clientAuth. So the chain walk is done here with
cryptography's primitives: issuer-name match + signature (`verify_directly_issued_by`), validity
periods, CA basicConstraints/keyUsage/pathLength on issuers, and no unrecognised critical extension.
"""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID

from trustedlaunch.errors import TrustedLaunchError

MAX_CHAIN_DEPTH = 6
# Critical extensions understood here; subjectDirectoryAttributes carries the TCG TPM specification.
_UNDERSTOOD_CRITICAL = {
    ExtensionOID.BASIC_CONSTRAINTS,
    ExtensionOID.KEY_USAGE,
    ExtensionOID.EXTENDED_KEY_USAGE,
    ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
    ExtensionOID.CERTIFICATE_POLICIES,
    ExtensionOID.SUBJECT_DIRECTORY_ATTRIBUTES,
}


class CertificateChainError(TrustedLaunchError):
    """A TPM certificate does not chain to a trusted root; the message says which certificate and why."""


def _label(certificate: x509.Certificate) -> str:
    subject = certificate.subject.rfc4514_string() or "(empty subject)"
    return f"{subject}, serial {certificate.serial_number:x}"


def _check_certificate(certificate: x509.Certificate, at: datetime.datetime) -> None:
    if not certificate.not_valid_before_utc <= at <= certificate.not_valid_after_utc:
        raise CertificateChainError(
            f"certificate {_label(certificate)} is not valid at {at.isoformat()} "
            f"(valid {certificate.not_valid_before_utc.isoformat()} .. "
            f"{certificate.not_valid_after_utc.isoformat()})"
        )
    for extension in certificate.extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            raise CertificateChainError(
                f"certificate {_label(certificate)} has an unrecognised critical extension "
                f"{extension.oid.dotted_string}"
            )


def _check_issuer_is_ca(issuer: x509.Certificate, certificates_below: int) -> None:
    try:
        constraints = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateChainError(f"issuer {_label(issuer)} has no basicConstraints: not a CA") from None
    if not constraints.ca:
        raise CertificateChainError(f"issuer {_label(issuer)} is not a CA (basicConstraints CA=false)")
    if constraints.path_length is not None and certificates_below - 1 > constraints.path_length:
        raise CertificateChainError(
            f"issuer {_label(issuer)}: pathLenConstraint {constraints.path_length} exceeded"
        )
    try:
        usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise CertificateChainError(
            f"issuer {_label(issuer)} may not sign certificates (keyUsage lacks keyCertSign)"
        )


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def verify_tpm_certificate_chain(
    certificate: x509.Certificate,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    *,
    at: datetime.datetime | None = None,
) -> list[x509.Certificate]:
    """Verify that `certificate` chains (via `intermediates`) to one of `roots`; returns leaf..root.

    Raises CertificateChainError naming the certificate that failed and why.
    """
    with warnings.catch_warnings():
        # Real TPM CA names (e.g. Google's) have CNs longer than the 64 characters X.520 suggests.
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        try:
            return _walk_chain(certificate, roots, intermediates, at)
        except (ValueError, UnsupportedAlgorithm) as exc:  # cryptography parses extensions lazily
            raise CertificateChainError(f"a certificate of the chain is malformed: {exc}") from None


def _walk_chain(
    certificate: x509.Certificate,
    roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    at: datetime.datetime | None,
) -> list[x509.Certificate]:
    when = at or datetime.datetime.now(datetime.UTC)
    if not roots:
        raise CertificateChainError("no trusted root certificate was given")
    chain = [certificate]
    current = certificate
    _check_certificate(current, when)
    for _ in range(MAX_CHAIN_DEPTH):
        for root in roots:
            if root.subject == current.issuer and _issued_by(current, root):
                _check_certificate(root, when)
                _check_issuer_is_ca(root, len(chain))
                return [*chain, root]
        issuer = next(
            (
                c
                for c in intermediates
                if c.subject == current.issuer and c not in chain and _issued_by(current, c)
            ),
            None,
        )
        if issuer is None:
            raise CertificateChainError(
                f"certificate {_label(current)}: no trusted root or given intermediate with subject "
                f"{current.issuer.rfc4514_string()} signed it"
            )
        _check_certificate(issuer, when)
        _check_issuer_is_ca(issuer, len(chain))
        chain.append(issuer)
        current = issuer
    raise CertificateChainError(f"certificate {_label(certificate)}: chain longer than {MAX_CHAIN_DEPTH}")
