"""The pinned container runtime of a node (containerd, runc, CNI plugins): versions, cache, SHA-256 check.

`make setup` (scripts/build_kubernetes.py) builds these static binaries from the Go module proxy, each
project through a wrapper module of its own under `kubernetes/node-runtime/` (so no project's dependency
graph moves another's, nor the control plane's), into
`{user cache}/trustedlaunch/node-runtime/{release_name()}/bin/` with `manifest.sha256` and `build.json`
(the build tags used and why). Whatever uses a binary takes its path from `verified_node_runtime()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trustedlaunch.control.binary_cache import CachedBinaryError, user_cache_dir, verify_binaries
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.node import rootfs

# containerd's 2.3 LTS line (Kubernetes >= 1.36 needs containerd 2.x), the runc 1.4 line, CNI plugins 1.9.
CONTAINERD_VERSION = "v2.3.7"
RUNC_VERSION = "v1.4.4"
CNI_PLUGINS_VERSION = "v1.9.1"


@dataclass(frozen=True)
class RuntimeProject:
    """One upstream project of the runtime: its Go module, pinned version and the binaries taken from it."""

    wrapper: str  # the folder of its wrapper module under kubernetes/node-runtime/
    module: str
    version: str
    packages: dict[str, str]  # binary name -> Go package

    @property
    def binaries(self) -> list[str]:
        """The names of the binaries built from this project."""
        return list(self.packages)


CONTAINERD = RuntimeProject(
    "containerd",
    "github.com/containerd/containerd/v2",
    CONTAINERD_VERSION,
    {
        "containerd": "github.com/containerd/containerd/v2/cmd/containerd",
        "containerd-shim-runc-v2": "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2",
        "ctr": "github.com/containerd/containerd/v2/cmd/ctr",  # imports the pre-loaded images
    },
)
RUNC = RuntimeProject(
    "runc", "github.com/opencontainers/runc", RUNC_VERSION, {"runc": "github.com/opencontainers/runc"}
)
CNI_PLUGINS = RuntimeProject(
    "cni-plugins",
    "github.com/containernetworking/plugins",
    CNI_PLUGINS_VERSION,
    {
        "bridge": "github.com/containernetworking/plugins/plugins/main/bridge",
        "host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
        "loopback": "github.com/containernetworking/plugins/plugins/main/loopback",
        "portmap": "github.com/containernetworking/plugins/plugins/meta/portmap",
    },
)
PROJECTS = (CONTAINERD, RUNC, CNI_PLUGINS)
BINARIES = [name for project in PROJECTS for name in project.binaries]


class NodeRuntimeError(CachedBinaryError):
    """A cached container runtime binary is missing or is not the one the build recorded."""

    setup_hint = "run `make setup` to build the node's container runtime"


def release_name() -> str:
    """The cache folder's name: every pinned version, so a new pin gets a folder of its own."""
    return f"containerd-{CONTAINERD_VERSION}-runc-{RUNC_VERSION}-cni-{CNI_PLUGINS_VERSION}"


def cache_root() -> Path:
    """The folder holding one sub-folder per built set of runtime versions."""
    return user_cache_dir() / "node-runtime"


def release_dir() -> Path:
    """The cache folder of the pinned runtime (bin/, the manifest and the build record)."""
    return cache_root() / release_name()


@dataclass(frozen=True)
class NodeRuntime:
    """A verified set of the node's container runtime binaries."""

    directory: Path

    def binary(self, name: str) -> Path:
        """The path of one cached binary (a name of BINARIES)."""
        if name not in BINARIES:
            raise KeyError(name)
        return self.directory / "bin" / name


def verified_node_runtime(directory: Path | None = None) -> NodeRuntime:
    """The cached runtime, every binary checked against its manifest; raises NodeRuntimeError."""
    directory = directory or release_dir()
    verify_binaries(directory, BINARIES, f"node runtime ({release_name()}) binary", NodeRuntimeError)
    return NodeRuntime(directory)


def node_rootfs_inputs(
    release: KubernetesRelease, runtime: NodeRuntime, image_archives: Path | None = None
) -> rootfs.RootfsInputs:
    """What a node's root filesystem holds: the release's kubelet, the runtime's containerd, shim, ctr, runc
    and CNI plugins (both verified by their caller), and the OCI image archives of `image_archives`."""
    binaries = {
        name: release.binary(name) if name == "kubelet" else runtime.binary(name)
        for name in rootfs.RUNTIME_BINARIES
    }
    plugins = {name: runtime.binary(name) for name in rootfs.CNI_PLUGINS}
    return rootfs.RootfsInputs(binaries, plugins, image_archives)
