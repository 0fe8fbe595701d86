"""What shim carries to verify the next stages: its vendor certificate / vendor dbx and SbatLevels."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cryptography import x509

from trustedlaunch.uefi import siglist
from trustedlaunch.uefi.authenticode import PeImage, PeImageError
from trustedlaunch.uefi.sbat import ShimSbatLevels, parse_sbatlevel_section
from trustedlaunch.uefi.siglist import SignatureEntry
from trustedlaunch.uefi.varstore import SHIM_LOCK


@dataclass(frozen=True)
class ShimTrust:
    """Shim's built-in trust: vendor certificate(s), vendor denylist and SbatLevels."""

    vendor_db: tuple[SignatureEntry, ...]
    vendor_dbx: tuple[SignatureEntry, ...]
    sbat_levels: ShimSbatLevels | None  # None for an old shim without a .sbatlevel section


def read_vendor_certificates(image: PeImage) -> tuple[tuple[SignatureEntry, ...], tuple[SignatureEntry, ...]]:
    """Parse `.vendor_cert`: u32 db size, u32 dbx size, u32 db offset, u32 dbx offset (from the section
    start). The db part is one DER certificate or an EFI_SIGNATURE_LIST db; dbx is a signature list."""
    where = f"{image.path} .vendor_cert"
    section = image.sections.get(".vendor_cert")
    if section is None:
        raise PeImageError(
            f"{image.path}: no .vendor_cert section, this is not a shim with a vendor certificate"
        )
    if len(section) < 16:
        raise PeImageError(f"{where}: section is {len(section)} bytes, its header alone needs 16")
    db_size, dbx_size, db_offset, dbx_offset = struct.unpack_from("<IIII", section)
    for name, offset, size in (("vendor cert", db_offset, db_size), ("vendor dbx", dbx_offset, dbx_size)):
        if size and offset + size > len(section):
            raise PeImageError(
                f"{where}: {name} at byte offset {offset} with size {size} runs past the "
                f"{len(section)}-byte section"
            )
    db_blob = section[db_offset : db_offset + db_size]
    dbx_blob = section[dbx_offset : dbx_offset + dbx_size]
    vendor_db: tuple[SignatureEntry, ...] = ()
    if db_blob:
        try:
            certificate = x509.load_der_x509_certificate(db_blob)
            vendor_db = (SignatureEntry(siglist.EFI_CERT_X509, SHIM_LOCK, db_blob, certificate),)
        except siglist.DER_CERTIFICATE_ERRORS:
            vendor_db = siglist.parse_signature_lists(db_blob, f"{where} vendor db")
    vendor_dbx = siglist.parse_signature_lists(dbx_blob, f"{where} vendor dbx") if dbx_blob else ()
    return vendor_db, vendor_dbx


def read_shim_trust(image: PeImage) -> ShimTrust:
    """Shim's vendor certificates, vendor dbx and built-in SbatLevels."""
    vendor_db, vendor_dbx = read_vendor_certificates(image)
    level_section = image.sections.get(".sbatlevel")
    levels = parse_sbatlevel_section(level_section, str(image.path)) if level_section is not None else None
    return ShimTrust(vendor_db, vendor_dbx, levels)
