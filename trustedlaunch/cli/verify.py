"""`tl policy`: derive a node-pool attestation policy from a known-good log, show it, verify evidence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import load_evidence
from trustedlaunch.attest.policy import CmdlineRules, Policy, load_policy
from trustedlaunch.attest.quote import ClockState
from trustedlaunch.attest.verifier import verify
from trustedlaunch.cli.errors import bad_input, hex_option
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.eventlog.parser import parse_event_log_file
from trustedlaunch.eventlog.summary import summarize

policy_app = typer.Typer(
    name="policy",
    help="Attestation policies: derive one from a log, show it, verify evidence.",
    no_args_is_help=True,
)


def _load_policy(path: Path) -> Policy:
    try:
        return load_policy(path)
    except TrustedLaunchError as exc:
        raise bad_input(str(exc)) from None


@policy_app.command("from-log")
def from_log_command(
    log_file: Path = typer.Argument(..., help="Binary event log of a known-good boot."),
    forbid: list[str] = typer.Option(
        [], "--forbid-token", help="Kernel cmdline token to forbid (repeatable)."
    ),
    any_cmdline: bool = typer.Option(False, "--any-cmdline", help="Do not pin the exact kernel cmdline."),
) -> None:
    """Print (JSON) a policy accepting exactly the boot recorded in LOG_FILE."""
    try:
        policy = policy_from_summary(summarize(parse_event_log_file(log_file)))
    except TrustedLaunchError as exc:
        raise bad_input(str(exc)) from None
    rules = CmdlineRules(
        exact=None if any_cmdline else policy.kernel_cmdline.exact, forbidden_tokens=tuple(forbid)
    )
    typer.echo(dataclasses.replace(policy, kernel_cmdline=rules).to_json(), nl=False)


@policy_app.command("show")
def show_command(
    policy_file: Path = typer.Argument(..., help="Policy JSON file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check a policy file and summarise what it enforces."""
    description = _load_policy(policy_file).describe()
    if as_json:
        typer.echo(json.dumps(description, indent=2))
        return
    table = Table(title=str(policy_file), show_header=False)
    for key, value in description.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    Console().print(table)


def _parse_clock(text: str | None) -> ClockState | None:
    if text is None:
        return None
    reset_count, _, clock = text.partition(":")
    if not (reset_count.isdigit() and clock.isdigit()):
        raise bad_input(f"--last-clock must be RESETCOUNT:CLOCK (two integers), got {text!r}")
    return ClockState(int(reset_count), int(clock))


@policy_app.command("verify")
def verify_command(
    evidence_file: Path = typer.Option(..., "--evidence", help="Evidence JSON (akPublic, quote, ...)."),
    nonce: str = typer.Option(..., "--nonce", help="The nonce the node was challenged with, in hex."),
    policy_file: Path = typer.Option(..., "--policy", help="Policy JSON file."),
    last_clock: str | None = typer.Option(None, "--last-clock", help="RESETCOUNT:CLOCK of the last quote."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Verify evidence against a nonce and a policy: exit 0 if it passes, 1 if attestation failed."""
    nonce_bytes = hex_option("--nonce", nonce)
    policy = _load_policy(policy_file)
    clock = _parse_clock(last_clock)
    try:
        evidence = load_evidence(evidence_file)
    except TrustedLaunchError as exc:
        raise bad_input(str(exc)) from None
    result = verify(evidence, nonce=nonce_bytes, policy=policy, last_clock=clock)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    elif result.ok and result.clock is not None:
        clock_text = f"{result.clock.reset_count}:{result.clock.clock}"
        typer.echo(f"attestation passed ({evidence_file}); pass --last-clock {clock_text} next time")
    else:
        typer.echo(f"attestation failed ({evidence_file}):", err=True)
        for finding in result.findings:
            typer.echo(f"  {finding}", err=True)
    if not result.ok:
        raise typer.Exit(1)
