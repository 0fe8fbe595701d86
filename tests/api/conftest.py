"""The real FastAPI app over a real SQLite file, driven through Starlette's TestClient (httpx)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import create_group
from fastapi.testclient import TestClient

from trustedlaunch.api.app import create_app
from trustedlaunch.cli.arm import api_version_hook


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """An authenticated client (bootstrap admin token) of an app on `tmp_path/control.db` with the resource
    group myResourceGroup the tests' clusters live in (api_helpers.CLUSTER); requests without an api-version
    get their namespace's newest GA one."""
    token_file = tmp_path / "config" / "admin-token"
    app = create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file, max_body_bytes=64 * 1024)
    with TestClient(app) as test_client:
        test_client.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        test_client.event_hooks = {
            "request": [api_version_hook(None)]
        }  # as the CLI: its namespace's GA version
        create_group(test_client)
        yield test_client
