"""decide_boot on real Debian shim/grub/kernel files and real OVMF varstores, with variants made by sbsign."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from esp_helpers import (
    GRUB,
    OVMF_VARS_KEYLESS,
    OVMF_VARS_MS,
    SHIM,
    TestSigner,
    build_esp,
    debian_kernel,
    flip_byte_in_section,
    make_self_signed,
    sign_with,
    strip_signatures,
    write_varstore,
)

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.uefi.authenticode import ReasonCode, load_pe_image
from trustedlaunch.uefi.sbat import SbatEntry, parse_sbat_section
from trustedlaunch.uefi.secureboot import decide_boot
from trustedlaunch.uefi.shim import read_shim_trust
from trustedlaunch.uefi.siglist import common_name
from trustedlaunch.uefi.varstore import read_varstore


def test_debian_chain_boots_with_microsoft_keys(debian_esp: Path) -> None:
    decision = decide_boot(OVMF_VARS_MS, debian_esp)
    assert decision.boots, decision.summary
    assert decision.secure_boot
    shim, grub, kernel = decision.components
    assert [c.name for c in decision.components] == ["shim", "grub", "kernel"]
    assert shim.path == "EFI/BOOT/BOOTX64.EFI" and kernel.path == "vmlinuz"
    # shim is signed by Microsoft's UEFI CA (MS db); grub and kernel by Debian's CA (shim's vendor cert)
    db_names = {common_name(e.certificate) for e in read_varstore(OVMF_VARS_MS).db if e.certificate}
    assert shim.verified_by is not None and shim.verified_by.removeprefix("db: ") in db_names
    vendor_cert = read_shim_trust(load_pe_image(SHIM)).vendor_db[0].certificate
    assert vendor_cert is not None
    assert grub.verified_by == kernel.verified_by == f"shim vendor cert: {common_name(vendor_cert)}"
    for component, source in zip(decision.components, (SHIM, GRUB, debian_kernel()), strict=True):
        assert component.sha256 == load_pe_image(source).sha256
    assert any(entry.component == "grub" for entry in grub.sbat)
    assert decision.sbat_level is not None


def test_everything_boots_when_secure_boot_is_off(tmp_path: Path) -> None:
    unsigned_kernel = strip_signatures(debian_kernel(), tmp_path / "vmlinuz-unsigned")
    esp = build_esp(tmp_path / "esp", kernel=unsigned_kernel)
    decision = decide_boot(OVMF_VARS_KEYLESS, esp)
    assert decision.boots and not decision.secure_boot
    assert "Secure Boot is disabled" in decision.summary
    assert any("no PK is enrolled" in note for note in decision.notes)
    assert all(c.verified_by is None for c in decision.components)
    # the same unsigned kernel is refused once Secure Boot is on
    assert decide_boot(OVMF_VARS_MS, esp).failure is not None


def test_unsigned_kernel_is_not_signed(tmp_path: Path) -> None:
    unsigned_kernel = strip_signatures(debian_kernel(), tmp_path / "vmlinuz-unsigned")
    decision = decide_boot(OVMF_VARS_MS, build_esp(tmp_path / "esp", kernel=unsigned_kernel))
    failure = decision.failure
    assert failure is not None and failure.name == "kernel"
    assert failure.reason is ReasonCode.NOT_SIGNED
    assert failure.message.startswith("kernel (vmlinuz): ")


def test_kernel_signed_by_unknown_key_is_not_trusted(tmp_path: Path) -> None:
    stranger = make_self_signed(tmp_path / "keys", "stranger kernel key")
    kernel = sign_with(stranger, debian_kernel(), tmp_path / "vmlinuz-stranger")
    decision = decide_boot(
        OVMF_VARS_MS, build_esp(tmp_path / "esp", kernel=kernel, grub_command="chainloader")
    )
    failure = decision.failure
    assert failure is not None and failure.name == "kernel"
    assert failure.reason is ReasonCode.SIGNER_NOT_TRUSTED
    assert "stranger kernel key" in failure.detail and "Debian Secure Boot CA" in failure.detail


def test_grub_modified_after_signing_is_a_digest_mismatch(tmp_path: Path) -> None:
    esp = build_esp(tmp_path / "esp")
    flip_byte_in_section(esp / "EFI" / "BOOT" / "grubx64.efi", b"mods")
    decision = decide_boot(OVMF_VARS_MS, esp)
    failure = decision.failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.DIGEST_MISMATCH
    original = load_pe_image(GRUB).sha256
    assert failure.sha256 is not None and failure.sha256 != original
    assert (
        f"digest {failure.sha256.hex()} does not match the signed digest {original.hex()}" in failure.detail
    )
    assert "modified after signing" in failure.message


def test_shim_hash_in_dbx_is_revoked_by_hash(tmp_path: Path, debian_esp: Path) -> None:
    shim_digest = load_pe_image(SHIM).sha256
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", dbx_hashes=(shim_digest,))
    failure = decide_boot(varstore, debian_esp).failure
    assert failure is not None and failure.name == "shim"
    assert failure.reason is ReasonCode.REVOKED_BY_HASH
    assert shim_digest.hex() in failure.detail


def test_microsoft_uefi_ca_in_dbx_revokes_shim_by_certificate(tmp_path: Path, debian_esp: Path) -> None:
    uefi_ca = next(
        e.certificate
        for e in read_varstore(OVMF_VARS_MS).db
        if e.certificate is not None and "UEFI CA" in common_name(e.certificate)
    )
    ca_file = tmp_path / "uefi-ca.der"
    ca_file.write_bytes(uefi_ca.public_bytes(Encoding.DER))
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", dbx_certs=(ca_file,))
    failure = decide_boot(varstore, debian_esp).failure
    assert failure is not None and failure.name == "shim"
    assert failure.reason is ReasonCode.REVOKED_BY_CERTIFICATE
    assert common_name(uefi_ca) in failure.detail


def test_sbat_level_revoking_current_grub_generation(tmp_path: Path, debian_esp: Path) -> None:
    grub_generation = next(e.generation for e in _grub_sbat() if e.component == "grub")
    level = f"sbat,1,2099010100\ngrub,{grub_generation + 1}\n"
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", sbat_level=level)
    decision = decide_boot(varstore, debian_esp)
    failure = decision.failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.SBAT_REVOKED
    assert f"grub generation {grub_generation} < required {grub_generation + 1}" in failure.detail
    # a level older than shim's built-in one is ignored (shim replaces it), so grub boots again
    stale = write_varstore(
        OVMF_VARS_MS, tmp_path / "stale.fd", sbat_level=f"sbat,1,2000010100\ngrub,{grub_generation + 1}\n"
    )
    assert decide_boot(stale, debian_esp).boots


def _grub_sbat() -> list[SbatEntry]:
    return list(parse_sbat_section(load_pe_image(GRUB).sections[".sbat"], "grub"))


def test_esp_signed_by_test_ca_boots_with_test_ca_in_db(
    tmp_path: Path, test_ca_varstore: Path, test_signed_images: dict[str, Path], test_ca: TestSigner
) -> None:
    esp = build_esp(
        tmp_path / "esp",
        shim=test_signed_images["shim"],
        grub=test_signed_images["grub"],
        kernel=test_signed_images["kernel"],
    )
    decision = decide_boot(test_ca_varstore, esp)
    assert decision.boots, decision.summary
    expected = f"db: {common_name(test_ca.ca_certificate)}"
    assert [c.verified_by for c in decision.components] == [expected] * 3
    # the Microsoft db does not know the test CA: the firmware refuses the re-signed shim
    failure = decide_boot(OVMF_VARS_MS, esp).failure
    assert failure is not None and failure.name == "shim" and failure.reason is ReasonCode.SIGNER_NOT_TRUSTED


def test_sbat_revokes_test_signed_grub_independently_of_signatures(
    tmp_path: Path, test_ca: TestSigner, test_signed_images: dict[str, Path]
) -> None:
    generation = next(e.generation for e in _grub_sbat() if e.component == "grub")
    varstore = write_varstore(
        OVMF_VARS_KEYLESS,
        tmp_path / "vars.fd",
        platform_cert=test_ca.ca_pem,
        db_certs=(test_ca.ca_pem,),
        sbat_level=f"sbat,1,2099010100\ngrub,{generation + 1}\n",
    )
    esp = build_esp(
        tmp_path / "esp",
        shim=test_signed_images["shim"],
        grub=test_signed_images["grub"],
        kernel=test_signed_images["kernel"],
    )
    decision = decide_boot(varstore, esp)
    assert decision.components[0].accepted
    failure = decision.failure
    assert failure is not None and failure.name == "grub" and failure.reason is ReasonCode.SBAT_REVOKED


def test_missing_and_malformed_components(tmp_path: Path) -> None:
    esp = build_esp(tmp_path / "esp")
    (esp / "vmlinuz").unlink()
    failure = decide_boot(OVMF_VARS_MS, esp).failure
    assert failure is not None and (failure.name, failure.reason) == ("kernel", ReasonCode.MISSING)

    (esp / "EFI" / "BOOT" / "grubx64.efi").write_bytes(b"MZ" + b"\0" * 10)
    failure = decide_boot(OVMF_VARS_MS, esp).failure
    assert failure is not None and (failure.name, failure.reason) == ("grub", ReasonCode.MALFORMED)
    assert "grubx64.efi" in failure.detail

    (esp / "EFI" / "debian" / "grub.cfg").unlink()
    kernel = decide_boot(OVMF_VARS_MS, esp).components[2]
    assert kernel.reason is ReasonCode.MISSING and kernel.path == "EFI/debian/grub.cfg"


def test_esp_paths_are_case_insensitive_like_fat(tmp_path: Path) -> None:
    esp = build_esp(tmp_path / "esp")
    shutil.move(esp / "EFI" / "BOOT", esp / "EFI" / "boot")
    decision = decide_boot(OVMF_VARS_MS, esp)
    assert decision.boots
    assert decision.components[0].path == "EFI/boot/BOOTX64.EFI"


def test_bad_inputs_raise_operator_errors(tmp_path: Path, debian_esp: Path) -> None:
    garbage = tmp_path / "garbage.fd"
    garbage.write_bytes(bytes(range(256)) * 512)
    with pytest.raises(TrustedLaunchError, match=r"garbage\.fd: not a UEFI varstore"):
        decide_boot(garbage, debian_esp)
    with pytest.raises(TrustedLaunchError, match="no such file"):
        decide_boot(tmp_path / "absent.fd", debian_esp)
    with pytest.raises(TrustedLaunchError, match="not a directory"):
        decide_boot(OVMF_VARS_MS, tmp_path / "no-esp")
