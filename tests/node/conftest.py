"""Node VM fixtures: one node image per session, one vTPM shared by the vTPM boots, no orphan processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from node_helpers import processes_under

from trustedlaunch.node.image import NodeImage, build_node_image
from trustedlaunch.tpm.vtpm import Vtpm


@pytest.fixture(scope="session")
def node_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Short base folder for this session's node files; fails the session if processes are left behind."""
    base = tmp_path_factory.mktemp("node")
    yield base
    leftovers = processes_under(base)
    assert not leftovers, f"qemu/swtpm processes left running: {leftovers}"


@pytest.fixture(scope="session")
def node_image(node_base: Path) -> NodeImage:
    """The default node image (Debian signed shim, GRUB and kernel)."""
    return build_node_image(node_base / "image")


@pytest.fixture(scope="session")
def node_vtpm(node_base: Path) -> Iterator[Vtpm]:
    """One manufactured vTPM, reused by the vTPM boots like one VM restarted with other settings."""
    vtpm = Vtpm.create(node_base / "vtpm")
    yield vtpm
    vtpm.stop()
