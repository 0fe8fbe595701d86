"""Hosted control planes in the embedded mode (no endpoint: each `tl` command runs its own server and
reconciler): the processes of a cluster that `tl aks create` made outlive the command; a component that
died between commands is started again by the next command's reconciler with its data kept (the others
adopted); `tl aks delete` leaves no process and no data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from trustedlaunch.control.cluster_planes import HOSTED_CONTROL_PLANES_ENV
from trustedlaunch.control.hosted_control_plane import (
    COMPONENTS,
    control_plane_processes,
    stop_control_plane_processes,
)
from trustedlaunch.control.kubernetes_release import KubernetesRelease, cache_root
from trustedlaunch.control.node_processes import kill_node_processes

pytestmark = pytest.mark.slow

CLUSTER = ["-g", "rg-emb", "-n", "emb"]
CONFIG_MAP = """apiVersion: v1
kind: ConfigMap
metadata: {name: kept, namespace: default}
data: {written: before-etcd-died}
"""


def running(data_dir: Path) -> dict[str, int]:
    """Component -> pid of the cluster's live control-plane processes."""
    return {name: pid for pid, name in control_plane_processes(data_dir).items()}


def test_control_plane_outlives_embedded_commands(
    kubernetes_release: KubernetesRelease, tmp_path: Path
) -> None:
    # the node VM's sockets live under the data dir: a short one of its own (unix socket paths are <= 107
    # bytes, which pytest's per-test directories under CI's default temp root need not leave room for)
    data = Path(tempfile.mkdtemp(prefix="tl-emb-"))
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(data),
        "XDG_CACHE_HOME": str(cache_root().parent.parent),  # the release `make setup` built
        "TL_DATABASE_URL": f"sqlite:///{tmp_path / 'tl.db'}",
        HOSTED_CONTROL_PLANES_ENV: "1",
    }
    for setting in ("TL_ENDPOINT", "TL_TOKEN"):
        env.pop(setting, None)
    clusters = data / "trustedlaunch" / "nodes" / "clusters"

    def tl(*arguments: str) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "tl"), *arguments]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"tl {' '.join(arguments)}: {done.stderr[-4000:]}"
        return done

    def kubectl(*arguments: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [
            str(kubernetes_release.binary("kubectl")),
            f"--kubeconfig={tmp_path / 'admin.kubeconfig'}",
            f"--cache-dir={tmp_path / 'kube-cache'}",
            "--request-timeout=10s",
            *arguments,
        ]
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60, check=check)

    try:
        tl("group", "create", "-n", "rg-emb", "-l", "eastus")
        tl("aks", "create", *CLUSTER, "--node-count", "1", "--generate-ssh-keys")
        (data_dir,) = clusters.iterdir()
        before = running(data_dir)
        assert sorted(before) == sorted(COMPONENTS)  # the command has exited; its control plane runs on
        tl("aks", "get-credentials", *CLUSTER, "--admin", "-f", str(tmp_path / "admin.kubeconfig"))
        kubectl("apply", "-f", "-", stdin=CONFIG_MAP)

        os.kill(before["etcd"], signal.SIGKILL)  # dies between two commands: nobody restarts it yet
        deadline = time.monotonic() + 10
        while "etcd" in running(data_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "etcd" not in running(data_dir)

        for _ in range(5):  # each command's reconciler adopts the state directory as soon as it starts
            tl("aks", "show", *CLUSTER)
            if "etcd" in running(data_dir):
                break
        after = running(data_dir)
        assert sorted(after) == sorted(COMPONENTS)
        assert after["etcd"] != before["etcd"]
        for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler"):
            assert after[component] == before[component], f"{component} was not adopted"
        deadline = time.monotonic() + 60
        while (kept := kubectl("get", "configmap", "kept", "-o", "json", check=False)).returncode != 0:
            assert time.monotonic() < deadline, kept.stderr  # kube-apiserver reconnects to the new etcd
            time.sleep(1)
        assert json.loads(kept.stdout)["data"] == {"written": "before-etcd-died"}  # etcd's data kept

        tl("aks", "delete", *CLUSTER, "--yes")
        assert control_plane_processes(data_dir) == {} and not data_dir.exists()
        assert list(clusters.iterdir()) == []
    finally:
        for directory in clusters.glob("c*") if clusters.is_dir() else []:
            stop_control_plane_processes(directory)
        kill_node_processes(data)
        shutil.rmtree(data, ignore_errors=True)
