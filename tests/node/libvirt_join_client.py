"""The control plane's side of a node join through the libvirt driver (tests/node/test_libvirt_node_join.py),
run where the control plane runs (the client network namespace for a host in its own namespace; this
machine's for a local host): a hosted control plane whose kube-apiserver listens at LISTEN_ADDRESS, a node VM
on the libvirt host at URI with the node network (its apiserver forward to LISTEN_ADDRESS, its kubelet port
forwarded on the host's address), its join, a pod, `kubectl logs`, and what the guest reaches (a
host-network pod's TCP probes). Prints one JSON line with the outcome.

Usage: python libvirt_join_client.py URI LISTEN_ADDRESS IMAGE_DIR WORK_DIR
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.models.core_v1 import Container, PodSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod

from trustedlaunch.control.hosted_control_plane import (
    ControlPlanePorts,
    HostedControlPlane,
    free_loopback_port,
)
from trustedlaunch.control.kubernetes_release import verified_release
from trustedlaunch.control.node_join import issue_kubelet_credentials, node_credential_validity
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version
from trustedlaunch.node.image import BUSYBOX, NodeImage
from trustedlaunch.node.kubelet import (
    APISERVER_GUEST_ADDRESS,
    APISERVER_GUEST_PORT,
    ATTESTATION_PENDING_TAINT,
    KubeletJoin,
    NodeNetwork,
    host_kubelet_address,
    node_addresses_patch,
)
from trustedlaunch.node.libvirt_driver import LibvirtDriver, LibvirtNodeVM

FQDN = "tests-rg-000000.hcp.local.trustedlaunch.internal"
NODE_NAME = "tl-libvirt-join-0"
BOOT_TIMEOUT = 600.0
JOIN_TIMEOUT = 600.0
POD_TIMEOUT = 300.0
PROBE_SECONDS = 5  # busybox nc's connect timeout per probe
MAX_LOG = 4000  # characters of a log kept in the outcome
LIBVIRTD_TCP_PORT = 16509


def wait_for(condition: Callable[[], Any], what: str, seconds: float, vm: LibvirtNodeVM) -> Any:
    """`condition()` once true; RuntimeError naming `what` (with kubelet's log) after `seconds`."""
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            status = vm.agent().channel.kubelet_status(60.0)
            lines = [line for line in status.kubelet_log.splitlines() if "mirror pod" not in line]
            raise RuntimeError(f"{what}: not within {seconds:.0f} s; kubelet: " + "\n".join(lines)[-MAX_LOG:])
        time.sleep(1.0)
    return result


def stored_node(client: Client) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = client.get(Node, NODE_NAME).to_dict()
    except ApiError as error:
        if error.status.code == 404:
            return None
        raise
    return found


def is_ready(node: dict[str, Any] | None) -> bool:
    conditions = (node or {}).get("status", {}).get("conditions") or []
    return any(condition["type"] == "Ready" and condition["status"] == "True" for condition in conditions)


def pod(name: str, command: str, host_network: bool = False) -> Pod:
    """A pod of the pre-loaded busybox image on the node (in the node's own network with `host_network`)."""
    return Pod(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=PodSpec(
            nodeSelector={"kubernetes.io/hostname": NODE_NAME},
            hostNetwork=host_network,
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


def run_pod(client: Client, vm: LibvirtNodeVM, plane: HostedControlPlane, manifest: Pod) -> dict[str, Any]:
    """Run `manifest` to its end; its phase and `kubectl logs` (apiserver -> the node's kubelet)."""
    assert manifest.metadata is not None and manifest.metadata.name is not None
    name = manifest.metadata.name
    client.create(manifest)

    def ended() -> str | None:
        status = client.get(Pod, name, namespace="default").status
        phase = status.phase if status is not None else None
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(ended, f"pod {name} ended", POD_TIMEOUT, vm)
    kubectl = str(plane.release.binary("kubectl"))
    logs = subprocess.run(
        [
            kubectl,
            f"--kubeconfig={plane.admin_kubeconfig}",
            "--request-timeout=60s",
            "logs",
            "-n",
            "default",
            name,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return {"phase": phase, "logs": logs.stdout[-MAX_LOG:], "kubectl": logs.returncode, "error": logs.stderr}


def probe_command(targets: list[tuple[str, int]]) -> str:
    """A shell loop that opens a TCP connection to each target from the guest (sending an HTTP request
    line) and prints `address:port rc=<nc's exit status: 0 once connected> answer=<the first bytes
    answered>`."""
    lines = []
    for address, port in targets:
        connect = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {PROBE_SECONDS} {address} {port} 2>/dev/null"
        answer = "$(printf %s \"${out%rc=*}\" | head -c 24 | tr -d '\\r\\n')"
        lines.append(
            f'out=$({connect}; echo "rc=$?"); echo "{address}:{port} rc=${{out##*rc=}} answer={answer}"'
        )
    return "; ".join(lines)


def qemu_seccomp(run_dir: Path) -> str:
    """The Seccomp line of the QEMU process whose command line names `run_dir`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes()[:65536].split(b"\0")
            if arguments[0].endswith(b"qemu-system-x86_64") and any(
                str(run_dir).encode() in a for a in arguments
            ):
                return next(
                    line
                    for line in (entry / "status").read_text().splitlines()
                    if line.startswith("Seccomp:")
                )
        except OSError:
            continue
    return "no QEMU"


def main(uri: str, listen_address: str, image_dir: str, work_dir: str) -> None:
    work, image, release = Path(work_dir), NodeImage.load(Path(image_dir)), verified_release()
    outcome: dict[str, Any] = {}
    plane = HostedControlPlane(
        release, work / "plane", FQDN, ControlPlanePorts.free(), listen_address=listen_address
    )
    driver: LibvirtDriver | None = None
    try:
        plane.start()
        plane.wait_ready(300.0)
        client = Client(KubeConfig.from_file(plane.admin_kubeconfig), field_manager="tests", trust_env=False)
        kubelet_address = host_kubelet_address(uri)
        network = NodeNetwork(
            plane.ports.apiserver,
            free_loopback_port(),
            apiserver_address=listen_address,
            kubelet_address=kubelet_address,
        )
        credentials = issue_kubelet_credentials(
            plane.pki, NODE_NAME, node_credential_validity(0), kubelet_address
        )
        join = KubeletJoin(
            NODE_NAME,
            FQDN,
            plane.pki.ca_cert.read_bytes(),
            credentials,
            network.kubelet_port,
            taints=(ATTESTATION_PENDING_TAINT,),
        )
        driver = LibvirtDriver(uri)
        outcome["hostname"] = driver.connection.getHostname()
        started = time.monotonic()
        with driver.create(image, work / "vm", secure_boot=False, vtpm=None, network=network) as vm:
            vm.wait_ready(BOOT_TIMEOUT)
            outcome["agent ready s"] = time.monotonic() - started
            outcome["kubelet"] = vm.agent().channel.start_kubelet(join.bundle(), 300.0)
            wait_for(lambda: stored_node(client), "Node registered", JOIN_TIMEOUT, vm)
            client.patch(Node.Status, NODE_NAME, node_addresses_patch(kubelet_address))
            client.patch(Node, NODE_NAME, {"spec": {"taints": None}})
            wait_for(lambda: is_ready(stored_node(client)), "Node Ready", JOIN_TIMEOUT, vm)
            outcome["ready s"] = time.monotonic() - started
            node = stored_node(client) or {}
            outcome["addresses"] = node["status"]["addresses"]
            outcome["kubelet port"] = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            outcome["network"] = {"kubelet": f"{kubelet_address}:{network.kubelet_port}"}
            outcome["hello"] = run_pod(client, vm, plane, pod("hello", f"echo hello from {NODE_NAME}"))
            # what the guest itself reaches: its apiserver through the forward, and nothing else the host
            # reaches (the gateway would be the host's loopback, the others are the host's routes)
            targets = [
                (APISERVER_GUEST_ADDRESS, APISERVER_GUEST_PORT),
                ("10.0.2.2", plane.ports.apiserver),
                ("10.0.2.2", network.kubelet_port),
            ]
            if listen_address != "127.0.0.1":
                targets.append((listen_address, plane.ports.apiserver))
            if kubelet_address != "127.0.0.1":
                targets += [(kubelet_address, network.kubelet_port), (kubelet_address, LIBVIRTD_TCP_PORT)]
            probe = pod("probe", probe_command(targets), host_network=True)
            outcome["probe"] = run_pod(client, vm, plane, probe)
            outcome["running after probes"] = vm.running
            outcome["qemu seccomp"] = qemu_seccomp(work / "vm")
    finally:
        if driver is not None:
            driver.close()
        plane.stop()
    print(json.dumps(outcome))


if __name__ == "__main__":
    main(*sys.argv[1:])
