"""The node drivers behind trustedlaunch.node.driver's interface, as the reconciler uses them: the direct QEMU
driver (today's NodeVM, its behaviour unchanged, plus the adoption of a VM an earlier process started, found
by its QEMU pid and run directory) and the libvirt driver (control.libvirt_node_driver, imported only when
asked for: importing this module does not need libvirt-python).

An adopted VM (`adopt`) is what a restarted control plane talks to: its agent is connected on first use
(`agent`) and disconnected after it (`disconnect`), the VM running on.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from typing import Protocol

from trustedlaunch.control.node_processes import is_node_process, kill_node_processes
from trustedlaunch.node.agent_client import NodeAgent
from trustedlaunch.node.channel import AgentChannel
from trustedlaunch.node.driver import NodeDriver, NodeMachine
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.kubelet import NodeNetwork, uri_is_this_machine
from trustedlaunch.node.qemu import (
    AGENT_COMMAND_TIMEOUT,
    BootFailedError,
    NodeVM,
    NodeVMError,
    RunDirCopies,
    readable_tail,
)
from trustedlaunch.node.supervisor import vm_end
from trustedlaunch.tpm.vtpm import Vtpm

AGENT_SOCKET = "agent.sock"  # NodeVM's agent serial port in its run directory
PING_SECONDS = 5.0  # how long an adopted VM's agent may take to answer one PING while it boots
QEMU = "qemu"
LIBVIRT = "libvirt"


class AdoptedMachine(NodeMachine, Protocol):
    """A running node VM an earlier control-plane process started, found again by its driver."""

    def disconnect(self) -> None:
        """Close the agent connection (the next `agent` call connects again); the VM runs on."""
        ...


class ControlNodeDriver(NodeDriver, Protocol):
    """A node driver as the reconciler uses it: trustedlaunch.node.driver.NodeDriver with its connection's
    life, adoption of an AdoptedMachine and the removal of leftovers."""

    @property
    def alive(self) -> bool:
        """Whether the driver still reaches its host (else a new one is made)."""
        ...

    def close(self) -> None:
        """Close the connection to the host; its VMs keep running."""
        ...

    def adopt(self, handle: str, run_dir: Path) -> AdoptedMachine | None:
        """The running VM `handle` names; None if it is gone."""
        ...

    def remove_leftovers(self, run_dir: Path) -> None:
        """Remove what the driver made for VMs of `run_dir` on its host that no handle finds (a VM started
        right before a crash, a stopped one's definition); processes of this machine are not its part."""
        ...


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


def connect_agent(run_dir: Path, timeout: float = AGENT_COMMAND_TIMEOUT) -> NodeAgent:
    """A new connection to the agent of the direct-driver VM in `run_dir` (its serial port's socket serves
    one connection at a time); NodeVMError when it cannot be made."""
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(run_dir / AGENT_SOCKET))
    except OSError as exc:
        sock.close()
        raise NodeVMError(f"cannot connect to the node's agent socket: {exc}") from None
    return NodeAgent(AgentChannel(sock), timeout)


class AdoptedQemuVM(RunDirCopies):
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

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until the agent answers PING over its socket; the seconds waited."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if not self.running:
                raise BootFailedError(
                    f"adopted node VM ({self.run_dir}) stopped: {vm_end(self.run_dir).describe()}",
                    self.console_tail(),
                )
            try:
                agent = self.agent()
            except NodeVMError:
                agent = None
            if agent is not None and agent.channel.ping(secrets.token_hex(4), PING_SECONDS):
                self.ready_after = time.monotonic() - started
                return self.ready_after
            self.disconnect()
            time.sleep(0.5)
        raise BootFailedError(
            f"adopted node VM ({self.run_dir}): the agent did not answer within {timeout:.0f} s",
            self.console_tail(),
        )

    def agent(self) -> NodeAgent:
        """The verifier's side of the node's agent, connected on first use (NodeVMError if it cannot be)."""
        if self._agent is None:
            self._agent = connect_agent(self.run_dir)
        return self._agent

    def disconnect(self) -> None:
        """Close the agent connection; the VM runs on."""
        if self._agent is not None:
            self._agent.close()
            self._agent = None

    def console_tail(self) -> str:
        """The end of the serial console log."""
        return readable_tail(self.run_dir / "console.log")

    def shutdown(self, timeout: float = 10.0) -> None:
        """Kill the VM's QEMU, supervisor, swtpm and bank proxy (found by their run directory)."""
        self.disconnect()
        kill_node_processes(self.run_dir, timeout)

    def destroy(self) -> None:
        """As `shutdown`: the direct driver keeps nothing outside the run directory."""
        self.shutdown()


class QemuDriver:
    """The direct driver: QEMU, swtpm and the bank proxy as processes of this machine."""

    name = QEMU
    alive = True  # this machine
    host_tpm = False  # the vTPM passed to `create` (swtpm and the bank proxy here)

    def close(self) -> None:
        """Nothing to close: the VMs are processes of this machine."""

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

    def remove_leftovers(self, run_dir: Path) -> None:
        """Nothing: the direct driver's VMs are processes of this machine (node_processes finds them)."""


def node_driver(name: str, uri: str | None = None, *, host_tpm: bool = False) -> ControlNodeDriver:
    """The driver called `name`: "qemu" (this machine), or "libvirt" on the host at `uri` (with `host_tpm`,
    the host's libvirt makes the vTPMs, certified by the host's EK CA). A libvirt host elsewhere (its URI
    names a host) shares none of our files: its nodes boot from uploaded volumes, with its own vTPMs."""
    if name == QEMU:
        return QemuDriver()
    if name == LIBVIRT and uri:
        from trustedlaunch.control.libvirt_node_driver import LibvirtNodeDriver  # needs libvirt-python

        return LibvirtNodeDriver(uri, host_tpm=host_tpm, local_files=uri_is_this_machine(uri))
    raise NodeVMError(f"unknown node driver {name!r} (qemu, or libvirt with a host URI)")
