"""A representative subset of the API tests run again with the app's store on a real PostgreSQL server:
the same test bodies, with `client` overridden by an app on a fresh PostgreSQL database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import create_group
from fastapi.testclient import TestClient
from test_api import (
    test_agent_pool_lifecycle,
    test_create_trusted_launch_cluster_is_long_running,
    test_credentials_and_cluster_delete,
    test_every_violation_is_listed_in_details,
    test_features_and_providers,
    test_pool_update_after_the_reconciler_finished,
    test_trusted_launch_with_a_preview_api_version_needs_the_registration,
)

from trustedlaunch.api.app import create_app
from trustedlaunch.cli.arm import api_version_hook

__all__ = [
    "test_agent_pool_lifecycle",
    "test_create_trusted_launch_cluster_is_long_running",
    "test_credentials_and_cluster_delete",
    "test_every_violation_is_listed_in_details",
    "test_features_and_providers",
    "test_pool_update_after_the_reconciler_finished",
    "test_trusted_launch_with_a_preview_api_version_needs_the_registration",
]


@pytest.fixture
def client(tmp_path: Path, postgresql_url: str) -> Iterator[TestClient]:
    """An authenticated client (bootstrap admin token) of an app on a fresh PostgreSQL database, with the
    resource group myResourceGroup."""
    token_file = tmp_path / "config" / "admin-token"
    app = create_app(postgresql_url, token_file, max_body_bytes=64 * 1024)
    with TestClient(app) as test_client:
        test_client.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        test_client.event_hooks = {"request": [api_version_hook(None)]}
        assert app.state.sessions.kw["bind"].dialect.name == "postgresql"
        create_group(test_client)
        yield test_client
