"""`tl eventlog`: replay a TCG event log into PCR values and show its events and boot summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from trustedlaunch.attest.policy import boot_app_components
from trustedlaunch.cli.errors import bad_input
from trustedlaunch.eventlog.describe import boot_app_labels, describe_event
from trustedlaunch.eventlog.model import BootSummary, EventLog, EventLogError
from trustedlaunch.eventlog.parser import parse_event_log_file
from trustedlaunch.eventlog.replay import replay as replay_log
from trustedlaunch.eventlog.summary import summarize

TABLE_DESCRIPTION_LIMIT = 70  # the table's description column; --json gives the full line

eventlog_app = typer.Typer(
    name="eventlog", help="Parse, replay and summarize TCG event logs.", no_args_is_help=True
)


def _load(path: Path) -> EventLog:
    try:
        return parse_event_log_file(path)
    except EventLogError as exc:
        raise bad_input(str(exc)) from None


def _parse_pcr_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        pcrs = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise bad_input(f"--pcr must be a comma-separated list of PCR numbers, got {text!r}") from None
    if any(not 0 <= pcr <= 23 for pcr in pcrs):
        raise bad_input(f"--pcr values must be within 0..23, got {text!r}")
    return pcrs


@eventlog_app.command("replay")
def replay_command(
    file: Path = typer.Argument(..., help="Binary event log (e.g. binary_bios_measurements)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    bank: str | None = typer.Option(None, "--bank", help="Only this bank (sha1, sha256, ...)."),
    pcr: str | None = typer.Option(None, "--pcr", help="Only these PCRs, e.g. 0,7."),
) -> None:
    """Replay the log and print the PCR values it produces, per bank."""
    log = _load(file)
    selected_pcrs = _parse_pcr_list(pcr)
    if bank is not None and bank not in log.banks:
        raise bad_input(f"{file}: the log has no {bank} bank (it has: {', '.join(log.banks)})")
    values = replay_log(log, None if bank is None else [bank])
    banks = {
        name: {
            index: value for index, value in pcrs.items() if selected_pcrs is None or index in selected_pcrs
        }
        for name, pcrs in values.items()
    }
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "format": log.format,
                    "startupLocality": log.startup_locality,
                    "banks": {
                        name: {str(i): v.hex() for i, v in pcrs.items()} for name, pcrs in banks.items()
                    },
                },
                indent=2,
            )
        )
        return
    table = Table(title=f"{file} ({log.format}, {len(log.events)} events)")
    table.add_column("bank")
    table.add_column("PCR", justify="right")
    table.add_column("value", overflow="fold")
    for name, pcrs in banks.items():
        for index, value in pcrs.items():
            table.add_row(name, str(index), value.hex())
    Console().print(table)


def _summary_json(summary: BootSummary) -> dict[str, object]:
    return {
        "secureBoot": summary.secure_boot,
        "variables": {
            name: {
                "sha256": variable.event.digests.get("sha256", b"").hex() or None,
                "size": len(variable.data),
                "certificates": [
                    s.certificate.subject.rfc4514_string() for s in variable.signatures if s.certificate
                ],
                "hashes": sum(1 for s in variable.signatures if not s.is_certificate),
            }
            for name, variable in summary.variables.items()
        },
        "authorities": [
            {
                "name": authority.name,
                "eventIndex": authority.event.index,
                "certificates": [
                    s.certificate.subject.rfc4514_string() for s in authority.signatures if s.certificate
                ],
            }
            for authority in summary.authorities
        ],
        "bootApps": [
            {
                "eventIndex": app.event.index,
                "devicePath": app.device_path,
                "imageSize": app.image_size,
                "digests": {bank: digest.hex() for bank, digest in app.event.digests.items()},
            }
            for app in summary.boot_apps
        ],
        "grubCommands": list(summary.grub_commands),
        "kernelCmdline": summary.kernel_cmdline,
        "separatorsOk": summary.separators_ok,
        "notes": list(summary.notes),
    }


def _print_summary(console: Console, summary: BootSummary) -> None:
    state = {True: "enabled", False: "disabled", None: "unknown"}[summary.secure_boot]
    console.print(f"[bold]Secure Boot:[/bold] {state}")
    for name, variable in summary.variables.items():
        subjects = [s.certificate.subject.rfc4514_string() for s in variable.signatures if s.certificate]
        hashes = sum(1 for s in variable.signatures if not s.is_certificate)
        sha256 = variable.event.digests.get("sha256") or variable.event.digests.get("sha1", b"")
        console.print(
            f"  {name} ({len(variable.data)} bytes, digest {sha256.hex()[:16]}...)", highlight=False
        )
        for subject in subjects:
            console.print(f"    cert: {subject}", highlight=False)
        if hashes:
            console.print(f"    {hashes} hash entries", highlight=False)
    console.print("[bold]Authorities:[/bold]")
    for authority in summary.authorities:
        subjects = [s.certificate.subject.rfc4514_string() for s in authority.signatures if s.certificate]
        text = ", ".join(subjects) if subjects else f"{len(authority.data)} bytes"
        console.print(f"  #{authority.event.index} {authority.name}: {text}", highlight=False)
    console.print("[bold]Boot applications:[/bold]")
    for app in summary.boot_apps:
        digest = app.event.digests.get("sha256") or app.event.digests.get("sha1", b"")
        path = app.device_path or "(no device path: loaded from memory)"
        console.print(f"  #{app.event.index} {path}  {digest.hex()}", highlight=False)
    console.print(f"[bold]GRUB commands:[/bold] {len(summary.grub_commands)}")
    for command in summary.grub_commands:
        console.print(f"  {' '.join(command.split())[:100]}", highlight=False, markup=False)
    console.print(f"[bold]Kernel command line:[/bold] {summary.kernel_cmdline}", highlight=False)
    console.print(f"[bold]Separators OK:[/bold] {summary.separators_ok}")
    for note in summary.notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)


@eventlog_app.command("show")
def show_command(
    file: Path = typer.Argument(..., help="Binary event log (e.g. binary_bios_measurements)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print every event and the boot summary (Secure Boot, keys, boot apps, command lines)."""
    log = _load(file)
    summary = summarize(log)
    boot_apps = boot_app_labels(summary, boot_app_components(summary.boot_apps))
    if as_json:
        events = [
            {
                "index": event.index,
                "offset": event.offset,
                "pcr": event.pcr,
                "type": event.type_name,
                "digests": {bank: digest.hex() for bank, digest in event.digests.items()},
                "description": describe_event(event, boot_apps),
            }
            for event in log.events
        ]
        document = {"format": log.format, "banks": list(log.banks), "events": events}
        typer.echo(json.dumps(document | {"summary": _summary_json(summary)}, indent=2))
        return
    console = Console()
    table = Table(title=f"{file} ({log.format}, banks {', '.join(log.banks)})")
    for column in ("#", "offset", "PCR", "type", "digest", "description"):
        table.add_column(column, no_wrap=column == "type")
    digest_bank = "sha256" if "sha256" in log.banks else log.banks[0]
    for event in log.events:
        digest = event.digests.get(digest_bank) or event.digests.get("sha1", b"")
        table.add_row(
            str(event.index),
            str(event.offset),
            str(event.pcr),
            event.type_name,
            digest.hex()[:16],
            describe_event(event, boot_apps, TABLE_DESCRIPTION_LIMIT),
        )
    console.print(table)
    _print_summary(console, summary)
