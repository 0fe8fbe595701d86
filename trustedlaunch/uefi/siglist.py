"""EFI_SIGNATURE_LIST parsing (db, dbx, KEK, PK, MokList, shim's vendor db/dbx) into SignatureEntry."""

from __future__ import annotations

import functools
import hashlib
import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509

from trustedlaunch.errors import TrustedLaunchError

EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
EFI_CERT_SHA1 = uuid.UUID("826ca512-cf10-4ac9-b187-be01496631bd")
EFI_CERT_X509_SHA256 = uuid.UUID("3bd2a492-96c0-4079-b420-fcf98ef103ed")

SIGNATURE_TYPE_NAMES = {
    EFI_CERT_X509: "x509",
    EFI_CERT_SHA256: "sha256",
    EFI_CERT_SHA1: "sha1",
    EFI_CERT_X509_SHA256: "x509-tbs-sha256",
}


@dataclass(frozen=True)
class SignatureEntry:
    """One entry of an EFI_SIGNATURE_LIST: an X.509 certificate or a hash, with its owner GUID."""

    signature_type: uuid.UUID
    owner: uuid.UUID
    data: bytes
    certificate: x509.Certificate | None = None  # set for EFI_CERT_X509_GUID entries that parse

    @property
    def is_certificate(self) -> bool:
        """True for an X.509 entry."""
        return self.certificate is not None


# What cryptography raises for bytes that are not a well-formed DER certificate: ValueError, and
# x509.InvalidVersion (not a ValueError) for a certificate whose version field is not v1..v3.
DER_CERTIFICATE_ERRORS: tuple[type[Exception], ...] = (ValueError, x509.InvalidVersion)


class SignatureListError(TrustedLaunchError):
    """A signature database (EFI_SIGNATURE_LIST sequence) that does not parse."""


def parse_signature_lists(data: bytes, where: str) -> tuple[SignatureEntry, ...]:
    """Parse concatenated EFI_SIGNATURE_LISTs; `where` names the source (file and variable) for errors."""
    entries: list[SignatureEntry] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _LIST_HEADER_SIZE:
            raise SignatureListError(
                f"{where}: truncated EFI_SIGNATURE_LIST header at byte offset {offset} "
                f"({len(data) - offset} bytes left, {_LIST_HEADER_SIZE} needed)"
            )
        list_size, header_size, signature_size = struct.unpack_from("<III", data, offset + 16)
        body = list_size - _LIST_HEADER_SIZE - header_size
        if list_size < _LIST_HEADER_SIZE or body < 0 or offset + list_size > len(data):
            raise SignatureListError(
                f"{where}: EFI_SIGNATURE_LIST at byte offset {offset} declares size {list_size}, "
                f"which does not fit the {len(data) - offset} bytes left"
            )
        if signature_size < 16 or body % signature_size:
            raise SignatureListError(
                f"{where}: EFI_SIGNATURE_LIST at byte offset {offset} has signature size "
                f"{signature_size}, which does not divide its {body}-byte body into whole entries"
            )
        signature_type = efi_guid(data[offset : offset + 16])
        is_x509 = signature_type == EFI_CERT_X509
        position = offset + _LIST_HEADER_SIZE + header_size
        for _ in range(body // signature_size):
            owner = efi_guid(data[position : position + 16])
            payload = data[position + 16 : position + signature_size]
            entries.append(
                SignatureEntry(signature_type, owner, payload, _certificate(payload) if is_x509 else None)
            )
            position += signature_size
        offset += list_size
    return tuple(entries)


_LIST_HEADER_SIZE = 28  # SignatureType GUID + SignatureListSize + SignatureHeaderSize + SignatureSize


@functools.lru_cache(maxsize=256)
def efi_guid(raw: bytes) -> uuid.UUID:
    """A GUID in EFI (mixed-endian) byte order; cached: a dbx repeats a few owners hundreds of times."""
    return uuid.UUID(bytes_le=raw)


def _certificate(der: bytes) -> x509.Certificate | None:
    """The X.509 certificate of an entry, or None when its data is not a DER certificate."""
    try:
        return x509.load_der_x509_certificate(der)
    except DER_CERTIFICATE_ERRORS:
        return None


def certificates(entries: Iterable[SignatureEntry]) -> list[x509.Certificate]:
    """The X.509 certificates among the entries."""
    return [entry.certificate for entry in entries if entry.certificate is not None]


def hashes(entries: Iterable[SignatureEntry], signature_type: uuid.UUID) -> set[bytes]:
    """The hash payloads of one signature type (EFI_CERT_SHA256, EFI_CERT_SHA1, EFI_CERT_X509_SHA256)."""
    size = 32 if signature_type in (EFI_CERT_SHA256, EFI_CERT_X509_SHA256) else 20
    return {entry.data[:size] for entry in entries if entry.signature_type == signature_type}


def tbs_sha256(certificate: x509.Certificate) -> bytes:
    """SHA-256 of the certificate's TBSCertificate, as stored in EFI_CERT_X509_SHA256 dbx entries."""
    return hashlib.sha256(certificate.tbs_certificate_bytes).digest()


def common_name(certificate: x509.Certificate) -> str:
    """The subject CN, or the whole subject when there is no CN."""
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return certificate.subject.rfc4514_string()
