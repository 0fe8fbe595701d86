"""`tl attest`: verify attestation evidence from other platforms (GCE Shielded/Confidential VMs)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import typer
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from trustedlaunch.attest.gce import (
    GceFormatError,
    GceVerification,
    load_certificates,
    verify_gce_attestation,
)
from trustedlaunch.cli.errors import bad_input, hex_option
from trustedlaunch.eventlog.model import BootSummary
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.findings import AttestationError

attest_app = typer.Typer(name="attest", help="Verify remote-attestation evidence.", no_args_is_help=True)

_CERTIFICATE_SUFFIXES = {".crt", ".cer", ".pem", ".der"}


def _is_self_signed(certificate: x509.Certificate) -> bool:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Attribute's length", category=UserWarning)
        if certificate.subject != certificate.issuer:
            return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _load_trust(ca_dir: Path) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Self-signed certificates of the directory are roots, the others intermediates."""
    if not ca_dir.is_dir():
        raise bad_input(f"--ca-dir {ca_dir}: not a directory")
    paths = sorted(p for p in ca_dir.iterdir() if p.suffix.lower() in _CERTIFICATE_SUFFIXES)
    try:
        certificates = load_certificates(paths)
    except GceFormatError as exc:
        raise bad_input(str(exc)) from None
    roots = [c for c in certificates if _is_self_signed(c)]
    if not roots:
        raise bad_input(f"--ca-dir {ca_dir}: no self-signed root certificate (*.crt, *.cer, *.pem, *.der)")
    return roots, [c for c in certificates if not _is_self_signed(c)]


def _summary_dict(summary: BootSummary) -> dict[str, object]:
    return {
        "secureBoot": summary.secure_boot,
        "bootApps": [
            {"path": app.device_path, "sha256": app.digest().hex() if "sha256" in app.event.digests else None}
            for app in summary.boot_apps
        ],
        "kernelCmdline": summary.kernel_cmdline,
    }


def _result_dict(result: GceVerification, summary: BootSummary) -> dict[str, object]:
    return {
        "verdict": "ok",
        "akCertificate": {
            "serial": format(result.ak_certificate.serial_number, "x"),
            "notAfter": result.ak_certificate.not_valid_after_utc.isoformat(),
        },
        "quotes": [
            {"banks": sorted(q.selected), "resetCount": q.clock.reset_count, "clock": q.clock.clock}
            for q in result.quotes.quotes
        ],
        "pcrs": {
            bank: {str(i): v.hex() for i, v in values.items()}
            for bank, values in result.replayed_pcrs.items()
        },
        **_summary_dict(summary),
    }


@attest_app.command("gce")
def gce_command(
    attestation_file: Path = typer.Argument(..., help="go-tpm-tools Attestation protobuf (.pb)."),
    nonce: str = typer.Option(
        ..., "--nonce", help="The nonce the VM was challenged with, in hex ('' for none)."
    ),
    ca_dir: Path = typer.Option(
        ..., "--ca-dir", help="Directory of trusted AK CA certificates (roots + intermediates)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Verify a GCE attestation: exit 0 if it verifies, 1 if it is rejected, 2 for bad input."""
    nonce_bytes = hex_option("--nonce", nonce)
    try:
        data = attestation_file.read_bytes()
    except OSError as exc:
        raise bad_input(f"{attestation_file}: cannot read ({exc.strerror})") from None
    roots, intermediates = _load_trust(ca_dir)
    try:
        result = verify_gce_attestation(data, nonce_bytes, roots, intermediates)
    except GceFormatError as exc:
        raise bad_input(f"{attestation_file}: {exc}") from None
    except AttestationError as exc:
        if as_json:
            typer.echo(json.dumps({"verdict": "rejected", "finding": exc.finding.to_dict()}, indent=2))
        typer.echo(f"attestation rejected ({attestation_file}): {exc.finding}", err=True)
        raise typer.Exit(1) from None
    summary = summarize(result.event_log)
    if as_json:
        typer.echo(json.dumps(_result_dict(result, summary), indent=2))
        return
    banks = ", ".join(bank for q in result.quotes.quotes for bank in sorted(q.selected))
    typer.echo(f"attestation verified ({attestation_file}): AK certificate chains to a trusted root")
    typer.echo(
        f"  quotes: {banks}; event log replays to the quoted PCRs {sorted(result.replayed_pcrs['sha256'])}"
    )
    state = {True: "enabled", False: "disabled", None: "unknown (no SecureBoot variable)"}[
        summary.secure_boot
    ]
    typer.echo(f"  Secure Boot: {state}")
    for app in summary.boot_apps:
        digest = app.digest().hex() if "sha256" in app.event.digests else "(no sha256 digest)"
        typer.echo(f"  boot app: sha256 {digest} {app.device_path or '(no device path)'}")
    if summary.kernel_cmdline:
        typer.echo(f"  kernel command line: {summary.kernel_cmdline}")
