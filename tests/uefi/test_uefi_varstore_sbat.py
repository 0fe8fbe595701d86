"""Varstore reading (real OVMF varstores, and ones written with virt-firmware) and SBAT parsing/rules."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from esp_helpers import GRUB, OVMF_VARS_KEYLESS, OVMF_VARS_MS, SHIM, TestSigner, write_varstore
from virt.firmware.efi import guids
from virt.firmware.varstore.edk2 import Edk2VarStore

from trustedlaunch.uefi.authenticode import load_pe_image
from trustedlaunch.uefi.sbat import (
    SbatError,
    ShimSbatLevels,
    effective_level,
    parse_sbat_level,
    parse_sbat_section,
    parse_sbatlevel_section,
    revocations,
)
from trustedlaunch.uefi.shim import read_shim_trust
from trustedlaunch.uefi.siglist import EFI_CERT_SHA256, EFI_CERT_X509, SignatureListError, common_name
from trustedlaunch.uefi.varstore import VarStoreError, read_varstore

MICROSOFT_OWNER = uuid.UUID(guids.MicrosoftVendor)


def test_microsoft_varstore_holds_the_microsoft_db() -> None:
    store = read_varstore(OVMF_VARS_MS)
    assert store.secure_boot and not store.setup_mode
    db_names = {common_name(e.certificate) for e in store.db if e.certificate is not None}
    assert "Microsoft Corporation UEFI CA 2011" in db_names
    assert all(e.signature_type == EFI_CERT_X509 and e.owner == MICROSOFT_OWNER for e in store.db)
    assert store.pk and store.kek
    assert all(e.signature_type == EFI_CERT_SHA256 for e in store.dbx)
    assert store.sbat_level is None


def test_keyless_varstore_is_in_setup_mode() -> None:
    store = read_varstore(OVMF_VARS_KEYLESS)
    assert store.setup_mode and not store.secure_boot
    assert store.db == store.dbx == store.pk == ()


def test_written_entries_are_read_back(tmp_path: Path, test_ca: TestSigner) -> None:
    digest = bytes(range(32))
    written = write_varstore(
        OVMF_VARS_KEYLESS,
        tmp_path / "vars.fd",
        platform_cert=test_ca.ca_pem,
        db_certs=(test_ca.ca_pem,),
        dbx_hashes=(digest,),
        sbat_level="sbat,1,2024010900\nshim,4\ngrub,3\n",
    )
    store = read_varstore(written)
    assert store.secure_boot
    assert [e.certificate for e in store.db] == [test_ca.ca_certificate]
    assert [e.certificate for e in store.pk] == [test_ca.ca_certificate]
    assert digest in {e.data for e in store.dbx}
    assert store.sbat_level == "sbat,1,2024010900\nshim,4\ngrub,3\n"


def test_garbage_and_corrupt_varstores(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.fd"
    garbage.write_bytes(b"\x5a" * 65536)
    with pytest.raises(VarStoreError, match=r"garbage\.fd: not a UEFI varstore"):
        read_varstore(garbage)
    with pytest.raises(VarStoreError, match="is not a regular file"):
        read_varstore(tmp_path)

    store = Edk2VarStore(str(OVMF_VARS_MS))
    variables = store.get_varlist()
    variables["db"].data = variables["db"].data[:100]  # a signature list cut short
    corrupt = tmp_path / "corrupt.fd"
    store.write_varstore(str(corrupt), variables)
    with pytest.raises(
        SignatureListError, match=r"corrupt\.fd, variable db: EFI_SIGNATURE_LIST at byte offset 0"
    ):
        read_varstore(corrupt)


def _section(path: Path, name: str, tmp_path: Path) -> bytes:
    """Extract a section with binutils (an independent PE reader)."""
    output = tmp_path / name.strip(".")
    subprocess.run(["objcopy", "-O", "binary", f"--only-section={name}", str(path), str(output)], check=True)
    return output.read_bytes()


def test_sections_match_binutils(tmp_path: Path) -> None:
    grub = load_pe_image(GRUB)
    shim = load_pe_image(SHIM)
    assert grub.sections[".sbat"].rstrip(b"\0") == _section(GRUB, ".sbat", tmp_path).rstrip(b"\0")
    assert shim.sections[".sbatlevel"].rstrip(b"\0") == _section(SHIM, ".sbatlevel", tmp_path).rstrip(b"\0")
    assert shim.sections[".vendor_cert"].rstrip(b"\0") == _section(SHIM, ".vendor_cert", tmp_path).rstrip(
        b"\0"
    )


def test_real_grub_passes_real_shim_levels() -> None:
    entries = parse_sbat_section(load_pe_image(GRUB).sections[".sbat"], "grub")
    assert entries[0].component == "sbat"
    levels = read_shim_trust(load_pe_image(SHIM)).sbat_levels
    assert isinstance(levels, ShimSbatLevels)
    assert levels.latest.datestamp > levels.previous.datestamp
    assert revocations(entries, levels.previous) == []
    grub = next(e for e in entries if e.component == "grub")
    assert levels.previous.minimum_generations["grub"] <= grub.generation

    stricter = parse_sbat_level(f"sbat,1,2099010100\ngrub,{grub.generation + 1}\n", "test")
    [revoked] = revocations(entries, stricter)
    assert (revoked.component, revoked.generation, revoked.minimum_generation) == (
        "grub",
        grub.generation,
        grub.generation + 1,
    )
    other_vendor = parse_sbat_level("sbat,1,2099010100\ngrub.proxmox,99\n", "test")
    assert revocations(entries, other_vendor) == []


def test_shim_vendor_certificate_is_the_ca_of_grubs_signer() -> None:
    trust = read_shim_trust(load_pe_image(SHIM))
    [vendor] = trust.vendor_db
    assert vendor.certificate is not None
    grub_signature = load_pe_image(GRUB).signatures[0]
    assert grub_signature.issuer_common_name == common_name(vendor.certificate)
    assert trust.vendor_dbx and all(e.signature_type == EFI_CERT_SHA256 for e in trust.vendor_dbx)


def test_effective_level_follows_shims_previous_policy() -> None:
    levels = parse_sbatlevel_section(load_pe_image(SHIM).sections[".sbatlevel"], "shim")
    assert effective_level(None, levels) == levels.previous
    assert effective_level(None, levels, "latest") == levels.latest
    newer = parse_sbat_level("sbat,1,2999010100\ngrub,9\n", "var")
    older = parse_sbat_level("sbat,1,2000010100\ngrub,9\n", "var")
    assert effective_level(newer, levels) == newer
    assert effective_level(older, levels) == levels.previous


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grub,1\n", "must start with an 'sbat,1,DATESTAMP' line"),
        ("sbat,1,2023\ngrub\n", "line 2: 'component,generation' expected"),
        ("sbat,1,2023\ngrub,x\n", r"line 2: generation 'x' is not a decimal number"),
    ],
)
def test_malformed_sbat_level(text: str, message: str) -> None:
    with pytest.raises(SbatError, match=message):
        parse_sbat_level(text, "SbatLevel")


def test_malformed_sbat_sections() -> None:
    with pytest.raises(SbatError, match="line 2: 3 fields, 6 expected"):
        parse_sbat_section(b"sbat,1,SBAT Version,sbat,1,https://x\ngrub,1,FSF\n", "img")
    with pytest.raises(SbatError, match=r"\.sbatlevel section is 5 bytes"):
        parse_sbatlevel_section(b"\0" * 5, "shim")
    with pytest.raises(SbatError, match="previous offset 4000 is past"):
        parse_sbatlevel_section(b"\0\0\0\0" + (4000).to_bytes(4, "little") + b"\0" * 8, "shim")
