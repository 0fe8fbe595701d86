"""Hosted control plane benchmark: time from start to kube-apiserver's /readyz, then, once idle, the memory
(RSS and PSS) and CPU of etcd, kube-apiserver, kube-controller-manager and kube-scheduler, for N clusters
at once.

Run: python bench/control_plane_bench.py [--clusters N] [--settle SECONDS]. Targets (issue 15): /readyz
<= 30 s, <= 700 MB for the four processes of one cluster, >= 20 idle clusters on a 24 GiB host. Prints
the figures and how many idle clusters the measured memory (PSS: shared binary text counted once) fits in
24 GiB and their CPU in 2 cores; asserts nothing. Needs `make setup` (the cached release).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from trustedlaunch.control.hosted_control_plane import COMPONENTS, ControlPlanePorts, HostedControlPlane
from trustedlaunch.control.kubernetes_release import verified_release

HOST_MEMORY = 24 << 30
HOST_CORES = 2
MIB = 1 << 20


def report(planes: list[HostedControlPlane], settle: float) -> None:
    """Measure CPU over `settle` idle seconds, then memory; print one line per cluster and the totals."""
    cpu_before = [plane.cpu_seconds() for plane in planes]
    time.sleep(settle)
    rss_totals, pss_totals, cpu_shares = [], [], []
    for index, (plane, before) in enumerate(zip(planes, cpu_before, strict=True)):
        plane.check_running()
        rss_parts, pss_parts = plane.resident_memory(), plane.proportional_memory()
        rss_totals.append(sum(rss_parts.values()))
        pss_totals.append(sum(pss_parts.values()))
        cpu_shares.append((plane.cpu_seconds() - before) / settle)
        parts = ", ".join(f"{component} {rss_parts[component] / MIB:.0f}" for component in COMPONENTS)
        print(
            f"cluster {index}: RSS {rss_totals[-1] / MIB:.0f} MiB ({parts}), "
            f"PSS {pss_totals[-1] / MIB:.0f} MiB, idle CPU {cpu_shares[-1] * 100:.1f} % of a core"
        )
    rss, pss, cpu = statistics.mean(rss_totals), statistics.mean(pss_totals), statistics.mean(cpu_shares)
    print(
        f"{len(planes)} idle cluster(s) over {settle:.0f} s: mean RSS {rss / MIB:.0f} MiB, "
        f"PSS {pss / MIB:.0f} MiB, CPU {cpu * 100:.1f} % of a core per cluster; by memory "
        f"{int(HOST_MEMORY // pss)} fit in 24 GiB, by idle CPU {int(HOST_CORES // cpu) if cpu else 'any'} in "
        f"{HOST_CORES} cores"
    )


def main() -> None:
    """Start the clusters one after another, let them idle, print the figures, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument("--settle", type=float, default=30.0, help="idle seconds measured")
    options = parser.parse_args()
    release = verified_release()
    planes: list[HostedControlPlane] = []
    with tempfile.TemporaryDirectory(prefix="tl-cp-bench-") as scratch:
        try:
            for index in range(options.clusters):
                fqdn = f"bench{index}.hcp.eastus.trustedlaunch.internal"
                plane = HostedControlPlane(
                    release, Path(scratch) / f"c{index}", fqdn, ControlPlanePorts.free()
                )
                planes.append(plane)
                started = time.monotonic()
                plane.start()
                plane.wait_ready()
                print(f"cluster {index}: /readyz {time.monotonic() - started:.1f} s after start", flush=True)
            time.sleep(10)  # the controllers' start-up work
            report(planes, options.settle)
        finally:
            for plane in planes:
                plane.stop()


if __name__ == "__main__":
    main()
