"""`tl image kernels`, `tl image versions` and `tl image build-version` on a store of their own (the server's
store, as `tl reconciler run` opens it): Debian's signed kernels with the installed one and the version
built from each, the versions newest first, and a malformed --kernel refused before anything is fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from debian_boot_packages import OTHER_KERNEL
from older_image_version import OLDER, put_pool_on_older_version
from typer.testing import CliRunner

from trustedlaunch.cli.main import app
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.node_images import IMAGE_RELEASE
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.node.image import NodeImage
from trustedlaunch.store.models import ImagePolicy

SUB = "11111111-2222-3333-4444-555555555555"


def store_with_older_version(url: str) -> None:
    engine, sessions = open_store(url, None)
    with sessions.begin() as session:
        spec = PoolSpec("nodepool1", count=1, vm_size="Standard_D4s_v3")
        put_cluster(session, ResourcePath(SUB, "rg", "c1"), ClusterSpec("eastus", agent_pools=[spec]))
        session.flush()
        put_pool_on_older_version(session, "nodepool1")
    engine.dispose()


def test_kernels_and_versions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    store_with_older_version(url)
    runner = CliRunner()
    result = runner.invoke(app, ["image", "versions", "--database-url", url])
    assert result.exit_code == 0, result.stderr
    versions = json.loads(result.stdout)
    assert [v["nodeImageVersion"].rsplit("-", 1)[1] for v in versions] == [IMAGE_RELEASE, OLDER]
    assert versions[1]["kernelPackage"] == OTHER_KERNEL[0]

    result = runner.invoke(app, ["image", "kernels", "--database-url", url, "-o", "json"])
    assert result.exit_code == 0, result.stderr
    kernels = {(k["package"], k["version"]): k for k in json.loads(result.stdout)}
    assert kernels[OTHER_KERNEL]["nodeImageVersion"] == versions[1]["nodeImageVersion"]
    assert not kernels[OTHER_KERNEL]["installed"]
    assert sum(k["installed"] for k in kernels.values()) == 1


def test_build_version_refuses_a_malformed_kernel(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'control.db'}"
    runner = CliRunner()
    result = runner.invoke(
        app, ["image", "build-version", "--kernel", OTHER_KERNEL[0], "--database-url", url]
    )
    assert result.exit_code == 2
    assert "give the package and its version as PACKAGE=VERSION" in result.stderr
    result = runner.invoke(
        app,
        ["image", "build-version", "--kernel", "linux-image-6.1.0-50-amd64=0.0-nope", "--database-url", url],
    )
    assert result.exit_code == 1
    assert "linux-image-6.1.0-50-amd64" in result.stderr


@pytest.mark.slow
def test_build_version_builds_stores_and_keeps_the_name(tmp_path: Path) -> None:
    """A real build from the (cached) 6.1.0-50 package: the image lands where the reconciler looks for it,
    its policies are stored, and building the same packages again gives the same name."""
    url = f"sqlite:///{tmp_path / 'control.db'}"
    state = tmp_path / "state"
    build = ["image", "build-version", "--kernel", "=".join(OTHER_KERNEL), "--database-url", url]
    runner = CliRunner()
    result = runner.invoke(app, [*build, "--state-dir", str(state)])
    assert result.exit_code == 0, result.stderr
    built = json.loads(result.stdout)
    assert built["nodeImageVersion"].endswith(OLDER) and built["kernelPackage"] == OTHER_KERNEL[0]
    image = NodeImage.load(state / "images" / built["nodeImageVersion"])
    assert image.release["kernelPackage"] == OTHER_KERNEL[0]
    assert [p.name for p in (state / "images").iterdir()] == [built["nodeImageVersion"]]  # no scratch left
    engine, sessions = open_store(url, None)
    with sessions() as session:
        assert session.get(ImagePolicy, (built["nodeImageVersion"], True)) is not None
        assert session.get(ImagePolicy, (built["notTrustedLaunchCapable"], False)) is not None
    engine.dispose()
    again = runner.invoke(app, [*build, "--state-dir", str(state)])
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["nodeImageVersion"] == built["nodeImageVersion"]
