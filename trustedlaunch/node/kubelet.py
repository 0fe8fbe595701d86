"""What a node VM needs to join its cluster: the network between the node and its host, and the join bundle
the agent receives (agent request KUBELET) before it starts containerd and kubelet from its verified root
filesystem.

Network (QEMU user networking, `restrict=on`: the guest reaches nothing by default), the same under the
direct driver (QEMU arguments) and the libvirt driver (the same arguments passed through the domain):
- node -> kube-apiserver: a `guestfwd` from APISERVER_GUEST_ADDRESS:APISERVER_GUEST_PORT to the cluster's
  kube-apiserver at <apiserver address>:<port> (127.0.0.1 on the control plane's own machine, else the
  control plane's node network address), in its `cmd:` form: QEMU runs one `busybox nc <address> <port>`
  on the VM's host per connection the guest opens (the `tcp:` chardev form serves a single connection, and
  kubelet opens several: its client, its watches, its lease and the authorization webhook's). The kubelet
  reaches the apiserver by the cluster FQDN (the serving certificate's SAN), mapped to that guest address
  in the node's /etc/hosts.
- kube-apiserver -> kubelet (`kubectl logs`/`exec`): a `hostfwd` from <kubelet address>:<kubelet port> on
  the VM's host (127.0.0.1 on the control plane's machine, else the host's own address, never 0.0.0.0) to
  the same port in the guest, where kubelet listens. The kubelet runs with `--cloud-provider=external`: it
  does not publish the guest's own address (10.0.2.15, which nobody outside the VM reaches) and registers
  with the `node.cloudprovider.kubernetes.io/uninitialized` taint; the control plane, as a cloud node
  controller does, sets the Node's InternalIP to the kubelet address (`node_addresses_patch`) and removes
  that taint. The Node's daemonEndpoints carry kubelet's port, so the apiserver dials <kubelet address>:
  <kubelet port>, which is that node.

Credentials (KubeletCredentials): the kubelet's client certificate and its serving certificate, both of the
cluster CA, are files on the node's tmpfs (CREDENTIALS_DIR) that the kubeconfig and the kubelet
configuration name; the agent replaces them (request KUBELETCERTS, a bundle of CREDENTIAL_FILES) when the
control plane renews them, and kubelet reloads them: the client certificate through client-go's
certificate files reload, the serving certificate through ReloadKubeletServerCertificateFile.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import re
import shlex
import socket
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.image import BUSYBOX

NODE_INTERNAL_IP = "127.0.0.1"  # a local node's InternalIP: where the apiserver dials its kubelet
NODE_ADDRESS = "10.0.2.15"  # the guest's eth0 (QEMU user networking's first DHCP address, set statically)
APISERVER_GUEST_ADDRESS = "10.0.2.100"  # where the node reaches its cluster's kube-apiserver
APISERVER_GUEST_PORT = 443
DEFAULT_POD_CIDR = "10.244.0.0/24"
DEFAULT_MAX_PODS = 110  # kubelet's own default (and AKS's for kubenet)
ATTESTATION_PENDING_TAINT = {
    "key": "kubernetes.azure.com/attestation",
    "value": "pending",
    "effect": "NoSchedule",
}
CLOUD_UNINITIALIZED_TAINT_KEY = "node.cloudprovider.kubernetes.io/uninitialized"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
CREDENTIALS_DIR = "/etc/kubernetes/pki"  # on the node's tmpfs (agent/init.sh: ROOTFS_TMPFS)
# The kubelet's credentials: client certificate and key, serving certificate and key (PEM files).
CREDENTIAL_FILES = ("kubelet-client.crt", "kubelet-client.key", "kubelet-server.crt", "kubelet-server.key")
# The files of a join bundle (a tar archive; agent/init.sh places each one).
JOIN_FILES = (
    "node-name",
    "hosts",
    "kubelet.conf",
    "ca.crt",
    "config.yaml",
    "cni.conflist",
    *CREDENTIAL_FILES,
)
MAX_JOIN_BUNDLE_SIZE = 48 * 1024  # bytes; the agent refuses more than its base64 (MAX_BUNDLE_CHARS)
MAX_CREDENTIALS_BUNDLE_SIZE = 12 * 1024  # bytes; the agent refuses more than its base64 (MAX_CERTS_CHARS)
# Room for a pool's registration taints in the kubelet configuration (registration_taints_size): with the
# largest rest of a bundle (longest names, the cluster's CA and credentials) the bundle stays within
# MAX_JOIN_BUNDLE_SIZE (its tar records included); the API refuses a pool whose taints need more.
MAX_REGISTRATION_TAINTS_SIZE = 24 * 1024
_NODE_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
_FQDN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


class NodeJoinError(TrustedLaunchError):
    """A node's join bundle or network cannot be made as asked (bad name, address or port)."""


@dataclass(frozen=True)
class NodeNetwork:
    """A node VM's network: where its host reaches its cluster's kube-apiserver (`apiserver_address`:
    `apiserver_port`) and the address and port on its host forwarded to its kubelet (`kubelet_address`:
    `kubelet_port`; kubelet listens on the same port in the guest). Both addresses are 127.0.0.1 for a VM
    on the control plane's own machine."""

    apiserver_port: int
    kubelet_port: int
    apiserver_address: str = NODE_INTERNAL_IP
    kubelet_address: str = NODE_INTERNAL_IP

    def __post_init__(self) -> None:
        for port in (self.apiserver_port, self.kubelet_port):
            if not 0 < port < 65536:
                raise NodeJoinError(f"port {port} is not a TCP port")
        for address in (self.apiserver_address, self.kubelet_address):
            try:
                parsed = ipaddress.ip_address(address)
            except ValueError:
                raise NodeJoinError(f"{address!r} is not an IP address") from None
            if parsed.version != 4 or parsed.is_unspecified:
                raise NodeJoinError(f"{address} is not an IPv4 address of one interface")

    def netdev(self, busybox: Path = BUSYBOX) -> str:
        """QEMU's `-netdev` option: user networking (restrict=on) with the two forwards; `busybox` is the
        path of busybox on the VM's host."""
        bridge = f"{shlex.quote(str(busybox))} nc {self.apiserver_address} {self.apiserver_port}"
        return (
            "user,id=net0,restrict=on,net=10.0.2.0/24,"
            f"guestfwd=tcp:{APISERVER_GUEST_ADDRESS}:{APISERVER_GUEST_PORT}-cmd:{bridge},"
            f"hostfwd=tcp:{self.kubelet_address}:{self.kubelet_port}-{NODE_ADDRESS}:{self.kubelet_port}"
        )

    def qemu_arguments(self, busybox: Path = BUSYBOX) -> list[str]:
        """QEMU's user network (`netdev`) on a virtio NIC (the guest's eth0)."""
        return ["-netdev", self.netdev(busybox), "-device", "virtio-net-pci,netdev=net0"]


def uri_is_this_machine(uri: str | None) -> bool:
    """Whether a VM host's libvirt `uri` names this machine: no URI (the direct driver), or one without a
    host name (qemu:///system, qemu+unix:///...: a libvirtd sharing this machine's files and loopback)."""
    return not uri or not urlsplit(uri).hostname


def host_kubelet_address(uri: str | None) -> str:
    """Where the control plane reaches the kubelet ports a VM host forwards: 127.0.0.1 for this machine (no
    libvirt `uri`, or one without a host name: a local libvirtd), else the IPv4 address of `uri`'s host
    (resolved here: the Node's InternalIP and the kubelet serving certificate need an address).
    NodeJoinError if it has none."""
    if uri_is_this_machine(uri):
        return NODE_INTERNAL_IP
    host = urlsplit(uri).hostname
    try:
        found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise NodeJoinError(f"the host of libvirt URI {uri} has no IPv4 address: {error}") from None
    return str(found[0][4][0])


def check_node_name(name: str) -> str:
    """`name` if it is a DNS label-style node name (lowercase, at most 63 characters), else NodeJoinError."""
    if _NODE_NAME.fullmatch(name) is None:
        raise NodeJoinError(f"node name {name!r} is not 1-63 of [a-z0-9.-], starting and ending alphanumeric")
    return name


def kubelet_configuration(
    kubelet_port: int, taints: list[dict[str, str]], max_pods: int = DEFAULT_MAX_PODS
) -> dict[str, Any]:
    """The node's KubeletConfiguration: cgroupfs on cgroup v2 (no systemd), containerd's CRI socket, client
    certificates of the cluster CA and webhook authorization for the apiserver's calls, the serving
    certificate from CREDENTIALS_DIR (reloaded when replaced; never rotated by kubelet itself), `taints` at
    registration, at most `max_pods` pods (the Node's capacity.pods), no image garbage collection (the
    pre-loaded images cannot be pulled again)."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_ADDRESS,
        "port": kubelet_port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCKET}",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": f"{CREDENTIALS_DIR}/ca.crt"},
        },
        "tlsCertFile": f"{CREDENTIALS_DIR}/kubelet-server.crt",
        "tlsPrivateKeyFile": f"{CREDENTIALS_DIR}/kubelet-server.key",
        "authorization": {"mode": "Webhook"},
        "registerWithTaints": taints,
        "maxPods": max_pods,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "32Mi", "nodefs.available": "5%", "imagefs.available": "5%"},
    }


def registration_taints_size(taints: list[dict[str, str]]) -> int:
    """The bytes `taints` (Kubernetes JSON form) take in a join bundle's kubelet configuration."""
    return len(yaml.safe_dump({"registerWithTaints": taints}).encode())


def kubelet_kubeconfig(fqdn: str, ca_pem: bytes) -> str:
    """The kubelet's kubeconfig: the cluster's apiserver by its FQDN, the client certificate and key as
    files in CREDENTIALS_DIR (client-go reloads files, never embedded data)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    server = f"https://{fqdn}:{APISERVER_GUEST_PORT}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "cluster", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}
        ],
        "users": [
            {
                "name": "kubelet",
                "user": {
                    "client-certificate": f"{CREDENTIALS_DIR}/kubelet-client.crt",
                    "client-key": f"{CREDENTIALS_DIR}/kubelet-client.key",
                },
            }
        ],
        "contexts": [{"name": "kubelet", "context": {"cluster": "cluster", "user": "kubelet"}}],
        "current-context": "kubelet",
    }
    return yaml.safe_dump(config, sort_keys=False)


def cni_configuration(pod_cidr: str) -> dict[str, Any]:
    """The pods' network: a `cni0` bridge with host-local addresses from `pod_cidr` (the bridge is their
    gateway; no masquerading: pods reach only their node)."""
    network = ipaddress.ip_network(pod_cidr)
    return {
        "cniVersion": "1.0.0",
        "name": "trustedlaunch-pods",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": str(network)}]]},
            }
        ],
    }


def _tar(files: dict[str, bytes]) -> bytes:
    """A tar archive of `files` in their order, with fixed times and owners, each 0600."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class KubeletCredentials:
    """The kubelet's client certificate (CN=system:node:<name>, O=system:nodes) and key and its serving
    certificate and key, PEM, all of the cluster CA."""

    client_cert_pem: bytes
    client_key_pem: bytes
    serving_cert_pem: bytes
    serving_key_pem: bytes

    def files(self) -> dict[str, bytes]:
        """The files of CREDENTIAL_FILES."""
        contents = (self.client_cert_pem, self.client_key_pem, self.serving_cert_pem, self.serving_key_pem)
        return dict(zip(CREDENTIAL_FILES, contents, strict=True))

    def bundle(self) -> bytes:
        """The renewal bundle (agent request KUBELETCERTS): a tar of CREDENTIAL_FILES, at most
        MAX_CREDENTIALS_BUNDLE_SIZE bytes."""
        data = _tar(self.files())
        if len(data) > MAX_CREDENTIALS_BUNDLE_SIZE:
            raise NodeJoinError(f"credentials bundle exceeds {MAX_CREDENTIALS_BUNDLE_SIZE} bytes")
        return data


@dataclass(frozen=True)
class KubeletJoin:
    """What a node is given to join its cluster: its name, the cluster's FQDN and CA, the kubelet's
    credentials, its pods' range, registration taints and maximum number of pods."""

    node_name: str
    fqdn: str
    ca_pem: bytes
    credentials: KubeletCredentials
    kubelet_port: int
    pod_cidr: str = DEFAULT_POD_CIDR
    taints: tuple[dict[str, str], ...] = ()
    max_pods: int = DEFAULT_MAX_PODS

    def bundle(self) -> bytes:
        """The join bundle: a tar of JOIN_FILES (fixed names, times and owners), at most
        MAX_JOIN_BUNDLE_SIZE bytes."""
        check_node_name(self.node_name)
        if _FQDN.fullmatch(self.fqdn) is None:
            raise NodeJoinError(f"cluster FQDN {self.fqdn!r} is not a lowercase DNS name")
        files = {
            "node-name": (self.node_name + "\n").encode(),
            "hosts": f"{APISERVER_GUEST_ADDRESS} {self.fqdn}\n".encode(),
            "kubelet.conf": kubelet_kubeconfig(self.fqdn, self.ca_pem).encode(),
            "ca.crt": self.ca_pem,
            "config.yaml": yaml.safe_dump(
                kubelet_configuration(self.kubelet_port, list(self.taints), self.max_pods)
            ).encode(),
            "cni.conflist": json.dumps(cni_configuration(self.pod_cidr), indent=1).encode(),
            **self.credentials.files(),
        }
        data = _tar({name: files[name] for name in JOIN_FILES})
        if len(data) > MAX_JOIN_BUNDLE_SIZE:
            raise NodeJoinError(f"join bundle of {self.node_name} exceeds {MAX_JOIN_BUNDLE_SIZE} bytes")
        return data


def node_addresses_patch(address: str = NODE_INTERNAL_IP) -> dict[str, Any]:
    """The Node status patch a cloud node controller applies: the address the apiserver reaches the kubelet
    by (the node's `NodeNetwork.kubelet_address`, where its host forwards the kubelet port; the port comes
    from the Node's daemonEndpoints)."""
    return {"status": {"addresses": [{"type": "InternalIP", "address": address}]}}
