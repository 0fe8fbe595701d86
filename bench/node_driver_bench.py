"""Node driver benchmark: the same Secure Boot + vTPM node booted by the direct QEMU driver and by the libvirt
driver (a private libvirtd, trustedlaunch.node.libvirt_host), in one run, alternating.

Run: python bench/node_driver_bench.py [runs]. For each boot it prints start to agent ready (wall time from
the driver's `start`: vTPM start, domain definition and QEMU start included) and start to attested (the first
attestation as the reconciler makes it: AK, EK certificate from our platform CA, credential activation,
quote, event log, verdict against the image's predicted policy); then the medians and libvirt's as a ratio
to the direct driver's, and QEMU's CPU seconds to agent ready (which barely depend on what else the
machine runs: compare those when the load average is high). Both drivers use our own swtpm behind the bank
proxy (libvirt's TPM backend 'external'). Asserts only that every node attested.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from node_boot_bench import qemu_cpu_seconds  # bench/ is the script's folder

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.control.node_drivers import node_driver
from trustedlaunch.control.node_images import build_release_image
from trustedlaunch.node.driver import NodeDriver
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import LibvirtDriver, LibvirtNodeVM
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.node.qemu import FIRMWARE
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm

BOOT_TIMEOUT = 600.0


def boot_once(
    driver: NodeDriver, host: LibvirtHost, image: NodeImage, policy: Policy, ek_ca: EkCa, base: Path, run: int
) -> tuple[float, float, float]:
    """Boot one Secure Boot + vTPM node with `driver` and attest it; (start to ready, start to attested,
    QEMU CPU seconds to ready)."""
    vtpm = Vtpm.create(base / f"vtpm-{driver.name}-{run}", ek_ca=ek_ca)
    vm = driver.create(image, base / f"vm-{driver.name}-{run}", secure_boot=True, vtpm=vtpm)
    started = time.monotonic()
    try:
        vm.start()
        vm.wait_ready(BOOT_TIMEOUT)
        ready = time.monotonic() - started
        pid = host.qemu_pid(vm.domain_name) if isinstance(vm, LibvirtNodeVM) else int(vm.handle)
        cpu = qemu_cpu_seconds(pid)
        attestation = attest_node(vm.agent(), policy=policy, ek_ca=[ek_ca.certificate])
        attested = time.monotonic() - started
    finally:
        vm.destroy()
    if not attestation.ok:
        raise SystemExit(f"{driver.name} run {run}: NOT attested: {attestation.result.findings}")
    print(
        f"run {run}: {driver.name:8s} start to agent ready {ready:6.2f} s (QEMU CPU {cpu:6.2f} s), "
        f"to attested {attested:6.2f} s (load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)",
        flush=True,
    )
    return ready, attested, cpu


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    with tempfile.TemporaryDirectory(prefix="tl-drv-") as folder:
        base = Path(folder)
        started = time.monotonic()
        image = build_release_image(base / "image")  # the image real nodes boot (dm-verity root filesystem)
        print(f"image build: {time.monotonic() - started:6.2f} s (version {image.version})")
        policy = policy_for_image(image.esp_dir, FIRMWARE[True][1])
        ek_ca = create_ek_ca(base / "ek-ca")
        with LibvirtHost(base / "libvirt") as host:
            started = time.monotonic()
            drivers = [node_driver("qemu"), node_driver("libvirt", host.uri)]
            print(f"private libvirtd up and connected: {time.monotonic() - started:6.2f} s")
            times: dict[str, list[tuple[float, float, float]]] = {driver.name: [] for driver in drivers}
            try:
                for run in range(1, runs + 1):
                    for driver in drivers if run % 2 else reversed(drivers):
                        times[driver.name].append(boot_once(driver, host, image, policy, ek_ca, base, run))
            finally:
                for driver in drivers:
                    if isinstance(driver, LibvirtDriver):
                        driver.close()
        measures = ("start to agent ready", "start to attested", "QEMU CPU to agent ready")
        for index, what in enumerate(measures):
            direct = statistics.median(boot[index] for boot in times["qemu"])
            libvirt = statistics.median(boot[index] for boot in times["libvirt"])
            print(
                f"median {what}: direct {direct:.2f} s, libvirt {libvirt:.2f} s = {libvirt / direct:.2f} x "
                f"({runs} runs each)"
            )


if __name__ == "__main__":
    main()
