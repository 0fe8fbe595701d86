"""`tl attest gce` on the real GCE attestations: verdicts, exit codes and JSON output."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from trustedlaunch.cli.main import app


def _run(*args: str | Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["attest", "gce", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_verified_attestation_prints_secure_boot_and_boot_apps(testdata: Path) -> None:
    gce = testdata / "go-tpm-tools"
    code, out, _ = _run(
        gce / "attestations" / "gce-cos-85-nonce9009.pb", "--nonce", "9009", "--ca-dir", gce / "ca-certs"
    )
    assert code == 0, out
    assert "attestation verified" in out
    assert "Secure Boot: enabled" in out
    assert out.count("boot app: sha256 ") == 3
    assert "\\EFI\\BOOT\\BOOTX64.EFI" in out


def test_json_output(testdata: Path) -> None:
    gce = testdata / "go-tpm-tools"
    pb = gce / "attestations" / "gce-cos-85-no-nonce.pb"
    code, out, _ = _run(pb, "--nonce", "", "--ca-dir", gce / "ca-certs", "--json")
    assert code == 0
    document = json.loads(out)
    assert document["verdict"] == "ok"
    assert document["secureBoot"] is True
    assert [q["banks"] for q in document["quotes"]] == [["sha1"], ["sha256"], ["sha384"]]
    assert sorted(map(int, document["pcrs"]["sha256"])) == list(range(10))


def test_rejected_attestation_exits_1_with_the_finding(testdata: Path) -> None:
    gce = testdata / "go-tpm-tools"
    pb = gce / "attestations" / "gce-cos-85-nonce9009.pb"
    code, out, err = _run(pb, "--nonce", "9008", "--ca-dir", gce / "ca-certs", "--json")
    assert code == 1
    assert json.loads(out)["finding"]["check"] == "NonceMismatch"
    assert "NonceMismatch" in err
    code, _, err = _run(pb, "--nonce", "9009", "--ca-dir", testdata / "go-tpm-tools" / "secure-boot")
    assert code == 1 and "AkCertificateInvalid" in err


def test_bad_input_exits_2(testdata: Path, tmp_path: Path) -> None:
    gce = testdata / "go-tpm-tools"
    pb = gce / "attestations" / "gce-cos-85-nonce9009.pb"
    code, _, err = _run(pb, "--nonce", "xyz", "--ca-dir", gce / "ca-certs")
    assert code == 2 and "--nonce must be hex" in err
    code, _, err = _run(tmp_path / "missing.pb", "--nonce", "", "--ca-dir", gce / "ca-certs")
    assert code == 2 and "cannot read" in err
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff" * 20)
    code, _, err = _run(garbage, "--nonce", "", "--ca-dir", gce / "ca-certs")
    assert code == 2 and "not a go-tpm-tools Attestation" in err
    code, _, err = _run(pb, "--nonce", "", "--ca-dir", tmp_path)
    assert code == 2 and "no self-signed root" in err
