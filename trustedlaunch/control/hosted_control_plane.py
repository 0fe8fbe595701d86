"""The processes of one hosted Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler from the cached release, with the cluster's PKI, on loopback ports.

kube-apiserver listens on the control plane's node network address (`node_network_address`): 127.0.0.1,
where the node VMs of this machine reach it, unless TL_NODE_NETWORK_ADDRESS names an address of this
machine that the libvirt hosts of remote node VMs reach (trustedlaunch.node.kubelet); then it listens there
only (kube-apiserver has one bind address; this machine's own clients reach it there too) and its serving
certificate names that address.

Each process runs in a session of its own (it outlives the command that started it and a Ctrl-C in its
terminal) and logs to `logs/{component}.log` under the cluster's data directory; every command line names
a file under that directory, which is how `control_plane_processes` finds them again. etcd listens with
TLS and client-certificate authentication on its client and peer ports.

Data directory layout: `pki/` (cluster_pki), `etcd/` (etcd's data), `{component}/` (serving certificates
the controllers make for their health ports), `*.kubeconfig` (admin and component credentials), `logs/`.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from trustedlaunch.control.cluster_pki import (
    DEFAULT_SERVICE_CIDR,
    FRONT_PROXY_CLIENT_NAME,
    ClusterPki,
    add_apiserver_address,
    create_cluster_pki,
    open_cluster_pki,
)
from trustedlaunch.control.kubernetes_release import KubernetesRelease
from trustedlaunch.control.node_processes import command_line
from trustedlaunch.errors import TrustedLaunchError

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# kube-controller-manager's controllers: the default ones and the bootstrap token ones, without CSR
# approving and signing (a kubelet must not renew its certificates around attestation).
CONTROLLERS = "*,bootstrapsigner,tokencleaner,-csrapproving,-csrsigning"
LOOPBACK = "127.0.0.1"
NODE_NETWORK_ADDRESS_ENV = "TL_NODE_NETWORK_ADDRESS"
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_BYTES = 2000


class ControlPlaneError(TrustedLaunchError):
    """A control-plane process failed to start, died, or the API server did not become ready."""


def node_network_address() -> str:
    """Where the kube-apiservers listen for the nodes (and everything else): TL_NODE_NETWORK_ADDRESS, an IPv4
    address of this machine that every libvirt host of remote nodes reaches, else 127.0.0.1 (only nodes of
    this machine). ControlPlaneError if the setting is not one interface's IPv4 address."""
    value = os.environ.get(NODE_NETWORK_ADDRESS_ENV, "").strip()
    if not value:
        return LOOPBACK
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ControlPlaneError(f"{NODE_NETWORK_ADDRESS_ENV}={value!r} is not an IP address") from None
    if address.version != 4 or address.is_unspecified or address.is_multicast:
        raise ControlPlaneError(f"{NODE_NETWORK_ADDRESS_ENV}={value} is not an IPv4 address of one interface")
    return str(address)


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ControlPlanePorts:
    """The loopback ports of one control plane."""

    apiserver: int
    etcd_client: int
    etcd_peer: int
    controller_manager: int
    scheduler: int

    @classmethod
    def free(cls) -> ControlPlanePorts:
        """Ports nothing listens on now, all different."""
        ports: set[int] = set()
        while len(ports) < 5:
            ports.add(free_loopback_port())
        apiserver, etcd_client, etcd_peer, controller_manager, scheduler = sorted(ports)
        return cls(apiserver, etcd_client, etcd_peer, controller_manager, scheduler)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def client_kubeconfig(server: str, ca_cert: Path, client_cert: Path, client_key: Path, name: str) -> str:
    """A self-contained kubeconfig (YAML) for `server` that presents a client certificate."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": name, "cluster": {"server": server, "certificate-authority-data": _b64(ca_cert)}}
        ],
        "users": [
            {
                "name": name,
                "user": {"client-certificate-data": _b64(client_cert), "client-key-data": _b64(client_key)},
            }
        ],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    return yaml.safe_dump(config, sort_keys=False)


def control_plane_processes(data_dir: Path) -> dict[int, str]:
    """Live etcd/kube-* processes whose command line names a file under `data_dir`, whoever started
    them: pid -> component."""
    marker = f"{data_dir}/"
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        arguments = command_line(int(entry.name))
        if not arguments or Path(arguments[0]).name not in COMPONENTS:
            continue
        if any(marker in argument for argument in arguments[1:]):
            found[int(entry.name)] = Path(arguments[0]).name
    return found


def _gone(pid: int) -> bool:
    """True once `pid` has ended (reaped here if it is a child of this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return command_line(pid) is None


def _stop(pids: list[int], what: str, grace: float) -> None:
    """SIGTERM `pids`, then SIGKILL those left after `grace` seconds; raises ControlPlaneError naming
    `what` if one survives that."""
    for stop_signal in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, stop_signal)
        deadline = time.monotonic() + grace
        while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        if all(_gone(pid) for pid in pids):
            return
    raise ControlPlaneError(f"{what} processes {pids} did not stop after SIGKILL")


def stop_control_plane_processes(data_dir: Path, grace: float = STOP_GRACE_SECONDS) -> list[int]:
    """Stop the control-plane processes of `data_dir` that a launcher killed with SIGKILL left running:
    one component at a time, etcd last, SIGTERM then SIGKILL after `grace` seconds; their pids."""
    stopped = []
    for component in reversed(COMPONENTS):
        pids = [pid for pid, name in control_plane_processes(data_dir).items() if name == component]
        _stop(pids, f"{component} of {data_dir}", grace)
        stopped += pids
    return stopped


def resident_memory_bytes(pid: int) -> int:
    """The resident set size of a live process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ControlPlaneError(f"process {pid} has no resident memory (a zombie?)")


def proportional_memory_bytes(pid: int) -> int:
    """The proportional set size of a live process (Pss: shared pages such as the binary's text are split
    between the processes mapping them, so the Pss of many clusters adds up to what they really take)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise ControlPlaneError(f"process {pid} has no proportional memory (a zombie?)")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class HostedControlPlane:
    """One cluster's control-plane processes; `start`, `wait_ready`, `stop`. kube-apiserver listens on
    `listen_address` (node_network_address), the other components on loopback."""

    release: KubernetesRelease
    data_dir: Path
    fqdn: str
    ports: ControlPlanePorts
    service_cidr: str = DEFAULT_SERVICE_CIDR
    listen_address: str = LOOPBACK
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def pki(self) -> ClusterPki:
        """The cluster's PKI (made by `start` if absent)."""
        return ClusterPki(self.data_dir / "pki")

    @property
    def server(self) -> str:
        """The API server URL (at its listen address)."""
        return f"https://{self.listen_address}:{self.ports.apiserver}"

    @property
    def admin_kubeconfig(self) -> Path:
        """The kubeconfig of the cluster admin (a client certificate in system:masters)."""
        return self.data_dir / "admin.kubeconfig"

    def tls_context(self, client_stem: str | None = "admin") -> ssl.SSLContext:
        """A TLS context trusting the cluster CA, presenting the client certificate `client_stem` if any."""
        context = ssl.create_default_context(cafile=self.pki.ca_cert)
        if client_stem is not None:
            cert, key = self.pki.pair(client_stem)
            context.load_cert_chain(cert, key)
        return context

    def start(self) -> list[str]:
        """Make the PKI and kubeconfigs if missing, then start those of the four processes that are not
        running already (they wait for etcd; data such as etcd's is kept); the components started. A running
        process whose command line is not this trustedlaunch's for its component (one an older release
        started, e.g. with other flags, or another listen address), or whose kubeconfig changed (the
        apiserver's address), is stopped and started anew, so an upgrade reaches adopted planes."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.pki.directory.exists():
            further = () if self.listen_address == LOOPBACK else (self.listen_address,)
            create_cluster_pki(self.pki.directory, self.fqdn, self.service_cidr, further)
        open_cluster_pki(self.pki.directory)
        add_apiserver_address(self.pki, self.listen_address)  # a plane made before the address was set
        reconfigured = set()  # components whose kubeconfig changed (read only at their start)
        for stem in ("admin", "controller-manager", "scheduler"):
            cert, key = self.pki.pair(stem)
            path = self.data_dir / f"{stem}.kubeconfig"
            kubeconfig = client_kubeconfig(self.server, self.pki.ca_cert, cert, key, stem)
            if not path.is_file() or path.read_text() != kubeconfig:
                reconfigured.add(f"kube-{stem}")
            path.write_text(kubeconfig)
            path.chmod(0o600)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        found = control_plane_processes(self.data_dir)
        outdated = [
            pid
            for pid, component in found.items()
            if component in reconfigured or command_line(pid) != self.command(component)
        ]
        if outdated:
            _stop(outdated, f"outdated control plane of {self.data_dir}", STOP_GRACE_SECONDS)
        running = {component for pid, component in found.items() if pid not in outdated}
        started = [component for component in COMPONENTS if component not in running]
        for component in started:
            self._spawn(component, self.command(component))
        return started

    def command(self, component: str) -> list[str]:
        """The command line of one component."""
        pki = self.pki.directory
        binary = str(self.release.binary("etcd" if component == "etcd" else component))
        if component == "etcd":
            peer = f"https://{LOOPBACK}:{self.ports.etcd_peer}"
            client = f"https://{LOOPBACK}:{self.ports.etcd_client}"
            return [
                binary,
                "--name=control-plane",
                f"--data-dir={self.data_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=control-plane={peer}",
                f"--cert-file={pki / 'etcd/server.crt'}",
                f"--key-file={pki / 'etcd/server.key'}",
                f"--trusted-ca-file={pki / 'etcd/ca.crt'}",
                "--client-cert-auth=true",
                f"--peer-cert-file={pki / 'etcd/server.crt'}",  # serverAuth + clientAuth, 127.0.0.1
                f"--peer-key-file={pki / 'etcd/server.key'}",
                f"--peer-trusted-ca-file={pki / 'etcd/ca.crt'}",
                "--peer-client-cert-auth=true",
                "--log-level=warn",
            ]
        if component == "kube-apiserver":
            return [
                binary,
                f"--bind-address={self.listen_address}",
                f"--advertise-address={self.listen_address}",
                f"--secure-port={self.ports.apiserver}",
                "--endpoint-reconciler-type=none",  # Endpoints may not hold loopback addresses
                f"--etcd-servers=https://{LOOPBACK}:{self.ports.etcd_client}",
                f"--etcd-cafile={pki / 'etcd/ca.crt'}",
                f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
                f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                # the kubelet's serving certificate is the cluster CA's (issued with its client certificate
                # on the attestation-gated path, control.node_join): `kubectl logs/exec` verify the node
                f"--kubelet-certificate-authority={pki / 'ca.crt'}",
                # (as kubeadm) a node's InternalIP before its Hostname: the apiserver reaches a node VM's
                # kubelet at the address its cloud node controller sets (trustedlaunch.node.kubelet)
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={self.service_cidr}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--enable-bootstrap-token-auth=true",
                "--allow-privileged=true",
                f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
                f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_CLIENT_NAME}",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-username-headers=X-Remote-User",
                "--profiling=false",
            ]
        kubeconfig = self.data_dir / f"{component.removeprefix('kube-')}.kubeconfig"
        common = [
            binary,
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--cert-dir={self.data_dir / component}",
            "--leader-elect=false",
            "--profiling=false",
        ]
        if component == "kube-scheduler":
            return [*common, f"--secure-port={self.ports.scheduler}"]
        return [
            *common,
            f"--secure-port={self.ports.controller_manager}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--use-service-account-credentials=true",
            # No CSR is approved or signed here (nor does the controller-manager hold the cluster CA's
            # key): kubelet certificates come only from the attestation-gated path (control.node_join).
            f"--controllers={CONTROLLERS}",
        ]

    def log_path(self, component: str) -> Path:
        """Where one component's output goes."""
        return self.data_dir / "logs" / f"{component}.log"

    def _spawn(self, component: str, command: list[str]) -> None:
        with self.log_path(component).open("ab") as log:
            self.processes[component] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_tail(self, component: str) -> str:
        """The last LOG_TAIL_BYTES of one component's log ('' if it has none yet)."""
        if not self.log_path(component).is_file():
            return ""
        with self.log_path(component).open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")

    def check_running(self) -> None:
        """Raise ControlPlaneError naming the first process that has ended, with the end of its log."""
        for component, process in self.processes.items():
            code = process.poll()
            if code is not None:
                tail = self.log_tail(component)
                raise ControlPlaneError(
                    f"{component} of {self.fqdn} exited with code {code}; its log ends:\n{tail}"
                )

    def wait_ready(self, timeout: float = 120.0) -> float:
        """Wait until kube-apiserver's /readyz answers ok; the seconds waited. Raises ControlPlaneError."""
        started = time.monotonic()
        with httpx.Client(verify=self.tls_context(), timeout=5.0) as client:
            while True:
                self.check_running()
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.server}/readyz").text == "ok":
                        return time.monotonic() - started
                if time.monotonic() - started > timeout:
                    raise ControlPlaneError(
                        f"kube-apiserver of {self.fqdn} not ready after {timeout:.0f} s; its log ends:\n"
                        f"{self.log_tail('kube-apiserver')}"
                    )
                time.sleep(0.2)

    def server_version(self) -> str:
        """The `gitVersion` kube-apiserver's /version answers (e.g. v1.36.3). Raises ControlPlaneError."""
        try:
            with httpx.Client(verify=self.tls_context(), timeout=5.0) as client:
                response = client.get(f"{self.server}/version")
                response.raise_for_status()
                version = response.json()["gitVersion"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise ControlPlaneError(f"kube-apiserver of {self.fqdn}: /version: {exc}") from None
        if not isinstance(version, str) or not 0 < len(version) <= 64:
            raise ControlPlaneError(f"kube-apiserver of {self.fqdn}: /version: no gitVersion")
        return version

    def resident_memory(self) -> dict[str, int]:
        """Component -> resident set size in bytes, of the running processes."""
        return {
            component: resident_memory_bytes(process.pid) for component, process in self.processes.items()
        }

    def proportional_memory(self) -> dict[str, int]:
        """Component -> proportional set size in bytes, of the running processes."""
        return {
            component: proportional_memory_bytes(process.pid) for component, process in self.processes.items()
        }

    def cpu_seconds(self) -> float:
        """CPU seconds the running processes have used, all together."""
        return sum(cpu_seconds(process.pid) for process in self.processes.values())

    def stop(self) -> None:
        """Stop the processes one by one, etcd last (kube-apiserver stops in ~1 s while etcd answers, and
        hangs in its shutdown when etcd went first): SIGTERM, SIGKILL after a grace period, reaped."""
        for component in reversed(COMPONENTS):
            process = self.processes.pop(component, None)
            if process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> HostedControlPlane:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
