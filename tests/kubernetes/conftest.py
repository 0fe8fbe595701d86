"""The cached Kubernetes release and node runtime: `make setup` builds them, so a missing or altered binary
fails the tests."""

from __future__ import annotations

import pytest

from trustedlaunch.control.kubernetes_release import (
    KubernetesRelease,
    KubernetesReleaseError,
    verified_release,
)
from trustedlaunch.control.node_runtime_release import NodeRuntime, NodeRuntimeError, verified_node_runtime


@pytest.fixture(scope="session")
def kubernetes_release() -> KubernetesRelease:
    """The pinned release's binaries, checked against their SHA-256 manifest."""
    try:
        return verified_release()
    except KubernetesReleaseError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def node_runtime() -> NodeRuntime:
    """The node's container runtime binaries, checked against their SHA-256 manifest."""
    try:
        return verified_node_runtime()
    except NodeRuntimeError as error:
        pytest.fail(str(error))
