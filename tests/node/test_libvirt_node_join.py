"""A node VM booted through the libvirt driver joins a hosted control plane over the node network
(trustedlaunch.node.kubelet, trustedlaunch.node.libvirt_driver): on a host in its own network namespace
reached over TCP from the client namespace, where the control plane runs with its kube-apiserver at the
namespaces' control address (TL_NODE_NETWORK_ADDRESS in production), and on a local host with the control
plane on loopback. The Node becomes Ready with the host's address as its InternalIP, a pod runs on it,
`kubectl logs` reaches its kubelet through the host's forward, and the guest reaches its apiserver and no
other address its host reaches. The control plane's side runs in tests/node/libvirt_join_client.py."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trustedlaunch.control.hosted_control_plane import stop_control_plane_processes
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_host import CONTROL_ADDRESS, LibvirtHost, NamespaceNetwork

pytestmark = pytest.mark.slow
CLIENT = Path(__file__).with_name("libvirt_join_client.py")
CLIENT_TIMEOUT = 2400.0  # a plane, a TCG boot, a join and three pods on a loaded 2-core machine
NODE_NAME = "tl-libvirt-join-0"


@pytest.fixture
def work_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="tl-lvj-"))  # short: unix socket paths
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def join_through(
    prefix: list[str], uri: str, listen_address: str, image: NodeImage, work: Path
) -> dict[str, Any]:
    """Run the control plane's side (libvirt_join_client.py) under `prefix`; its outcome."""
    tests = Path(__file__).parent
    path = [str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
    command = [
        *prefix,
        sys.executable,
        str(CLIENT),
        uri,
        listen_address,
        str(image.esp_dir.parent),
        str(work),
    ]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=environment
        )
    finally:
        stop_control_plane_processes(work / "plane")  # those of a client killed at its timeout
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
    outcome: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    print(f"libvirt join: {outcome}")
    return outcome


def probe_answers(outcome: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (nc's exit status: 0 once connected, what the guest was answered there)."""
    assert outcome["probe"]["phase"] == "Succeeded", outcome["probe"]
    answers = {}
    for line in outcome["probe"]["logs"].splitlines():
        target, _, result = line.partition(" rc=")
        status, _, answer = result.partition(" answer=")
        answers[target] = (status, answer)
    return answers


def assert_only_the_apiserver_reached(outcome: dict[str, Any], others: int) -> None:
    """The guest reached its apiserver through the forward (a TLS port's answer to plain HTTP), and did
    not connect to any of the `others` targets its host reaches."""
    answers = probe_answers(outcome)
    status, answer = answers.pop("10.0.2.100:443")
    assert status == "0" and answer.startswith("HTTP/1.0 400"), outcome["probe"]
    assert len(answers) == others, answers
    assert all(status != "0" and answer == "" for status, answer in answers.values()), answers


def assert_joined(outcome: dict[str, Any], kubelet_address: str) -> None:
    assert "kubelet started" in outcome["kubelet"], outcome["kubelet"]
    assert outcome["addresses"][0] == {"type": "InternalIP", "address": kubelet_address}
    assert outcome["network"]["kubelet"] == f"{kubelet_address}:{outcome['kubelet port']}"
    hello = outcome["hello"]
    assert hello["phase"] == "Succeeded" and hello["kubectl"] == 0, hello
    assert hello["logs"] == f"hello from {NODE_NAME}\n"  # kubectl logs: the apiserver reached the kubelet
    assert outcome["running after probes"]  # the guestfwd's spawns are allowed by the domain's sandbox
    assert outcome["qemu seccomp"].split() == ["Seccomp:", "2"]  # ... which is still on


def test_a_node_on_a_host_in_its_own_namespace_joins_over_the_node_network(
    join_image: NodeImage, work_dir: Path
) -> None:
    network = NamespaceNetwork(f"tl-{secrets.token_hex(3)}")
    try:
        namespace, address = network.add_host()
        host = LibvirtHost(work_dir / "host", namespace=namespace, address=address)
        try:
            host.start()
            outcome = join_through(
                ["ip", "netns", "exec", network.client],
                host.tcp_uri,
                CONTROL_ADDRESS,
                join_image,
                work_dir / "c",
            )
            assert not host.qemu_pids()  # the client destroyed its domain
        finally:
            host.remove()
    finally:
        network.remove()
    assert_joined(outcome, address)
    # not the control plane's address, its own kubelet port or libvirtd on its host's, the host's loopback
    assert_only_the_apiserver_reached(outcome, others=5)


def test_a_node_on_a_local_host_joins_over_loopback(join_image: NodeImage, work_dir: Path) -> None:
    with LibvirtHost(work_dir / "host") as host:
        outcome = join_through([], host.uri, "127.0.0.1", join_image, work_dir / "c")
        assert not host.qemu_pids()
    assert_joined(outcome, "127.0.0.1")
    assert_only_the_apiserver_reached(outcome, others=2)  # not the apiserver or its kubelet on loopback
