"""Boot summary tests: values checked against upstream certificates, expectations and measured digests."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
from cryptography import x509
from eventlog_files import ALL_LOGS

from trustedlaunch.eventlog.devicepath import format_device_path
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.eventlog.types import EV_SEPARATOR


def _summary(testdata: Path, name: str):  # type: ignore[no-untyped-def]
    return summarize(parse_event_log((testdata / name).read_bytes()))


def _certificate(path: Path) -> x509.Certificate:
    raw = path.read_bytes()
    return (
        x509.load_pem_x509_certificate(raw)
        if raw.startswith(b"-----")
        else x509.load_der_x509_certificate(raw)
    )


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("name", ALL_LOGS)
def test_every_shared_log_summarizes(testdata: Path, name: str) -> None:
    summary = _summary(testdata, name)
    assert summary.secure_boot in (True, False, None)
    if summary.secure_boot is None:
        assert any("Secure Boot state unknown" in note for note in summary.notes)


def test_zero_length_secure_boot_variable_gives_unknown_state_with_a_note(testdata: Path) -> None:
    summary = _summary(testdata, "go-tpm-tools/eventlogs/arch-linux-workstation.bin")
    assert summary.secure_boot is None
    assert summary.variables["SecureBoot"].data == b""
    assert any("SecureBoot variable" in note and "empty" in note for note in summary.notes)


@pytest.mark.parametrize(
    ("name", "enabled"),
    [
        ("go-tpm-tools/eventlogs/rhel8-uefi.bin", True),
        ("go-tpm-tools/eventlogs/debian-10.bin", True),
        ("go-tpm-tools/eventlogs/ubuntu-1804-amd-sev.bin", False),  # the variable says 0 (see ORIGIN.md)
        ("go-tpm-tools/eventlogs/ubuntu-2104-no-secure-boot.bin", False),
        ("go-attestation/windows_gcp_shielded_vm.eventlog.bin", True),
        ("keylime/binary_bios_measurements-secureboot", True),
        ("keylime/binary_bios_measurements", False),
    ],
)
def test_secure_boot_state(testdata: Path, name: str, enabled: bool) -> None:
    assert _summary(testdata, name).secure_boot is enabled


def test_ubuntu_1804_key_databases_are_the_gce_and_microsoft_certificates(testdata: Path) -> None:
    summary = _summary(testdata, "go-tpm-tools/eventlogs/ubuntu-1804-amd-sev.bin")
    certs = testdata / "go-tpm-tools" / "secure-boot"

    def loaded(name: str) -> list[x509.Certificate]:
        return [entry.certificate for entry in summary.variables[name].signatures if entry.certificate]

    assert loaded("PK") == [_certificate(certs / "GcePk.crt")]
    assert loaded("KEK") == [_certificate(certs / "MicCorKEKCA2011_2011-06-24.crt")]
    assert set(loaded("db")) == {
        _certificate(certs / "MicWinProPCA2011_2011-10-19.crt"),
        _certificate(certs / "MicCorUEFCA2011_2011-06-27.crt"),
    }
    assert summary.variables["dbx"].signatures  # hashes, not certificates
    assert not any(entry.is_certificate for entry in summary.variables["dbx"].signatures)


def test_ubuntu_2104_no_dbx_has_an_empty_dbx(testdata: Path) -> None:
    summary = _summary(testdata, "go-tpm-tools/eventlogs/ubuntu-2104-no-dbx.bin")
    assert summary.variables["dbx"].signatures == ()


def test_authorities_name_the_db_and_shim_certificates(testdata: Path) -> None:
    summary = _summary(testdata, "go-attestation/sb_cert_eventlog")
    assert [authority.name for authority in summary.authorities] == ["db", "Shim", "Shim"]
    uefi_ca = _certificate(testdata / "go-tpm-tools/secure-boot/MicCorUEFCA2011_2011-06-27.crt")
    assert summary.authorities[0].signatures[0].certificate == uefi_ca
    shim_cert = summary.authorities[1].signatures[0].certificate
    assert shim_cert is not None
    assert "Canonical Ltd. Master Certificate Authority" in shim_cert.subject.rfc4514_string()


def _expected_go_tpm_tools(testdata: Path) -> dict[str, dict[str, object]]:
    return json.loads((testdata / "go-tpm-tools" / "expected_pcrs.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize(
    "case",
    # GdcHost is left out: none of its EV_EFI_BOOT_SERVICES_APPLICATION digests is in its extracted list.
    ["Rhel8GCE", "UbuntuAmdSevGCE", "Ubuntu2404AmdSevSnp", "Debian10GCE", "COS85AmdSev", "COS101AmdSev"],
)
def test_boot_app_digests_match_go_tpm_tools_efi_app_digests(testdata: Path, case: str) -> None:
    expected = _expected_go_tpm_tools(testdata)[case]
    summary = _summary(testdata, f"go-tpm-tools/{expected['file']}")
    app_digests: dict[str, list[str]] = expected["efi_app_digests"]  # type: ignore[assignment]
    for bank, digests in app_digests.items():
        if bank in summary.boot_apps[0].event.digests:
            assert [app.digest(bank).hex() for app in summary.boot_apps] == digests


def test_boot_app_device_paths(testdata: Path) -> None:
    debian = _summary(testdata, "go-tpm-tools/eventlogs/debian-10.bin").boot_apps[0]
    assert debian.device_path.startswith("PciRoot(0x0)/Pci(0x3,0x0)/Scsi(0x1,0x0)/HD(15,GPT,")
    assert debian.device_path.endswith("/\\EFI\\BOOT\\BOOTX64.EFI")
    assert debian.image_size == 1322936
    firmware_app = _summary(testdata, "keylime/binary_bios_measurements").boot_apps[0]
    assert firmware_app.device_path == (
        "Fv(8FC151AE-C96F-4BC9-8C33-107992C7735B)/FvFile(821ACA26-29EA-4993-839F-597FC021708D)"
    )


def test_grub_kernel_cmdline_hashes_to_its_measured_digest(testdata: Path) -> None:
    log = parse_event_log((testdata / "go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin").read_bytes())
    summary = summarize(log)
    assert summary.kernel_cmdline == (
        "/vmlinuz-6.8.0-1010-gcp root=PARTUUID=8270f3c9-b4e4-4345-80ee-5a62db7ebf3f ro "
        "console=ttyS0,115200 panic=-1"
    )
    (event,) = [e for e in log.events if e.data.startswith(b"kernel_cmdline: ")]
    # GRUB measures the command line without its "kernel_cmdline: " prefix and NUL terminator.
    assert hashlib.sha256(summary.kernel_cmdline.encode()).digest() == event.digests["sha256"]
    commands = [e for e in log.events if e.data.startswith(b"grub_cmd: ")]
    assert len(summary.grub_commands) == len(commands) == 70
    for command, command_event in zip(summary.grub_commands, commands, strict=True):
        assert hashlib.sha256(command.encode()).digest() == command_event.digests["sha256"]


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("go-tpm-tools/eventlogs/ubuntu-2404-amd-sevsnp.bin", b"kernel_cmdline: "),
        ("go-tpm-tools/eventlogs/rhel8-uefi.bin", b"grub_kernel_cmdline "),  # RHEL's GRUB wording
    ],
)
def test_kernel_cmdline_event_is_the_measured_command_line(testdata: Path, name: str, prefix: bytes) -> None:
    log = parse_event_log((testdata / name).read_bytes())
    summary = summarize(log)
    event = summary.kernel_cmdline_event
    assert event is not None and summary.kernel_cmdline is not None
    assert event.pcr == 8 and event.data.startswith(prefix)
    assert hashlib.sha256(summary.kernel_cmdline.encode()).digest() == event.digests["sha256"]


def test_cos_kernel_cmdline_comes_from_grub(testdata: Path) -> None:
    summary = _summary(testdata, "go-tpm-tools/eventlogs/cos-101-amd-sev.bin")
    assert summary.kernel_cmdline is not None
    assert summary.kernel_cmdline.startswith("/syslinux/vmlinuz.A init=/usr/lib/systemd/systemd boot=local")


def test_systemd_stub_utf16_cmdline_from_pcr12(testdata: Path) -> None:
    log = parse_event_log((testdata / "tpm2-tools/event-sd-boot-fedora37.bin").read_bytes())
    summary = summarize(log)
    assert summary.kernel_cmdline == "console=ttyS0 console=tty0 efi=debug"
    (first, *_) = [e for e in log.events if e.pcr == 12]
    assert hashlib.sha256(first.data).digest() == first.digests["sha256"]  # systemd measures the UTF-16 text


def test_windows_wbcl_separators_are_normal(testdata: Path) -> None:
    summary = _summary(testdata, "go-attestation/windows_gcp_shielded_vm.eventlog.bin")
    assert summary.separators_ok
    assert summary.notes == ()


@pytest.mark.parametrize(("value", "ok"), [(b"\x01\x00\x00\x00", False), (b"\xff\xff\xff\xff", True)])
def test_separator_values(testdata: Path, value: bytes, ok: bool) -> None:
    data = bytearray((testdata / "go-tpm-tools/eventlogs/debian-10.bin").read_bytes())
    separator = next(e for e in parse_event_log(bytes(data)).events if e.event_type == EV_SEPARATOR)
    data[separator.offset + 32 : separator.offset + 36] = value
    summary = summarize(parse_event_log(bytes(data)))
    assert summary.separators_ok is ok
    assert any(f"PCR{separator.pcr}" in note and f"#{separator.index}" in note for note in summary.notes)


def _node(node_type: int, subtype: int, body: bytes) -> bytes:
    return struct.pack("<BBH", node_type, subtype, 4 + len(body)) + body


END = _node(0x7F, 0xFF, b"")


def test_device_path_nodes() -> None:
    mac = _node(3, 11, bytes.fromhex("525400123456") + bytes(26) + b"\x01")
    ipv4 = _node(3, 12, bytes([10, 0, 0, 2, 10, 0, 0, 1]) + struct.pack("<HHHB", 0, 69, 17, 0) + bytes(8))
    uri = _node(3, 24, b"http://boot/x.efi")
    assert format_device_path(_node(2, 1, struct.pack("<II", 0x0A0341D0, 0)) + mac + ipv4 + uri + END) == (
        "PciRoot(0x0)/MAC(525400123456,0x1)/IPv4(10.0.0.1,UDP,DHCP,10.0.0.2)/Uri(http://boot/x.efi)"
    )
    memmap = _node(1, 3, struct.pack("<IQQ", 11, 0xFF000000, 0xFFFFFFFF))
    offset = _node(4, 8, struct.pack("<IQQ", 0, 0x1000, 0x1FFF))
    assert format_device_path(memmap + offset + END) == (
        "MemoryMapped(EfiMemoryMappedIO,0xFF000000,0xFFFFFFFF)/Offset(0x1000,0x1FFF)"
    )
    assert format_device_path(_node(9, 2, b"\xab\xcd") + END) == "Path(9,2,ABCD)"
    assert format_device_path(_node(4, 4, "\\EFI\\a.efi\x00".encode("utf-16-le")) + END) == "\\EFI\\a.efi"


def test_malformed_device_path_is_shown_not_raised() -> None:
    assert format_device_path(struct.pack("<BBH", 4, 4, 200) + b"xx").startswith("Malformed(")
    assert format_device_path(struct.pack("<BBH", 4, 4, 2)) == "Malformed(node at byte 0 declares length 2)"
