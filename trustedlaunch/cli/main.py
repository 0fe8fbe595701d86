"""Entry point of the `tl` command: one Typer app with a sub-app per area."""

from __future__ import annotations

import typer

from trustedlaunch import __version__
from trustedlaunch.cli import (
    aks,
    alerts,
    attest,
    demo,
    eventlog,
    feature,
    image,
    provider,
    reconciler,
    serve,
    token,
    verify,
)

app = typer.Typer(
    name="tl",
    help="trustedlaunch: Secure Boot, vTPM and remote attestation for Kubernetes node pools.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# Sub-apps register here, one line each (keep alphabetical):
app.add_typer(aks.aks_app, name="aks")
app.add_typer(alerts.alerts_app, name="alerts")
app.add_typer(attest.attest_app, name="attest")
app.add_typer(eventlog.eventlog_app, name="eventlog")
app.add_typer(feature.feature_app, name="feature")
app.add_typer(image.app, name="image")
app.add_typer(verify.policy_app, name="policy")
app.add_typer(provider.provider_app, name="provider")
app.add_typer(reconciler.reconciler_app, name="reconciler")
app.add_typer(token.token_app, name="token")
app.command(name="demo")(demo.demo)
app.command(name="serve")(serve.serve)


@app.command()
def version() -> None:
    """Print the trustedlaunch version."""
    typer.echo(__version__)
