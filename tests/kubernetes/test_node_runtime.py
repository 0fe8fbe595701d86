"""The node's container runtime `make setup` built: verified, static, the pinned versions, and working.

The binaries go into a minimal VM root filesystem with no C library, so each must be static (no dynamic
interpreter). As root, runc runs a busybox container from a bundle, and a containerd with a private root,
state and socket imports a locally made OCI image and runs it through its shim and runc; nothing leaves
the machine (the containers get network namespaces of their own with loopback only).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.control.node_runtime_release import (
    BINARIES,
    CNI_PLUGINS,
    CONTAINERD_VERSION,
    RUNC_VERSION,
    NodeRuntime,
    NodeRuntimeError,
    verified_node_runtime,
)
from trustedlaunch.node.image import BUSYBOX

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (CI runs as root)")
PT_INTERP = 3  # the ELF program header naming a dynamic loader
IMAGE = "tl.test/busybox:1"
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


def run(*command: str | Path) -> str:
    """Run a command (60 s at most) and return its standard output; fails the test if it fails."""
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{command} failed: {result.stderr}"
    return result.stdout


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


def oci_archive(path: Path, reference: str, program: Path) -> None:
    """Write an OCI image layout archive (as `ctr images import` reads it) of one uncompressed layer
    holding `program` as /bin/<its name>."""
    blobs: dict[str, bytes] = {}

    def add_blob(data: bytes, media_type: str) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        blobs[f"blobs/sha256/{digest}"] = data
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

    layer_bytes = io.BytesIO()
    with tarfile.open(fileobj=layer_bytes, mode="w") as layer_tar:
        layer_tar.add(program, arcname=f"bin/{program.name}")
    layer = add_blob(layer_bytes.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": [f"/bin/{program.name}"]},
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"]]},
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": add_blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
        "layers": [layer],
    }
    entry = add_blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    entry["platform"] = {"architecture": "amd64", "os": "linux"}
    entry["annotations"] = {"io.containerd.image.name": reference}
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode(),
        **blobs,
    }
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture
def containerd(node_runtime: NodeRuntime, tmp_path: Path) -> Iterator[Path]:
    """A containerd of the cached runtime with its own root, state, sockets and a private /run (the shim's
    sockets and runc's state go to /run/containerd, which this one does not share with the host); its
    socket's path."""
    with tempfile.TemporaryDirectory(prefix="tl-ctd-") as short:  # a unix socket path is short
        socket = Path(short) / "c.sock"
        config = tmp_path / "containerd.toml"
        config.write_text(
            "version = 4\n"
            f'root = "{tmp_path / "root"}"\n'
            f'state = "{tmp_path / "state"}"\n'
            'disabled_plugins = ["io.containerd.nri.v1.nri"]\n'
            f'[plugins."io.containerd.server.v1.grpc"]\n  address = "{socket}"\n'
            f'[plugins."io.containerd.server.v1.ttrpc"]\n  address = "{socket}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{tmp_path / "opt"}"\n'
        )
        bin_dir = node_runtime.directory / "bin"
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")  # the shim and runc
        private_run = 'mount -t tmpfs tl-run /run && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", private_run, "sh"]
        log = (tmp_path / "containerd.log").open("w")
        daemon = subprocess.Popen(
            [*command, str(bin_dir / "containerd"), "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while not socket.is_socket():
                assert daemon.poll() is None, f"containerd exited: see {log.name}"
                assert time.monotonic() < deadline, f"containerd did not listen within 20 s: see {log.name}"
                time.sleep(0.05)
            yield socket
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)
            log.close()


@needs_root
def test_containerd_answers_and_runs_an_imported_image_through_its_shim_and_runc(
    node_runtime: NodeRuntime, containerd: Path, tmp_path: Path
) -> None:
    ctr: list[str | Path] = [node_runtime.binary("ctr"), "--address", containerd, "--namespace", "tl-test"]
    version = run(*ctr, "version")
    assert version.count(f"Version:  {CONTAINERD_VERSION}") == 2  # the client and the server
    archive = tmp_path / "busybox.tar"
    oci_archive(archive, IMAGE, BUSYBOX)
    run(*ctr, "images", "import", archive)
    assert IMAGE in run(*ctr, "images", "list", "--quiet").split()
    fifo_dir = tmp_path / "fifo"  # the client's, beside the test rather than in /run/containerd
    output = run(
        *ctr, "run", "--rm", "--fifo-dir", fifo_dir, IMAGE, "tl-smoke", "/bin/busybox", "echo", "hello"
    )
    assert output == "hello\n"
