"""Build the pinned Kubernetes binaries once into the user cache (run by `make setup`).

Checks the cached binaries against their SHA-256 manifest and the build inputs (kubernetes/go.mod,
go.sum, flags, Go version) recorded beside it; builds only when something is missing or differs, into a
scratch folder renamed into place after the manifest is written, and prints how long the build took.
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
from datetime import UTC, datetime
from pathlib import Path

from trustedlaunch.control.kubernetes_release import (
    ETCD_VERSION,
    GO_PACKAGES,
    KUBERNETES_VERSION,
    MANIFEST_NAME,
    KubernetesReleaseError,
    cache_root,
    manifest_text,
    release_dir,
    verified_release,
)

WRAPPER_MODULE = Path(__file__).resolve().parent.parent / "kubernetes"
BUILD_RECORD = "build.json"


def required_version(go_mod: str, module: str) -> str:
    """The version of `module` that go.mod requires (SystemExit if it requires none)."""
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{WRAPPER_MODULE / 'go.mod'} does not require {module}")
    return match.group(1)


def check_wrapper_pins() -> None:
    """Stop if kubernetes/go.mod pins another release than kubernetes_release.py names."""
    go_mod = (WRAPPER_MODULE / "go.mod").read_text()
    for module, pinned in (
        ("k8s.io/kubernetes", KUBERNETES_VERSION),
        ("go.etcd.io/etcd/server/v3", ETCD_VERSION),
    ):
        required = required_version(go_mod, module)
        if required != pinned:
            raise SystemExit(
                f"kubernetes/go.mod requires {module} {required}, kubernetes_release.py pins {pinned}"
            )


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


def go_environment() -> dict[str, str]:
    """The environment of the go commands: the local toolchain, the committed go.sum, static binaries."""
    env = dict(os.environ, GOTOOLCHAIN="local", CGO_ENABLED="0")
    env["GOFLAGS"] = " ".join(filter(None, [env.get("GOFLAGS", ""), "-mod=readonly"]))
    return env


def build_inputs() -> str:
    """A digest of everything that makes the binaries: the wrapper module, the flags and the Go version."""
    go_version = subprocess.run(
        ["go", "version"], env=go_environment(), check=True, capture_output=True, text=True
    ).stdout
    digest = hashlib.sha256()
    for part in (
        (WRAPPER_MODULE / "go.mod").read_bytes(),
        (WRAPPER_MODULE / "go.sum").read_bytes(),
        " ".join(version_ldflags("")).encode(),
        go_version.encode(),
    ):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def cached_release_is_current(inputs: str) -> bool:
    """True if the cached binaries match their manifest and were built from the same inputs."""
    try:
        verified_release()
    except KubernetesReleaseError as error:
        print(f"kubernetes: {error.reason}; building", flush=True)
        return False
    try:
        record = json.loads((release_dir() / BUILD_RECORD).read_text())
    except (FileNotFoundError, ValueError):
        record = {}
    if record.get("inputs") != inputs:
        print("kubernetes: the cached binaries were built from other inputs; building", flush=True)
        return False
    return True


def low_priority_command(command: list[str]) -> list[str]:
    """`command` at the lowest CPU (and, where ionice exists, I/O) priority: builds yield to tests."""
    ionice = shutil.which("ionice")
    return ["nice", "-n", "19", *([ionice, "-c3"] if ionice else []), *command]


def go_build(output: Path, packages: list[str], ldflags: list[str]) -> None:
    """One `go build` of `packages` into `output` (a folder, or a file for a single package)."""
    command = ["go", "build", "-trimpath", "-ldflags", " ".join(["-s", "-w", *ldflags]), "-o", str(output)]
    subprocess.run(
        low_priority_command([*command, *packages]), cwd=WRAPPER_MODULE, env=go_environment(), check=True
    )


def build(inputs: str) -> float:
    """Build every binary into a scratch folder, write its manifest, rename it into place; seconds taken."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".build-{KUBERNETES_VERSION}-", dir=root))
    try:
        bin_dir = scratch / "bin"
        bin_dir.mkdir()
        started = time.monotonic()
        ldflags = version_ldflags(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        go_build(bin_dir, [package for name, package in GO_PACKAGES.items() if name != "etcd"], ldflags)
        go_build(bin_dir / "etcd", [GO_PACKAGES["etcd"]], [])
        seconds = time.monotonic() - started
        (scratch / MANIFEST_NAME).write_text(manifest_text(bin_dir))
        record = {
            "kubernetes": KUBERNETES_VERSION,
            "etcd": ETCD_VERSION,
            "inputs": inputs,
            "build_seconds": seconds,
        }
        (scratch / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        verified_release(directory=scratch)
        target = release_dir()
        if target.exists():
            target.rename(scratch.with_name(scratch.name + "-old"))
        scratch.rename(target)
        return seconds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(scratch.with_name(scratch.name + "-old"), ignore_errors=True)


def main() -> int:
    """Verify or build the pinned release; 0 when the cache holds good binaries."""
    check_wrapper_pins()
    if shutil.which("go") is None:
        raise SystemExit("kubernetes: the Go toolchain (go 1.26) is not on PATH")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per cache
        inputs = build_inputs()
        if cached_release_is_current(inputs):
            print(f"kubernetes: {KUBERNETES_VERSION} binaries verified in {release_dir()}")
            return 0
        print(
            f"kubernetes: building {KUBERNETES_VERSION} (etcd {ETCD_VERSION}) into {release_dir()}",
            flush=True,
        )
        seconds = build(inputs)
        minutes, rest = divmod(round(seconds), 60)
        print(f"kubernetes: built {KUBERNETES_VERSION} in {minutes}m{rest:02d}s into {release_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
