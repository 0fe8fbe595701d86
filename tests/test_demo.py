"""`tl demo` (what `make demo` runs) completes and shows each verdict it promises."""

from typer.testing import CliRunner

from trustedlaunch.cli.main import app


def test_demo_runs_end_to_end_with_real_components() -> None:
    result = CliRunner().invoke(app, ["demo"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    output = result.output
    assert "boots: every stage is signed by a trusted authority" in output
    assert "does not boot: kernel (vmlinuz): the image carries no Authenticode signature" in output
    assert "= shim of the node image" in output and "= kernel of the node image" in output
    assert "PASS fresh quote, policy pinned to the node image" in output
    assert "NonceMismatch (quote)" in output
    assert "BootApplicationNotAllowed (kernel, PCR4" in output
    assert "verified go-tpm-tools/attestations/gce-cos-85-nonce9009.pb" in output
    assert "demo complete" in output
