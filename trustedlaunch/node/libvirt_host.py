"""A private libvirt host: a foreground `libvirtd` of our own, for the tests, the bench and the one-host demo.

A production operator runs their own libvirtd (reached as `qemu+ssh://` or `qemu+tls://`); this one runs on
this machine without touching the machine's libvirt: inside `unshare -m --propagation private`, with private
folders bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt (with images/), /var/cache/libvirt,
/var/log/libvirt and /var/log/swtpm, and a qemu.conf that runs QEMU as root without cgroups, namespaces,
security driver or virtlogd, and without libvirt's QEMU seccomp sandbox (each node domain asks for it
again, allowing the spawns of its network's apiserver forward: trustedlaunch.node.libvirt_driver). Its
socket is `{base}/run/libvirt-sock`; `uri` names it.

A host given an EK CA (`ek_ca`) certifies the EKs of the TPMs libvirt itself makes (a domain with an
emulator TPM backend: libvirt 9.0 runs `swtpm_setup` without `--config`, so the host's own
/etc/swtpm_setup.conf must name its EK CA): its swtpm_setup.conf is mounted over the machine's.

For tests of several hosts, a host may run inside a network namespace (`NamespaceNetwork`: one per host,
each linked to a client namespace by a veth pair): it then also listens on TCP at its namespace's address
only (`tcp_uri`, unauthenticated: test namespaces only; production hosts use `qemu+ssh://` or `qemu+tls://`).
The client namespace also has CONTROL_ADDRESS on its loopback, routed from every host namespace through its
link: the control plane's node network address (where the nodes' apiserver forwards connect, as a control
plane reachable from every hypervisor host in production), while hosts still do not reach each other.

Stopping it destroys its domains first, then ends libvirtd, then kills any QEMU it started that still runs
(its pid files in `{base}/run/qemu/`): nothing is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

import libvirt

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.tpm.ekca import SETUP_CONFIG_FILE, EkCa, write_swtpm_setup_config

LIBVIRTD = "/usr/sbin/libvirtd"
START_TIMEOUT = 30.0  # seconds for libvirtd to answer on its socket
STOP_TIMEOUT = 15.0  # seconds for libvirtd to end on SIGTERM before SIGKILL
MAX_PID_FILE_BYTES = 32
# (private folder under base, the system folder it is mounted over)
PRIVATE_DIRS = (
    ("etc", "/etc/libvirt"),
    ("run", "/run/libvirt"),
    ("lib", "/var/lib/libvirt"),
    ("cache", "/var/cache/libvirt"),
    ("log", "/var/log/libvirt"),
    ("swtpm-log", "/var/log/swtpm"),
)
QEMU_CONF = """\
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
namespaces = []
cgroup_controllers = []
security_driver = "none"
stdio_handler = "file"
swtpm_user = "root"
swtpm_group = "root"
seccomp_sandbox = 0
"""
LIBVIRTD_CONF = """\
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""


LIBVIRTD_TCP_CONF = """\
listen_tls = 0
listen_tcp = 1
listen_addr = "{address}"
auth_tcp = "none"
"""
NAMESPACE_SUBNET = "10.254"  # host i's link: 10.254.i.0/24, the client end .1, the host end .2
CONTROL_ADDRESS = f"{NAMESPACE_SUBNET}.0.1"  # on the client namespace's loopback, routed from every host


class LibvirtHostError(TrustedLaunchError):
    """The private libvirtd did not start (or is not installed), or its network namespace was not made."""


def _ip(*arguments: str) -> None:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise LibvirtHostError(f"ip {' '.join(arguments)} failed: {result.stderr.strip()}")


class NamespaceNetwork:
    """Network namespaces made for test hosts: a client namespace (`client`) linked to each host's namespace
    by its own veth pair, and CONTROL_ADDRESS on the client's loopback that each host reaches through its
    pair; addresses exist only inside these namespaces. `remove` deletes them all."""

    def __init__(self, name: str):
        self.name = name
        self.client = f"{name}-c"
        self.hosts: list[str] = []
        _ip("netns", "add", self.client)
        _ip("-n", self.client, "link", "set", "lo", "up")
        _ip("-n", self.client, "address", "add", f"{CONTROL_ADDRESS}/32", "dev", "lo")

    def add_host(self) -> tuple[str, str]:
        """A new host namespace linked to the client's; (its name, its address)."""
        index = len(self.hosts) + 1
        namespace = f"{self.name}-h{index}"
        _ip("netns", "add", namespace)
        self.hosts.append(namespace)
        _ip(
            "-n",
            self.client,
            "link",
            "add",
            f"h{index}",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            namespace,
        )
        subnet = f"{NAMESPACE_SUBNET}.{index}"
        for inside, device, address in (
            (self.client, f"h{index}", f"{subnet}.1"),
            (namespace, "eth0", f"{subnet}.2"),
        ):
            _ip("-n", inside, "address", "add", f"{address}/24", "dev", device)
            _ip("-n", inside, "link", "set", device, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        _ip("-n", namespace, "route", "add", f"{CONTROL_ADDRESS}/32", "via", f"{subnet}.1")
        return namespace, f"{subnet}.2"

    def remove(self) -> None:
        """Delete the namespaces (their veth pairs go with them)."""
        for namespace in [*self.hosts, self.client]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        self.hosts = []


class LibvirtHost:
    """A private libvirtd with its state under `base` (context manager: started and stopped)."""

    def __init__(
        self,
        base: Path,
        *,
        namespace: str | None = None,
        address: str | None = None,
        ek_ca: EkCa | None = None,
    ):
        self.base, self.ek_ca = base, ek_ca
        self.namespace, self.address = namespace, address  # a network namespace's name and address
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def socket_path(self) -> Path:
        """libvirtd's read-write unix socket."""
        return self.base / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        """The libvirt URI of this host's QEMU driver."""
        return f"qemu:///system?socket={self.socket_path}"

    @property
    def tcp_uri(self) -> str:
        """The URI of this host from its network namespace's peers (TCP at its address)."""
        if self.address is None:
            raise LibvirtHostError(f"libvirt host {self.base} runs in no network namespace: no TCP URI")
        return f"qemu+tcp://{self.address}/system"

    @property
    def log_path(self) -> Path:
        """libvirtd's own log (warnings and errors)."""
        return self.base / "log" / "libvirtd.log"

    @property
    def pid(self) -> int | None:
        """libvirtd's process id while started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """True while libvirtd runs."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> LibvirtHost:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _script(self) -> str:
        """The shell run inside the new mount namespace: mount the private folders, exec libvirtd."""
        lines = ["set -e"]
        for name, target in PRIVATE_DIRS:
            lines += [f"mkdir -p {target}", f"mount --bind {shlex.quote(str(self.base / name))} {target}"]
        if self.ek_ca is not None:
            setup_config = shlex.quote(str(self.base / "swtpm" / SETUP_CONFIG_FILE))
            lines.append(f"mount --bind {setup_config} /etc/swtpm_setup.conf")
        listen = " --listen" if self.address is not None else ""
        # (the pid file in the private /run/libvirt: libvirtd's default, /run/libvirtd.pid, is the machine's)
        config = "--config /etc/libvirt/libvirtd.conf --pid-file /run/libvirt/libvirtd.pid"
        lines.append(f"exec {LIBVIRTD} {config}{listen}")
        return "\n".join(lines)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Write the configuration, start libvirtd and wait until it answers on its socket."""
        if self._process is not None:
            raise LibvirtHostError(f"libvirt host {self.base} was already started")
        for program in (LIBVIRTD, "/usr/bin/unshare"):
            if not Path(program).is_file():
                raise LibvirtHostError(f"{program} is not installed (Debian packages libvirt-daemon-system)")
        for name, _ in PRIVATE_DIRS:
            (self.base / name).mkdir(parents=True, exist_ok=True)
        (self.base / "lib" / "images").mkdir(exist_ok=True)
        if self.ek_ca is not None:
            write_swtpm_setup_config(self.ek_ca, self.base / "swtpm")
        (self.base / "etc" / "qemu.conf").write_text(QEMU_CONF)
        tcp = LIBVIRTD_TCP_CONF.format(address=self.address) if self.address is not None else ""
        (self.base / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF + tcp)
        self.socket_path.unlink(missing_ok=True)
        with (self.base / "libvirtd.out").open("wb") as output:
            netns = ["ip", "netns", "exec", self.namespace] if self.namespace is not None else []
            self._process = subprocess.Popen(
                [*netns, "unshare", "-m", "--propagation", "private", "sh", "-c", self._script()],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                self._reap()
                raise LibvirtHostError(f"libvirtd in {self.base} ended at start: {self._output_tail()}")
            if self.socket_path.exists():
                with contextlib.suppress(libvirt.libvirtError):
                    libvirt.open(self.uri).close()
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise LibvirtHostError(
                    f"libvirtd in {self.base} did not answer within {timeout:.0f} s: {self._output_tail()}"
                )
            time.sleep(0.1)

    def _output_tail(self) -> str:
        text = ""
        for path in (self.base / "libvirtd.out", self.log_path):
            with contextlib.suppress(OSError):
                text += path.read_bytes()[-1000:].decode(errors="replace")
        return text.strip() or "(no output)"

    def qemu_pid(self, domain_name: str) -> int | None:
        """The pid of the running domain's QEMU process, from libvirtd's pid file (None without one)."""
        pid_path = self.base / "run" / "qemu" / f"{domain_name}.pid"
        with contextlib.suppress(OSError, ValueError), pid_path.open("rb") as pid_file:
            return int(pid_file.read(MAX_PID_FILE_BYTES).strip())
        return None

    def qemu_pids(self) -> list[int]:
        """The pids of the QEMU processes libvirtd recorded (one pid file per running domain; its QEMU
        driver's own `driver.pid` is libvirtd's)."""
        pid_files = (self.base / "run" / "qemu").glob("*.pid")
        pids = (self.qemu_pid(path.stem) for path in pid_files if path.name != "driver.pid")
        return [pid for pid in pids if pid is not None]

    def _destroy_domains(self) -> None:
        with contextlib.suppress(libvirt.libvirtError):
            connection = libvirt.open(self.uri)
            try:
                for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
                    with contextlib.suppress(libvirt.libvirtError):
                        domain.destroy()
            finally:
                connection.close()

    def kill(self) -> None:
        """End libvirtd at once with SIGKILL, leaving its QEMU processes running (a daemon crash)."""
        if self.running:
            assert self._process is not None
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(STOP_TIMEOUT)

    def stop(self) -> None:
        """Destroy the domains, end libvirtd (SIGTERM, then SIGKILL) and kill the QEMU processes it left.
        Safe to call more than once."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._destroy_domains()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):  # then SIGKILL
                self._process.wait(STOP_TIMEOUT)
        self._reap()
        for pid in self.qemu_pids():
            with contextlib.suppress(OSError):  # gone, or the pid names another program by now
                if os.readlink(f"/proc/{pid}/exe").startswith("/usr/bin/qemu-system"):
                    os.kill(pid, signal.SIGKILL)

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)

    def remove(self) -> None:
        """Stop the host and delete its folders."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)
