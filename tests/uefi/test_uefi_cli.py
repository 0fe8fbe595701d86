"""`tl image verify` through Typer's CliRunner, on real ESPs and varstores."""

from __future__ import annotations

import json
from pathlib import Path

from esp_helpers import OVMF_VARS_KEYLESS, OVMF_VARS_MS, build_esp, debian_kernel, strip_signatures
from typer.testing import CliRunner

from trustedlaunch.cli.main import app
from trustedlaunch.uefi.authenticode import load_pe_image


def test_verify_boots_exit_0_with_table(debian_esp: Path) -> None:
    result = CliRunner().invoke(
        app, ["image", "verify", "--vars", str(OVMF_VARS_MS), "--esp", str(debian_esp)]
    )
    assert result.exit_code == 0, result.output
    assert "boots: every stage is signed" in result.stdout
    for name in ("shim", "grub", "kernel"):
        assert name in result.stdout


def test_verify_json_lists_components(debian_esp: Path) -> None:
    result = CliRunner().invoke(
        app, ["image", "verify", "--vars", str(OVMF_VARS_KEYLESS), "--esp", str(debian_esp), "--json"]
    )
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert decision["boots"] is True and decision["secureBoot"] is False
    kernel = decision["components"][2]
    assert kernel["path"] == "vmlinuz"
    assert kernel["sha256"] == load_pe_image(debian_kernel()).sha256.hex()


def test_verify_does_not_boot_exit_1_names_component(tmp_path: Path) -> None:
    esp = build_esp(tmp_path / "esp", kernel=strip_signatures(debian_kernel(), tmp_path / "unsigned"))
    runner = CliRunner()
    result = runner.invoke(app, ["image", "verify", "--vars", str(OVMF_VARS_MS), "--esp", str(esp)])
    assert result.exit_code == 1
    assert "does not boot: kernel (vmlinuz)" in result.stderr
    assert "NotSigned" in result.stderr

    result = runner.invoke(app, ["image", "verify", "--vars", str(OVMF_VARS_MS), "--esp", str(esp), "--json"])
    assert result.exit_code == 1
    decision = json.loads(result.stdout)
    assert (decision["failedComponent"], decision["reason"]) == ("kernel", "NotSigned")


def test_verify_bad_input_exit_2(tmp_path: Path, debian_esp: Path) -> None:
    garbage = tmp_path / "vars.fd"
    garbage.write_bytes(b"not a varstore" * 100)
    result = CliRunner().invoke(app, ["image", "verify", "--vars", str(garbage), "--esp", str(debian_esp)])
    assert result.exit_code == 2
    assert "not a UEFI varstore" in result.stderr
    assert "Traceback" not in result.output


def test_verify_table_fits_80_and_160_columns_without_splitting_words(tmp_path: Path) -> None:
    esp = build_esp(tmp_path / "esp", kernel=strip_signatures(debian_kernel(), tmp_path / "unsigned"))
    for columns in (80, 160):
        result = CliRunner().invoke(
            app,
            ["image", "verify", "--vars", str(OVMF_VARS_MS), "--esp", str(esp)],
            env={"COLUMNS": str(columns)},
        )
        assert result.exit_code == 1
        lines = result.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns, result.stdout
        words = result.stdout.split()
        for word in ("NotSigned", "EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "vmlinuz", "Microsoft"):
            assert word in words, result.stdout  # whole, never folded ("SignerNotTr usted", "BOOTX64.E FI")
