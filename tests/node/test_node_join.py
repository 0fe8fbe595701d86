"""A node VM joins a real cluster: given its kubelet credential over its agent channel, it runs containerd and
kubelet from its dm-verity root filesystem, registers with the hosted control plane's kube-apiserver as
itself, becomes Ready, runs a pod of its pre-loaded images, and `kubectl logs` reaches its kubelet through
the node's port on the host's loopback (trustedlaunch.node.kubelet)."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cached_kubectl import kubectl
from kube_apiserver import FQDN, admin_client
from lightkube import Client
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod

from trustedlaunch.control.hosted_control_plane import (
    HostedControlPlane,
    free_loopback_port,
    resident_memory_bytes,
)
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_join import issue_kubelet_credentials, node_credential_validity
from trustedlaunch.node.channel import AgentError
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version
from trustedlaunch.node.image import BUSYBOX, NodeImage
from trustedlaunch.node.kubelet import (
    ATTESTATION_PENDING_TAINT,
    CLOUD_UNINITIALIZED_TAINT_KEY,
    KubeletJoin,
    NodeNetwork,
    node_addresses_patch,
)
from trustedlaunch.node.qemu import NodeVM

pytestmark = pytest.mark.slow
NODE_NAME = "tl-join-node-0"
JOIN_SECONDS = 600.0  # node VM start -> Ready under software emulation on a loaded 2-core machine


def wait_for(condition: Callable[[], Any], what: str, seconds: float, node: NodeVM | None = None) -> Any:
    """Poll `condition` until it returns something true (returned); fails naming `what` after `seconds`,
    with the node's kubelet and containerd log tails."""
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            detail = ""
            if node is not None:
                status = node.kubelet_status()
                detail = (
                    f"\nkubelet {status.kubelet}:\n{status.kubelet_log}\ncontainerd {status.containerd}:\n"
                )
                detail += status.containerd_log
            pytest.fail(f"{what}: not within {seconds:.0f} s{detail}")
        time.sleep(0.5)
    return result


def node_or_none(client: Client, name: str) -> dict[str, Any] | None:
    nodes = [node.to_dict() for node in client.list(Node) if node.metadata and node.metadata.name == name]
    return nodes[0] if nodes else None


def is_ready(node: dict[str, Any] | None) -> bool:
    conditions = (node or {}).get("status", {}).get("conditions") or []
    return any(condition["type"] == "Ready" and condition["status"] == "True" for condition in conditions)


def only_node_name() -> bytes:
    """A tar archive holding only the first file of a join bundle."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("node-name")
        info.size = len(NODE_NAME)
        tar.addfile(info, io.BytesIO(NODE_NAME.encode()))
    return out.getvalue()


@pytest.fixture(scope="module")
def joined(
    join_image: NodeImage, kube_apiserver: HostedControlPlane, node_base: Path
) -> Iterator[tuple[NodeVM, dict[str, float]]]:
    """The node VM, joined and Ready (after refusing two malformed bundles); the figures of its join."""
    network = NodeNetwork(kube_apiserver.ports.apiserver, free_loopback_port())
    run_dir = Path(tempfile.mkdtemp(prefix="tl-join-", dir=node_base))
    client = admin_client(kube_apiserver)
    join = KubeletJoin(
        NODE_NAME,
        FQDN,
        kube_apiserver.pki.ca_cert.read_bytes(),
        issue_kubelet_credentials(kube_apiserver.pki, NODE_NAME, node_credential_validity(0)),
        network.kubelet_port,
        taints=(ATTESTATION_PENDING_TAINT,),
    )
    figures: dict[str, float] = {}
    node = NodeVM(join_image, run_dir / "vm", secure_boot=False, network=network)
    started = time.monotonic()
    with node:
        node.wait_ready(300.0)
        figures["agent ready"] = time.monotonic() - started
        for bundle, refusal in (
            (b"not a tar archive", "the join bundle is not base64 of a tar archive"),
            (only_node_name(), "the join bundle has no hosts"),
        ):
            with pytest.raises(AgentError, match=f"KUBELET failed: {refusal}"):
                node.start_kubelet(bundle)
        detail = node.start_kubelet(join.bundle())
        assert "kubelet started" in detail, detail
        print(f"the node's join:\n{detail}")
        figures["kubelet started"] = time.monotonic() - started
        registered = wait_for(lambda: node_or_none(client, NODE_NAME), "Node registered", JOIN_SECONDS, node)
        figures["node registered"] = time.monotonic() - started
        taints = [taint["key"] for taint in registered["spec"].get("taints") or []]
        assert ATTESTATION_PENDING_TAINT["key"] in taints and CLOUD_UNINITIALIZED_TAINT_KEY in taints
        # what the control plane does as the cloud node controller (and, after attestation, the next slice)
        client.patch(Node.Status, NODE_NAME, node_addresses_patch())
        client.patch(Node, NODE_NAME, {"spec": {"taints": None}})
        wait_for(lambda: is_ready(node_or_none(client, NODE_NAME)), "Node Ready", JOIN_SECONDS, node)
        figures["node ready"] = time.monotonic() - started
        figures["qemu rss mib"] = resident_memory_bytes(node.pid or 0) / 2**20
        yield node, figures


def test_the_node_registers_as_itself_and_becomes_ready(
    joined: tuple[NodeVM, dict[str, float]], kube_apiserver: HostedControlPlane
) -> None:
    node, figures = joined
    stored = admin_client(kube_apiserver).get(Node, NODE_NAME).to_dict()
    assert stored["metadata"]["labels"]["kubernetes.io/hostname"] == NODE_NAME
    assert stored["status"]["nodeInfo"]["kubeletVersion"] == "v1.36.3"
    assert stored["status"]["nodeInfo"]["containerRuntimeVersion"] == "containerd://2.3.7"
    # the address the control plane set (kubelet adds its Hostname, which the apiserver tries last)
    assert stored["status"]["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert {"type": "Hostname", "address": NODE_NAME} in stored["status"]["addresses"]
    assert stored["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == node.network.kubelet_port  # type: ignore[union-attr]
    status = node.kubelet_status()
    assert (status.kubelet, status.containerd) == ("running", "running")
    figures["guest ram mib"] = status.memory_total_kib / 1024
    figures["guest available mib"] = status.memory_available_kib / 1024
    print(f"join figures: {figures} (guest RAM set: {node.memory_mib} MiB)")


def test_the_node_takes_one_join_only(joined: tuple[NodeVM, dict[str, float]]) -> None:
    node, _ = joined
    with pytest.raises(AgentError, match="KUBELET failed: kubelet was already started"):
        node.start_kubelet(b"another")


def busybox_pod(name: str, command: str) -> Pod:
    """A pod of the pre-loaded busybox image on NODE_NAME (by its hostname label, through the scheduler)."""
    return Pod(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=PodSpec(
            nodeSelector={"kubernetes.io/hostname": NODE_NAME},
            restartPolicy="Never",
            automountServiceAccountToken=False,
            terminationGracePeriodSeconds=0,
            containers=[
                Container(
                    name=name,
                    image=f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}",
                    imagePullPolicy="IfNotPresent",
                    command=["sh", "-c", command],
                )
            ],
        ),
    )


def pod_phase(client: Client, name: str) -> str:
    status = client.get(Pod, name, namespace="default").status
    return (status.phase if status is not None else None) or "Pending"


def test_a_pod_runs_on_the_node_and_kubectl_logs_shows_its_output(
    joined: tuple[NodeVM, dict[str, float]],
    kube_apiserver: HostedControlPlane,
    kubernetes_release: KubernetesRelease,
) -> None:
    node, figures = joined
    client = admin_client(kube_apiserver)
    created = time.monotonic()
    client.create(busybox_pod("hello", f"echo hello from {NODE_NAME}"))
    ended = wait_for(
        lambda: (phase := pod_phase(client, "hello")) in ("Succeeded", "Failed") and phase,
        "pod hello ended",
        300.0,
        node,
    )
    figures["pod create -> succeeded"] = time.monotonic() - created
    assert ended == "Succeeded"
    stored = client.get(Pod, "hello", namespace="default").to_dict()
    assert stored["spec"]["nodeName"] == NODE_NAME
    assert stored["status"]["podIP"].startswith("10.244.0.")  # from the CNI bridge's range
    logs = kubectl(kubernetes_release, kube_apiserver.admin_kubeconfig, "logs", "-n", "default", "hello")
    assert logs.stdout == f"hello from {NODE_NAME}\n"
    print(f"join figures: {figures}")


def test_kubectl_exec_reaches_a_container_on_the_node(
    joined: tuple[NodeVM, dict[str, float]],
    kube_apiserver: HostedControlPlane,
    kubernetes_release: KubernetesRelease,
) -> None:
    node, figures = joined
    client = admin_client(kube_apiserver)
    created = time.monotonic()
    client.create(busybox_pod("sleeper", "trap 'exit 0' TERM; sleep 3600 & wait"))
    wait_for(lambda: pod_phase(client, "sleeper") == "Running", "pod sleeper running", 300.0, node)
    figures["pod create -> running"] = time.monotonic() - created
    executed = kubectl(
        kubernetes_release,
        kube_apiserver.admin_kubeconfig,
        *("exec", "-n", "default", "sleeper", "--", "sh", "-c", "echo exec in $(hostname) as uid $(id -u)"),
    )
    assert executed.stdout == "exec in sleeper as uid 0\n"
    client.delete(Pod, "sleeper", namespace="default")
    print(f"join figures: {figures}")
