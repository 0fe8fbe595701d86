"""Waiting on an on-demand attestation of a node pool (`tl aks nodepool attest`) and printing attestation
records (`tl aks machine attestation ...`)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console

from trustedlaunch.cli.arm import POLL_SECONDS, ArmClient, fail, segment

ATTESTATION_COLUMNS = ("Machine", "Id", "Time", "Trigger", "Status", "SecureBoot", "Findings")


def _moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def attestation_row(record: dict[str, Any]) -> list[object]:
    """A table row of an attestation record."""
    props = record["properties"]
    findings = "; ".join(str(finding.get("message", "")) for finding in props.get("findings") or [])
    return [
        props["machineName"],
        record["name"],
        props["time"],
        props["trigger"],
        props["status"],
        props.get("secureBoot"),
        findings,
    ]


def wait_for_attestation(
    client: ArmClient, pool_path: str, request: dict[str, Any], timeout: int
) -> tuple[list[dict[str, Any]], list[str]]:
    """Poll the pool's machines with a Rich spinner until every machine of `request` (the 202 body of
    `.../attest`) was attested at or after its request time; then its newest attestation each.

    Returns (newest attestation per attested machine, machines that disappeared meanwhile); exit 1 with
    the machines still waiting after `timeout` seconds."""
    requested_at = _moment(request["requestedAt"])
    waiting = list(request["machines"])
    vanished: list[str] = []
    console = Console(stderr=True)
    deadline = time.monotonic() + timeout
    total = len(waiting)
    with console.status(f"Attesting {total} machine(s): 0/{total} done", spinner="dots") as spinner:
        while waiting:
            listed = client.json("GET", f"{pool_path}/machines")["value"]
            machines = {machine["name"]: machine["properties"] for machine in listed}
            vanished += [name for name in waiting if name not in machines]
            waiting = [
                name
                for name in waiting
                if name in machines
                and not (
                    machines[name].get("lastAttestedAt")
                    and _moment(machines[name]["lastAttestedAt"]) >= requested_at
                )
            ]
            if not waiting:
                break
            if time.monotonic() > deadline:
                raise fail(
                    f"still waiting after {timeout} s for the attestation of {', '.join(waiting)}: the "
                    "reconciler attests them (is `tl serve` running for --endpoint?); check later with "
                    "`tl aks machine attestation list`"
                )
            elapsed = int(timeout - (deadline - time.monotonic()))
            spinner.update(f"Attesting {total} machine(s): {total - len(waiting)}/{total} done ({elapsed} s)")
            time.sleep(POLL_SECONDS)
    records = []
    for name in request["machines"]:
        if name in vanished:
            continue
        history = client.json(
            "GET", f"{pool_path}/machines/{segment(name)}/attestations", params={"$top": "1"}
        )
        records += history["value"][:1]
    return records, vanished
