"""Authenticode digests of the real Debian boot files, checked against two independent oracles:
the digest each signer signed, and what real OVMF firmware/shim measured into PCR4."""

from __future__ import annotations

import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from esp_helpers import GRUB, OVMF_VARS_MS, SHIM, build_esp, debian_kernel, strip_signatures

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.parser import parse_event_log_file
from trustedlaunch.eventlog.summary import decode_variable
from trustedlaunch.eventlog.types import EV_EFI_BOOT_SERVICES_APPLICATION, EV_EFI_VARIABLE_AUTHORITY
from trustedlaunch.uefi.authenticode import PeImageError, ReasonCode, TrustAnchor, load_pe_image, verify_image
from trustedlaunch.uefi.secureboot import decide_boot
from trustedlaunch.uefi.shim import read_shim_trust
from trustedlaunch.uefi.siglist import (
    EFI_CERT_SHA1,
    EFI_CERT_SHA256,
    EFI_CERT_X509_SHA256,
    SignatureEntry,
    common_name,
    tbs_sha256,
)
from trustedlaunch.uefi.varstore import read_varstore

BOOT_FILES = {"shim": SHIM, "grub": GRUB, "kernel": debian_kernel()}


@pytest.mark.parametrize("name", sorted(BOOT_FILES))
def test_digest_equals_the_digest_the_signer_signed(name: str) -> None:
    image = load_pe_image(BOOT_FILES[name])
    assert image.signatures, f"{name} should be signed"
    for signature in image.signatures:
        assert signature.digest_algorithm == "sha256"
        assert signature.signed_digest == image.sha256


def test_stripping_the_signature_keeps_the_authenticode_digest(tmp_path: Path) -> None:
    """The certificate table is excluded from the digest: sbattach --remove must not change it."""
    unsigned = load_pe_image(strip_signatures(GRUB, tmp_path / "grub-unsigned.efi"))
    assert unsigned.signatures == ()
    assert unsigned.sha256 == load_pe_image(GRUB).sha256
    assert unsigned.sha1 == load_pe_image(GRUB).sha1
    assert unsigned.sha256 != load_pe_image(SHIM).sha256


def _boot_applications(log: Path) -> list[tuple[int, bytes]]:
    """(ImageLengthInMemory, sha256 digest) of each EV_EFI_BOOT_SERVICES_APPLICATION event."""
    events = parse_event_log_file(log).events
    return [
        (struct.unpack_from("<Q", e.data, 8)[0], e.digests["sha256"])
        for e in events
        if e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION
    ]


def _authorities(log: Path) -> set[tuple[str, bytes]]:
    """(variable name, data) of each PCR7 EV_EFI_VARIABLE_AUTHORITY event: the db entry or shim
    certificate that verified a boot application."""
    variables = [
        decode_variable(event)
        for event in parse_event_log_file(log).events
        if event.pcr == 7 and event.event_type == EV_EFI_VARIABLE_AUTHORITY
    ]
    return {(variable.name, variable.data) for variable in variables}


def test_installed_boot_chain_matches_what_ovmf_and_shim_measured(testdata: Path, tmp_path: Path) -> None:
    """qemu-ovmf/shim_evlog.bin: OVMF booting shim -> grub -> kernel, measured in PCR4 (the kernel is
    measured twice: once when GRUB loads it through shim, once by the firmware's LoadImage), each stage's
    verifying authority in PCR7.

    The log froze one build of each package; Debian keeps shipping new ones (a new kernel build can even
    have the same size). An installed file is the build the log measured when the digest its signer signed
    (read from its signature, not computed) is the measured one: then its size and our Authenticode digest
    must be the measured ones. For a file of another build, what the log still says about it is who
    verified it: the certificate that verifies the installed file (found from its signature by
    decide_boot) must be the authority the log recorded for that stage. A stage for which neither holds
    fails: the log no longer describes the installed boot chain. (The installed files are also checked
    against a live firmware in tests/node: predicted PCR4 = quoted PCR4.)"""
    log = testdata / "qemu-ovmf" / "shim_evlog.bin"
    applications = _boot_applications(log)
    assert len(applications) >= 3
    kernel_measurements = set(applications[2:])
    assert len(kernel_measurements) == 1, "shim and LoadImage measured different kernels"
    measurements = {"shim": applications[0], "grub": applications[1], "kernel": applications[2]}
    authorities = _authorities(log)
    decision = decide_boot(OVMF_VARS_MS, build_esp(tmp_path / "esp"))
    assert decision.boots, decision.summary
    checked = {}
    for component in decision.components:
        length, measured = measurements[component.name]
        path = BOOT_FILES[component.name]
        image = load_pe_image(path)
        if measured in {signature.signed_digest for signature in image.signatures}:
            assert length == path.stat().st_size, component.name
            assert image.sha256 == measured, component.name
            checked[component.name] = "digest"
            continue
        # another build: the authority that verifies it must be the one the log recorded for the stage
        variable = "db" if component.name == "shim" else "MokListRT"  # what firmware / shim record
        entry = component.authority_entry
        assert entry is not None and entry.certificate is not None, component.message
        recorded = [data for name, data in authorities if name == variable and data.endswith(entry.data)]
        assert recorded, (
            f"{path} is another build than shim_evlog.bin measured, and {component.verified_by}, which "
            f"verifies it, is not a {variable} authority of the log: the log no longer describes the "
            "installed boot chain (record it again)"
        )
        checked[component.name] = "authority"
    assert set(checked) == {"shim", "grub", "kernel"}, checked


def test_direct_kernel_boot_is_not_the_files_digest(testdata: Path, tmp_path: Path) -> None:
    """qemu-ovmf/ovmf_evlog.bin measured a kernel passed with -kernel: QEMU patches the bzImage setup
    header before OVMF measures it, so the measured digest is not the file's. The two qemu-ovmf logs were
    recorded with one kernel build: the direct boot measured an image of the size that shim measured (and
    verified against its signature) in shim_evlog.bin, with another digest. On the installed kernel, the
    same patch (QEMU's type_of_loader, loadflags and cmd_line_ptr) changes our Authenticode digest: the
    setup header is covered, and the patched file no longer matches the digest its signer signed."""
    [(length, measured)] = _boot_applications(testdata / "qemu-ovmf" / "ovmf_evlog.bin")
    through_shim = set(_boot_applications(testdata / "qemu-ovmf" / "shim_evlog.bin")[2:])
    assert {size for size, _ in through_shim} == {length}
    assert measured not in {digest for _, digest in through_shim}

    kernel = debian_kernel()
    data = bytearray(kernel.read_bytes())
    assert data[0x202:0x206] == b"HdrS", f"{kernel}: no bzImage setup header"
    data[0x210] = 0xB0  # type_of_loader: QEMU
    data[0x211] |= 0x80  # loadflags: CAN_USE_HEAP
    struct.pack_into("<I", data, 0x228, 0x20000)  # cmd_line_ptr
    patched = tmp_path / "vmlinuz-patched"
    patched.write_bytes(bytes(data))
    image = load_pe_image(patched)
    [signature] = image.signatures
    assert patched.stat().st_size == kernel.stat().st_size
    assert signature.signed_digest == load_pe_image(kernel).sha256 != image.sha256
    vendor = read_shim_trust(load_pe_image(SHIM)).vendor_db[0]
    verdict = verify_image(image, [TrustAnchor("shim vendor cert", vendor)], [])
    assert verdict.reason is ReasonCode.DIGEST_MISMATCH


def test_digest_matches_sbsigntool_view_of_the_pe(tmp_path: Path) -> None:
    """sbverify parses the same certificate table: it must list the signer our parser reports."""
    image = load_pe_image(GRUB)
    listing = subprocess.run(
        ["sbverify", "--list", str(GRUB)], capture_output=True, text=True, check=True
    ).stdout
    assert f"CN={image.signatures[0].signer_common_name}" in listing


def test_not_a_pe_image(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(PeImageError, match=r"notes\.txt: not a PE/COFF image \(byte offset 0"):
        load_pe_image(text)
    truncated = tmp_path / "truncated.efi"
    truncated.write_bytes(GRUB.read_bytes()[:300])
    with pytest.raises(TrustedLaunchError, match=r"truncated\.efi"):
        load_pe_image(truncated)
    with pytest.raises(PeImageError, match="cannot read"):
        load_pe_image(tmp_path / "absent.efi")


def test_corrupt_certificate_table_is_reported_with_its_offset(tmp_path: Path) -> None:
    data = bytearray(GRUB.read_bytes())
    pe_offset = struct.unpack_from("<I", data, 0x3C)[0]
    security_entry = pe_offset + 24 + 112 + 4 * 8  # PE32+ optional header data directory #4
    table_offset, table_size = struct.unpack_from("<II", data, security_entry)
    data[table_offset + 8 : table_offset + 40] = b"\xff" * 32  # smash the PKCS#7 header
    broken = tmp_path / "broken.efi"
    broken.write_bytes(bytes(data))
    with pytest.raises(PeImageError, match=f"byte offset {table_offset}, {table_size} bytes"):
        load_pe_image(broken)


def test_tbs_hash_in_forbidden_list_revokes_and_beats_db() -> None:
    """An EFI_CERT_X509_SHA256 dbx entry (TBS hash + revocation time) of Microsoft's UEFI CA revokes shim,
    even though the same CA is in db."""
    store = read_varstore(OVMF_VARS_MS)
    anchors = [TrustAnchor(f"db: {common_name(e.certificate)}", e) for e in store.db if e.certificate]
    shim = load_pe_image(SHIM)
    assert verify_image(shim, anchors, store.dbx).reason is None
    uefi_ca = next(a.entry.certificate for a in anchors if "UEFI CA" in a.label)
    assert uefi_ca is not None
    entry = SignatureEntry(EFI_CERT_X509_SHA256, uuid.uuid4(), tbs_sha256(uefi_ca) + bytes(16))
    verdict = verify_image(shim, anchors, [*store.dbx, entry])
    assert verdict.reason is ReasonCode.REVOKED_BY_CERTIFICATE
    assert common_name(uefi_ca) in verdict.detail
    image_hash = SignatureEntry(EFI_CERT_SHA256, uuid.uuid4(), shim.sha256)
    assert verify_image(shim, [], [image_hash]).reason is ReasonCode.REVOKED_BY_HASH
    assert verify_image(shim, [TrustAnchor("db: shim hash", image_hash)], []).authority == "db: shim hash"


def test_image_hashes_in_the_databases_name_exactly_one_image(tmp_path: Path) -> None:
    """A forbidden SHA-1 digest revokes the image as a SHA-256 one does; an allowed image hash admits that
    image and no other (GRUB is not allowed by shim's hash, and stays refused for its signer)."""
    shim, grub = load_pe_image(SHIM), load_pe_image(GRUB)
    sha1_entry = SignatureEntry(EFI_CERT_SHA1, uuid.uuid4(), shim.sha1)
    verdict = verify_image(shim, [], [sha1_entry])
    assert verdict.reason is ReasonCode.REVOKED_BY_HASH and f"sha1 digest {shim.sha1.hex()}" in verdict.detail
    assert verify_image(grub, [], [sha1_entry]).reason is ReasonCode.SIGNER_NOT_TRUSTED
    allowed = TrustAnchor("db: shim hash", SignatureEntry(EFI_CERT_SHA256, uuid.uuid4(), shim.sha256))
    assert verify_image(shim, [allowed], []).authority == "db: shim hash"
    refused = verify_image(grub, [allowed], [])
    assert refused.reason is ReasonCode.SIGNER_NOT_TRUSTED and refused.authority is None
    unsigned = load_pe_image(strip_signatures(GRUB, tmp_path / "grub-unsigned.efi"))
    assert verify_image(unsigned, [allowed], []).reason is ReasonCode.NOT_SIGNED
