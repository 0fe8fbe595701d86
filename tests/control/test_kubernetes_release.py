"""The cached release's check: every binary against the manifest the build wrote, errors naming the binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustedlaunch.control.binary_cache import MANIFEST_NAME, manifest_text
from trustedlaunch.control.kubernetes_release import (
    GO_PACKAGES,
    KUBERNETES_VERSION,
    KubernetesReleaseError,
    release_dir,
    verified_release,
)


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release folder as the build leaves it: bin/ with one executable per binary, then the manifest."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in GO_PACKAGES:
        (bin_dir / name).write_bytes(f"#!/bin/sh\necho {name}\n".encode())
        (bin_dir / name).chmod(0o755)
    (tmp_path / MANIFEST_NAME).write_text(manifest_text(bin_dir, GO_PACKAGES))
    return tmp_path


def test_the_cache_is_the_user_cache_folder_per_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert release_dir() == tmp_path / "trustedlaunch" / "kubernetes" / KUBERNETES_VERSION


def test_a_release_matching_its_manifest_is_verified(release: Path) -> None:
    verified = verified_release(directory=release)
    assert verified.binary("kube-apiserver") == release / "bin" / "kube-apiserver"
    assert (release / MANIFEST_NAME).read_text().count("  bin/") == len(GO_PACKAGES)
    with pytest.raises(KeyError):
        verified.binary("containerd")


def test_an_altered_binary_is_named(release: Path) -> None:
    with (release / "bin" / "etcd").open("ab") as binary:
        binary.write(b"# one more line\n")
    with pytest.raises(KubernetesReleaseError, match=r"bin/etcd does not match its SHA-256") as error:
        verified_release(directory=release)
    assert error.value.binary == "etcd"


def test_a_missing_binary_is_named_with_the_command_that_builds_it(release: Path) -> None:
    (release / "bin" / "kubectl").unlink()
    with pytest.raises(KubernetesReleaseError, match=r"binary kubectl is not built .*make setup") as error:
        verified_release(directory=release)
    assert error.value.binary == "kubectl"


def test_a_release_without_manifest_is_not_trusted(release: Path) -> None:
    (release / MANIFEST_NAME).unlink()
    with pytest.raises(KubernetesReleaseError, match=r"kube-apiserver has no SHA-256 in .*sha256"):
        verified_release(directory=release)
