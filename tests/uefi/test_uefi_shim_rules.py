"""What shim refuses although a signature is good: the machine owner's denylist (MokListX), shim's own
vendor dbx, a GRUB without SBAT metadata or with unreadable SBAT, a kernel revoked by SBAT, and a grub.cfg
naming a kernel outside the ESP; and what it trusts beyond db: the machine owner's keys (MokList). Real
Debian shim, GRUB and kernel; variants made with sbsign and virt-firmware, each beside a control that
boots."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from esp_helpers import (
    GRUB,
    OVMF_VARS_MS,
    SHIM,
    TestSigner,
    build_esp,
    debian_kernel,
    rename_section,
    replace_bytes,
    sign_with,
    write_varstore,
)

from trustedlaunch.uefi.authenticode import ReasonCode, load_pe_image
from trustedlaunch.uefi.sbat import parse_sbat_section
from trustedlaunch.uefi.secureboot import decide_boot
from trustedlaunch.uefi.shim import read_shim_trust
from trustedlaunch.uefi.siglist import EFI_CERT_SHA256, common_name


def debian_ca_der(directory: Path) -> tuple[Path, str]:
    """Shim's vendor certificate (Debian's Secure Boot CA, which signs GRUB and the kernel) as a DER file,
    and its common name."""
    certificate = read_shim_trust(load_pe_image(SHIM)).vendor_db[0].certificate
    assert certificate is not None
    path = directory / "debian-ca.der"
    path.write_bytes(certificate.public_bytes(Encoding.DER))
    return path, common_name(certificate)


def test_grub_hash_in_moklistx_is_revoked(tmp_path: Path, debian_esp: Path) -> None:
    grub_digest = load_pe_image(GRUB).sha256
    assert decide_boot(OVMF_VARS_MS, debian_esp).boots  # the control: nothing denied
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", mok_list_x_hashes=(grub_digest,))
    decision = decide_boot(varstore, debian_esp)
    assert decision.components[0].accepted  # the firmware does not read MokListX: shim still loads
    failure = decision.failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.REVOKED_BY_HASH
    assert grub_digest.hex() in failure.detail


def test_kernel_hash_in_moklistx_is_revoked(tmp_path: Path, debian_esp: Path) -> None:
    kernel_digest = load_pe_image(debian_kernel()).sha256
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", mok_list_x_hashes=(kernel_digest,))
    decision = decide_boot(varstore, debian_esp)
    assert [c.accepted for c in decision.components] == [True, True, False]
    failure = decision.failure
    assert failure is not None and failure.name == "kernel"
    assert failure.reason is ReasonCode.REVOKED_BY_HASH
    assert kernel_digest.hex() in failure.detail


def test_vendor_certificate_in_moklistx_revokes_what_it_signed(tmp_path: Path, debian_esp: Path) -> None:
    """The machine owner can deny shim's own vendor certificate: GRUB (the first image it signed) stops."""
    ca_file, ca_name = debian_ca_der(tmp_path)
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", mok_list_x_certs=(ca_file,))
    failure = decide_boot(varstore, debian_esp).failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.REVOKED_BY_CERTIFICATE
    assert ca_name in failure.detail


@pytest.fixture()
def shim_denying_grub(tmp_path: Path, test_ca: TestSigner) -> tuple[Path, Path]:
    """Debian's shim re-signed by the test CA twice: as shipped, and with the first hash of its vendor dbx
    replaced by GRUB's Authenticode digest (a shim build that revokes this GRUB itself)."""
    vendor_dbx = read_shim_trust(load_pe_image(SHIM)).vendor_dbx
    first = vendor_dbx[0]
    assert first.signature_type == EFI_CERT_SHA256 and len(first.data) == 32
    edited = replace_bytes(SHIM, tmp_path / "shim-edited.efi", first.data, load_pe_image(GRUB).sha256)
    return (
        sign_with(test_ca, SHIM, tmp_path / "shim-as-shipped.efi"),
        sign_with(test_ca, edited, tmp_path / "shim-denying-grub.efi"),
    )


def test_grub_hash_in_shims_vendor_dbx_is_revoked(
    tmp_path: Path, test_ca_varstore: Path, shim_denying_grub: tuple[Path, Path]
) -> None:
    as_shipped, denying = shim_denying_grub
    grub_digest = load_pe_image(GRUB).sha256
    assert grub_digest in {entry.data for entry in read_shim_trust(load_pe_image(denying)).vendor_dbx}
    control = decide_boot(test_ca_varstore, build_esp(tmp_path / "control", shim=as_shipped))
    assert control.boots, control.summary
    assert control.components[1].verified_by is not None
    assert control.components[1].verified_by.startswith("shim vendor cert: ")

    decision = decide_boot(test_ca_varstore, build_esp(tmp_path / "esp", shim=denying))
    assert decision.components[0].accepted
    failure = decision.failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.REVOKED_BY_HASH
    assert grub_digest.hex() in failure.detail


@pytest.fixture()
def images_without_sbat(tmp_path: Path, test_ca: TestSigner) -> dict[str, Path]:
    """Shim, and GRUB and the kernel without a `.sbat` section (renamed, so shim finds no SBAT metadata;
    Debian's 6.1 kernels have none to begin with), all signed by the test CA."""
    images = {"shim": sign_with(test_ca, SHIM, tmp_path / "shimx64.efi")}
    for name, source in (("grub", GRUB), ("kernel", debian_kernel())):
        hidden = tmp_path / f"{name}-nosbat.unsigned"
        if ".sbat" in load_pe_image(source).sections:
            rename_section(source, hidden, b".sbat", b".nosbat")
        else:
            shutil.copyfile(source, hidden)
        assert ".sbat" not in load_pe_image(hidden).sections
        images[name] = sign_with(test_ca, hidden, tmp_path / f"{name}-nosbat.efi")
    return images


def test_grub_without_sbat_section_is_refused(
    tmp_path: Path,
    test_ca_varstore: Path,
    test_signed_images: dict[str, Path],
    images_without_sbat: dict[str, Path],
) -> None:
    """shim refuses a second stage without `.sbat` even when its signature is trusted."""
    signed = build_esp(
        tmp_path / "control",
        shim=test_signed_images["shim"],
        grub=test_signed_images["grub"],
        kernel=test_signed_images["kernel"],
    )
    assert decide_boot(test_ca_varstore, signed).boots
    esp = build_esp(
        tmp_path / "esp",
        shim=images_without_sbat["shim"],
        grub=images_without_sbat["grub"],
        kernel=test_signed_images["kernel"],
    )
    decision = decide_boot(test_ca_varstore, esp)
    grub = decision.components[1]
    assert grub.verified_by is None and grub.sbat == ()
    failure = decision.failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.SBAT_REVOKED
    assert "no .sbat section" in failure.detail


def test_kernel_without_sbat_section_boots_through_grub(
    tmp_path: Path,
    test_ca_varstore: Path,
    test_signed_images: dict[str, Path],
    images_without_sbat: dict[str, Path],
) -> None:
    """An image shim verifies on GRUB's behalf (the kernel) needs no `.sbat`, as shim allows."""
    esp = build_esp(
        tmp_path / "esp",
        shim=images_without_sbat["shim"],
        grub=test_signed_images["grub"],
        kernel=images_without_sbat["kernel"],
    )
    decision = decide_boot(test_ca_varstore, esp)
    assert decision.boots, decision.summary
    assert decision.components[2].sbat == () and decision.components[2].verified_by is not None


@pytest.mark.parametrize(
    "target",
    ["/../vmlinuz", "../vmlinuz", "(hd0,gpt1)/../vmlinuz", "/EFI/../../vmlinuz", "/EFI/./../../vmlinuz"],
)
def test_kernel_outside_the_esp_is_refused(tmp_path: Path, target: str) -> None:
    """A grub.cfg that climbs out of the ESP names a file the firmware cannot reach: refused by name, even
    though a correctly signed kernel lies there (a directory tree is not a FAT partition)."""
    esp = build_esp(tmp_path / "esp")
    (esp / "EFI" / "debian" / "grub.cfg").write_text(
        f"menuentry 'Debian' {{\n    linux {target} root=/dev/vda1 ro\n}}\n"
    )
    outside = tmp_path / "vmlinuz"
    outside.write_bytes(debian_kernel().read_bytes())  # signed by Debian's CA: would be accepted
    (esp / "vmlinuz").unlink()
    decision = decide_boot(OVMF_VARS_MS, esp)
    kernel = decision.components[2]
    assert (kernel.reason, kernel.path) == (ReasonCode.MALFORMED, "EFI/debian/grub.cfg")
    assert kernel.sha256 is None  # the file outside was never read
    assert f"line 2: kernel path {target!r} is not inside the ESP" in kernel.detail


def test_kernel_path_naming_the_esp_root_is_refused(tmp_path: Path) -> None:
    esp = build_esp(tmp_path / "esp")
    (esp / "EFI" / "debian" / "grub.cfg").write_text("linux (hd0,gpt1)/ root=/dev/vda1\n")
    kernel = decide_boot(OVMF_VARS_MS, esp).components[2]
    assert kernel.reason is ReasonCode.MALFORMED and "is not inside the ESP" in kernel.detail


def test_machine_owner_key_in_moklist_verifies_grub_and_kernel(
    tmp_path: Path, test_ca: TestSigner, test_signed_images: dict[str, Path]
) -> None:
    esp = build_esp(tmp_path / "esp", grub=test_signed_images["grub"], kernel=test_signed_images["kernel"])
    failure = decide_boot(OVMF_VARS_MS, esp).failure  # Debian's shim does not know the test CA
    assert failure is not None and failure.name == "grub" and failure.reason is ReasonCode.SIGNER_NOT_TRUSTED
    varstore = write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", mok_list_certs=(test_ca.ca_pem,))
    decision = decide_boot(varstore, esp)
    assert decision.boots, decision.summary
    expected = f"MokList: {common_name(test_ca.ca_certificate)}"
    assert [c.verified_by for c in decision.components[1:]] == [expected, expected]


def test_grub_with_unreadable_sbat_is_malformed(
    tmp_path: Path, test_ca: TestSigner, test_ca_varstore: Path, test_signed_images: dict[str, Path]
) -> None:
    """A `.sbat` section that is not text stops GRUB with a verdict naming it (not an exception)."""
    section = load_pe_image(GRUB).sections[".sbat"]
    broken = replace_bytes(GRUB, tmp_path / "grub-broken.unsigned", section[:16], b"\xff" * 16)
    grub = sign_with(test_ca, broken, tmp_path / "grub-broken.efi")
    esp = build_esp(
        tmp_path / "esp", shim=test_signed_images["shim"], grub=grub, kernel=test_signed_images["kernel"]
    )
    failure = decide_boot(test_ca_varstore, esp).failure
    assert failure is not None and failure.name == "grub"
    assert failure.reason is ReasonCode.MALFORMED and ".sbat is not text" in failure.detail


def test_kernel_with_revoked_sbat_is_refused(tmp_path: Path) -> None:
    """Shim checks the SBAT of an image it verifies for GRUB when it has a `.sbat`: an image of Debian's
    shim package (signed by Debian's CA, with a `shim` SBAT entry) loaded as the kernel, under an SbatLevel
    requiring the next `shim` generation."""
    signed_with_sbat = Path("/usr/lib/shim/fbx64.efi.signed")
    [entry] = [
        e
        for e in parse_sbat_section(load_pe_image(signed_with_sbat).sections[".sbat"], "fb")
        if e.component == "shim"
    ]
    esp = build_esp(tmp_path / "esp", kernel=signed_with_sbat)
    assert decide_boot(OVMF_VARS_MS, esp).boots
    level = f"sbat,1,2099010100\nshim,{entry.generation + 1}\n"
    decision = decide_boot(write_varstore(OVMF_VARS_MS, tmp_path / "vars.fd", sbat_level=level), esp)
    grub, kernel = decision.components[1:]
    assert grub.accepted
    assert kernel.reason is ReasonCode.SBAT_REVOKED
    assert f"shim generation {entry.generation} < required {entry.generation + 1}" in kernel.detail
