"""Authenticode digests of the real Debian boot files, checked against two independent oracles:
the digest each signer signed, and what real OVMF firmware/shim measured into PCR4."""

from __future__ import annotations

import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from esp_helpers import GRUB, OVMF_VARS_MS, SHIM, debian_kernel, strip_signatures

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.model import SignatureEntry
from trustedlaunch.eventlog.parser import parse_event_log_file
from trustedlaunch.eventlog.types import EV_EFI_BOOT_SERVICES_APPLICATION
from trustedlaunch.uefi.authenticode import PeImageError, ReasonCode, TrustAnchor, load_pe_image, verify_image
from trustedlaunch.uefi.siglist import EFI_CERT_SHA256, EFI_CERT_X509_SHA256, common_name, tbs_sha256
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


def test_digests_equal_what_ovmf_and_shim_measured(testdata: Path) -> None:
    """qemu-ovmf/shim_evlog.bin: OVMF booting shim -> grub -> kernel, measured in PCR4 (the kernel is
    measured twice: once when GRUB loads it through shim, once by the firmware's LoadImage).

    The log froze one build of each package; Debian keeps shipping new ones (a new kernel build can even
    have the same size). An installed file is the build the log measured when the digest its signer signed
    (read from its signature, not computed) is the measured one; only those are compared here. The
    installed files are checked against a live firmware in tests/node (predicted PCR4 = quoted PCR4)."""
    applications = _boot_applications(testdata / "qemu-ovmf" / "shim_evlog.bin")
    assert len(applications) >= 3
    names = ["shim", "grub"] + ["kernel"] * (len(applications) - 2)
    kernel_digests = {measured for _, measured in applications[2:]}
    assert len(kernel_digests) == 1, "shim and LoadImage measured different kernels"
    compared = []
    for (length, measured), name in zip(applications, names, strict=True):
        image = load_pe_image(BOOT_FILES[name])
        if measured not in {signature.signed_digest for signature in image.signatures}:
            continue  # another build of the package than the one the log measured
        assert length == BOOT_FILES[name].stat().st_size, name
        assert image.sha256 == measured, name
        compared.append(name)
    if not compared:
        pytest.skip("shim_evlog.bin measured other builds of shim, GRUB and the kernel than those installed")


def test_direct_kernel_boot_log_is_not_comparable(testdata: Path) -> None:
    """qemu-ovmf/ovmf_evlog.bin measured a kernel passed with -kernel: QEMU patches the bzImage setup
    header before OVMF measures it, so its digest must differ from the file's (same size)."""
    applications = _boot_applications(testdata / "qemu-ovmf" / "ovmf_evlog.bin")
    kernel = debian_kernel()
    [(length, measured)] = applications
    if length != kernel.stat().st_size:
        pytest.skip(f"ovmf_evlog.bin measured a {length}-byte kernel, not the installed {kernel}")
    assert measured != load_pe_image(kernel).sha256


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
