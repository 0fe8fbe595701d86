"""Finding and killing a node's processes by its run directory, with a real swtpm and bank proxy (no VM): the
marker does not match a sibling directory whose name extends it, and killed children are reaped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trustedlaunch.control.node_processes import is_node_process, kill_node_processes, node_processes
from trustedlaunch.tpm.vtpm import PROXY_MODULE


def start_swtpm(run_dir: Path) -> subprocess.Popen[bytes]:
    state = run_dir / "tpm"
    state.mkdir(parents=True)
    return subprocess.Popen(
        ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state}", "--ctrl", f"type=unixio,path={state}/s"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_processes_are_found_by_run_dir_and_killed(tmp_path: Path) -> None:
    node = start_swtpm(tmp_path / "n1-abc")
    sibling = start_swtpm(tmp_path / "n1-abcd")
    try:
        assert node_processes(tmp_path / "n1-abc") == {node.pid: "swtpm"}
        assert is_node_process(node.pid, tmp_path / "n1-abc")
        assert not is_node_process(sibling.pid, tmp_path / "n1-abc")
        assert kill_node_processes(tmp_path / "n1-abc") == [node.pid]
        assert node.poll() is not None  # reaped by kill_node_processes (-9) or now
        assert not is_node_process(node.pid, tmp_path / "n1-abc")
        assert node_processes(tmp_path / "n1-abcd") == {sibling.pid: "swtpm"}
        assert kill_node_processes(tmp_path / "n1-abc") == []
    finally:
        for process in (node, sibling):
            process.kill()
            process.wait()


def test_the_bank_proxy_is_a_node_process(tmp_path: Path) -> None:
    """The bank proxy (waiting for QEMU) is found by its run directory, named, and killed."""
    tpm = tmp_path / "n2-abc" / "tpm"
    tpm.mkdir(parents=True)
    proxy = subprocess.Popen(
        [sys.executable, "-m", PROXY_MODULE, str(tpm / "proxy.sock"), str(tpm / "swtpm.sock")],
        stdout=subprocess.PIPE,
    )
    try:
        assert proxy.stdout is not None and proxy.stdout.readline() == b"ready\n"
        assert node_processes(tmp_path / "n2-abc") == {proxy.pid: "bankproxy"}
        assert kill_node_processes(tmp_path / "n2-abc") == [proxy.pid]
        assert proxy.poll() is not None
    finally:
        proxy.kill()
        proxy.wait()
