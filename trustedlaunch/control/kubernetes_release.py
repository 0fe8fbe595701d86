"""The pinned Kubernetes release: its version, where its binaries are cached, and their SHA-256 check.

`make setup` (scripts/build_kubernetes.py) builds the binaries from the Go module proxy through the
wrapper module `kubernetes/go.mod` into `{user cache}/trustedlaunch/kubernetes/{version}/bin/`
(`$XDG_CACHE_HOME/trustedlaunch/...`, by default `~/.cache/trustedlaunch/...`), outside the clone, and
writes `manifest.sha256` (`sha256sum` format) after a successful build. Everything that runs a binary
takes its path from `verified_release()`, which checks each one against the manifest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from trustedlaunch.errors import TrustedLaunchError

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
MANIFEST_NAME = "manifest.sha256"
SETUP_HINT = "run `make setup` to build the Kubernetes binaries"


class KubernetesReleaseError(TrustedLaunchError):
    """A cached Kubernetes binary is missing or is not the one the build recorded."""

    def __init__(self, binary: str, reason: str) -> None:
        super().__init__(f"{reason}: {SETUP_HINT}")
        self.binary = binary
        self.reason = reason


def cache_root() -> Path:
    """The folder holding one sub-folder per built Kubernetes version."""
    return Path(platformdirs.user_cache_dir("trustedlaunch")) / "kubernetes"


def release_dir(version: str = KUBERNETES_VERSION) -> Path:
    """The cache folder of one Kubernetes version (bin/ and the manifest)."""
    return cache_root() / version


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's contents."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_text(bin_dir: Path) -> str:
    """The manifest of the binaries in `bin_dir` (`sha256sum` lines, paths relative to the release)."""
    return "".join(f"{file_sha256(bin_dir / name)}  bin/{name}\n" for name in sorted(GO_PACKAGES))


def read_manifest(directory: Path) -> dict[str, str]:
    """Binary name -> recorded SHA-256, from a release folder's manifest (empty if there is none)."""
    try:
        text = (directory / MANIFEST_NAME).read_text()
    except FileNotFoundError:
        return {}
    recorded = {}
    for line in text.splitlines():
        digest, _, relative = line.partition("  ")
        recorded[Path(relative).name] = digest
    return recorded


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
    recorded = read_manifest(directory)
    manifest = directory / MANIFEST_NAME
    for name in GO_PACKAGES:
        path = directory / "bin" / name
        if not path.is_file():
            raise KubernetesReleaseError(
                name, f"Kubernetes {version} binary {name} is not built ({path} missing)"
            )
        if name not in recorded:
            raise KubernetesReleaseError(
                name, f"Kubernetes {version} binary {path} has no SHA-256 in {manifest}"
            )
        if not os.access(path, os.X_OK):
            raise KubernetesReleaseError(name, f"Kubernetes {version} binary {path} is not executable")
        if file_sha256(path) != recorded[name]:
            raise KubernetesReleaseError(
                name,
                f"Kubernetes {version} binary {path} does not match its SHA-256 in {manifest}",
            )
    return KubernetesRelease(version, directory)
