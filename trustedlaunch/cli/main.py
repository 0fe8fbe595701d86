"""Entry point of the `tl` command: one Typer app with a sub-app per area."""

from __future__ import annotations

import typer

from trustedlaunch import __version__
from trustedlaunch.cli import attest, demo, eventlog, image, verify

app = typer.Typer(
    name="tl",
    help="trustedlaunch: Secure Boot, vTPM and remote attestation for Kubernetes node pools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Sub-apps register here, one line each (keep alphabetical):
app.add_typer(attest.attest_app, name="attest")
app.add_typer(eventlog.eventlog_app, name="eventlog")
app.add_typer(image.app, name="image")
app.add_typer(verify.policy_app, name="policy")
app.command(name="demo")(demo.demo)


@app.command()
def version() -> None:
    """Print the trustedlaunch version."""
    typer.echo(__version__)
