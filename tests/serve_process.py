"""`tl serve` as a real process, for the tests of the long-running control plane (cli_aks, api)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_SECONDS = 60.0


def start_serve(env: dict[str, str], *arguments: str) -> tuple[subprocess.Popen[str], str, str]:
    """Start `tl serve --port 0 ARGUMENTS` (stderr piped); the process, its URL and its banner once /healthz
    answers (worker processes take a few seconds after the banner). A serve that does not get there is
    stopped before the failure is raised: no orphan keeps restarting its workers."""
    command = [str(Path(sys.executable).parent / "tl"), "serve", "--port", "0", *arguments]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url, banner = _wait_until_serving(process)
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    return process, url, banner


def _wait_until_serving(process: subprocess.Popen[str]) -> tuple[str, str]:
    assert process.stderr is not None
    banner = ""
    while "Use it with" not in banner:
        line = process.stderr.readline()
        assert line, f"tl serve exited early ({process.poll()}): {banner}"
        banner += line
    url = banner.split("control plane on ", 1)[1].split(" ", 1)[0]
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
            return url, banner
        except httpx.ConnectError:
            assert time.monotonic() < deadline and process.poll() is None, banner
            time.sleep(0.2)
