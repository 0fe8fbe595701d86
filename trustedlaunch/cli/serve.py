"""`tl serve`: the long-running control plane: the API and the reconciler (node lifecycle, attestation on
an interval and on demand, alert delivery) until Ctrl-C or SIGTERM.

The embedded server of the other `tl` commands stops when the command ends, so nodes are only re-attested
while some command runs; `tl serve` keeps them attested. Other commands reach it with
`--endpoint`/TL_ENDPOINT and TL_TOKEN (the admin token file it names on start).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from trustedlaunch.cli.arm import fail

SHUTDOWN_POLL_SECONDS = 0.5


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port). Plain HTTP.")
    ] = 8080,
    attestation_interval: Annotated[
        float,
        typer.Option(
            "--attestation-interval",
            min=0,
            help="Seconds between re-attestations of each Ready vTPM node (0: only on demand).",
        ),
    ] = 300.0,
    kubeconfig: Annotated[
        Path | None,
        typer.Option(
            "--kubeconfig",
            envvar="TL_KUBECONFIG",
            help="Kubernetes API server of the clusters: nodes are labelled, tainted and cordoned there, and "
            "`tl aks get-credentials` points kubectl at it.",
        ),
    ] = None,
) -> None:
    """Run the API server and the reconciler until Ctrl-C or SIGTERM (store: TL_DATABASE_URL or the
    default SQLite file)."""
    # Imported here: `tl --help` and the client-side commands do not need the server side.
    from trustedlaunch.api.app import create_app
    from trustedlaunch.api.server import BackgroundServer
    from trustedlaunch.control.bootstrap import attestation_token_issuer, default_token_file
    from trustedlaunch.control.kubernetes import KubernetesNodeAdapter
    from trustedlaunch.control.reconciler import Reconciler, default_state_dir
    from trustedlaunch.errors import TrustedLaunchError
    from trustedlaunch.store.db import make_engine, session_factory

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token_file = default_token_file()
    issuer = attestation_token_issuer(token_file)
    try:
        app = create_app(token_file=token_file, token_issuer=issuer, kubeconfig=kubeconfig)
        kubernetes = KubernetesNodeAdapter(kubeconfig) if kubeconfig is not None else None
    except TrustedLaunchError as exc:
        raise fail(str(exc), 2) from None
    engine = make_engine()
    reconciler = Reconciler(
        session_factory(engine),
        default_state_dir(),
        attestation_interval=attestation_interval,
        token_issuer=issuer,
        kubernetes=kubernetes,
    )
    server = BackgroundServer(app, host, port, reconciler=reconciler)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        typer.echo(f"{signal.Signals(signum).name}: stopping", err=True)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = server.start()
        typer.echo(
            f"trustedlaunch control plane on {url} (attestation interval {attestation_interval:g} s, "
            f"Kubernetes API server: {kubeconfig or 'none'}).\n"
            f"Use it with: export TL_ENDPOINT={url} TL_TOKEN=$(cat {token_file})",
            err=True,
        )
        while not stop.wait(SHUTDOWN_POLL_SECONDS):
            if not server.thread.is_alive():
                raise fail("the API server stopped unexpectedly (see the messages above)")
    except TrustedLaunchError as exc:
        raise fail(str(exc)) from None
    finally:
        server.stop()
        if kubernetes is not None:
            kubernetes.close()
        engine.dispose()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo("stopped", err=True)
