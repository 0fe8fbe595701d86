"""The node runtime's cache: a folder per set of pinned versions, each binary checked against the manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustedlaunch.control.binary_cache import MANIFEST_NAME, manifest_text
from trustedlaunch.control.node_runtime_release import (
    BINARIES,
    CNI_PLUGINS_VERSION,
    CONTAINERD_VERSION,
    RUNC_VERSION,
    NodeRuntimeError,
    release_dir,
    verified_node_runtime,
)


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    """A runtime folder as the build leaves it: bin/ with one executable per binary, then the manifest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in BINARIES:
        (bin_dir / name).write_bytes(f"#!/bin/sh\necho {name}\n".encode())
        (bin_dir / name).chmod(0o755)
    (tmp_path / MANIFEST_NAME).write_text(manifest_text(bin_dir, BINARIES))
    return tmp_path


def test_the_cache_folder_names_every_pinned_version(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    name = f"containerd-{CONTAINERD_VERSION}-runc-{RUNC_VERSION}-cni-{CNI_PLUGINS_VERSION}"
    assert release_dir() == tmp_path / "trustedlaunch" / "node-runtime" / name


def test_a_node_needs_the_runtime_and_the_four_cni_plugins() -> None:
    assert set(BINARIES) >= {"containerd", "containerd-shim-runc-v2", "runc"}
    assert set(BINARIES) >= {"bridge", "host-local", "loopback", "portmap"}


def test_a_runtime_matching_its_manifest_is_verified(runtime: Path) -> None:
    verified = verified_node_runtime(directory=runtime)
    assert verified.binary("runc") == runtime / "bin" / "runc"
    with pytest.raises(KeyError):
        verified.binary("kubelet")


def test_an_altered_binary_is_named_with_the_command_that_rebuilds_it(runtime: Path) -> None:
    with (runtime / "bin" / "portmap").open("ab") as binary:
        binary.write(b"# one more line\n")
    altered = r"bin/portmap does not match its SHA-256 .*make setup"
    with pytest.raises(NodeRuntimeError, match=altered) as error:
        verified_node_runtime(directory=runtime)
    assert error.value.binary == "portmap"


def test_a_missing_binary_is_named(runtime: Path) -> None:
    (runtime / "bin" / "containerd-shim-runc-v2").unlink()
    with pytest.raises(NodeRuntimeError, match=r"binary containerd-shim-runc-v2 is not built") as error:
        verified_node_runtime(directory=runtime)
    assert error.value.binary == "containerd-shim-runc-v2"
