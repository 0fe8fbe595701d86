"""Inputs on which fuzzing crashed a parser (fuzz/run.py), kept as regression tests: each now gets the
parser's own operator error, or is accepted with the bad part left out."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fuzz_targets import TARGETS

from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.uefi.authenticode import load_pe_image
from trustedlaunch.uefi.sbat import SbatError, parse_sbat_level
from trustedlaunch.uefi.siglist import EFI_CERT_X509, SignatureListError, parse_signature_lists
from trustedlaunch.uefi.varstore import VarStoreError, read_varstore

REGRESSIONS = Path(__file__).parent / "regressions"


def test_x509_entry_with_an_invalid_version_is_kept_as_data() -> None:
    # cryptography raises x509.InvalidVersion (not a ValueError) for a certificate of version 4
    data = (REGRESSIONS / "siglist-x509-invalid-version.bin").read_bytes()
    entries = parse_signature_lists(data, "fuzz")
    x509_entries = [entry for entry in entries if entry.signature_type == EFI_CERT_X509]
    assert x509_entries and all(entry.certificate is None for entry in x509_entries)


def test_event_log_db_with_an_invalid_version_certificate_is_summarized() -> None:
    # a real log whose db variable data was mutated into a certificate of version 18 (crashed summarize)
    log = parse_event_log((REGRESSIONS / "eventlog-db-x509-invalid-version.bin").read_bytes())
    summary = summarize(log)
    assert "db" in summary.variables


@pytest.mark.parametrize("generation", ["\x1f0", "²", "1_0", "٣"])
def test_sbat_generation_must_be_ascii_digits(generation: str) -> None:
    # int() accepts these (control-character whitespace, superscripts, underscores, Arabic digits)
    with pytest.raises(SbatError, match=r"line 2: generation .* is not a decimal number"):
        parse_sbat_level(f"sbat,1,2024010900\ngrub,{generation}\n", "fuzz")


def test_sbat_level_regression_input_gets_an_sbat_error() -> None:
    data = (REGRESSIONS / "sbat-level-control-char-generation.bin").read_bytes()
    assert data == b"\x01sbat,\x1f0\x00"  # selector 1: parse_sbat_level("sbat,\x1f0")
    with pytest.raises(SbatError, match=r"generation '\\x1f0' is not a decimal number"):
        TARGETS["sbat"].run(data)


def test_pe_without_a_certificate_table_directory_is_unsigned(tmp_path: Path) -> None:
    # efitools' SetNull.efi with NumberOfRvaAndSizes = 4: the security directory (index 4) is absent
    image_path = shutil.copyfile(REGRESSIONS / "pe-no-certificate-directory.efi", tmp_path / "short.efi")
    image = load_pe_image(image_path)
    assert image.signatures == ()
    assert len(image.sha256) == 32


def test_varstore_with_an_empty_signature_list_is_a_varstore_error(tmp_path: Path) -> None:
    # virt-firmware raised RuntimeError("signature list is empty") for a db holding a bare list header
    path = shutil.copyfile(REGRESSIONS / "varstore-empty-signature-list.json", tmp_path / "vars.json")
    with pytest.raises(VarStoreError, match=r"vars\.json: .*RuntimeError: signature list is empty"):
        read_varstore(path)


@pytest.mark.parametrize("path", sorted(REGRESSIONS.iterdir()), ids=lambda p: p.name)
def test_every_regression_input_is_handled_by_its_target(path: Path) -> None:
    target = TARGETS[path.name.split("-", 1)[0]]
    target.check(path.read_bytes())  # raises if anything but the target's own error escapes


@pytest.mark.timeout(10)
def test_varstore_signature_list_of_zero_size_entries_does_not_hang(tmp_path: Path) -> None:
    # virt-firmware looped forever on a db whose EFI_SIGNATURE_LIST has SignatureSize 0 (fuzzing: a hang)
    path = shutil.copyfile(REGRESSIONS / "varstore-zero-signature-size.json", tmp_path / "vars.json")
    with pytest.raises(SignatureListError, match=r"vars\.json, variable db: .*signature size 0"):
        read_varstore(path)
