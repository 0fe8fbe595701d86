"""`tl serve`: the long-running control plane: the API and the reconciler (node lifecycle, attestation on
an interval and on demand, alert delivery) until Ctrl-C or SIGTERM.

The embedded server of the other `tl` commands stops when the command ends, so nodes are only re-attested
while some command runs; `tl serve` keeps them attested. Other commands reach it with
`--endpoint`/TL_ENDPOINT and TL_TOKEN (the admin token file it names on start).

With `--workers N` (N > 1) uvicorn runs the API in N worker processes sharing the port (the verifier then
uses every core: the nonce store and the token keys are shared files) and this process runs the reconciler
and supervises the workers (a worker that dies is replaced).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from trustedlaunch.cli.arm import fail
from trustedlaunch.cli.reconciler import AttestationIntervalOption, AutoRepairOption
from trustedlaunch.control.attestation_monitor import DEFAULT_ATTESTATION_INTERVAL
from trustedlaunch.control.hosted_control_plane import NODE_NETWORK_ADDRESS_ENV
from trustedlaunch.control.hosted_control_plane import node_network_address as checked_address

if TYPE_CHECKING:
    from fastapi import FastAPI

    from trustedlaunch.control.reconciler import Reconciler

SHUTDOWN_POLL_SECONDS = 0.5
MAX_WORKERS = 64


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="TCP port (0: any free port). Plain HTTP.")
    ] = 8080,
    attestation_interval: AttestationIntervalOption = DEFAULT_ATTESTATION_INTERVAL,
    auto_repair: AutoRepairOption = True,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=MAX_WORKERS,
            help="API worker processes: more than 1 serves the API (the verifier) on several cores; the "
            "reconciler runs in this process.",
        ),
    ] = 1,
    node_network_address: Annotated[
        str | None,
        typer.Option(
            "--node-network-address",
            envvar=NODE_NETWORK_ADDRESS_ENV,
            help="IPv4 address of this machine that the libvirt hosts of node VMs reach: the clusters' "
            "kube-apiservers listen there (default 127.0.0.1: node VMs of this machine only).",
        ),
    ] = None,
) -> None:
    """Run the API server and the reconciler until Ctrl-C or SIGTERM (store: TL_DATABASE_URL or the
    default SQLite file)."""
    # Imported here: `tl --help` and the client-side commands do not need the server side.
    from trustedlaunch.api.app import create_app
    from trustedlaunch.control.plane import ControlPlane
    from trustedlaunch.errors import TrustedLaunchError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if node_network_address is not None:  # read from the environment by this process and its workers
        os.environ[NODE_NETWORK_ADDRESS_ENV] = node_network_address
    try:
        checked_address()
    except TrustedLaunchError as exc:
        raise fail(str(exc), 2) from None
    try:
        # the store (migrated, with its admin token) and the nonce store exist before any worker starts
        plane = ControlPlane()
    except TrustedLaunchError as exc:
        raise fail(str(exc), 2) from None
    try:
        app = create_app(plane=plane)
    except TrustedLaunchError as exc:
        plane.close()
        raise fail(str(exc), 2) from None
    token_file = plane.token_file
    reconciler = plane.reconciler(attestation_interval=attestation_interval, auto_repair=auto_repair)

    def announce(url: str) -> None:
        processes = f"{workers} API worker processes, " if workers > 1 else ""
        typer.echo(
            f"trustedlaunch control plane on {url} ({processes}attestation interval {attestation_interval:g} "
            f"s, auto-repair {'on' if auto_repair else 'off'}).\n"
            f"Dashboard: {url}/ui (sign in with the token below).\n"
            f"Use it with: export TL_ENDPOINT={url} TL_TOKEN=$(cat {token_file})",
            err=True,
        )

    try:
        if workers == 1:
            _serve_in_process(app, host, port, reconciler, announce)
        else:
            _serve_worker_processes(host, port, workers, reconciler, announce)
    finally:
        plane.close()
    _say("stopped")


def _say(message: str) -> None:
    """Write `message` to stderr, unless its terminal is gone (a hang-up: EIO)."""
    with contextlib.suppress(OSError):
        typer.echo(message, err=True)


def _serve_in_process(
    app: FastAPI, host: str, port: int, reconciler: Reconciler, announce: Callable[[str], None]
) -> None:
    """The API in a thread of this process, the reconciler in another, until SIGINT, SIGTERM or SIGHUP
    (the terminal closed): each stops them in order (the node VMs run on, for the next start to adopt)."""
    from trustedlaunch.api.server import BackgroundServer
    from trustedlaunch.errors import TrustedLaunchError

    server = BackgroundServer(app, host, port, reconciler=reconciler)
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        _say(f"{signal.Signals(signum).name}: stopping")
        stop.set()

    stop_signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, request_stop) for sig in stop_signals}
    try:
        url = server.start()
        announce(url)
        while not stop.wait(SHUTDOWN_POLL_SECONDS):
            if not server.thread.is_alive():
                raise fail("the API server stopped unexpectedly (see the messages above)")
    except TrustedLaunchError as exc:
        raise fail(str(exc)) from None
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_worker_processes(
    host: str, port: int, workers: int, reconciler: Reconciler, announce: Callable[[str], None]
) -> None:
    """The API in `workers` uvicorn processes on one listening socket, the reconciler in a thread of this
    process, until SIGINT/SIGTERM (uvicorn's supervisor handles the signals and restarts dead workers)."""
    from uvicorn.supervisors import Multiprocess

    from trustedlaunch.api.attestation_monitor_routes import INTERVAL_ENV
    from trustedlaunch.api.server import APP_FACTORY, RECONCILER_STOP_SECONDS, server_config
    from trustedlaunch.control.plane import metrics_across_processes
    from trustedlaunch.control.reconciler import ReconcilerThread

    # the workers' API says what this process's reconciler runs (GET .../attestationMonitor)
    os.environ[INTERVAL_ENV] = f"{reconciler.attestation_interval:g}"
    with metrics_across_processes():
        config = server_config(APP_FACTORY, host, port, workers)
        try:
            listening = config.bind_socket()
        except SystemExit:  # uvicorn logged why (address in use, permission)
            raise fail(f"cannot listen on {host}:{port} (see the message above)") from None
        supervisor = Multiprocess(config, sockets=[listening])
        reconciler_thread = ReconcilerThread(reconciler)
        reconciler_thread.start()
        try:
            announce(f"http://{host}:{listening.getsockname()[1]}")
            supervisor.run()
            _say("stopping")
        finally:
            reconciler_thread.stop(RECONCILER_STOP_SECONDS)
            listening.close()
