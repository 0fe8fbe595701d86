"""`tl eventlog` CLI tests on real logs."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from trustedlaunch.cli.main import app
from trustedlaunch.web.evidence import build_evidence_view

RUNNER = CliRunner()


def test_replay_json_gives_expected_go_tpm_tools_pcrs(testdata: Path) -> None:
    expected = json.loads((testdata / "go-tpm-tools" / "expected_pcrs.json").read_text())[
        "GlinuxNoSecureBootLaptop"
    ]
    log = testdata / "go-tpm-tools" / expected["file"]
    result = RUNNER.invoke(
        app, ["eventlog", "replay", str(log), "--json", "--bank", "sha256", "--pcr", "0,7"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["format"] == "crypto-agile"
    assert document["banks"] == {"sha256": {pcr: expected["pcrs"]["sha256"][pcr] for pcr in ("0", "7")}}


def test_replay_table_lists_pcrs(testdata: Path) -> None:
    result = RUNNER.invoke(app, ["eventlog", "replay", str(testdata / "tpm2-tools/event-uefivar.bin")])
    assert result.exit_code == 0, result.output
    assert "sha256" in result.stdout and "7" in result.stdout


def test_replay_unknown_bank_is_bad_input(testdata: Path) -> None:
    result = RUNNER.invoke(
        app, ["eventlog", "replay", str(testdata / "go-tpm-tools/eventlogs/gdc-host.bin"), "--bank", "sha1"]
    )
    assert result.exit_code == 2
    assert "no sha1 bank" in result.stderr


def test_malformed_file_exits_2_with_offset_on_stderr(testdata: Path) -> None:
    result = RUNNER.invoke(
        app, ["eventlog", "show", str(testdata / "keylime/binary_bios_measurements-bogus")]
    )
    assert result.exit_code == 2
    assert "byte offset 0" in result.stderr
    assert result.stdout == ""


def test_show_json_lists_events_and_summary(testdata: Path) -> None:
    result = RUNNER.invoke(
        app, ["eventlog", "show", str(testdata / "go-tpm-tools/eventlogs/debian-10.bin"), "--json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["format"] == "sha1"
    assert len(document["events"]) == 25
    assert document["events"][0]["type"] == "EV_S_CRTM_VERSION"
    summary = document["summary"]
    assert summary["secureBoot"] is True
    assert [a["name"] for a in summary["authorities"]] == ["db", "Shim"]
    assert summary["bootApps"][0]["devicePath"].endswith("\\EFI\\BOOT\\BOOTX64.EFI")


def test_show_table_prints_summary(testdata: Path) -> None:
    result = RUNNER.invoke(
        app, ["eventlog", "show", str(testdata / "go-tpm-tools/eventlogs/arch-linux-workstation.bin")]
    )
    assert result.exit_code == 0, result.output
    assert "Secure Boot: unknown" in result.stdout
    assert "EV_EFI_VARIABLE_DRIVER_CONFIG" in result.stdout


def test_show_describes_events_as_the_dashboard_does(testdata: Path) -> None:
    log = testdata / "go-tpm-tools/eventlogs/debian-10.bin"
    result = RUNNER.invoke(app, ["eventlog", "show", str(log), "--json"])
    assert result.exit_code == 0, result.output
    described = {event["index"]: event["description"] for event in json.loads(result.stdout)["events"]}
    view = build_evidence_view(log.read_bytes(), [])
    assert described == {row.index: row.description for row in view.rows}
    assert described[2] == "SecureBoot = enabled"
    assert any(text.startswith("shim: ") and text.endswith("BOOTX64.EFI") for text in described.values())
