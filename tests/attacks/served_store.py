"""A store written before `tl serve --workers 2` starts on it (what the reconciler and earlier requests
would have left there), and the running server, for the attack tests of webhooks, dashboard sessions and
retention."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from serve_process import start_serve
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.bootstrap import open_store

SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "99999999-8888-7777-6666-555555555555"
API = {"api-version": "2024-09-01"}  # ARM needs an api-version on every request
STOP_SECONDS = 30


@dataclass
class ServedStore:
    """The environment of a `tl serve` and its store, open here as well."""

    env: dict[str, str]
    token_file: Path
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def admin_token(self) -> str:
        """The bootstrap admin token `tl serve` uses too."""
        return self.token_file.read_text().strip()


@contextmanager
def served_store(base: Path, **settings: str) -> Iterator[ServedStore]:
    """A migrated store under `base` with its admin token, and the environment (HOME, XDG dirs, store URL,
    `settings` such as TL_WEBHOOK_ALLOWED_NETWORKS) a `tl serve` on it gets."""
    env = {
        **os.environ,
        "HOME": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "TL_DATABASE_URL": f"sqlite:///{base / 'serve.db'}",
        **settings,
    }
    if "TL_WEBHOOK_ALLOWED_NETWORKS" not in settings:
        env.pop("TL_WEBHOOK_ALLOWED_NETWORKS", None)
    token_file = base / "config" / "trustedlaunch" / "admin-token"
    engine, sessions = open_store(env["TL_DATABASE_URL"], token_file)
    try:
        yield ServedStore(env, token_file, engine, sessions)
    finally:
        engine.dispose()


@contextmanager
def serving(store: ServedStore, *arguments: str) -> Iterator[str]:
    """`tl serve --workers 2 ARGUMENTS` on the store until the block ends; its URL."""
    process, url, _banner = start_serve(store.env, "--workers", "2", "--no-auto-repair", *arguments)
    assert process.stderr is not None
    # keep reading its log, so that a full pipe never blocks the server
    drain = threading.Thread(target=process.stderr.read, daemon=True)
    drain.start()
    try:
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bearer(token: str) -> dict[str, str]:
    """The Authorization header of an API token."""
    return {"Authorization": f"Bearer {token}"}


def arm_error(response: httpx.Response, status: int, code: str) -> str:
    """The message of an ARM error response, after checking its status and code."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    return str(error["message"])
