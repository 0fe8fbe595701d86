"""Reconciler fixtures: one short base folder (state dir shared by the modules: one node image build, one
platform EK CA) that must have no node process (qemu, its supervisor, swtpm, bank proxy) left at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from reconciler_helpers import kill_processes, processes_under

from trustedlaunch.control.node_processes import kill_node_processes, node_processes


def leftover_processes(base: Path) -> list[str]:
    """Node processes left under `base` ("pid command line" or "pid program"), killed."""
    leftovers = processes_under(base)
    kill_processes(leftovers)
    others = [f"{pid} {program}" for pid, program in node_processes(base).items()]
    kill_node_processes(base)
    return leftovers + others


@pytest.fixture(scope="session")
def reconciler_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Base folder of the reconciler tests; fails the session if processes are left behind."""
    base = tmp_path_factory.mktemp("rec")
    yield base
    leftovers = leftover_processes(base)
    assert not leftovers, f"node processes left running: {leftovers}"


@pytest.fixture(scope="session")
def state_dir(reconciler_base: Path) -> Path:
    """The reconciler state dir (node images, EK CA, VM run dirs) every module's reconciler uses in turn."""
    return reconciler_base / "state"


@pytest.fixture(scope="module", autouse=True)
def no_vm_left_by_the_module(reconciler_base: Path) -> Iterator[None]:
    """After each module: no node process left (killed if a failed test left some, so that the next module
    starts clean, and reported as an error)."""
    yield
    leftovers = leftover_processes(reconciler_base)
    assert not leftovers, f"node processes left running by the module: {leftovers}"
