"""The direct QEMU driver behind the node-driver interface: a VM it starts is adopted by its handle (QEMU's
pid) from a new driver, as a restarted control plane would, and its agent answers there."""

from __future__ import annotations

from pathlib import Path

import pytest

from trustedlaunch.control.node_drivers import AdoptedQemuVM, node_driver
from trustedlaunch.control.node_processes import node_processes
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import NodeVMError

pytestmark = pytest.mark.slow
BOOT_TIMEOUT = 600.0


def test_qemu_driver_vm_is_adopted_by_its_handle(node_image: NodeImage, node_base: Path) -> None:
    run_dir = node_base / "vm-driver-qemu"
    vm = node_driver("qemu").create(node_image, run_dir, secure_boot=False, vtpm=None)
    try:
        vm.start()
        vm.wait_ready(BOOT_TIMEOUT)
        handle = vm.handle
        assert handle.isdigit() and vm.running
        adopted = node_driver("qemu").adopt(handle, run_dir)
        assert isinstance(adopted, AdoptedQemuVM) and adopted.running
        vm.agent().close()  # the serial port serves one connection at a time
        adopted.wait_ready(60.0)
        assert adopted.agent().channel.ping("adopted", 30.0)
        assert adopted.console_tail().strip()
        with pytest.raises(NodeVMError):
            adopted.start()
        adopted.destroy()
        assert not adopted.running and not list(node_processes(run_dir))
        assert node_driver("qemu").adopt(handle, run_dir) is None
    finally:
        vm.destroy()
    assert not vm.running


def test_unknown_driver_is_refused() -> None:
    with pytest.raises(NodeVMError, match="unknown node driver"):
        node_driver("xen")
    with pytest.raises(NodeVMError, match="unknown node driver"):
        node_driver("libvirt")  # a libvirt driver needs its host's URI
