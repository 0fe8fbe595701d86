"""Nodes per host: how many Secure Boot + vTPM node VMs one libvirt host holds, measured on a private libvirtd
(trustedlaunch.node.libvirt_host) of this machine.

Run: python bench/nodes_per_host_bench.py [max_nodes]. For k = 1 .. max_nodes (default 3) it starts k nodes
at once through the libvirt driver and prints, per k: the median start to agent ready (and its ratio to k = 1,
the peer in the same run), the median QEMU CPU seconds to agent ready, and the resident memory of each QEMU
once its agent answered (guest RAM the guest touched, the TCG translation cache, QEMU itself). From these it
prints how many nodes fit the machine: by memory (available memory / the largest node RSS seen) and by CPU
(the largest k whose boots took at most twice the single node's). Asserts only that every node answered.

The node VM placement counts (control.placement) is the guest's NODE_MEMORY_MIB and NODE_VCPUS: compare its
memory with the RSS printed here when setting a host's capacity.

Measured 2026-12-06 on the 2-core TCG machine (22 GiB available, other VM jobs running: load average 4-6),
the release image: 1 node 31.2 s to agent ready; 2 at once 37.5 s (1.20 x); 3 at once 47.5 s (1.52 x);
QEMU CPU to ready 15.2-15.4 s each whatever k; QEMU RSS 369-377 MiB per node (of the guest's 512 MiB). So
memory would hold 58 nodes here and CPU holds 3 booting at once within 2 x a single boot: under TCG a host's
vCPU capacity, not its memory, bounds its nodes (about one booting node per core, more once booted: an idle
node's QEMU uses little CPU).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from node_boot_bench import qemu_cpu_seconds  # bench/ is the script's folder

from trustedlaunch.control.node_images import build_release_image
from trustedlaunch.node.image import NodeImage
from trustedlaunch.node.libvirt_driver import LibvirtDriver
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.node.qemu import NODE_MEMORY_MIB
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm

BOOT_TIMEOUT = 1200.0  # several TCG guests on two cores
SLOWDOWN_THAT_STILL_FITS = 2.0  # k nodes fit by CPU while their boots take at most this x one node's


def resident_mib(pid: int | None) -> float:
    """A process's resident memory in MiB (0 when it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((line for line in status.splitlines() if line.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 1024


def available_mib() -> float:
    """The machine's MemAvailable in MiB."""
    lines = Path("/proc/meminfo").read_text().splitlines()
    return int(next(line for line in lines if line.startswith("MemAvailable")).split()[1]) / 1024


def boot_together(
    count: int, driver: LibvirtDriver, host: LibvirtHost, image: NodeImage, ek_ca: EkCa, base: Path
) -> list[tuple[float, float, float]]:
    """Start `count` nodes at once and wait for each agent; per node (start to ready, QEMU CPU to ready,
    QEMU RSS MiB at ready)."""
    machines = [
        driver.create(
            image,
            base / f"vm-{count}-{index}",
            secure_boot=True,
            vtpm=Vtpm.create(base / f"vtpm-{count}-{index}", ek_ca=ek_ca),
        )
        for index in range(count)
    ]

    def boot(index: int) -> tuple[float, float, float]:
        vm = machines[index]
        started = time.monotonic()
        vm.start()
        vm.wait_ready(BOOT_TIMEOUT)
        ready = time.monotonic() - started
        pid = host.qemu_pid(vm.domain_name)
        return ready, qemu_cpu_seconds(pid), resident_mib(pid)

    try:
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(boot, range(count)))
    finally:
        for vm in machines:
            vm.destroy()


def main() -> None:
    max_nodes = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="tl-nph-") as folder:
        base = Path(folder)
        image = build_release_image(base / "image")
        ek_ca = create_ek_ca(base / "ek-ca")
        free_before = available_mib()
        readies: dict[int, float] = {}
        largest_rss = 0.0
        with LibvirtHost(base / "libvirt", ek_ca=ek_ca) as host:
            driver = LibvirtDriver(host.uri)
            try:
                for count in range(1, max_nodes + 1):
                    boots = boot_together(count, driver, host, image, ek_ca, base)
                    readies[count] = statistics.median(ready for ready, _, _ in boots)
                    largest_rss = max(largest_rss, *(rss for _, _, rss in boots))
                    print(
                        f"{count} node(s) at once: median start to agent ready {readies[count]:7.2f} s "
                        f"= {readies[count] / readies[1]:.2f} x one node, median QEMU CPU "
                        f"{statistics.median(cpu for _, cpu, _ in boots):6.2f} s, QEMU RSS "
                        f"{', '.join(f'{rss:.0f}' for _, _, rss in boots)} MiB "
                        f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs)",
                        flush=True,
                    )
            finally:
                driver.close()
        fast_enough = SLOWDOWN_THAT_STILL_FITS * readies[1]
        by_cpu = max(count for count, ready in readies.items() if ready <= fast_enough)
        print(
            f"fits by memory: {int(free_before // largest_rss)} nodes ({free_before:.0f} MiB available, "
            f"at most {largest_rss:.0f} MiB per node's QEMU; the guest has {NODE_MEMORY_MIB} MiB); "
            f"by CPU: {by_cpu} of {max_nodes} tried boot within {SLOWDOWN_THAT_STILL_FITS:g} x one node's"
        )


if __name__ == "__main__":
    main()
