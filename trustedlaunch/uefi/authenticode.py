"""Authenticode digests and signatures of PE/COFF images, verified the way UEFI firmware and shim do.

Firmware and shim accept an image when one of its signatures chains up to a trusted certificate (or its
digest is listed as allowed), and reject it when its digest or any certificate of a signer chain is in
the forbidden database: the forbidden database always wins. Certificate validity periods, key usages and
EKUs are not enforced, as in UEFI.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pefile  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.uefi import siglist
from trustedlaunch.uefi._oscrypto_compat import ensure_oscrypto_loads
from trustedlaunch.uefi.siglist import SignatureEntry

ensure_oscrypto_loads()

from signify.authenticode import AuthenticodeSignature  # noqa: E402
from signify.authenticode.signed_file.pe import SignedPEFile  # noqa: E402
from signify.exceptions import CertificateVerificationError, SignifyError  # noqa: E402
from signify.x509 import Certificate as SignifyCertificate  # noqa: E402
from signify.x509 import CertificateStore  # noqa: E402

# Accepted Authenticode digest algorithms (signify's hash functions by name).
_DIGESTS: dict[str, Callable[..., hashlib._Hash]] = {"sha256": hashlib.sha256, "sha1": hashlib.sha1}


class ReasonCode(StrEnum):
    """Why a boot component is refused (stable codes for JSON output and alerts)."""

    NOT_SIGNED = "NotSigned"
    SIGNER_NOT_TRUSTED = "SignerNotTrusted"
    REVOKED_BY_HASH = "RevokedByHash"
    REVOKED_BY_CERTIFICATE = "RevokedByCertificate"
    SBAT_REVOKED = "SbatRevoked"
    DIGEST_MISMATCH = "DigestMismatch"
    MISSING = "Missing"
    MALFORMED = "Malformed"


class PeImageError(TrustedLaunchError):
    """A file that is not a PE/COFF image, or whose PE structures or signatures do not parse."""


@dataclass(frozen=True)
class PeSignature:
    """One embedded Authenticode signature (a WIN_CERTIFICATE PKCS#7 SignedData)."""

    digest_algorithm: str  # "sha256" or "sha1"
    signed_digest: bytes  # the Authenticode digest the signer signed
    signer_subject: str  # RFC 4514 subject of the signing certificate
    signer_common_name: str
    issuer_common_name: str
    certificates: tuple[x509.Certificate, ...]  # every certificate carried in the signature
    signing_time: datetime.datetime | None
    signed_data: AuthenticodeSignature = field(repr=False, compare=False)


@dataclass(frozen=True)
class PeImage:
    """A PE/COFF image with its Authenticode digests, embedded signatures and sections."""

    path: Path
    sha256: bytes  # Authenticode SHA-256: what firmware measures into PCR4 for a boot application
    sha1: bytes
    signatures: tuple[PeSignature, ...]
    sections: dict[str, bytes] = field(repr=False)

    def authenticode_digest(self, algorithm: str) -> bytes:
        """The Authenticode digest in the given algorithm ("sha256" or "sha1")."""
        return self.sha256 if algorithm == "sha256" else self.sha1


@dataclass(frozen=True)
class TrustAnchor:
    """An allowed db/MokList/vendor entry, with the label reported when it verifies an image."""

    label: str  # e.g. "db: Microsoft Corporation UEFI CA 2011", "shim vendor cert: Debian Secure Boot CA"
    entry: SignatureEntry


@dataclass(frozen=True)
class ImageVerdict:
    """Outcome of checking one image against allowed and forbidden signature databases."""

    reason: ReasonCode | None  # None: the image is allowed
    detail: str  # operator explanation, without the component name
    authority: str | None = None  # label of the trust anchor (or allowed hash) that verified the image
    signer_subject: str | None = None
    authority_entry: SignatureEntry | None = None  # the db/MokList/vendor entry that verified the image


_SECURITY_DIRECTORY = pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_SECURITY"]
# pefile, signify and asn1crypto decode untrusted bytes and fail with whatever exception the malformed
# input leads their code to (IndexError, TypeError, AttributeError, asn1crypto's ValueErrors, RecursionError
# on nested DER...): at this boundary every one of them means "this image is malformed".
_THIRD_PARTY_PARSE_ERRORS: tuple[type[Exception], ...] = (Exception,)


def _describe_error(exc: Exception) -> str:
    if isinstance(exc, SignifyError | struct.error | ValueError | KeyError | IndexError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def load_pe_image(path: Path) -> PeImage:
    """Read a PE/COFF image: its Authenticode digests, signatures and sections."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PeImageError(f"{path}: cannot read the image: {exc.strerror}") from exc
    if data[:2] != b"MZ":
        raise PeImageError(f"{path}: not a PE/COFF image (byte offset 0: no 'MZ' DOS header)")
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        raise PeImageError(f"{path}: malformed PE/COFF headers: {exc.value}") from exc
    except _THIRD_PARTY_PARSE_ERRORS as exc:
        raise PeImageError(f"{path}: malformed PE/COFF headers: {type(exc).__name__}: {exc}") from exc
    sections = {}
    for section in pe.sections:
        name = _section_name(pe, data, section)
        start, size = section.PointerToRawData, min(section.SizeOfRawData, section.Misc_VirtualSize)
        if start + size > len(data):
            raise PeImageError(
                f"{path}: section {name} (byte offset {start}, {size} bytes) runs past the end of "
                f"the {len(data)}-byte file"
            )
        sections[name] = data[start : start + size]
    directories = getattr(getattr(pe, "OPTIONAL_HEADER", None), "DATA_DIRECTORY", None) or []
    if len(directories) <= _SECURITY_DIRECTORY:
        # NumberOfRvaAndSizes leaves out the certificate table entry: the image cannot be signed
        security_offset, security_size = 0, 0
    else:
        security_offset = directories[_SECURITY_DIRECTORY].VirtualAddress
        security_size = directories[_SECURITY_DIRECTORY].Size
    try:
        signed_file = SignedPEFile(io.BytesIO(data))
        digests = signed_file.get_fingerprints(hashlib.sha256, hashlib.sha1)
    except _THIRD_PARTY_PARSE_ERRORS as exc:
        raise PeImageError(f"{path}: malformed PE/COFF image: {_describe_error(exc)}") from exc
    try:
        signatures = tuple(
            _describe_signature(signed_data)
            for signed_data in signed_file.iter_embedded_signatures(ignore_parse_errors=False)
        )
    except _THIRD_PARTY_PARSE_ERRORS as exc:
        if security_size:
            raise PeImageError(
                f"{path}: malformed Authenticode certificate table (byte offset {security_offset}, "
                f"{security_size} bytes): {_describe_error(exc)}"
            ) from exc
        signatures = ()  # no certificate table: the image is unsigned
    return PeImage(path, digests["sha256"], digests["sha1"], signatures, sections)


def _section_name(pe: pefile.PE, data: bytes, section: pefile.SectionStructure) -> str:
    """The section name; "/N" names (longer than 8 bytes) point into the COFF string table."""
    raw = section.Name.rstrip(b"\0")
    if raw.startswith(b"/") and raw[1:].isdigit():
        table = pe.FILE_HEADER.PointerToSymbolTable + pe.FILE_HEADER.NumberOfSymbols * 18
        start = table + int(raw[1:])
        end = data.find(b"\0", start)
        if pe.FILE_HEADER.PointerToSymbolTable and 0 <= start < end:
            raw = data[start:end]
    return raw.decode("ascii", "replace")


def _describe_signature(signed_data: AuthenticodeSignature) -> PeSignature:
    certificates = tuple(x509.load_der_x509_certificate(c.to_der) for c in signed_data.certificates)
    signer_info = signed_data.signer_info
    issuer_der = signer_info.issuer.asn1.dump()
    signer = next(
        (
            c
            for c in certificates
            if c.serial_number == signer_info.serial_number and c.issuer.public_bytes() == issuer_der
        ),
        None,
    )
    issuer_common_name = next(iter(signer_info.issuer.get_components("CN")), signer_info.issuer.dn)
    if signer is None:
        subject = common_name = f"serial {signer_info.serial_number:x} of {issuer_common_name}"
    else:
        subject, common_name = signer.subject.rfc4514_string(), siglist.common_name(signer)
    return PeSignature(
        digest_algorithm=signed_data.indirect_data.digest_algorithm().name,
        signed_digest=signed_data.indirect_data.digest,
        signer_subject=subject,
        signer_common_name=common_name,
        issuer_common_name=issuer_common_name,
        certificates=certificates,
        signing_time=signer_info.signing_time,
        signed_data=signed_data,
    )


def verify_image(
    image: PeImage, allowed: Sequence[TrustAnchor], forbidden: Sequence[SignatureEntry]
) -> ImageVerdict:
    """Check an image as UEFI does: forbidden hash/certificate -> refused; else a signature chaining to an
    allowed certificate (or an allowed image hash) -> accepted; else refused with the precise reason."""
    for algorithm, signature_type in (("sha256", siglist.EFI_CERT_SHA256), ("sha1", siglist.EFI_CERT_SHA1)):
        digest = image.authenticode_digest(algorithm)
        if digest in siglist.hashes(forbidden, signature_type):
            return ImageVerdict(
                ReasonCode.REVOKED_BY_HASH,
                f"its Authenticode {algorithm} digest {digest.hex()} is listed in the forbidden database",
            )
    valid_signatures = [
        s for s in image.signatures if s.signed_digest == image.authenticode_digest(s.digest_algorithm)
    ]
    for signature in valid_signatures:
        revoked = _revoked_certificate(signature, forbidden)
        if revoked is not None:
            return ImageVerdict(
                ReasonCode.REVOKED_BY_CERTIFICATE,
                f"it is signed by {signature.signer_common_name!r} whose certificate chain includes "
                f"{revoked}, which is listed in the forbidden database",
                signer_subject=signature.signer_subject,
            )
    for anchor in allowed:
        if anchor.entry.signature_type == siglist.EFI_CERT_SHA256 and anchor.entry.data[:32] == image.sha256:
            return ImageVerdict(
                None,
                "its Authenticode digest is allowed",
                authority=anchor.label,
                authority_entry=anchor.entry,
            )
    if not image.signatures:
        return ImageVerdict(ReasonCode.NOT_SIGNED, "the image carries no Authenticode signature")
    if not valid_signatures:
        signature = image.signatures[0]
        return ImageVerdict(
            ReasonCode.DIGEST_MISMATCH,
            f"image was modified after signing: the Authenticode digest "
            f"{image.authenticode_digest(signature.digest_algorithm).hex()} does not match the signed "
            f"digest {signature.signed_digest.hex()}",
            signer_subject=signature.signer_subject,
        )
    anchors = {a.entry.certificate: a for a in allowed if a.entry.certificate is not None}
    problems = []
    for signature in valid_signatures:
        trusted_by, problem = _chain_to_certificate(signature, list(anchors))
        if trusted_by is not None:
            anchor = anchors[trusted_by]
            return ImageVerdict(
                None,
                f"signed by {signature.signer_common_name!r}, trusted through {anchor.label}",
                authority=anchor.label,
                signer_subject=signature.signer_subject,
                authority_entry=anchor.entry,
            )
        problems.append(
            f"{signature.signer_common_name!r} (issued by {signature.issuer_common_name!r}{problem})"
        )
    trusted = ", ".join(a.label for a in anchors.values()) or "no certificates at all"
    return ImageVerdict(
        ReasonCode.SIGNER_NOT_TRUSTED,
        f"signer {' and '.join(problems)} does not chain to a trusted certificate; trusted: {trusted}",
        signer_subject=valid_signatures[0].signer_subject,
    )


def _revoked_certificate(signature: PeSignature, forbidden: Sequence[SignatureEntry]) -> str | None:
    """Name the certificate of the signer chain that is forbidden (by DER or TBS hash), if any."""
    forbidden_certificates = siglist.certificates(forbidden)
    forbidden_tbs = siglist.hashes(forbidden, siglist.EFI_CERT_X509_SHA256)
    for certificate in signature.certificates:
        if certificate in forbidden_certificates or siglist.tbs_sha256(certificate) in forbidden_tbs:
            return repr(siglist.common_name(certificate))
    revoked, _ = _chain_to_certificate(signature, forbidden_certificates)
    return repr(siglist.common_name(revoked)) if revoked is not None else None


def _chain_to_certificate(
    signature: PeSignature, trusted: Sequence[x509.Certificate]
) -> tuple[x509.Certificate | None, str]:
    """Verify the PKCS#7 signature and return the trusted certificate its signer chains to (validity
    dates ignored), or None and the reason no chain was found."""
    if not trusted:
        return None, ""
    by_der = {c.public_bytes(Encoding.DER): c for c in trusted}
    # An empty store would make signify fall back to its own (Windows) root store: never pass one.
    store = CertificateStore([SignifyCertificate.from_der(der) for der in by_der], trusted=True)
    problem = ""
    for moment in _verification_moments(signature):
        try:
            chains = signature.signed_data.verify(
                expected_hash=signature.signed_digest,
                strict_validation=False,
                trusted_certificate_store=store,
                verification_context_kwargs={"timestamp": moment},
                countersignature_mode="ignore",
            )
        except CertificateVerificationError:
            continue  # no chain to the trusted certificates (signify's message repeats the issuer)
        except SignifyError as exc:
            problem = f": {exc}"
            continue
        for chain in chains:
            for certificate in chain:
                if certificate.to_der in by_der:
                    return by_der[certificate.to_der], ""
    return None, problem


def _verification_moments(signature: PeSignature) -> list[datetime.datetime]:
    """Times at which to validate the chain: UEFI ignores validity periods, so try the signing time and
    the start of each carried certificate's validity (expired certificates must still verify)."""
    moments = [signature.signing_time] if signature.signing_time is not None else []
    moments.extend(sorted({c.not_valid_before_utc for c in signature.certificates}, reverse=True))
    return list(dict.fromkeys(moments))
