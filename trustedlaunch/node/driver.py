"""The node-driver interface: how the control plane runs one node VM, whatever runs it.

Two drivers implement it: the direct one (QEMU, swtpm and the bank proxy as processes of this machine:
trustedlaunch.node.qemu.NodeVM, with its adoption in trustedlaunch.control.node_drivers) and libvirt
(trustedlaunch.node.libvirt_driver: a domain on a libvirt host, local or remote). The agent protocol is the
same over both (trustedlaunch.node.channel): a unix socket for the direct driver, a libvirt console stream
for libvirt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from trustedlaunch.node.agent_client import NodeAgent
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.kubelet import NodeNetwork
from trustedlaunch.tpm.vtpm import Vtpm


class NodeMachine(Protocol):
    """One node VM as a driver runs it."""

    ready_after: float | None  # seconds from start to the agent's first answer (None until then)
    run_dir: Path  # the node's files on this machine (console log, vTPM state)

    @property
    def varstore_path(self) -> Path:
        """A varstore holding the Secure Boot keys the VM booted under (its own copy, or the template it
        was copied from), for the offline Secure Boot check of a failed boot."""
        ...

    @property
    def esp_path(self) -> Path:
        """The ESP folder the VM booted (its copy, or the image's), for the same check."""
        ...

    @property
    def handle(self) -> str:
        """What finds the VM again after a control-plane restart (`NodeDriver.adopt`): QEMU's process id
        for the direct driver, the domain's UUID for libvirt. Empty before start."""
        ...

    @property
    def running(self) -> bool:
        """True while the VM runs."""
        ...

    def start(self) -> None:
        """Start the VM (and its vTPM); `wait_ready` waits for its agent."""
        ...

    def wait_ready(self, timeout: float = 180.0) -> float:
        """Wait until the agent answers; the seconds since start. BootFailedError (with the console tail)
        if the VM stops, its console shows a fatal boot error, or the agent is silent for `timeout` s."""
        ...

    def agent(self) -> NodeAgent:
        """The verifier's side of the node's agent channel (after `wait_ready`)."""
        ...

    def console_tail(self) -> str:
        """The end of the VM's serial console, escape sequences removed."""
        ...

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the VM and its vTPM, keeping its state (varstore, TPM state) for a later start."""
        ...

    def destroy(self) -> None:
        """Stop the VM and remove what the driver made for it (a libvirt domain's definition and varstore)."""
        ...


class NodeDriver(Protocol):
    """Makes node VMs on one kind of hypervisor host."""

    name: str  # "qemu" (direct) or "libvirt"
    host_tpm: bool  # the host makes each node's TPM itself: `create`'s vtpm only says the node has one

    def create(
        self,
        image: NodeImage,
        run_dir: Path,
        *,
        secure_boot: bool,
        vtpm: Vtpm | None,
        network: NodeNetwork | None = None,
    ) -> NodeMachine:
        """A VM (not started) booting `image`, with or without Secure Boot and vTPM; files in `run_dir`;
        `network`: its only network, to its cluster's apiserver and from it to its kubelet
        (trustedlaunch.node.kubelet: addresses as its host sees them), else none."""
        ...

    def adopt(self, handle: str, run_dir: Path) -> NodeMachine | None:
        """The running VM a `handle` names (started by an earlier control-plane process); None if it is
        gone."""
        ...
