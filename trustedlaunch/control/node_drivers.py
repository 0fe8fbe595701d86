"""The node drivers behind trustedlaunch.node.driver's interface: the direct QEMU driver (today's NodeVM, its
behaviour unchanged, plus the adoption of a VM an earlier process started, found by its QEMU pid and run
directory as the reconciler finds it) and the libvirt driver (control.libvirt_node_driver, imported only when
asked for: importing this module does not need libvirt-python).

The reconciler does not use this interface yet (it calls NodeVM, AdoptedAgent and node_processes directly);
the next slice moves it onto `node_driver`.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

from trustedlaunch.control.node_processes import is_node_process, kill_node_processes
from trustedlaunch.node.agent_client import NodeAgent
from trustedlaunch.node.channel import AgentChannel
from trustedlaunch.node.driver import NodeDriver
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.kubelet import NodeNetwork
from trustedlaunch.node.qemu import (
    AGENT_COMMAND_TIMEOUT,
    BootFailedError,
    NodeVM,
    NodeVMError,
    readable_tail,
)
from trustedlaunch.node.supervisor import vm_end
from trustedlaunch.tpm.vtpm import Vtpm

AGENT_SOCKET = "agent.sock"  # NodeVM's agent serial port in its run directory


class QemuNodeVM(NodeVM):
    """NodeVM as a trustedlaunch.node.driver.NodeMachine: its handle is QEMU's pid."""

    @property
    def handle(self) -> str:
        """QEMU's process id (empty when not running under this object)."""
        return str(self.pid) if self.pid is not None else ""

    def console_tail(self) -> str:
        """The end of the serial console log."""
        return readable_tail(self.console_log)

    def destroy(self) -> None:
        """Stop QEMU and the vTPM (the direct driver keeps nothing outside the run directory)."""
        self.shutdown()


class AdoptedQemuVM:
    """A running direct-driver VM that an earlier process started (its QEMU pid and run directory)."""

    def __init__(self, run_dir: Path, qemu_pid: int):
        self.run_dir, self.qemu_pid = run_dir, qemu_pid
        self.ready_after: float | None = None
        self._agent: NodeAgent | None = None

    @property
    def handle(self) -> str:
        """QEMU's process id."""
        return str(self.qemu_pid)

    @property
    def running(self) -> bool:
        """True while the pid is still this VM's QEMU (not a reused pid)."""
        return is_node_process(self.qemu_pid, self.run_dir)

    def start(self) -> None:
        """An adopted VM runs already: starting it again is an error."""
        raise NodeVMError(f"node VM in {self.run_dir} was adopted running: it cannot be started again")

    def _connect(self) -> AgentChannel | None:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(str(self.run_dir / AGENT_SOCKET))
        except OSError:
            sock.close()
            return None
        return AgentChannel(sock)

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until the agent answers PING over its socket; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.running:
                raise BootFailedError(
                    f"adopted node VM ({self.run_dir}) stopped: {vm_end(self.run_dir).describe()}",
                    self.console_tail(),
                )
            channel = self._connect()
            if channel is not None and channel.ping(secrets.token_hex(4), 1.0):
                self._agent = NodeAgent(channel, AGENT_COMMAND_TIMEOUT)
                self.ready_after = time.monotonic() - started
                return self.ready_after
            if channel is not None:
                channel.close()
            time.sleep(0.5)
        raise BootFailedError(
            f"adopted node VM ({self.run_dir}): the agent did not answer within {timeout:.0f} s",
            self.console_tail(),
        )

    def agent(self) -> NodeAgent:
        """The verifier's side of the node's agent (after `wait_ready`)."""
        if self._agent is None:
            raise NodeVMError("the node's agent is not ready: call wait_ready() first")
        return self._agent

    def console_tail(self) -> str:
        """The end of the serial console log."""
        return readable_tail(self.run_dir / "console.log")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Kill the VM's QEMU, supervisor, swtpm and bank proxy (found by their run directory)."""
        if self._agent is not None:
            self._agent.close()
            self._agent = None
        kill_node_processes(self.run_dir, timeout)

    def destroy(self) -> None:
        """As `shutdown`: the direct driver keeps nothing outside the run directory."""
        self.shutdown()


class QemuDriver:
    """The direct driver: QEMU, swtpm and the bank proxy as processes of this machine."""

    name = "qemu"

    def create(
        self,
        image: NodeImage,
        run_dir: Path,
        *,
        secure_boot: bool,
        vtpm: Vtpm | None,
        network: NodeNetwork | None = None,
    ) -> QemuNodeVM:
        """A NodeVM (not started) with these settings."""
        return QemuNodeVM(image, run_dir, secure_boot=secure_boot, vtpm=vtpm, network=network)

    def adopt(self, handle: str, run_dir: Path) -> AdoptedQemuVM | None:
        """The VM whose QEMU pid is `handle` if it still runs from `run_dir`; else None."""
        if not handle.isdigit() or not is_node_process(int(handle), run_dir):
            return None
        return AdoptedQemuVM(run_dir, int(handle))


def node_driver(name: str, uri: str | None = None) -> NodeDriver:
    """The driver called `name`: "qemu" (this machine), or "libvirt" on the host at `uri`."""
    if name == QemuDriver.name:
        return QemuDriver()
    if name == "libvirt" and uri:
        from trustedlaunch.control.libvirt_node_driver import LibvirtNodeDriver  # needs libvirt-python

        return LibvirtNodeDriver(uri)
    raise NodeVMError(f"unknown node driver {name!r} (qemu, or libvirt with a host URI)")
