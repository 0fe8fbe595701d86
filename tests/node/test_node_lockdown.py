"""Signed drivers: a Secure Boot node's Debian kernel runs in lockdown (integrity) and loads only signed
kernel modules; without Secure Boot an unsigned module loads and taints the kernel (E, unsigned module).

On a joined node of each kind (the node image real nodes boot, the hosted control plane, no test-only agent
request), a privileged pod of the pre-loaded busybox image receives the node kernel's own dummy.ko (from the
same linux-image package the node boots) with its appended signature stripped, over `kubectl exec -i`, and
runs `insmod`. On the Secure Boot node the kernel refuses it and then loads the original signed module (so it
is the signature that is checked); on the node without Secure Boot the unsigned module loads."""

from __future__ import annotations

import lzma
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_apiserver import FQDN, admin_client
from lightkube import Client
from lightkube.models.core_v1 import Container, PodSpec, SecurityContext
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod

from trustedlaunch.control.hosted_control_plane import HostedControlPlane, free_loopback_port
from trustedlaunch.control.kubernetes_release import KubernetesRelease, verified_release
from trustedlaunch.control.node_join import issue_kubelet_credentials, node_credential_validity
from trustedlaunch.control.node_runtime_release import node_rootfs_inputs, verified_node_runtime
from trustedlaunch.node.container_images import BUSYBOX_REPOSITORY, busybox_version, write_node_images
from trustedlaunch.node.debian import debian_release
from trustedlaunch.node.image import BUSYBOX, NodeImage, build_node_image, default_kernel, kernel_release
from trustedlaunch.node.kubelet import KubeletJoin, NodeNetwork, node_addresses_patch
from trustedlaunch.node.qemu import NodeVM

pytestmark = pytest.mark.slow
JOIN_SECONDS = 600.0  # node VM start -> Ready under software emulation on a loaded 2-core machine
SIGNATURE_MARKER = b"~Module signature appended~\n"
SIGNATURE_INFO = struct.Struct(">BBBBB3xI")  # struct module_signature: algo, hash, id_type, signer_len,
# key_id_len, 3 pad bytes, big-endian sig_len; it precedes the marker, the signature precedes it
MAX_MODULE_BYTES = 1 << 20
TAINT_UNSIGNED_MODULE = 1 << 13  # E in /proc/sys/kernel/tainted
POD = "lockdown"
EXEC_SECONDS = 300.0  # one `kubectl exec` into a TCG guest on a loaded 2-core machine


def module_without_signature(module: bytes) -> bytes:
    """`module` with its appended signature (signature bytes, module_signature struct, marker) removed."""
    if not module.endswith(SIGNATURE_MARKER):
        raise ValueError("the module carries no appended signature")
    info_end = len(module) - len(SIGNATURE_MARKER)
    if info_end < SIGNATURE_INFO.size:
        raise ValueError("the module is too short for its signature information")
    *_, signature_length = SIGNATURE_INFO.unpack_from(module, info_end - SIGNATURE_INFO.size)
    signed_end = info_end - SIGNATURE_INFO.size - signature_length
    if signature_length == 0 or signed_end <= 0:
        raise ValueError(f"the module's signature length {signature_length} is impossible")
    return module[:signed_end]


@pytest.fixture(scope="module")
def dummy_module() -> bytes:
    """The signed dummy.ko of the kernel the node image boots (no dependencies)."""
    directory = Path("/lib/modules", kernel_release(default_kernel().name), "kernel/drivers/net")
    path = directory / "dummy.ko"
    if path.is_file():
        module = path.read_bytes()
    else:  # kernels that compress their modules (the kernel decompresses them itself)
        path = directory / "dummy.ko.xz"
        decompressor = lzma.LZMADecompressor()
        module = decompressor.decompress(path.read_bytes(), max_length=MAX_MODULE_BYTES)
        assert decompressor.eof, f"{path} is not one complete xz stream under {MAX_MODULE_BYTES} bytes"
    assert len(module) < MAX_MODULE_BYTES, path
    return module


def test_stripping_removes_exactly_the_appended_signature(dummy_module: bytes) -> None:
    stripped = module_without_signature(dummy_module)
    assert stripped.startswith(b"\x7fELF") and SIGNATURE_MARKER not in stripped
    assert len(dummy_module) - len(stripped) > 256  # a real signature (PKCS#7) plus its 40 bytes of framing
    with pytest.raises(ValueError, match="no appended signature"):
        module_without_signature(stripped)


@pytest.fixture(scope="module")
def lockdown_image(node_base: Path) -> NodeImage:
    """The rootfs node image with the pre-loaded pause and busybox images."""
    images = node_base / "lockdown-images"
    write_node_images(images, BUSYBOX)
    inputs = node_rootfs_inputs(verified_release(), verified_node_runtime(), images)
    return build_node_image(node_base / "image-lockdown", rootfs=inputs)


def wait_for(condition: Callable[[], Any], what: str, seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.5)
    return result


def is_ready(client: Client, name: str) -> bool:
    nodes = [node for node in client.list(Node) if node.metadata and node.metadata.name == name]
    conditions = (nodes[0].status.conditions if nodes and nodes[0].status else None) or []
    return any(condition.type == "Ready" and condition.status == "True" for condition in conditions)


def privileged_pod(node_name: str) -> Pod:
    """A privileged busybox pod on `node_name` (CAP_SYS_MODULE: it may call init_module) that waits."""
    return Pod(
        metadata=ObjectMeta(name=POD, namespace="default"),
        spec=PodSpec(
            nodeName=node_name,
            restartPolicy="Never",
            automountServiceAccountToken=False,
            terminationGracePeriodSeconds=0,
            containers=[
                Container(
                    name=POD,
                    image=f"{BUSYBOX_REPOSITORY}:{busybox_version(BUSYBOX)}",
                    imagePullPolicy="IfNotPresent",
                    command=["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
                    securityContext=SecurityContext(privileged=True),
                )
            ],
        ),
    )


def pod_names(client: Client) -> set[str]:
    return {pod.metadata.name or "" for pod in client.list(Pod, namespace="default") if pod.metadata}


class PodShell:
    """`kubectl exec` into the privileged pod of one joined node."""

    def __init__(self, release: KubernetesRelease, plane: HostedControlPlane, node_name: str):
        self.release, self.plane, self.node_name = release, plane, node_name

    def run(self, script: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """`script` run by sh in the pod (`stdin` streamed to it)."""
        kubeconfig = self.plane.admin_kubeconfig
        return subprocess.run(
            [
                str(self.release.binary("kubectl")),
                f"--kubeconfig={kubeconfig}",
                f"--cache-dir={kubeconfig.parent / 'kube-cache'}",
                *("exec", *(("-i",) if stdin else ()), "-n", "default", POD, "--", "sh", "-c", script),
            ],
            input=stdin,
            capture_output=True,
            timeout=EXEC_SECONDS,
            check=False,
        )

    def values(self, script: str) -> tuple[dict[str, str], str]:
        """The `key=value` lines `script` prints, and what it wrote to stderr."""
        done = self.run(script)
        lines = done.stdout.decode(errors="replace").splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line), done.stderr.decode(errors="replace")

    def copy(self, data: bytes, path: str) -> None:
        """Write `data` to `path` in the pod, streamed over the exec's stdin."""
        done = self.run(f"cat > {path} && wc -c < {path}", data)
        assert done.stdout.strip() == str(len(data)).encode(), done


@pytest.fixture(scope="module", params=[True, False], ids=["secure-boot", "no-secure-boot"])
def node_shell(
    request: pytest.FixtureRequest,
    lockdown_image: NodeImage,
    kube_apiserver: HostedControlPlane,
    kubernetes_release: KubernetesRelease,
    node_base: Path,
) -> Iterator[tuple[bool, PodShell]]:
    """(Secure Boot on?, a shell in a privileged pod on that node, joined and Ready): one VM at a time."""
    secure_boot: bool = request.param
    name = f"tl-lockdown-{'sb' if secure_boot else 'nosb'}"
    network = NodeNetwork(kube_apiserver.ports.apiserver, free_loopback_port())
    run_dir = Path(tempfile.mkdtemp(prefix="tl-lock-", dir=node_base))
    client = admin_client(kube_apiserver)
    credentials = issue_kubelet_credentials(kube_apiserver.pki, name, node_credential_validity(0))
    ca = kube_apiserver.pki.ca_cert.read_bytes()
    join = KubeletJoin(name, FQDN, ca, credentials, network.kubelet_port)
    node = NodeVM(lockdown_image, run_dir / "vm", secure_boot=secure_boot, network=network)
    started = time.monotonic()
    with node:
        node.wait_ready(300.0)
        assert "kubelet started" in node.start_kubelet(join.bundle())
        wait_for(lambda: any(n.metadata and n.metadata.name == name for n in client.list(Node)), name, 600)
        client.patch(Node.Status, name, node_addresses_patch())
        client.patch(Node, name, {"spec": {"taints": None}})
        wait_for(lambda: is_ready(client, name), f"{name} Ready", JOIN_SECONDS)
        client.create(privileged_pod(name))
        wait_for(
            lambda: (s := client.get(Pod, POD, namespace="default").status) and s.phase == "Running",
            f"pod {POD} on {name} running",
            300.0,
        )
        print(f"{name}: VM start -> privileged pod running in {time.monotonic() - started:.0f} s")
        try:
            yield secure_boot, PodShell(kubernetes_release, kube_apiserver, name)
        finally:
            client.delete(Pod, POD, namespace="default", grace_period=0)
            wait_for(lambda: POD not in pod_names(client), f"pod {POD} deleted", 120.0)


def test_the_node_reports_its_os_image_as_what_it_boots(
    node_shell: tuple[bool, PodShell], kube_apiserver: HostedControlPlane
) -> None:
    """`kubectl get node -o wide`'s OS-IMAGE (the root filesystem's os-release) and KERNEL-VERSION."""
    _, shell = node_shell
    status = admin_client(kube_apiserver).get(Node, shell.node_name).status
    assert status is not None and status.nodeInfo is not None
    print(f"{shell.node_name}: osImage {status.nodeInfo.osImage!r}, kernel {status.nodeInfo.kernelVersion}")
    debian = debian_release()
    assert status.nodeInfo.osImage == (
        f"trustedlaunch node (Debian {debian} signed shim, GRUB and kernel; read-only dm-verity root)"
    )
    assert status.nodeInfo.kernelVersion == kernel_release(default_kernel().name)


def test_lockdown_follows_secure_boot(node_shell: tuple[bool, PodShell]) -> None:
    secure_boot, shell = node_shell
    values, errors = shell.values(
        "mkdir -p /tmp/security && mount -t securityfs securityfs /tmp/security && "
        "echo lockdown=$(cat /tmp/security/lockdown)"
    )
    print(f"secure boot {secure_boot}: /sys/kernel/security/lockdown: {values} {errors}")
    expected = "none [integrity] confidentiality" if secure_boot else "[none] integrity confidentiality"
    assert values.get("lockdown") == expected, errors


INSMOD_UNSIGNED = (
    "echo tainted_before=$(cat /proc/sys/kernel/tainted); insmod /tmp/unsigned.ko; echo status=$?; "
    "echo tainted_after=$(cat /proc/sys/kernel/tainted); echo loaded=$(grep -c '^dummy ' /proc/modules)"
)
INSMOD_SIGNED = "insmod /tmp/signed.ko; echo status=$?; echo loaded=$(grep -c '^dummy ' /proc/modules)"


def test_only_signed_modules_load_under_secure_boot(
    node_shell: tuple[bool, PodShell], dummy_module: bytes
) -> None:
    secure_boot, shell = node_shell
    shell.copy(module_without_signature(dummy_module), "/tmp/unsigned.ko")
    shell.copy(dummy_module, "/tmp/signed.ko")
    unsigned, said = shell.values(INSMOD_UNSIGNED)
    print(f"secure boot {secure_boot}: insmod unsigned.ko: {unsigned}, the kernel said: {said!r}")
    before, after = int(unsigned["tainted_before"]), int(unsigned["tainted_after"])
    assert not before & TAINT_UNSIGNED_MODULE
    if secure_boot:
        assert unsigned["status"] != "0" and unsigned["loaded"] == "0", said
        assert "Key was rejected by service" in said or "Operation not permitted" in said, said
        assert not after & TAINT_UNSIGNED_MODULE
        signed, said = shell.values(INSMOD_SIGNED)
        print(f"secure boot {secure_boot}: insmod signed.ko: {signed} {said!r}")
        assert (signed["status"], signed["loaded"]) == ("0", "1"), said
    else:
        assert (unsigned["status"], unsigned["loaded"]) == ("0", "1"), said
        assert after & TAINT_UNSIGNED_MODULE
    shell.run("rmmod dummy")
