"""A containerd of the cached node runtime with its own root, state, sockets and a private /run (the shim's
sockets and runc's state go to /run/containerd, which this one does not share with the host), and a `ctr`
talking to it. Root only: the tests that use it skip otherwise."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from trustedlaunch.control.node_runtime_release import NodeRuntime

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (CI runs as root)")


def run(*command: str | Path, timeout: float = 60) -> str:
    """Run a command and return its standard output; fails the test if it fails or outlasts `timeout`."""
    result = subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{command} failed: {result.stderr}"
    return result.stdout


@contextmanager
def private_containerd(node_runtime: NodeRuntime, directory: Path) -> Iterator[Path]:
    """Run containerd with its files under `directory` (its log: containerd.log); its socket's path."""
    with tempfile.TemporaryDirectory(prefix="tl-ctd-") as short:  # a unix socket path is short
        socket = Path(short) / "c.sock"
        config = directory / "containerd.toml"
        config.write_text(
            "version = 4\n"
            f'root = "{directory / "root"}"\n'
            f'state = "{directory / "state"}"\n'
            'disabled_plugins = ["io.containerd.nri.v1.nri"]\n'
            f'[plugins."io.containerd.server.v1.grpc"]\n  address = "{socket}"\n'
            f'[plugins."io.containerd.server.v1.ttrpc"]\n  address = "{socket}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{directory / "opt"}"\n'
            # the CRI lowers a sandbox's oom_score_adj, which needs CAP_SYS_RESOURCE (not every test
            # machine's root has it): keep it at or above containerd's own
            '[plugins."io.containerd.cri.v1.runtime"]\n  restrict_oom_score_adj = true\n'
        )
        bin_dir = node_runtime.directory / "bin"
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")  # the shim and runc
        private_run = 'mount -t tmpfs tl-run /run && exec "$@"'
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", private_run, "sh"]
        log_path = directory / "containerd.log"
        with log_path.open("w") as log:
            daemon = subprocess.Popen(
                [*command, str(bin_dir / "containerd"), "--config", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 20
                while not socket.is_socket():
                    assert daemon.poll() is None, f"containerd exited: see {log_path}"
                    assert time.monotonic() < deadline, (
                        f"containerd did not listen within 20 s: see {log_path}"
                    )
                    time.sleep(0.05)
                yield socket
            finally:
                try:
                    if daemon.poll() is None:
                        delete_every_task(node_runtime, socket)
                finally:
                    daemon.terminate()
                    daemon.wait(timeout=20)
                    stop_shims(socket)


def delete_every_task(node_runtime: NodeRuntime, socket: Path) -> None:
    """Kill and delete the tasks a test left in any namespace (shims and processes outlive containerd)."""
    listing = [node_runtime.binary("ctr"), "--address", socket, "namespaces", "list", "--quiet"]
    for namespace in run(*listing).split():
        namespace_ctr = ctr(node_runtime, socket, namespace)
        for task in run(*namespace_ctr, "tasks", "list", "--quiet").split():
            run(*namespace_ctr, "tasks", "delete", "--force", task)


def stop_shims(socket: Path) -> None:
    """Stop the shims of the containerd that listened on `socket` (a pod's shim stays while its sandbox is
    not removed); their tasks are gone."""
    shims = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            arguments = cmdline.read_bytes().split(b"\0")
            if arguments[0].endswith(b"containerd-shim-runc-v2") and str(socket).encode() in arguments:
                shims.append(int(cmdline.parent.name))
    for pid in shims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def ctr(node_runtime: NodeRuntime, socket: Path, namespace: str) -> list[str | Path]:
    """The `ctr` command line for one namespace of the containerd listening on `socket`."""
    return [node_runtime.binary("ctr"), "--address", socket, "--namespace", namespace]
