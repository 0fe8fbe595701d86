"""`tl policy from-log / show / verify` on real logs and real swtpm evidence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustedlaunch.attest.evidence import collect_evidence, extend_event_log
from trustedlaunch.attest.policy import Policy
from trustedlaunch.cli.main import app
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.tpm.swtpm import Swtpm

OVMF_SHIM = "qemu-ovmf/shim_evlog.bin"
NONCE = "feedface01020304"


@pytest.fixture(scope="module")
def files(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """A policy derived by `tl policy from-log` and swtpm evidence for the same real OVMF boot."""
    work = tmp_path_factory.mktemp("cli")
    log_path = testdata / OVMF_SHIM
    raw_log = log_path.read_bytes()
    derived = CliRunner().invoke(app, ["policy", "from-log", str(log_path), "--forbid-token", "init="])
    assert derived.exit_code == 0, derived.stderr
    (work / "policy.json").write_text(derived.stdout)
    with Swtpm() as tpm:
        extend_event_log(tpm, parse_event_log(raw_log), banks=("sha256",))
        evidence = collect_evidence(
            tpm, raw_log, nonce=bytes.fromhex(NONCE), pcrs=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14), workdir=work
        )
    (work / "evidence.json").write_text(evidence.to_json())
    yield {"log": log_path, "policy": work / "policy.json", "evidence": work / "evidence.json", "dir": work}


def test_from_log_prints_a_loadable_policy(files: dict[str, Path]) -> None:
    policy = Policy.from_json(files["policy"].read_text())
    assert policy.secure_boot is True
    assert policy.boot_applications is not None
    assert [s.component for s in policy.boot_applications] == ["shim", "grub", "kernel", "kernel"]
    assert policy.kernel_cmdline.forbidden_tokens == ("init=",)
    assert policy.kernel_cmdline.exact is not None and "console=ttyS0" in policy.kernel_cmdline.exact


def test_verify_passes_and_fails(files: dict[str, Path]) -> None:
    args = ["policy", "verify", "--evidence", str(files["evidence"]), "--policy", str(files["policy"])]
    passed = CliRunner().invoke(app, [*args, "--nonce", NONCE])
    assert passed.exit_code == 0, passed.stderr
    assert "attestation passed" in passed.stdout and "--last-clock" in passed.stdout

    as_json = CliRunner().invoke(app, [*args, "--nonce", NONCE, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["ok"] is True

    failed = CliRunner().invoke(app, [*args, "--nonce", "00" * 8])
    assert failed.exit_code == 1
    assert "attestation failed" in failed.stderr and "NonceMismatch (quote)" in failed.stderr

    failed_json = CliRunner().invoke(app, [*args, "--nonce", "00" * 8, "--json"])
    assert failed_json.exit_code == 1
    assert json.loads(failed_json.stdout)["findings"][0]["check"] == "NonceMismatch"


def test_bad_input_exits_2_with_an_operator_message(files: dict[str, Path]) -> None:
    bad_policy = files["dir"] / "bad-policy.json"
    bad_policy.write_text(json.dumps({"secureBoot": "on"}))
    base = ["policy", "verify", "--evidence", str(files["evidence"]), "--nonce", NONCE]
    result = CliRunner().invoke(app, [*base, "--policy", str(bad_policy)])
    assert result.exit_code == 2 and "field 'secureBoot'" in result.stderr

    result = CliRunner().invoke(app, [*base, "--policy", str(files["policy"]), "--last-clock", "x"])
    assert result.exit_code == 2 and "--last-clock must be RESETCOUNT:CLOCK" in result.stderr

    result = CliRunner().invoke(
        app,
        [
            "policy",
            "verify",
            "--evidence",
            str(files["log"]),
            "--nonce",
            NONCE,
            "--policy",
            str(files["policy"]),
        ],
    )
    assert result.exit_code == 2 and "not a valid JSON document" in result.stderr

    result = CliRunner().invoke(app, ["policy", "from-log", str(files["policy"])])
    assert result.exit_code == 2 and "ERROR:" in result.stderr


def test_show_describes_the_policy(files: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["policy", "show", str(files["policy"]), "--json"])
    assert result.exit_code == 0
    description = json.loads(result.stdout)
    assert description["secureBoot"] == "must be enabled"
    assert description["bootChain"][0] == "shim (1 digest(s))"
