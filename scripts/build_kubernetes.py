"""Build the pinned Kubernetes binaries and the node's container runtime once into the user cache.

Run by `make setup`. Each cached set (kubernetes_release.py: the control plane and kubelet;
node_runtime_release.py: containerd, runc, the CNI plugins) is checked against its SHA-256 manifest and
the build inputs (wrapper go.mod and go.sum, flags, Go version) recorded beside it; it is built only when
something is missing or differs, into a scratch folder renamed into place after the manifest and
build.json (versions, inputs, the build tags used and why) are written, and the build time is printed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from trustedlaunch.control import kubernetes_release, node_runtime_release
from trustedlaunch.control.binary_cache import MANIFEST_NAME, CachedBinaryError, manifest_text
from trustedlaunch.control.kubernetes_release import ETCD_VERSION, GO_PACKAGES, KUBERNETES_VERSION
from trustedlaunch.control.node_runtime_release import CNI_PLUGINS, CONTAINERD, PROJECTS, RUNC

WRAPPER_MODULE = Path(__file__).resolve().parent.parent / "kubernetes"
NODE_RUNTIME_MODULES = WRAPPER_MODULE / "node-runtime"
BUILD_RECORD = "build.json"

# Why each build tag is used (recorded in build.json). The runtime binaries go into a minimal VM root
# filesystem with no C library, so they are static: Go-only where upstream allows it (CGO_ENABLED=0), and
# runc, which needs cgo for its nsenter, statically linked as upstream's `make static` does.
TAG_REASONS = {
    "urfave_cli_no_docs": "upstream's default tag: leaves the man-page generator out of the CLI",
    "netgo": "upstream's static-build tag: Go's DNS resolver instead of glibc's NSS",
    "osusergo": "upstream's static-build tag: users and groups read by Go, not glibc's NSS",
    "no_btrfs": "the btrfs snapshotter needs cgo and btrfs headers; the node's snapshotter is overlayfs",
    "no_devmapper": "the devmapper snapshotter (thin pools on a block device) is unused: overlayfs",
    "no_zfs": "the zfs snapshotter is unused: overlayfs",
    "no_grpc": "upstream's shim tag: the shim serves ttrpc only",
    "seccomp": "runc applies seccomp profiles (RuntimeDefault pods); links Debian's static libseccomp.a",
}
CONTAINERD_TAGS = ("urfave_cli_no_docs", "netgo", "osusergo", "no_btrfs", "no_devmapper", "no_zfs")
RUNC_TAGS = ("seccomp", "urfave_cli_no_docs", "netgo", "osusergo")


@dataclass(frozen=True)
class GoBuild:
    """One `go build` of packages of a wrapper module into the cache's bin/ folder."""

    module_dir: Path
    packages: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    cgo: bool = False
    flags: tuple[str, ...] = ()  # more `go build` flags (e.g. -buildmode=pie)
    binary: str | None = None  # the output file's name; by default go names each after its package

    def run(self, bin_dir: Path) -> None:
        """Build at low priority; raises CalledProcessError if go fails."""
        command = ["go", "build", "-trimpath", *self.flags]
        if self.tags:
            command += ["-tags", ",".join(self.tags)]
        command += ["-ldflags", " ".join(["-s", "-w", *self.ldflags])]
        command += ["-o", str(bin_dir / self.binary) if self.binary else str(bin_dir), *self.packages]
        subprocess.run(
            low_priority_command(command), cwd=self.module_dir, env=go_environment(self.cgo), check=True
        )

    def record(self) -> dict[str, object]:
        """What build.json says of this build: packages, cgo, flags and each tag with its reason."""
        return {
            "packages": list(self.packages),
            "cgo": self.cgo,
            "flags": list(self.flags),
            "ldflags": list(self.ldflags),
            "tags": {tag: TAG_REASONS[tag] for tag in self.tags},
        }


@dataclass(frozen=True)
class CachedSet:
    """A set of binaries kept built and verified in the user cache."""

    name: str  # as printed, e.g. "kubernetes"
    title: str  # the versions, as printed
    directory: Path
    binaries: Sequence[str]
    versions: dict[str, str]  # recorded in build.json
    verify: Callable[[Path], object]  # raises CachedBinaryError
    input_parts: Callable[[], list[bytes]]  # everything that makes the binaries
    builds: Callable[[str], list[GoBuild]]  # the builds, given the build date


def required_version(go_mod: Path, module: str) -> str:
    """The version of `module` that go.mod requires (SystemExit if it requires none)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"{go_mod} does not require {module}")
    return match.group(1)


def check_wrapper_pins() -> None:
    """Stop if a wrapper go.mod pins another version than kubernetes_release.py or
    node_runtime_release.py names."""
    pins = [
        (WRAPPER_MODULE / "go.mod", "k8s.io/kubernetes", KUBERNETES_VERSION),
        (WRAPPER_MODULE / "go.mod", "go.etcd.io/etcd/server/v3", ETCD_VERSION),
        *((NODE_RUNTIME_MODULES / p.wrapper / "go.mod", p.module, p.version) for p in PROJECTS),
    ]
    for go_mod, module, pinned in pins:
        required = required_version(go_mod, module)
        if required != pinned:
            raise SystemExit(f"{go_mod} requires {module} {required}, the release module pins {pinned}")


def version_ldflags(build_date: str) -> list[str]:
    """The -X flags of Kubernetes' build (hack/lib/version.sh): --version and /version name the release."""
    major, minor, _ = KUBERNETES_VERSION.removeprefix("v").split(".")
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": build_date,
    }
    return [
        f"-X '{package}.{key}={value}'"
        for key, value in values.items()
        for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version")
    ]


def go_environment(cgo: bool = False) -> dict[str, str]:
    """The environment of the go commands: the local toolchain, the committed go.sum, cgo off unless
    asked for."""
    env = dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="1" if cgo else "0")
    env["GOFLAGS"] = " ".join(filter(None, [env.get("GOFLAGS", ""), "-mod=readonly"]))
    return env


def go_version() -> bytes:
    """`go version` of the local toolchain."""
    return subprocess.run(["go", "version"], env=go_environment(), check=True, capture_output=True).stdout


def libseccomp_version() -> bytes:
    """The Debian version of libseccomp-dev, whose static library runc links (SystemExit if absent)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "libseccomp-dev"], capture_output=True, check=False
    )
    if result.returncode != 0 or not result.stdout:
        raise SystemExit("node runtime: runc links libseccomp statically: apt-get install libseccomp-dev")
    return result.stdout


def inputs_digest(parts: list[bytes]) -> str:
    """One digest of the build inputs."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def kubernetes_builds(build_date: str) -> list[GoBuild]:
    """The control-plane binaries and kubelet with Kubernetes' version flags, then etcd."""
    packages = tuple(package for name, package in GO_PACKAGES.items() if name != "etcd")
    return [
        GoBuild(WRAPPER_MODULE, packages, ldflags=tuple(version_ldflags(build_date))),
        GoBuild(WRAPPER_MODULE, (GO_PACKAGES["etcd"],), binary="etcd"),
    ]


def kubernetes_inputs() -> list[bytes]:
    """The wrapper module, the version flags (without the date) and the Go version."""
    return [
        (WRAPPER_MODULE / "go.mod").read_bytes(),
        (WRAPPER_MODULE / "go.sum").read_bytes(),
        " ".join(version_ldflags("")).encode(),
        go_version(),
    ]


def node_runtime_builds(build_date: str) -> list[GoBuild]:
    """containerd, its shim and ctr (upstream's STATIC=1 tags, cgo off), runc (static-pie with cgo and
    seccomp, as upstream's `make static`), the CNI plugins (cgo off, as upstream's release)."""
    del build_date  # none of the three stamps a build date
    containerd_dir, runc_dir, cni_dir = (NODE_RUNTIME_MODULES / p.wrapper for p in PROJECTS)
    containerd_version = tuple(
        f"-X {CONTAINERD.module}/version.{key}={value}"
        for key, value in (("Version", CONTAINERD.version), ("Package", CONTAINERD.module))
    )
    shim = CONTAINERD.packages["containerd-shim-runc-v2"]
    return [
        GoBuild(
            containerd_dir,
            tuple(package for package in CONTAINERD.packages.values() if package != shim),
            ldflags=containerd_version,
            tags=CONTAINERD_TAGS,
        ),
        GoBuild(containerd_dir, (shim,), ldflags=containerd_version, tags=(*CONTAINERD_TAGS, "no_grpc")),
        GoBuild(
            runc_dir,
            tuple(RUNC.packages.values()),
            ldflags=("-linkmode external", "-extldflags -static-pie"),
            tags=RUNC_TAGS,
            cgo=True,
            flags=("-buildmode=pie",),
            binary="runc",
        ),
        GoBuild(
            cni_dir,
            tuple(CNI_PLUGINS.packages.values()),
            ldflags=(f"-X {CNI_PLUGINS.module}/pkg/utils/buildversion.BuildVersion={CNI_PLUGINS.version}",),
        ),
    ]


def node_runtime_inputs() -> list[bytes]:
    """Each wrapper module, the build flags and tags, the Go version and the libseccomp runc links."""
    wrappers = [
        (NODE_RUNTIME_MODULES / project.wrapper / name).read_bytes()
        for project in PROJECTS
        for name in ("go.mod", "go.sum")
    ]
    flags = json.dumps([build.record() for build in node_runtime_builds("")], sort_keys=True).encode()
    return [*wrappers, flags, go_version(), libseccomp_version()]


KUBERNETES = CachedSet(
    "kubernetes",
    f"{KUBERNETES_VERSION} (etcd {ETCD_VERSION})",
    kubernetes_release.release_dir(),
    list(GO_PACKAGES),
    {"kubernetes": KUBERNETES_VERSION, "etcd": ETCD_VERSION},
    lambda directory: kubernetes_release.verified_release(directory=directory),
    kubernetes_inputs,
    kubernetes_builds,
)
NODE_RUNTIME = CachedSet(
    "node runtime",
    f"containerd {CONTAINERD.version}, runc {RUNC.version}, CNI plugins {CNI_PLUGINS.version}",
    node_runtime_release.release_dir(),
    node_runtime_release.BINARIES,
    {project.wrapper: project.version for project in PROJECTS},
    lambda directory: node_runtime_release.verified_node_runtime(directory=directory),
    node_runtime_inputs,
    node_runtime_builds,
)


def cached_set_is_current(cached: CachedSet, inputs: str) -> bool:
    """True if the cached binaries match their manifest and were built from the same inputs."""
    try:
        cached.verify(cached.directory)
    except CachedBinaryError as error:
        print(f"{cached.name}: {error.reason}; building", flush=True)
        return False
    try:
        record = json.loads((cached.directory / BUILD_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        record = {}
    if record.get("inputs") != inputs:
        print(f"{cached.name}: the cached binaries were built from other inputs; building", flush=True)
        return False
    return True


def low_priority_command(command: list[str]) -> list[str]:
    """`command` at the lowest CPU (and, where ionice exists, I/O) priority: builds yield to tests."""
    ionice = shutil.which("ionice")
    return ["nice", "-n", "19", *([ionice, "-c3"] if ionice else []), *command]


def build(cached: CachedSet, inputs: str) -> float:
    """Build every binary into a scratch folder, write its manifest, rename it into place; seconds taken."""
    root = cached.directory.parent
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{cached.directory.name}-", dir=root))
    try:
        bin_dir = scratch / "bin"
        bin_dir.mkdir()
        started = time.monotonic()
        builds = cached.builds(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for go_build in builds:
            go_build.run(bin_dir)
        seconds = time.monotonic() - started
        (scratch / MANIFEST_NAME).write_text(manifest_text(bin_dir, cached.binaries))
        record = {
            **cached.versions,
            "inputs": inputs,
            "build_seconds": seconds,
            "builds": [go_build.record() for go_build in builds],
        }
        (scratch / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        cached.verify(scratch)
        if cached.directory.exists():
            cached.directory.rename(scratch.with_name(scratch.name + "-old"))
        scratch.rename(cached.directory)
        return seconds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(scratch.with_name(scratch.name + "-old"), ignore_errors=True)


def ensure_built(cached: CachedSet) -> None:
    """Verify the cached set, or build it when it is missing, altered or built from other inputs."""
    root = cached.directory.parent
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        inputs = inputs_digest(cached.input_parts())
        if cached_set_is_current(cached, inputs):
            print(f"{cached.name}: {cached.title} binaries verified in {cached.directory}")
            return
        print(f"{cached.name}: building {cached.title} into {cached.directory}", flush=True)
        seconds = build(cached, inputs)
        minutes, rest = divmod(round(seconds), 60)
        print(f"{cached.name}: built {cached.title} in {minutes}m{rest:02d}s into {cached.directory}")


def main() -> int:
    """Verify or build the pinned Kubernetes release and node runtime; 0 when the cache holds both."""
    check_wrapper_pins()
    if shutil.which("go") is None:
        raise SystemExit("kubernetes: the Go toolchain (go 1.26) is not on PATH")
    for cached in (KUBERNETES, NODE_RUNTIME):
        ensure_built(cached)
    return 0


if __name__ == "__main__":
    sys.exit(main())
