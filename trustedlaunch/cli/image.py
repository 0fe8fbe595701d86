"""`tl image`: check a boot image (ESP + OVMF varstore) against Secure Boot as firmware and shim do."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.text import Text

from trustedlaunch.cli.errors import bad_input
from trustedlaunch.cli.output import Column, print_table
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.uefi.secureboot import BootDecision, decide_boot

app = typer.Typer(
    name="image", help="Verify boot images (ESP + UEFI varstore) for Secure Boot.", no_args_is_help=True
)


@app.command()
def verify(
    vars_file: Path = typer.Option(..., "--vars", help="OVMF varstore (e.g. OVMF_VARS_4M.ms.fd)."),
    esp: Path = typer.Option(..., "--esp", help="Root directory of the EFI system partition."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Decide whether the ESP boots with this varstore: exit 0 boots, 1 does not boot, 2 bad input."""
    try:
        decision = decide_boot(vars_file, esp)
    except TrustedLaunchError as exc:
        raise bad_input(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(decision.to_dict(), indent=2))
    else:
        _print_decision(decision)
    if not decision.boots:
        if as_json:
            typer.echo(decision.summary, err=True)
        raise typer.Exit(1)


# Most important first when the terminal is narrow (cli/output.py): no word is ever split.
DECISION_COLUMNS = (
    Column("component", priority=0),
    Column("path", priority=2),
    Column("sha256 (Authenticode)", priority=6),
    Column("signer", prose=True, priority=3),
    Column("verified by", prose=True, priority=4),
    Column("SBAT", prose=True, priority=5),
    Column("status", priority=1),
)


def _print_decision(decision: BootDecision) -> None:
    failure = decision.failure
    reached = True
    rows = []
    for component in decision.components:
        if not reached:
            status = Text("not reached")
        elif component.accepted:
            status = Text("ok", style="green")
        else:
            status = Text(str(component.reason), style="red")
        rows.append(
            [
                component.name,
                component.path,
                f"{component.sha256.hex()[:16]}…" if component.sha256 else "-",
                _common_name(component.signer_subject),
                component.verified_by or "-",
                " ".join(str(entry) for entry in component.sbat) or "-",
                status,
            ]
        )
        reached = reached and component is not failure
    print_table(
        DECISION_COLUMNS, rows, title=f"Boot chain (Secure Boot {'on' if decision.secure_boot else 'off'})"
    )
    for note in decision.notes:
        typer.echo(f"note: {note}")
    if decision.sbat_level is not None:
        level = ", ".join(f"{name}>={gen}" for name, gen in decision.sbat_level.minimum_generations.items())
        typer.echo(f"SbatLevel enforced by shim: {level}")
    typer.echo(decision.summary, err=failure is not None)


def _common_name(subject: str | None) -> str:
    """The CN of an RFC 4514 subject (the whole subject when it has none), for a narrow table."""
    if subject is None:
        return "-"
    match = re.search(r"CN=((?:[^,\\]|\\.)+)", subject)
    return match.group(1) if match else subject
