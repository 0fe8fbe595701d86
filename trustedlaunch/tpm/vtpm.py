"""Per-VM virtual TPM: a manufactured swtpm state directory, the swtpm process and the link QEMU connects to.

The state (EKs, EK certificates, persistent objects, NV) lives in the directory and survives VM
restarts: `start()` again with the same directory after `stop()`. QEMU talks to swtpm through
trustedlaunch.tpm.bankproxy, which shows the firmware only the allocated PCR banks (see there why).
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.tpm.ekca import EkCa, write_swtpm_setup_config

STATE_FILE = "tpm2-00.permall"
CONTROL_SOCKET = "swtpm.sock"
PROXY_MODULE = "trustedlaunch.tpm.bankproxy"  # run with `python -m`
QEMU_SOCKET = "proxy.sock"  # no longer than CONTROL_SOCKET: MAX_SOCKET_PATH checks hold for both
# sha256 only: attestation needs nothing else (SHA-1 is broken), and the firmware hashes every measured byte
# in software once per allocated bank (~1-2 s of a TCG boot per bank)
PCR_BANKS = ("sha256",)
SETUP_CONFIG_DIR = "swtpm-setup"
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes including the terminating NUL


class VtpmError(TrustedLaunchError):
    """A vTPM could not be manufactured, started or stopped."""


def _require_program(name: str, package: str) -> None:
    if shutil.which(name) is None:
        raise VtpmError(f"the `{name}` program is not installed (Debian package {package})")


class Vtpm:
    """The swtpm of one VM, with its state in `state_dir`."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self._process: subprocess.Popen[bytes] | None = None
        self._proxy: subprocess.Popen[bytes] | None = None

    @property
    def manufactured(self) -> bool:
        """True once `create` has written the TPM state."""
        return (self.state_dir / STATE_FILE).is_file()

    @property
    def control_socket(self) -> Path:
        """swtpm's control socket (the bank proxy connects to it for QEMU)."""
        return self.state_dir / CONTROL_SOCKET

    @property
    def qemu_socket(self) -> Path:
        """The unix socket QEMU's `-chardev socket,path=...` for `-tpmdev emulator` connects to."""
        return self.state_dir / QEMU_SOCKET

    @property
    def log_path(self) -> Path:
        """swtpm's log file (setup and runtime)."""
        return self.state_dir / "swtpm.log"

    @property
    def running(self) -> bool:
        """True while the swtpm process is alive."""
        return self._process is not None and self._process.poll() is None

    def ek_certificates(self) -> list[Path]:
        """The EK certificates (DER) swtpm_setup issued for the RSA and ECC EKs."""
        return sorted(self.state_dir.glob("ek-*.crt"))

    @classmethod
    def create(cls, state_dir: Path, *, ek_ca: EkCa | None, pcr_banks: tuple[str, ...] = PCR_BANKS) -> Vtpm:
        """Manufacture a TPM 2.0 in `state_dir`: RSA and ECC EKs, the given PCR banks and, with `ek_ca`,
        EK certificates issued by that platform CA (never by swtpm's shared local CA), stored in the TPM's
        NV (0x01c00002 for RSA) and as files. An already manufactured directory is reused as is: call
        `destroy()` first to reimage (new EKs, new certificates)."""
        vtpm = cls(state_dir)
        if vtpm.manufactured:
            return vtpm
        _require_program("swtpm_setup", "swtpm-tools")
        state_dir.mkdir(parents=True, exist_ok=True)
        command = [
            "swtpm_setup",
            "--tpm2",
            "--tpmstate",
            str(state_dir),
            "--createek",
            "--pcr-banks",
            ",".join(pcr_banks),
            "--logfile",
            str(vtpm.log_path),
        ]
        if ek_ca is not None:
            config = write_swtpm_setup_config(ek_ca, state_dir / SETUP_CONFIG_DIR, pcr_banks=pcr_banks)
            command += ["--config", str(config), "--create-ek-cert", "--write-ek-cert-files", str(state_dir)]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0 or not vtpm.manufactured:
            log = vtpm.log_path.read_text(errors="replace")[-2000:] if vtpm.log_path.exists() else ""
            raise VtpmError(
                f"swtpm_setup failed for {state_dir} (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()} {log.strip()}".strip()
            )
        return vtpm

    def start(self, timeout: float = 10.0) -> Path:
        """Start swtpm and the bank proxy for one QEMU run; return the socket path to give QEMU.

        Both exit by themselves when QEMU disconnects (swtpm: --terminate); `stop()` reaps them in any case.
        Each runs in a session of its own, so that it outlives a Ctrl-C or hang-up of the starter's terminal.
        """
        if not self.manufactured:
            raise VtpmError(f"{self.state_dir} holds no TPM state: call Vtpm.create() first")
        if self.running:
            raise VtpmError(f"the vTPM of {self.state_dir} is already running")
        socket_path = self.control_socket
        if len(str(socket_path)) > MAX_SOCKET_PATH:
            raise VtpmError(f"{socket_path}: path too long for a unix socket (max {MAX_SOCKET_PATH} bytes)")
        _require_program("swtpm", "swtpm")
        socket_path.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={self.state_dir}",
                    "--ctrl",
                    f"type=unixio,path={socket_path}",
                    "--terminate",
                    "--log",
                    f"file={self.log_path},level=2",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # no terminal signal of the starter reaches the node's vTPM
            )
        deadline = time.monotonic() + timeout
        while not socket_path.exists():
            if self._process.poll() is not None:
                self._process = None
                log_tail = self.log_path.read_text(errors="replace")[-1000:].strip()
                raise VtpmError(f"swtpm for {self.state_dir} exited at start: {log_tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise VtpmError(
                    f"swtpm for {self.state_dir} did not create {socket_path} within {timeout:.0f} s"
                )
            time.sleep(0.02)
        try:
            self._start_proxy(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self.qemu_socket

    def _start_proxy(self, deadline: float) -> None:
        self.qemu_socket.unlink(missing_ok=True)
        with self.log_path.open("ab") as log:
            self._proxy = subprocess.Popen(
                [sys.executable, "-m", PROXY_MODULE, str(self.qemu_socket), str(self.control_socket)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert self._proxy.stdout is not None
        with self._proxy.stdout as announcement:
            ready = select.select([announcement], [], [], max(0.0, deadline - time.monotonic()))[0]
            if not ready or announcement.readline() != b"ready\n":
                log_tail = self.log_path.read_text(errors="replace")[-1000:].strip()
                raise VtpmError(f"the TPM bank proxy for {self.state_dir} did not start: {log_tail}")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop swtpm and the bank proxy (if running) and reap them; the TPM state stays in the directory."""
        for process in (self._proxy, self._process):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._proxy = self._process = None
        self.control_socket.unlink(missing_ok=True)
        self.qemu_socket.unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop swtpm and delete the TPM state: the VM's TPM identity (EKs) is gone for good."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
