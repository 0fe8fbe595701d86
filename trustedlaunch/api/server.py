"""Serve the API with uvicorn: on loopback in a background thread (embedded server of `tl`, tests), optionally
with the node reconciler in a second thread; `server_config` is the one uvicorn configuration, also used by
`tl serve --workers N` (worker processes)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from trustedlaunch.api.attestation_monitor_routes import AttestationMonitorStatus
from trustedlaunch.api.limits import HeadCappedHttpToolsProtocol
from trustedlaunch.control.reconciler import Reconciler, ReconcilerThread
from trustedlaunch.errors import TrustedLaunchError

APP_FACTORY = "trustedlaunch.api.app:create_app"  # what worker processes import (configured by environment)
STARTUP_TIMEOUT_SECONDS = 30.0
# Idle keep-alive connections stay open longer than a load balancer's idle timeout (60-75 s), so the
# server never closes one the balancer is about to reuse (uvicorn's default is 5 s).
KEEP_ALIVE_SECONDS = 90
# A reconciler step still running after this ends with the process; the next reconciler resumes it.
RECONCILER_STOP_SECONDS = 5.0


def server_config(app: FastAPI | str, host: str, port: int, workers: int = 1) -> uvicorn.Config:
    """The uvicorn configuration of the API: `app`, or the import string of an app factory for `workers`
    processes; HTTP/1.1 by the head-capped httptools protocol, no access log."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        workers=workers,
        factory=isinstance(app, str),
        log_level="warning",
        lifespan="on",
        access_log=False,
        http=HeadCappedHttpToolsProtocol,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
    )


class BackgroundServer:
    """uvicorn serving `app` on `host`:`port` (0 = any free port) in a daemon thread; a context manager.

    With `reconciler` (over the same store as `app`), it runs in its own daemon thread once the app started,
    signing attestation tokens with the app's issuer (the JWKS it serves) unless it was given one.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, reconciler: Reconciler | None = None
    ) -> None:
        self.server = uvicorn.Server(server_config(app, host, port))
        self.thread = threading.Thread(target=self.server.run, name="tl-api", daemon=True)
        self.app = app
        self.url = ""
        self.reconciler = ReconcilerThread(reconciler) if reconciler is not None else None

    def start(self) -> str:
        """Start serving; return the base URL once the server accepts connections."""
        self.thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise TrustedLaunchError(
                    "the embedded API server did not start (see the messages above: database URL, port)"
                )
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        if self.reconciler is not None:
            reconciler = self.reconciler.reconciler
            if reconciler.monitor.token_issuer is None:  # set by the app's startup
                reconciler.monitor.token_issuer = self.app.state.token_issuer
            self.app.state.attestation_monitor = AttestationMonitorStatus.of_reconciler(
                reconciler.attestation_interval
            )
            self.reconciler.start()
        return self.url

    def stop(self) -> None:
        """Stop the reconciler (waiting a few seconds for its step), then serving (in-flight requests finish
        first)."""
        if self.reconciler is not None:
            self.reconciler.stop(RECONCILER_STOP_SECONDS)
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
