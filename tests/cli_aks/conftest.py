"""A real API server (uvicorn on loopback, real SQLite file) and a CLI runner pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.cli.main import app


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str, BackgroundServer]]:
    """(base URL, admin token, server) of a server on tmp_path/control.db."""
    token_file = tmp_path / "server-config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)
    with BackgroundServer(app) as running:
        yield running.url, token_file.read_text().strip(), running


@pytest.fixture
def cli_env(server: tuple[str, str, BackgroundServer], tmp_path: Path) -> dict[str, str | None]:
    """Environment of a `tl` user talking to the server, with a private HOME, who made the resource group
    myResourceGroup with `tl group create` (as the README's examples do before `tl aks create`)."""
    home = tmp_path / "home"
    home.mkdir()
    env: dict[str, str | None] = {
        "TL_ENDPOINT": server[0],
        "TL_TOKEN": server[1],
        "HOME": str(home),
        "TL_SUBSCRIPTION": None,
    }
    created = CliRunner().invoke(app, ["group", "create", "-n", "myResourceGroup", "-l", "eastus"], env=env)
    assert created.exit_code == 0, created.stderr
    return env


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()
