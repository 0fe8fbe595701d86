"""A node VM whose QEMU is killed or interrupted while it boots (a real QEMU under its supervisor, a real
vTPM): the supervisor records how QEMU ended and the boot diagnosis names the signal instead of blaming the
firmware or the guest; QEMU, its supervisor, swtpm and the bank proxy each run in a session of their own."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from node_helpers import processes_under

from trustedlaunch.control.node_processes import node_processes
from trustedlaunch.node.diagnose import diagnose_boot_failure
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.qemu import BootFailedError, NodeVM
from trustedlaunch.tpm.ekca import EkCa
from trustedlaunch.tpm.vtpm import Vtpm

pytestmark = pytest.mark.slow


def wait_for_firmware(vm: NodeVM) -> None:
    """Wait until QEMU runs the firmware (it wrote to the serial console: its signal handlers are set)."""
    deadline = time.monotonic() + 60
    while not (vm.console_log.exists() and vm.console_log.stat().st_size > 0):
        assert vm.running and time.monotonic() < deadline, "QEMU did not start the firmware"
        time.sleep(0.05)


def test_sigkill_of_qemu_is_diagnosed_as_such(
    node_image: NodeImage, node_base: Path, node_ek_ca: EkCa
) -> None:
    run_dir = node_base / "vm-killed"
    vtpm = Vtpm.create(run_dir / "tpm", ek_ca=node_ek_ca)
    vm = NodeVM(node_image, run_dir, secure_boot=True, vtpm=vtpm)
    with vm:
        wait_for_firmware(vm)
        assert vm.pid is not None
        programs = node_processes(run_dir)
        assert sorted(programs.values()) == ["bankproxy", "qemu-system-x86_64", "supervisor", "swtpm"]
        for pid in programs:  # each in a session of its own (QEMU in its supervisor's), none in ours
            assert os.getsid(pid) != os.getsid(0)
        assert os.getsid(vm.pid) == next(pid for pid, name in programs.items() if name == "supervisor")
        os.kill(vm.pid, signal.SIGKILL)
        with pytest.raises(BootFailedError) as failure:
            vm.wait_ready(timeout=60)
    assert "QEMU) was killed by signal 9 (SIGKILL)" in str(failure.value)
    diagnosis = diagnose_boot_failure(vm, failure.value)
    assert diagnosis.message.startswith(
        "the VM process (QEMU) was killed by signal 9 (SIGKILL) before the node booted: not a firmware or "
        "guest failure; console: "
    ), diagnosis.message
    assert "accepts every stage" not in diagnosis.message
    assert not processes_under(run_dir) and node_processes(run_dir) == {}


def test_sigint_to_qemu_is_diagnosed_from_its_own_log(node_image: NodeImage, node_base: Path) -> None:
    """SIGINT (what Ctrl-C sent to QEMU before it had a session of its own): QEMU exits 0 after logging
    "terminating on signal 2", which the diagnosis names rather than a guest that powered off."""
    vm = NodeVM(node_image, node_base / "vm-interrupted", secure_boot=False)
    with vm:
        wait_for_firmware(vm)
        assert vm.pid is not None
        os.kill(vm.pid, signal.SIGINT)
        with pytest.raises(BootFailedError) as failure:
            vm.wait_ready(timeout=60)
    diagnosis = diagnose_boot_failure(vm, failure.value)
    stopped = 'the VM process (QEMU) was stopped by signal 2 (SIGINT): QEMU logged "terminating on signal 2'
    assert diagnosis.message.startswith(stopped), diagnosis.message
    assert ", then exited with code 0 before the node booted: not a firmware or guest failure" in (
        diagnosis.message
    )
