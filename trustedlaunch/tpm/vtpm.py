"""Per-VM virtual TPM: a manufactured swtpm state directory and the swtpm process QEMU connects to.

The state (EKs, EK certificates, persistent objects, NV) lives in the directory and survives VM
restarts: `start()` again with the same directory after `stop()`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.tpm.ekca import EkCa, write_swtpm_setup_config

STATE_FILE = "tpm2-00.permall"
CONTROL_SOCKET = "swtpm.sock"
PCR_BANKS = ("sha1", "sha256")
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

    @property
    def manufactured(self) -> bool:
        """True once `create` has written the TPM state."""
        return (self.state_dir / STATE_FILE).is_file()

    @property
    def control_socket(self) -> Path:
        """The unix socket QEMU's `-chardev socket,path=...` for `-tpmdev emulator` connects to."""
        return self.state_dir / CONTROL_SOCKET

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
        """Start swtpm for one QEMU run; return the control socket path to give QEMU.

        swtpm exits by itself when QEMU disconnects (--terminate); `stop()` reaps it in any case.
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
        return socket_path

    def stop(self, timeout: float = 5.0) -> None:
        """Stop swtpm (if running) and reap it; the TPM state stays in the directory."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.control_socket.unlink(missing_ok=True)

    def destroy(self) -> None:
        """Stop swtpm and delete the TPM state: the VM's TPM identity (EKs) is gone for good."""
        self.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
