"""Reusable builders for Secure Boot tests: test CAs, sbsign signing, ESP trees and edited OVMF varstores.

Everything here drives the real tools (sbsign/sbattach, virt-firmware) on the real Debian/OVMF files.
"""

from __future__ import annotations

import datetime
import glob
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pefile  # type: ignore[import-untyped]
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from virt.firmware.efi import efivar, guids
from virt.firmware.varstore.edk2 import Edk2VarStore

OVMF_VARS_MS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
OVMF_VARS_KEYLESS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
SHIM = Path("/usr/lib/shim/shimx64.efi.signed")
GRUB = Path("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed")
TEST_OWNER = "a0baa8a3-041d-48a8-bc87-c36d121b5e3d"  # OvmfEnrollDefaultKeys


def debian_kernel() -> Path:
    """The installed signed Debian kernel (version globbed, never hard-coded)."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*-amd64"))
    if not kernels:
        raise FileNotFoundError("no /boot/vmlinuz-*-amd64 installed (package linux-image-amd64)")
    return Path(kernels[-1])


@dataclass(frozen=True)
class TestSigner:
    """A code-signing key and certificate, and the CA certificate that issued it (itself if self-signed)."""

    __test__ = False  # a helper, not a pytest test class

    key_pem: Path
    cert_pem: Path
    ca_pem: Path
    certificate: x509.Certificate
    ca_certificate: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _certificate(
    subject: str, issuer: str, public_key: rsa.RSAPublicKey, signing_key: rsa.RSAPrivateKey, is_ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return builder.sign(signing_key, hashes.SHA256())


def make_test_ca(directory: Path, name: str = "trustedlaunch test") -> TestSigner:
    """Generate a CA and a code-signing certificate it issued (PEM files in `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = _certificate(f"{name} CA", f"{name} CA", ca_key.public_key(), ca_key, True)
    leaf = _certificate(f"{name} signer", f"{name} CA", leaf_key.public_key(), ca_key, False)
    return _save(directory, name, leaf_key, leaf, ca)


def make_self_signed(directory: Path, name: str = "untrusted test") -> TestSigner:
    """Generate a self-signed code-signing certificate (trusted by nobody)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = _certificate(name, name, key.public_key(), key, False)
    return _save(directory, name, key, certificate, certificate)


def _save(
    directory: Path, name: str, key: rsa.RSAPrivateKey, leaf: x509.Certificate, ca: x509.Certificate
) -> TestSigner:
    stem = name.replace(" ", "-")
    key_pem, cert_pem, ca_pem = (
        directory / f"{stem}.key",
        directory / f"{stem}.crt",
        directory / f"{stem}-ca.crt",
    )
    _write_key(key, key_pem)
    cert_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return TestSigner(key_pem, cert_pem, ca_pem, leaf, ca)


def strip_signatures(source: Path, output: Path) -> Path:
    """Copy a PE image without its Authenticode signatures (sbattach --remove, repeated until unsigned)."""
    shutil.copyfile(source, output)
    output.chmod(0o644)
    for _ in range(8):
        if not pefile.PE(str(output), fast_load=True).OPTIONAL_HEADER.DATA_DIRECTORY[4].Size:
            return output
        subprocess.run(["sbattach", "--remove", str(output)], check=True, capture_output=True)
    raise RuntimeError(f"{output}: signatures could not be removed")


def sign_with(signer: TestSigner, source: Path, output: Path) -> Path:
    """Replace the image's signatures by one made with sbsign and the test key."""
    unsigned = output.with_name(output.name + ".unsigned")
    strip_signatures(source, unsigned)
    subprocess.run(
        [
            "sbsign",
            "--key",
            str(signer.key_pem),
            "--cert",
            str(signer.cert_pem),
            "--output",
            str(output),
            str(unsigned),
        ],
        check=True,
        capture_output=True,
    )
    unsigned.unlink()
    return output


def build_esp(
    root: Path,
    shim: Path = SHIM,
    grub: Path = GRUB,
    kernel: Path | None = None,
    grub_command: str = "linux",
) -> Path:
    """Lay out an ESP: shim as EFI/BOOT/BOOTX64.EFI, grub beside it, a grub.cfg loading /vmlinuz."""
    (root / "EFI" / "BOOT").mkdir(parents=True, exist_ok=True)
    (root / "EFI" / "debian").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shim, root / "EFI" / "BOOT" / "BOOTX64.EFI")
    shutil.copyfile(grub, root / "EFI" / "BOOT" / "grubx64.efi")
    shutil.copyfile(kernel or debian_kernel(), root / "vmlinuz")
    (root / "EFI" / "debian" / "grub.cfg").write_text(
        "set timeout=0\n"
        'menuentry "Debian GNU/Linux" {\n'
        f"    {grub_command} /vmlinuz root=/dev/vda1 ro console=ttyS0\n"
        "}\n"
    )
    return root


def flip_byte_in_section(image: Path, section: bytes) -> int:
    """Invert one byte in the middle of a section's raw data; returns its file offset."""
    pe = pefile.PE(str(image), fast_load=True)
    target = next(s for s in pe.sections if s.Name.rstrip(b"\0") == section)
    offset = int(target.PointerToRawData + target.SizeOfRawData // 2)
    pe.close()
    data = bytearray(image.read_bytes())
    data[offset] ^= 0xFF
    image.write_bytes(bytes(data))
    return offset


def rename_section(source: Path, output: Path, old: bytes, new: bytes) -> Path:
    """Copy a PE image with the section `old` renamed to `new` (e.g. hide `.sbat`); its signature no longer
    matches (the section table is hashed), so re-sign the copy to use it."""
    pe = pefile.PE(str(source), fast_load=True)
    section = next(s for s in pe.sections if s.Name.rstrip(b"\0") == old)
    offset = section.get_file_offset()  # the 8-byte name opens the section header
    pe.close()
    data = bytearray(source.read_bytes())
    data[offset : offset + 8] = new.ljust(8, b"\0")
    output.write_bytes(bytes(data))
    return output


def replace_bytes(source: Path, output: Path, old: bytes, new: bytes) -> Path:
    """Copy a file with the one occurrence of `old` replaced by `new` (same length)."""
    data = source.read_bytes()
    assert len(old) == len(new) and data.count(old) == 1, "expected exactly one occurrence"
    output.write_bytes(data.replace(old, new))
    return output


def write_varstore(
    source: Path,
    output: Path,
    *,
    platform_cert: Path | None = None,
    db_certs: tuple[Path, ...] = (),
    dbx_hashes: tuple[bytes, ...] = (),
    dbx_certs: tuple[Path, ...] = (),
    mok_list_certs: tuple[Path, ...] = (),
    mok_list_x_hashes: tuple[bytes, ...] = (),
    mok_list_x_certs: tuple[Path, ...] = (),
    sbat_level: str | None = None,
) -> Path:
    """Copy an OVMF varstore with virt-firmware, enrolling PK/KEK, db/dbx entries, shim's MokList and
    MokListX (the machine owner's keys and denylist) and an SbatLevel."""
    store = Edk2VarStore(str(source))
    variables = store.get_varlist()
    if platform_cert is not None:
        variables.enroll_platform_with_cert(str(platform_cert))
        variables.enable_secureboot()
    for cert in db_certs:
        variables.add_cert("db", TEST_OWNER, str(cert))
    for digest in dbx_hashes:
        variables.add_hash("dbx", TEST_OWNER, digest.hex())
    for cert in dbx_certs:
        variables.add_cert("dbx", TEST_OWNER, str(cert))
    for cert in mok_list_certs:
        variables.add_cert("MokList", TEST_OWNER, str(cert))
    for digest in mok_list_x_hashes:
        variables.add_hash("MokListX", TEST_OWNER, digest.hex())
    for cert in mok_list_x_certs:
        variables.add_cert("MokListX", TEST_OWNER, str(cert))
    if sbat_level is not None:
        variable = efivar.EfiVar(
            "SbatLevel",
            guid=guids.Shim,
            attr=efivar.EFI_VARIABLE_NON_VOLATILE | efivar.EFI_VARIABLE_BOOTSERVICE_ACCESS,
            data=sbat_level.encode(),
        )
        variables["SbatLevel"] = variable
    store.write_varstore(str(output), variables)
    return output
