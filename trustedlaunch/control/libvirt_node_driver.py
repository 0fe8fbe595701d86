"""The libvirt node driver as the control plane uses it (trustedlaunch.control.node_drivers.node_driver): the
node-level driver (trustedlaunch.node.libvirt_driver), whose adopted VMs also stop the vTPM an earlier
control-plane process started for them, found by their run directory (node/ cannot use control's
node_processes), and which removes the domains of a run directory no handle finds (`remove_leftovers`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import libvirt

from trustedlaunch.control.node_processes import kill_node_processes
from trustedlaunch.node.libvirt_driver import (
    DOMAIN_PREFIX,
    LibvirtDriver,
    LibvirtNodeVM,
    made_for,
    remove_domain,
)


class AdoptedLibvirtVM(LibvirtNodeVM):
    """A running libvirt node VM that an earlier process started: stopping it also kills the vTPM that
    process started for it (swtpm and the bank proxy, found by their run directory)."""

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the domain, then kill the run directory's vTPM processes."""
        try:
            super().shutdown(timeout)
        finally:
            kill_node_processes(self.run_dir, timeout)

    def disconnect(self) -> None:
        """Close the agent's console stream (the next `agent` call opens a new one); the domain runs on."""
        self._close_agent()


class LibvirtNodeDriver(LibvirtDriver):
    """The libvirt driver whose adopted VMs stop their vTPM with them (AdoptedLibvirtVM)."""

    @property
    def alive(self) -> bool:
        """Whether the connection to the host is still open (a dead one is made again)."""
        try:
            return bool(self.connection.isAlive())
        except libvirt.libvirtError:
            return False

    def adopt(self, handle: str, run_dir: Path) -> AdoptedLibvirtVM | None:
        """The running node VM of UUID `handle` in `run_dir` (LibvirtDriver.adoptable_domain: a tl-node-
        domain whose files are in `run_dir`, never another domain); None otherwise."""
        domain = self.adoptable_domain(handle, run_dir)
        return None if domain is None else AdoptedLibvirtVM(self.connection, None, run_dir, domain=domain)

    def remove_leftovers(self, run_dir: Path) -> None:
        """Destroy and undefine every node domain of `run_dir` on this host, running or not: one a control
        plane killed between its start and the record of its UUID left running, or one that stopped (not
        adoptable, still defined with its varstore)."""
        try:
            domains = self.connection.listAllDomains(0)
        except libvirt.libvirtError:
            return
        for domain in domains:
            with contextlib.suppress(libvirt.libvirtError):
                if domain.name().startswith(DOMAIN_PREFIX) and made_for(domain.XMLDesc(0), run_dir):
                    remove_domain(domain)
