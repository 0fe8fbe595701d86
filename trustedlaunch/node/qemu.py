"""The node VM driver: one QEMU q35 VM booting a node image on OVMF, with or without Secure Boot and vTPM.

QEMU runs under its supervisor (trustedlaunch.node.supervisor, which records how it ended) in a session of its
own, as swtpm and the bank proxy do: no terminal signal (Ctrl-C, hang-up) of the process that started them
reaches them. QEMU and swtpm are always stopped and reaped when the VM object is left (exception, timeout or
not); a VM whose object is dropped without `shutdown` (its process ended) keeps running, to be adopted.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.node.agent_client import NodeAgent, NodeQuote
from trustedlaunch.node.channel import AgentChannel, AgentError, KubeletStatus, RootfsStatus
from trustedlaunch.node.image import BOOT_FAILED_MARKER, NodeImage
from trustedlaunch.node.kubelet import NodeNetwork
from trustedlaunch.node.supervisor import EXIT_FILE, QEMU_LOG, vm_end
from trustedlaunch.node.supervisor import MODULE as SUPERVISOR_MODULE
from trustedlaunch.tpm.vtpm import MAX_SOCKET_PATH, Vtpm

OVMF_DIR = Path("/usr/share/OVMF")
FIRMWARE = {
    # secure boot -> (code, vars template)
    True: (OVMF_DIR / "OVMF_CODE_4M.secboot.fd", OVMF_DIR / "OVMF_VARS_4M.ms.fd"),
    False: (OVMF_DIR / "OVMF_CODE_4M.fd", OVMF_DIR / "OVMF_VARS_4M.fd"),
}


def firmware_varstore(secure_boot: bool) -> Path:
    """The varstore template a node VM with this Secure Boot setting starts from: its PK/KEK/db/dbx and
    SecureBoot state are what the node's attestation policy expects (the one source of that state)."""
    return FIRMWARE[secure_boot][1]


# Console lines that mean the boot chain stopped for good: fail fast instead of waiting for the timeout.
FATAL_CONSOLE_MARKERS = ("bad shim signature", "Kernel panic", BOOT_FAILED_MARKER, "Access Denied")
CONSOLE_TAIL_CHARS = 3000
# What every node VM gets, whatever its pool's VM size: the host's real cost of a node (quotas count it).
NODE_VCPUS = 1
NODE_MEMORY_MIB = 512
# Software emulation with a 128 MiB translation cache (QEMU's default is 1 GiB for a guest of 512 MiB and
# more): bench/node_join_bench.py measured QEMU's RSS at 574-587 MiB instead of 872-876 with a joined node
# running a pod, and no slower join (VM start to Node Ready 31-33 s and 38-39 QEMU CPU seconds either way).
TCG_ACCEL = "tcg,tb-size=128"
SUPERVISOR_START_TIMEOUT = 30.0  # seconds for the supervisor to start QEMU and report its pid
AGENT_COMMAND_TIMEOUT = 60.0  # seconds for one relayed TPM command (20-50 ms each on an idle TCG machine)
VARSTORE_COPY = "OVMF_VARS.fd"  # the VM's own copy of its varstore template, in its run directory
ESP_COPY = "esp"  # the VM's own copy of the image's ESP, in its run directory
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")


class NodeVMError(TrustedLaunchError):
    """The node VM cannot be started as configured (missing firmware or QEMU, bad paths)."""


class BootFailedError(TrustedLaunchError):
    """The node did not boot to a ready agent; `console_tail` holds the end of its serial console."""

    def __init__(self, message: str, console_tail: str):
        super().__init__(f"{message}\n--- serial console (tail) ---\n{console_tail}")
        self.console_tail = console_tail


class RootfsFailedError(BootFailedError):
    """The node booted to its agent but its dm-verity root filesystem did not open: `status.state` is
    "corrupted" (dm-verity failed a read: the disk differs from the root hash the image measured) or
    "failed" (modules, disk or device mapper table)."""

    def __init__(self, message: str, console_tail: str, status: RootfsStatus):
        super().__init__(message, console_tail)
        self.reason, self.status = message, status


TAIL_BYTES_PER_CHAR = 8  # bytes read per character wanted: UTF-8 (up to 4) and escape sequences removed


def readable_tail(path: Path, chars: int = CONSOLE_TAIL_CHARS) -> str:
    """The last `chars` characters of a console log, escape sequences removed; reads only its last
    `chars * TAIL_BYTES_PER_CHAR` bytes, however large the log (a guest may write its console without end).
    Empty when the file does not exist."""
    try:
        with path.open("rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(size - chars * TAIL_BYTES_PER_CHAR, 0))
            text = log.read(chars * TAIL_BYTES_PER_CHAR).decode(errors="replace")
    except FileNotFoundError:
        return ""
    return _ANSI_ESCAPE.sub("", text.replace("\r\n", "\n"))[-chars:]


def agent_rootfs_status(
    channel: AgentChannel, deadline: float, boot_failed: Callable[[str], BootFailedError]
) -> RootfsStatus:
    """How the node's root filesystem came up, as its agent reports it (ROOTFS); `boot_failed(reason)` is
    raised when the agent does not report it."""
    try:
        return channel.rootfs_status(max(deadline - time.monotonic(), AGENT_COMMAND_TIMEOUT))
    except AgentError as error:
        raise boot_failed(f"the agent did not report the root filesystem: {error}") from error


def rootfs_failure(
    image: NodeImage, status: RootfsStatus, run_dir: Path, console_tail: str
) -> RootfsFailedError | None:
    """The error naming `image`'s root filesystem unless `status` says every block verified and it is
    mounted (None then, or when the image has no root filesystem)."""
    rootfs = image.rootfs
    if rootfs is None or status.state == "verified":
        return None
    what = {
        "corrupted": "is corrupted: dm-verity failed a read (a block differs from the root hash the node "
        "image measured)",
        "failed": "did not open",
        "absent": "was not opened: the kernel command line names no root hash",
    }[status.state]
    return RootfsFailedError(
        f"node VM ({run_dir}): root filesystem {rootfs.path.name} (root hash {rootfs.root_hash}) "
        f"{what}; the node said: {status.detail or '(nothing)'}",
        console_tail,
        status,
    )


class _Qmp:
    """A minimal QMP client: enough to quit QEMU or read its run state."""

    def __init__(self, path: Path, timeout: float = 5.0):
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.settimeout(timeout)
        self._sock.connect(str(path))
        self._file = self._sock.makefile("rwb")
        self._file.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> Any:
        self._file.write(json.dumps({"execute": command}).encode() + b"\n")
        self._file.flush()
        while line := self._file.readline():
            message = json.loads(line)
            if "return" in message or "error" in message:
                return message.get("return", message.get("error"))
        return None

    def close(self) -> None:
        self._file.close()
        self._sock.close()


def _wait_for_socket(path: Path, process: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout)


def _stop_session(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGKILL the process group `process` leads (the supervisor and QEMU) and reap the supervisor. Only
    while the supervisor is not reaped yet: until then its pid (the group's id) cannot name another group."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout)


def default_accel() -> str:
    """QEMU's -accel for node VMs: KVM when it really works here, else TCG_ACCEL."""
    return "kvm" if kvm_usable() else TCG_ACCEL


@functools.cache
def kvm_usable() -> bool:
    """True if KVM really runs OVMF here (it can exist and still fail, e.g. under nested virtualisation).

    The probe boots OVMF under KVM for 3 s and checks that QEMU still reports the guest as running.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or shutil.which("qemu-system-x86_64") is None:
        return False
    code, template = FIRMWARE[False]
    with tempfile.TemporaryDirectory(prefix="tl-kvm-probe-") as probe_dir:
        varstore = Path(probe_dir, "vars.fd")
        shutil.copyfile(template, varstore)
        qmp_path = Path(probe_dir, "qmp.sock")
        process = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-accel",
                "kvm",
                "-machine",
                "q35",
                "-nodefaults",
                "-display",
                "none",
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={varstore}",
                "-qmp",
                f"unix:{qmp_path},server=on,wait=off",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            if not _wait_for_socket(qmp_path, process, 5.0):
                return False
            time.sleep(3.0)
            qmp = _Qmp(qmp_path)
            try:
                status = qmp.execute("query-status")
            finally:
                qmp.close()
            return isinstance(status, dict) and status.get("status") == "running"
        except OSError:
            return False
        finally:
            _stop_process(process)


class BootingVM:
    """What both node drivers' VMs share while they boot: the wait for the agent (wait_ready) and the check
    of the image's root filesystem. A driver's VM says whether it was started, why it stopped, which channel
    to ping and how its boot failed."""

    image: NodeImage | None
    run_dir: Path
    console_log: Path
    _channel: AgentChannel | None
    _started_at: float
    ready_after: float | None
    rootfs_status: RootfsStatus | None

    def _started(self) -> bool:
        raise NotImplementedError

    def _stop_reason(self) -> str | None:
        """Why the VM stopped; None while it runs."""
        raise NotImplementedError

    def _agent_channel(self) -> AgentChannel | None:
        """The channel to ping: the one kept, or a new one (None: the agent's port is not there yet)."""
        raise NotImplementedError

    def _boot_failed(self, reason: str) -> BootFailedError:
        raise NotImplementedError

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until the agent answers PING; return the seconds since launch.

        Raises BootFailedError (with the console tail) if the VM stops, the console shows a fatal boot
        error (e.g. "bad shim signature"), or the agent is not ready within `timeout` seconds.
        """
        if not self._started():
            raise NodeVMError("node VM not started")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stopped = self._stop_reason()
            if stopped is not None:
                raise self._boot_failed(stopped)
            console = readable_tail(self.console_log)
            fatal = next((marker for marker in FATAL_CONSOLE_MARKERS if marker in console), None)
            if fatal is not None:
                raise self._boot_failed(f'the serial console shows "{fatal}"')
            self._channel = self._agent_channel()
            try:
                answered = self._channel is not None and self._channel.ping(secrets.token_hex(4), 1.0)
            except AgentError:  # the serial port went away: the next pass sees why (VM stopped, console)
                if self._channel is not None:
                    self._channel.close()
                self._channel = None
                answered = False
            if answered:
                self.ready_after = time.monotonic() - self._started_at
                self._check_rootfs(deadline)
                return self.ready_after
            if self._channel is None:
                time.sleep(0.5)
        raise self._boot_failed(f"the agent did not answer within {timeout:.0f} s")

    def _check_rootfs(self, deadline: float) -> None:
        """With a root filesystem in the image, ask the agent how it came up; raise RootfsFailedError
        naming it unless every block verified and it is mounted."""
        if self.image is None or self.image.rootfs is None or self._channel is None:
            return
        self.rootfs_status = agent_rootfs_status(self._channel, deadline, self._boot_failed)
        failure = rootfs_failure(
            self.image, self.rootfs_status, self.run_dir, readable_tail(self.console_log)
        )
        if failure is not None:
            raise failure


class RunDirCopies:
    """Where a direct-driver VM keeps its own copies of the varstore and the ESP: its run directory, where
    NodeVM makes them at start (an adopted VM finds them there)."""

    run_dir: Path

    @property
    def varstore_path(self) -> Path:
        """The VM's own copy of the OVMF varstore."""
        return self.run_dir / VARSTORE_COPY

    @property
    def esp_path(self) -> Path:
        """The VM's own copy of the image's ESP."""
        return self.run_dir / ESP_COPY


class NodeVM(BootingVM, RunDirCopies):
    """A node VM (context manager): boots `image` and talks to its agent.

    `secure_boot` picks OVMF with Microsoft keys enrolled (on) or without keys (off); `vtpm`, when
    given, is started for the VM's lifetime and attached as a TPM TIS device; `network`, when given, is
    the VM's only network (trustedlaunch.node.kubelet: its cluster's kube-apiserver and its kubelet port on
    the host's loopback; without it the VM has no NIC). Files (varstore copy, ESP copy, sockets, console
    log) go to `run_dir`.
    """

    def __init__(
        self,
        image: NodeImage,
        run_dir: Path,
        *,
        secure_boot: bool = True,
        vtpm: Vtpm | None = None,
        memory_mib: int = NODE_MEMORY_MIB,
        accel: str | None = None,
        network: NodeNetwork | None = None,
    ):
        self.image: NodeImage = image
        self.run_dir = run_dir
        self.secure_boot = secure_boot
        self.vtpm = vtpm
        self.memory_mib = memory_mib
        self.accel = accel
        self.network = network
        self.console_log = run_dir / "console.log"
        self.qemu_log = run_dir / QEMU_LOG
        self.exit_file = run_dir / EXIT_FILE  # written by the supervisor when QEMU ends
        self._agent_socket = run_dir / "agent.sock"
        self._qmp_socket = run_dir / "qmp.sock"
        self._process: subprocess.Popen[bytes] | None = None  # QEMU's supervisor
        self._qemu_pid: int | None = None
        self._channel: AgentChannel | None = None
        self._agent_client: NodeAgent | None = None
        self._started_at = 0.0
        self.ready_after: float | None = None  # seconds from launch to the agent's first PONG
        self.rootfs_status: RootfsStatus | None = None  # how the image's root filesystem came up

    def __enter__(self) -> NodeVM:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    @property
    def running(self) -> bool:
        """True while QEMU is alive (its supervisor exits right after it)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """QEMU's process id while started (for monitoring); None before start and after shutdown."""
        return self._qemu_pid if self._process is not None else None

    def _esp_drive(self, esp: Path) -> list[str]:
        """QEMU arguments of the ESP disk. Beside a root filesystem disk, the ESP is the only boot device
        (bootindex): the firmware must not try to boot the root filesystem first, which would add a failed
        boot attempt to the measured boot (PCR 4) that the image's predicted policy does not have."""
        if self.image.rootfs is None:
            return ["-drive", f"file=fat:rw:{esp},format=raw"]
        return [
            "-drive",
            f"file=fat:rw:{esp},format=raw,if=none,id=esp",
            "-device",
            "ide-hd,drive=esp,bus=ide.0,bootindex=0",
        ]

    def _command(self, varstore: Path, esp: Path, tpm_socket: Path | None) -> list[str]:
        code, _ = FIRMWARE[self.secure_boot]
        accel = self.accel or default_accel()
        command = [
            "qemu-system-x86_64",
            "-name",
            f"trustedlaunch-node-{self.image.version}",
            "-machine",
            "q35,smm=on" if self.secure_boot else "q35",
            "-accel",
            accel,
            "-smp",
            str(NODE_VCPUS),
            "-m",
            str(self.memory_mib),
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={varstore}",
            *self._esp_drive(esp),
            "-serial",
            f"file:{self.console_log}",
            "-chardev",
            f"socket,id=agent,path={self._agent_socket},server=on,wait=off",
            "-serial",
            "chardev:agent",
            "-qmp",
            f"unix:{self._qmp_socket},server=on,wait=off",
        ]
        if self.image.rootfs is not None:  # the guest's first virtio disk (/dev/vda), read-only
            command += ["-drive", f"file={self.image.rootfs.path},format=raw,if=virtio,readonly=on"]
        if self.network is not None:
            command += self.network.qemu_arguments()
        if self.secure_boot:
            command += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        if tpm_socket is not None:
            command += [
                "-chardev",
                f"socket,id=chrtpm,path={tpm_socket}",
                "-tpmdev",
                "emulator,id=tpm0,chardev=chrtpm",
                "-device",
                "tpm-tis,tpmdev=tpm0",
            ]
        return command

    def start(self) -> None:
        """Launch QEMU (and the vTPM); use `wait_ready` to wait for the agent."""
        if self._process is not None:
            raise NodeVMError(f"node VM in {self.run_dir} was already started")
        if shutil.which("qemu-system-x86_64") is None:
            raise NodeVMError("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
        code, template = FIRMWARE[self.secure_boot]
        for firmware in (code, template):
            if not firmware.is_file():
                raise NodeVMError(f"OVMF firmware {firmware} not found (Debian package ovmf)")
        if not self.image.esp_dir.is_dir():
            raise NodeVMError(f"node image ESP {self.image.esp_dir} not found: build the image first")
        if len(str(self._agent_socket)) > MAX_SOCKET_PATH:
            raise NodeVMError(f"run directory {self.run_dir} is too long for unix socket paths")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self._agent_socket, self._qmp_socket, self.console_log, self.exit_file):
            stale.unlink(missing_ok=True)
        varstore = self.varstore_path
        shutil.copyfile(template, varstore)
        # QEMU's vvfat may write into the folder it serves: give each VM its own copy of the ESP.
        esp = self.esp_path
        shutil.rmtree(esp, ignore_errors=True)
        shutil.copytree(self.image.esp_dir, esp)
        tpm_socket = self.vtpm.start() if self.vtpm is not None else None
        try:
            self._start_supervised(self._command(varstore, esp, tpm_socket))
        except BaseException:
            if self.vtpm is not None:
                self.vtpm.stop()
            raise
        self._started_at = time.monotonic()

    def _start_supervised(self, command: list[str]) -> None:
        """Start QEMU under its supervisor in a new session; learn QEMU's pid from the supervisor."""
        with self.qemu_log.open("wb") as qemu_log:
            supervisor = [sys.executable, "-m", SUPERVISOR_MODULE, str(self.exit_file), str(self.qemu_log)]
            process = subprocess.Popen(
                [*supervisor, "--", *command],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=qemu_log,
                start_new_session=True,
            )
        assert process.stdout is not None
        with process.stdout as announcement:
            ready = select.select([announcement], [], [], SUPERVISOR_START_TIMEOUT)[0]
            line = announcement.readline() if ready else b""
        if not line.strip().isdigit():
            _stop_session(process)
            raise NodeVMError(
                f"the VM supervisor did not start QEMU: {readable_tail(self.qemu_log, 1000).strip()}"
            )
        self._process = process
        self._qemu_pid = int(line)

    def _boot_failed(self, reason: str) -> BootFailedError:
        tail = readable_tail(self.console_log)
        qemu_output = readable_tail(self.qemu_log, 1000).strip()
        if qemu_output:
            reason += f"; QEMU said: {qemu_output}"
        return BootFailedError(f"node VM ({self.run_dir}) did not boot: {reason}", tail)

    def _started(self) -> bool:
        return self._process is not None

    def _stop_reason(self) -> str | None:
        if self._process is None or self._process.poll() is None:
            return None
        return vm_end(self.run_dir).describe()

    def _agent_channel(self) -> AgentChannel | None:
        return self._channel if self._channel is not None else self._connect()

    def _connect(self) -> AgentChannel | None:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(self._agent_socket))
        except OSError:
            sock.close()
            return None
        return AgentChannel(sock)

    def agent(self) -> NodeAgent:
        """The verifier's side of the node's agent (after `wait_ready`)."""
        if self._channel is None or self.ready_after is None:
            raise NodeVMError("the node's agent is not ready: call wait_ready() first")
        if self._agent_client is None:
            self._agent_client = NodeAgent(self._channel, AGENT_COMMAND_TIMEOUT)
        return self._agent_client

    def request_quote(self, nonce: bytes) -> NodeQuote:
        """Have the node quote PCRs 0-9 and 14 (shim's MOK measurements) over `nonce` (1..64 bytes)."""
        return self.agent().request_quote(nonce)

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential in the node's TPM; returns the recovered secret.

        `credential_blob` and `encrypted_secret` are the contents of TPM2B_ID_OBJECT and
        TPM2B_ENCRYPTED_SECRET (as in trustedlaunch.tpm.credential.CredentialChallenge).
        """
        return self.agent().activate(credential_blob, encrypted_secret)

    def ek_certificate(self) -> bytes:
        """The node TPM's RSA EK certificate (DER), from NV index 0x01c00002."""
        return self.agent().ek_certificate()

    def start_kubelet(self, bundle: bytes, timeout: float = 300.0) -> str:
        """Hand the node its join bundle (trustedlaunch.node.kubelet.KubeletJoin.bundle): it starts
        containerd and kubelet from its root filesystem; returns the agent's account of what it did."""
        return self.agent().channel.start_kubelet(bundle, timeout)

    def kubelet_status(self) -> KubeletStatus:
        """Whether kubelet and containerd run on the node, with the end of their logs."""
        return self.agent().channel.kubelet_status(AGENT_COMMAND_TIMEOUT)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the VM (QMP quit, then kill) and its vTPM; reap both. Safe to call more than once."""
        if self._agent_client is not None:
            self._agent_client.close()
            self._agent_client = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        process, self._process, self._qemu_pid = self._process, None, None
        try:
            if process is not None and process.poll() is None:
                try:
                    qmp = _Qmp(self._qmp_socket)
                    qmp.execute("quit")
                    qmp.close()
                    process.wait(timeout)
                except (OSError, ValueError, subprocess.TimeoutExpired):
                    pass
            if process is not None:
                _stop_session(process)
        finally:
            if self.vtpm is not None:
                self.vtpm.stop()
