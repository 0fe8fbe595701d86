"""The cached node runtime: `make setup` builds it, so a missing or altered binary fails the tests (the
Kubernetes release's fixture is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from trustedlaunch.control.node_runtime_release import NodeRuntime, NodeRuntimeError, verified_node_runtime


@pytest.fixture(scope="session")
def node_runtime() -> NodeRuntime:
    """The node's container runtime binaries, checked against their SHA-256 manifest."""
    try:
        return verified_node_runtime()
    except NodeRuntimeError as error:
        pytest.fail(str(error))
