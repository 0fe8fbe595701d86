"""Hosted control plane benchmark: time from start to kube-apiserver's /readyz, and the resident memory of
etcd, kube-apiserver, kube-controller-manager and kube-scheduler once idle, for N clusters at once.

Run: python bench/control_plane_bench.py [--clusters N] [--settle SECONDS]. Targets (issue 15): /readyz
<= 30 s, <= 700 MB for the four processes of one cluster, >= 20 idle clusters on a 24 GiB host. Prints
the figures and the number of idle clusters the measured memory fits in 24 GiB; asserts nothing. Needs
`make setup` (the cached release).
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
MIB = 1 << 20


def main() -> None:
    """Start the clusters one after another, let them idle, print the figures, stop them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=1)
    parser.add_argument("--settle", type=float, default=30.0, help="idle seconds before memory is read")
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
            time.sleep(options.settle)
            totals = []
            for index, plane in enumerate(planes):
                plane.check_running()
                memory = plane.resident_memory()
                totals.append(sum(memory.values()))
                parts = ", ".join(f"{component} {memory[component] / MIB:.0f}" for component in COMPONENTS)
                print(f"cluster {index}: RSS {totals[-1] / MIB:.0f} MiB ({parts})")
            mean = statistics.mean(totals)
            print(
                f"{options.clusters} idle cluster(s) after {options.settle:.0f} s: mean RSS "
                f"{mean / MIB:.0f} MiB per cluster, {int(HOST_MEMORY // mean)} such clusters fit in 24 GiB"
            )
        finally:
            for plane in planes:
                plane.stop()


if __name__ == "__main__":
    main()
