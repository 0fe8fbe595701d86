"""The join bundle and network a node VM is given (trustedlaunch.node.kubelet): fixed files the agent
places, a kubeconfig naming the cluster by its FQDN with the node's own client certificate, a kubelet
configuration for a systemd-less cgroup v2 node, a bounded size; names and ports checked."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from importlib import resources

import pytest
import yaml

from trustedlaunch.node.container_images import PRELOADED_IMAGE_LABELS
from trustedlaunch.node.image import BUSYBOX
from trustedlaunch.node.kubelet import (
    APISERVER_GUEST_ADDRESS,
    ATTESTATION_PENDING_TAINT,
    CREDENTIAL_FILES,
    JOIN_FILES,
    MAX_CREDENTIALS_BUNDLE_SIZE,
    MAX_JOIN_BUNDLE_SIZE,
    KubeletCredentials,
    KubeletJoin,
    NodeJoinError,
    NodeNetwork,
    host_kubelet_address,
)

FQDN = "tests-rg-000000.hcp.local.trustedlaunch.internal"


CREDENTIALS = KubeletCredentials(
    b"-----CERT-----\n", b"-----KEY-----\n", b"-----SERVING-----\n", b"-----SKEY-----\n"
)


def join(**changes: object) -> KubeletJoin:
    fields: dict[str, object] = {
        "node_name": "tl-node-0",
        "fqdn": FQDN,
        "ca_pem": b"-----CA-----\n",
        "credentials": CREDENTIALS,
        "kubelet_port": 40123,
        "taints": (ATTESTATION_PENDING_TAINT,),
    }
    return KubeletJoin(**(fields | changes))  # type: ignore[arg-type]


def bundle_files(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {member.name: tar.extractfile(member).read().decode() for member in tar}  # type: ignore[union-attr]


def test_the_bundle_holds_exactly_the_files_the_agent_places() -> None:
    data = join().bundle()
    assert data == join().bundle()  # fixed times and owners
    files = bundle_files(data)
    assert tuple(files) == JOIN_FILES
    assert files["node-name"] == "tl-node-0\n"
    assert files["hosts"] == f"{APISERVER_GUEST_ADDRESS} {FQDN}\n"
    kubeconfig = yaml.safe_load(files["kubelet.conf"])
    [cluster] = kubeconfig["clusters"]
    assert cluster["cluster"]["server"] == f"https://{FQDN}:443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == b"-----CA-----\n"
    [user] = kubeconfig["users"]  # files, which client-go reloads when the agent replaces them
    assert user["user"] == {
        "client-certificate": "/etc/kubernetes/pki/kubelet-client.crt",
        "client-key": "/etc/kubernetes/pki/kubelet-client.key",
    }
    assert (files["kubelet-client.crt"], files["kubelet-server.key"]) == (
        "-----CERT-----\n",
        "-----SKEY-----\n",
    )
    config = yaml.safe_load(files["config.yaml"])
    assert (config["kind"], config["cgroupDriver"], config["port"]) == (
        "KubeletConfiguration",
        "cgroupfs",
        40123,
    )
    assert config["authorization"] == {"mode": "Webhook"}
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["registerWithTaints"] == [ATTESTATION_PENDING_TAINT]
    assert config["maxPods"] == 110  # kubelet's (and AKS's kubenet) default
    assert (config["tlsCertFile"], config["tlsPrivateKeyFile"], config["rotateCertificates"]) == (
        "/etc/kubernetes/pki/kubelet-server.crt",
        "/etc/kubernetes/pki/kubelet-server.key",
        False,
    )
    [bridge] = json.loads(files["cni.conflist"])["plugins"]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.0.0/24"}]]


def test_the_pools_taints_and_max_pods_go_into_the_kubelet_configuration() -> None:
    """A pool's nodeTaints register with the Node beside the attestation pending taint (so no pod that does
    not tolerate them lands there first), and its maxPods is the kubelet's (the Node's capacity.pods)."""
    pool_taint = {"key": "sku", "value": "gpu", "effect": "NoSchedule"}
    files = bundle_files(join(taints=(ATTESTATION_PENDING_TAINT, pool_taint), max_pods=30).bundle())
    config = yaml.safe_load(files["config.yaml"])
    assert config["registerWithTaints"] == [ATTESTATION_PENDING_TAINT, pool_taint]
    assert config["maxPods"] == 30


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"node_name": "Node_0"}, "node name 'Node_0'"),
        ({"node_name": "a" * 64}, "node name"),
        ({"node_name": "x\n10.0.0.1 evil"}, "node name"),
        ({"fqdn": "evil.example\n1.2.3.4 other"}, "cluster FQDN"),
        (
            {"credentials": KubeletCredentials(b"", bytes(MAX_JOIN_BUNDLE_SIZE), b"", b"")},
            f"exceeds {MAX_JOIN_BUNDLE_SIZE} bytes",
        ),
    ],
)
def test_a_bad_name_or_an_oversized_bundle_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(NodeJoinError, match=message):
        join(**changes).bundle()


def test_the_credentials_bundle_holds_the_four_files_the_agent_replaces() -> None:
    files = bundle_files(CREDENTIALS.bundle())
    assert files == {
        "kubelet-client.crt": "-----CERT-----\n",
        "kubelet-client.key": "-----KEY-----\n",
        "kubelet-server.crt": "-----SERVING-----\n",
        "kubelet-server.key": "-----SKEY-----\n",
    }
    with pytest.raises(NodeJoinError, match=f"exceeds {MAX_CREDENTIALS_BUNDLE_SIZE} bytes"):
        KubeletCredentials(bytes(MAX_CREDENTIALS_BUNDLE_SIZE), b"", b"", b"").bundle()


def test_the_network_forwards_only_the_apiserver_and_the_kubelet_port() -> None:
    netdev, device = NodeNetwork(6443, 40123).qemu_arguments()[1::2]
    assert device == "virtio-net-pci,netdev=net0"
    options = netdev.split(",")
    assert "restrict=on" in options
    assert f"guestfwd=tcp:{APISERVER_GUEST_ADDRESS}:443-cmd:{BUSYBOX} nc 127.0.0.1 6443" in options
    assert "hostfwd=tcp:127.0.0.1:40123-10.0.2.15:40123" in options
    with pytest.raises(NodeJoinError, match="port 0 is not a TCP port"):
        NodeNetwork(0, 40123)
    for address, refusal in (
        ("0.0.0.0", "not an IPv4 address of one interface"),
        ("::1", "not an IPv4 address of one interface"),
        ("10.0.0.1,hostfwd=tcp::1-:1", "is not an IP address"),
    ):
        with pytest.raises(NodeJoinError, match=refusal):
            NodeNetwork(6443, 40123, kubelet_address=address)
        with pytest.raises(NodeJoinError, match=refusal):
            NodeNetwork(6443, 40123, apiserver_address=address)


def test_the_kubelet_address_of_a_host_is_its_uris_address() -> None:
    assert host_kubelet_address(None) == "127.0.0.1"  # the direct driver, on this machine
    assert host_kubelet_address("qemu:///system?socket=/tmp/h/run/libvirt-sock") == "127.0.0.1"
    assert host_kubelet_address("qemu+tcp://10.254.1.2/system") == "10.254.1.2"
    assert host_kubelet_address("qemu+ssh://root@localhost:2222/system") == "127.0.0.1"
    with pytest.raises(NodeJoinError, match="has no IPv4 address"):
        host_kubelet_address("qemu+tls://no-such-host.invalid/system")


def test_the_agent_pins_imports_with_the_label_the_cri_pins_by() -> None:
    agent = resources.files("trustedlaunch.node").joinpath("agent/init.sh").read_text()
    [(key, value)] = PRELOADED_IMAGE_LABELS.items()
    assert f"PINNED_LABEL={key}={value}\n" in agent
    assert f'CREDENTIAL_FILES="{" ".join(CREDENTIAL_FILES)}"' in agent
    assert f'JOIN_FILES="{" ".join(JOIN_FILES[:6])} $CREDENTIAL_FILES"' in agent
