"""The node's container runtime `make setup` built: verified, static, the pinned versions, and working.

The binaries go into a minimal VM root filesystem with no C library, so each must be static (no dynamic
interpreter). As root, runc runs a busybox container from a bundle, and a containerd with a private root,
state and socket imports the node's busybox test image (node/container_images.py) and runs it through its
shim and runc; nothing leaves the machine (the containers get network namespaces of their own with loopback
only).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from private_containerd import ctr as private_ctr
from private_containerd import needs_root, private_containerd, run

from trustedlaunch.control.node_runtime_release import (
    BINARIES,
    CNI_PLUGINS,
    CONTAINERD_VERSION,
    RUNC_VERSION,
    NodeRuntime,
    NodeRuntimeError,
    verified_node_runtime,
)
from trustedlaunch.node.container_images import busybox_image
from trustedlaunch.node.image import BUSYBOX

PT_INTERP = 3  # the ELF program header naming a dynamic loader
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build_kubernetes.py"


def program_header_types(path: Path) -> list[int]:
    """The p_type of each program header of a 64-bit little-endian ELF file."""
    with path.open("rb") as elf:
        header = elf.read(64)
        assert header[:6] == b"\x7fELF\x02\x01", f"{path} is not a 64-bit little-endian ELF file"
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        elf.seek(phoff)
        table = elf.read(phentsize * phnum)
    return [struct.unpack_from("<I", table, index * phentsize)[0] for index in range(phnum)]


def test_every_binary_is_verified_and_static(node_runtime: NodeRuntime) -> None:
    for name in BINARIES:
        types = program_header_types(node_runtime.binary(name))
        assert types, f"{name} has no program headers"
        assert PT_INTERP not in types, f"{name} needs a dynamic loader: not static"


def test_the_binaries_name_the_pinned_versions(node_runtime: NodeRuntime) -> None:
    assert f" {CONTAINERD_VERSION}" in run(node_runtime.binary("containerd"), "--version")
    assert f" {CONTAINERD_VERSION}" in run(node_runtime.binary("ctr"), "--version")
    assert f"Version:  {CONTAINERD_VERSION}" in run(node_runtime.binary("containerd-shim-runc-v2"), "-v")
    runc = run(node_runtime.binary("runc"), "--version")
    assert runc.startswith(f"runc version {RUNC_VERSION.removeprefix('v')}\n")
    assert "libseccomp: " in runc  # built with the seccomp tag, libseccomp linked in
    for plugin in CNI_PLUGINS.binaries:
        version = subprocess.run(
            [node_runtime.binary(plugin), "--version"], capture_output=True, text=True, timeout=30, check=True
        )
        assert version.stderr.startswith(f"CNI {plugin} plugin {CNI_PLUGINS.version}\n")  # CNI: on stderr


def test_the_build_record_says_which_tags_were_used_and_why(node_runtime: NodeRuntime) -> None:
    record = json.loads((node_runtime.directory / "build.json").read_text())
    assert (record["containerd"], record["runc"], record["cni-plugins"]) == (
        CONTAINERD_VERSION,
        RUNC_VERSION,
        CNI_PLUGINS.version,
    )
    builds = {package: build for build in record["builds"] for package in build["packages"]}
    runc = builds["github.com/opencontainers/runc"]
    assert runc["cgo"] is True
    assert {"seccomp", "netgo", "osusergo"} <= set(runc["tags"])
    assert "libseccomp" in runc["tags"]["seccomp"]
    containerd = builds["github.com/containerd/containerd/v2/cmd/containerd"]
    assert containerd["cgo"] is False
    assert "no_btrfs" in containerd["tags"]
    assert all(build["tags"][tag] for build in record["builds"] for tag in build["tags"])


def test_setup_verifies_the_built_runtime_without_building_again(node_runtime: NodeRuntime) -> None:
    """What `make setup` runs once the binaries are built: a check of the manifests and inputs only."""
    started = time.monotonic()
    output = run(sys.executable, BUILD_SCRIPT)
    assert "building" not in output
    assert f"node runtime: containerd {CONTAINERD_VERSION}, runc {RUNC_VERSION}" in output
    assert f"binaries verified in {node_runtime.directory}\n" in output
    assert time.monotonic() - started < 30


def test_an_altered_binary_fails_verification(node_runtime: NodeRuntime, tmp_path: Path) -> None:
    copy = tmp_path / "runtime"
    shutil.copytree(node_runtime.directory, copy)
    verified_node_runtime(directory=copy)
    with (copy / "bin" / "runc").open("r+b") as runc:
        runc.seek(4096)
        byte = runc.read(1)
        runc.seek(4096)
        runc.write(bytes([byte[0] ^ 1]))
    with pytest.raises(NodeRuntimeError, match=r"bin/runc does not match its SHA-256") as error:
        verified_node_runtime(directory=copy)
    assert error.value.binary == "runc"


def busybox_bundle(
    runc: Path, bundle: Path, *arguments: str, seccomp: dict[str, object] | None = None
) -> Path:
    """An OCI bundle (`runc spec`) whose read-only rootfs holds busybox, running `busybox arguments`."""
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, bundle / "rootfs" / "bin" / "busybox")
    subprocess.run([runc, "spec"], cwd=bundle, check=True, timeout=30)
    config = json.loads((bundle / "config.json").read_text())
    config["process"] |= {"terminal": False, "args": ["/bin/busybox", *arguments]}
    if seccomp is not None:
        config["linux"]["seccomp"] = seccomp
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


@needs_root
def test_runc_runs_a_busybox_container(node_runtime: NodeRuntime, tmp_path: Path) -> None:
    runc = node_runtime.binary("runc")
    bundle = busybox_bundle(runc, tmp_path / "bundle", "echo", "hello from runc")
    output = run(runc, "--root", tmp_path / "state", "run", "--bundle", bundle, "tl-smoke")
    assert output == "hello from runc\n"


@needs_root
def test_runc_applies_a_seccomp_profile(node_runtime: NodeRuntime, tmp_path: Path) -> None:
    """The seccomp build tag at work: a profile refusing mkdir makes it fail, where it succeeds without."""
    runc = node_runtime.binary("runc")
    no_mkdir: dict[str, object] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}],
    }
    command = ("mkdir", "/dev/shm/made")  # /dev/shm: a writable tmpfs of the default spec
    results = {}
    for name, profile in (("allowed", None), ("refused", no_mkdir)):
        bundle = busybox_bundle(runc, tmp_path / name, *command, seccomp=profile)
        results[name] = subprocess.run(
            [runc, "--root", tmp_path / "state", "run", "--bundle", bundle, f"tl-{name}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert results["allowed"].returncode == 0, results["allowed"].stderr
    assert results["refused"].returncode != 0
    assert "Operation not permitted" in results["refused"].stderr


@pytest.fixture
def containerd(node_runtime: NodeRuntime, tmp_path: Path) -> Iterator[Path]:
    """A private containerd of the cached runtime (tests/private_containerd.py); its socket's path."""
    with private_containerd(node_runtime, tmp_path) as socket:
        yield socket


@needs_root
def test_containerd_answers_and_runs_an_imported_image_through_its_shim_and_runc(
    node_runtime: NodeRuntime, containerd: Path, tmp_path: Path
) -> None:
    ctr = private_ctr(node_runtime, containerd, "tl-test")
    version = run(*ctr, "version")
    assert version.count(f"Version:  {CONTAINERD_VERSION}") == 2  # the client and the server
    image = busybox_image(BUSYBOX)
    archive = tmp_path / image.file_name
    archive.write_bytes(image.data)
    run(*ctr, "images", "import", archive)
    assert image.reference in run(*ctr, "images", "list", "--quiet").split()
    fifo_dir = tmp_path / "fifo"  # the client's, beside the test rather than in /run/containerd
    output = run(*ctr, "run", "--rm", "--fifo-dir", fifo_dir, image.reference, "tl-smoke", "echo", "hello")
    assert output == "hello\n"
