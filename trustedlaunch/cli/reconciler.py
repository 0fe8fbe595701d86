"""`tl reconciler run`: the node reconciler on its own in the foreground, without the API (e.g. beside API
servers on other machines sharing a PostgreSQL store), until Ctrl-C or SIGTERM/SIGKILL. A reconciler killed
at any point is resumed by the next one; one reconciler per state directory at a time."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated

import typer

from trustedlaunch.cli.arm import fail
from trustedlaunch.control.attestation_monitor import DEFAULT_ATTESTATION_INTERVAL

reconciler_app = typer.Typer(help="The node reconciler on its own (no API).", no_args_is_help=True)

INTERRUPTED_EXIT_CODE = 130
# `--attestation-interval` of every command that runs the reconciler (this one and `tl serve`).
AttestationIntervalOption = Annotated[
    float,
    typer.Option(
        "--attestation-interval",
        min=0,
        help="Seconds between re-attestations of each Ready vTPM node (0: only on demand).",
    ),
]

# `--auto-repair/--no-auto-repair`, the server setting of node auto-repair (control/node_health.py).
AutoRepairOption = Annotated[
    bool,
    typer.Option(
        "--auto-repair/--no-auto-repair",
        envvar="TL_AUTO_REPAIR",
        help="Reboot a node that failed 3 liveness checks, reimage it if it still fails 5 minutes later "
        "(at most 3 repairs per node per hour).",
    ),
]


@reconciler_app.command("run")
def run(
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Store URL (default: TL_DATABASE_URL or the user data dir)."),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", help="Node images, EK CA and VM run directories (default: the user data dir)."
        ),
    ] = None,
    max_surge: Annotated[
        int,
        typer.Option(
            "--max-surge", min=0, help="Replacement nodes created before deleting (pools without maxSurge)."
        ),
    ] = 0,
    poll_seconds: Annotated[
        float, typer.Option("--poll-seconds", min=0, help="Seconds between passes when idle.")
    ] = 1.0,
    attestation_interval: AttestationIntervalOption = DEFAULT_ATTESTATION_INTERVAL,
    auto_repair: AutoRepairOption = True,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="The API server's admin token file: attestation tokens are signed with the keys beside it "
            "(default: the user config dir, as the API server).",
        ),
    ] = None,
) -> None:
    """Run the node reconciler in the foreground until killed."""
    # Imported here: `tl --help` and the client-side commands do not need the server side.
    from trustedlaunch.control.plane import ControlPlane
    from trustedlaunch.errors import TrustedLaunchError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("trustedlaunch.control.reconciler").setLevel(logging.INFO)
    try:
        plane = ControlPlane(database_url, token_file, api=False)
    except TrustedLaunchError as exc:
        raise fail(str(exc), 2) from None
    with plane:
        reconciler = plane.reconciler(
            state_dir,
            attestation_interval=attestation_interval,
            auto_repair=auto_repair,
            max_surge=max_surge,
            poll_seconds=poll_seconds,
        )
        try:
            reconciler.run_forever(threading.Event())
        except KeyboardInterrupt:
            raise typer.Exit(INTERRUPTED_EXIT_CODE) from None
