"""The cached Kubernetes release: `make setup` builds it, so a missing or altered binary fails the tests."""

from __future__ import annotations

import pytest

from trustedlaunch.control.kubernetes_release import (
    KubernetesRelease,
    KubernetesReleaseError,
    verified_release,
)


@pytest.fixture(scope="session")
def kubernetes_release() -> KubernetesRelease:
    """The pinned release's binaries, checked against their SHA-256 manifest."""
    try:
        return verified_release()
    except KubernetesReleaseError as error:
        pytest.fail(str(error))
