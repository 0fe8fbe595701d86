"""The pinned Kubernetes release: its version, where its binaries are cached, and their SHA-256 check.

`make setup` (scripts/build_kubernetes.py) builds the binaries from the Go module proxy through the
wrapper module `kubernetes/go.mod` into `{user cache}/trustedlaunch/kubernetes/{version}/bin/`
(`$XDG_CACHE_HOME/trustedlaunch/...`, by default `~/.cache/trustedlaunch/...`), outside the clone, and
writes `manifest.sha256` (`sha256sum` format) after a successful build. Everything that runs a binary
takes its path from `verified_release()`, which checks each one against the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.control.binary_cache import CachedBinaryError, user_cache_dir, verify_binaries

KUBERNETES_VERSION = "v1.36.3"
# The etcd release Kubernetes v1.36.3 is tested against (its build/dependencies.yaml and go.mod).
ETCD_VERSION = "v3.6.8"

# Each cached binary and the Go package it is built from (the `tool` lines of kubernetes/go.mod).
GO_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
}


class KubernetesReleaseError(CachedBinaryError):
    """A cached Kubernetes binary is missing or is not the one the build recorded."""

    setup_hint = "run `make setup` to build the Kubernetes binaries"


def cache_root() -> Path:
    """The folder holding one sub-folder per built Kubernetes version."""
    return user_cache_dir() / "kubernetes"


def release_dir(version: str = KUBERNETES_VERSION) -> Path:
    """The cache folder of one Kubernetes version (bin/ and the manifest)."""
    return cache_root() / version


@dataclass(frozen=True)
class KubernetesRelease:
    """A verified set of cached binaries of one Kubernetes version."""

    version: str
    directory: Path

    def binary(self, name: str) -> Path:
        """The path of one cached binary (a name of GO_PACKAGES)."""
        if name not in GO_PACKAGES:
            raise KeyError(name)
        return self.directory / "bin" / name


def verified_release(version: str = KUBERNETES_VERSION, directory: Path | None = None) -> KubernetesRelease:
    """The cached release, every binary checked against its manifest; raises KubernetesReleaseError."""
    directory = directory or release_dir(version)
    verify_binaries(directory, GO_PACKAGES, f"Kubernetes {version} binary", KubernetesReleaseError)
    return KubernetesRelease(version, directory)
