"""The control plane's one wiring (control/plane.py) and the standalone reconciler it starts
(`tl reconciler run`)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trustedlaunch.attest.nonces import NonceReusedError
from trustedlaunch.control.plane import ControlPlane
from trustedlaunch.control.reconciler import LOCK_FILE, ReconcilerThread
from trustedlaunch.errors import TrustedLaunchError

START_SECONDS = 60.0
# nothing listens on port 1 of loopback: connecting is refused at once
UNREACHABLE_POSTGRESQL = "postgresql://tl@127.0.0.1:1/tl"


def test_api_planes_share_the_admin_token_and_the_challenge_store(tmp_path: Path) -> None:
    """Two API processes of one installation (two planes on one store and config dir): one admin token, and
    a nonce issued by one is redeemed once across both."""
    database, token_file = f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "config" / "admin-token"
    with ControlPlane(database, token_file) as first:
        token = token_file.read_text().strip()
        challenge = first.challenges.issue()
        with ControlPlane(database, token_file) as second:
            assert token_file.read_text().strip() == token
            second.challenges.redeem(challenge.nonce)
            with pytest.raises(NonceReusedError):
                first.challenges.redeem(challenge.nonce)
            assert second.token_issuer.jwks() == first.token_issuer.jwks()


def test_reconciler_signs_with_the_planes_issuer(tmp_path: Path) -> None:
    with ControlPlane(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "admin-token") as plane:
        reconciler = plane.reconciler(tmp_path / "state", attestation_interval=0)
        assert reconciler.sessions is plane.sessions
        assert reconciler.monitor.token_issuer is plane.token_issuer
        assert reconciler.state_dir == tmp_path / "state"


def test_a_reconciler_thread_that_never_started_stops_cleanly(tmp_path: Path) -> None:
    """A server that failed to start before its reconciler thread did still stops it without an error."""
    with ControlPlane(f"sqlite:///{tmp_path / 'control.db'}", tmp_path / "admin-token") as plane:
        thread = ReconcilerThread(plane.reconciler(tmp_path / "state", attestation_interval=0))
        thread.stop(timeout=1)
        thread.start()
        thread.stop(timeout=10)


def test_reconciler_plane_writes_no_admin_token(tmp_path: Path) -> None:
    token_file = tmp_path / "config" / "admin-token"
    with ControlPlane(f"sqlite:///{tmp_path / 'control.db'}", token_file, api=False) as plane:
        assert not token_file.exists()
        with pytest.raises(TrustedLaunchError, match="serves no API"):
            _ = plane.challenges


def test_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TrustedLaunchError, match="cannot open the store"):
        ControlPlane(UNREACHABLE_POSTGRESQL, tmp_path / "admin-token")


def _tl(*arguments: str, env: dict[str, str]) -> subprocess.Popen[str]:
    command = [str(Path(sys.executable).parent / "tl"), *arguments]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}


def test_tl_reconciler_run_migrates_the_store_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    database = tmp_path / "control.db"
    state_dir = tmp_path / "state"
    token_file = tmp_path / "config" / "admin-token"
    process = _tl(
        "reconciler",
        "run",
        "--database-url",
        f"sqlite:///{database}",
        "--state-dir",
        str(state_dir),
        "--token-file",
        str(token_file),
        "--poll-seconds",
        "0.1",
        "--attestation-interval",
        "0",
        env=_env(tmp_path),
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not (state_dir / LOCK_FILE).exists():  # its first pass took the state directory
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
            time.sleep(0.1)
        with sqlite3.connect(database) as store:
            assert store.execute("SELECT count(*) FROM node_images").fetchone()[0] > 0
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, output
    assert not token_file.exists()  # the reconciler does not mint admin tokens: the API server does


def test_tl_reconciler_run_refuses_an_unreachable_store(tmp_path: Path) -> None:
    process = _tl("reconciler", "run", "--database-url", UNREACHABLE_POSTGRESQL, env=_env(tmp_path))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 2, output
    assert "ERROR: cannot open the store" in output
    assert "Traceback" not in output


def test_embedded_server_refuses_an_unreachable_store(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "TL_DATABASE_URL": UNREACHABLE_POSTGRESQL}
    env.pop("TL_ENDPOINT", None)
    process = _tl("provider", "show", "-n", "Microsoft.ContainerService", env=env)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1, output
    assert "ERROR: cannot open the store" in output
    assert "Traceback" not in output
