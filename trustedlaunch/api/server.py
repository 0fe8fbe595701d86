"""Serve the API with uvicorn on loopback in a background thread (embedded server of `tl`, tests, bench)."""

from __future__ import annotations

import threading
import time

import uvicorn
from fastapi import FastAPI

from trustedlaunch.errors import TrustedLaunchError

STARTUP_TIMEOUT_SECONDS = 30.0


class BackgroundServer:
    """uvicorn serving `app` on `host`:`port` (0 = any free port) in a daemon thread; a context manager."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, name="tl-api", daemon=True)
        self.url = ""

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
        return self.url

    def stop(self) -> None:
        """Stop serving and wait for the thread (in-flight requests finish first)."""
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
