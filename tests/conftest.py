"""Shared fixtures: the third-party test data beside the repository; a throwaway PostgreSQL server; the
cached Kubernetes release and node runtime, and one real kube-apiserver for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_apiserver import running_control_plane
from pg_server import PostgresServer, postgres_bin_dir, postgres_server

from trustedlaunch.control.binary_cache import user_cache_dir
from trustedlaunch.control.cluster_planes import HOSTED_CONTROL_PLANES_ENV
from trustedlaunch.control.hosted_control_plane import HostedControlPlane
from trustedlaunch.control.kubernetes_release import (
    KubernetesRelease,
    KubernetesReleaseError,
    verified_release,
)
from trustedlaunch.control.node_runtime_release import NodeRuntime, NodeRuntimeError, verified_node_runtime

REPO_ROOT = Path(__file__).resolve().parent.parent

# Every cluster gets a hosted control plane by default (control/cluster_planes.py). The tests of the node,
# attestation, API and CLI paths run without one (four more processes per cluster they create); the tests
# of the hosted control planes (tests/kubernetes/test_cluster_planes*.py) and of the demo turn it on.
os.environ.setdefault(HOSTED_CONTROL_PLANES_ENV, "0")
# Node images carry the kubelet and container runtime `make setup` built into the user cache
# (control/node_images.py): the `tl` processes tests start with a private HOME find them there too.
os.environ.setdefault("XDG_CACHE_HOME", str(user_cache_dir().parent))
TESTDATA = REPO_ROOT.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def testdata() -> Path:
    """The read-only shared test data folder (../shared/testdata); never written to."""
    if not TESTDATA.is_dir():
        pytest.fail(f"shared test data not found at {TESTDATA}: clone the repo beside ../shared")
    return TESTDATA


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server from Debian's binaries for the session (skipped if absent, except in CI)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        reason = "PostgreSQL binaries not found under /usr/lib/postgresql (apt-get install postgresql)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with postgres_server(bin_dir) as server:
        yield server


@pytest.fixture
def postgresql_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    url = postgres.create_database()
    yield url
    postgres.drop_database(url)


@pytest.fixture(scope="session")
def kubernetes_release() -> KubernetesRelease:
    """The pinned release's binaries (`make setup` builds them), checked against their SHA-256 manifest: a
    missing or altered binary fails the test."""
    try:
        return verified_release()
    except KubernetesReleaseError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def node_runtime() -> NodeRuntime:
    """The node's container runtime binaries (`make setup` builds them), checked against their SHA-256
    manifest: a missing or altered binary fails the test."""
    try:
        return verified_node_runtime()
    except NodeRuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def kube_apiserver(kubernetes_release: KubernetesRelease) -> Iterator[HostedControlPlane]:
    """One real hosted control plane for the session's tests of Node objects (tests/kube_apiserver.py);
    each test uses Node names of its own."""
    with running_control_plane(kubernetes_release) as plane:
        yield plane
