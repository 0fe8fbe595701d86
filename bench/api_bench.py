"""Benchmark: API latency p50/p99 at a fixed request rate on SQLite, against the 50 ms p99 target.

A real uvicorn server (the `tl` API, fresh SQLite file in a temporary folder) runs in a subprocess on
loopback. An open-loop generator sends requests at --rate per second for --seconds (requests are started on
schedule whether or not earlier ones finished, so a slow server shows up as latency, not as a lower rate):
--put-share of them are PUTs creating a new managed cluster (201, a write transaction and an operation
record), the rest GETs of one cluster. Prints p50/p99 per method and overall with the ratio to the target.
Bounded: stops after the run. No asserts. Usage:

    .venv/bin/python bench/api_bench.py [--rate 200] [--seconds 10] [--put-share 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from trustedlaunch.control.limits import QUOTAS

TARGET_P99_MS = 50.0
SUB = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = f"/subscriptions/{SUB}/resourceGroups/bench"
GROUP = f"{RESOURCE_GROUP}/providers/Microsoft.ContainerService/managedClusters"
BODY = {
    "location": "eastus",
    "properties": {"agentPoolProfiles": [{"name": "nodepool1", "count": 3, "vmSize": "Standard_D4s_v3"}]},
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(folder: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    """Start uvicorn in a subprocess; return it and the admin token once /healthz answers."""
    env = {
        **os.environ,
        "TL_DATABASE_URL": f"sqlite:///{folder / 'bench.db'}",
        "XDG_CONFIG_HOME": str(folder / "config"),
        # no reconciler here, nothing boots: no per-subscription quota, so every PUT creates a cluster
        **{quota.setting: str(10**9) for quota in QUOTAS},
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "trustedlaunch.api.app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                token = (folder / "config" / "trustedlaunch" / "admin-token").read_text().strip()
                return process, token
        except httpx.HTTPError:
            time.sleep(0.1)
    process.terminate()
    raise SystemExit("the API server did not start within 30 s")


class Connection:
    """One keep-alive HTTP/1.1 connection (a minimal client: the generator must cost far less CPU than the
    server it measures, which httpx's async client does not on a small machine)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(
        self, method: str, path: str, token: str, body: bytes = b"", api_version: str = "2024-09-01"
    ) -> int:
        head = (
            f"{method} {path}?api-version={api_version} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return int(status_line.split()[1])


async def run_load(
    port: int, token: str, rate: float, seconds: float, put_share: float
) -> dict[str, list[float]]:
    """Send rate*seconds requests on a fixed schedule; latency (ms) counts from the scheduled start, so a
    server that falls behind is charged for the queueing it causes."""
    latencies: dict[str, list[float]] = {"GET": [], "PUT": []}
    errors: list[str] = []
    idle: list[Connection] = []
    body = json.dumps(BODY).encode()

    async def one(index: int, method: str, scheduled: float) -> None:
        path = f"{GROUP}/c{index}" if method == "PUT" else f"{GROUP}/target"
        for attempt in range(2):  # an idle connection may have been closed by the server's keep-alive timeout
            reused = bool(idle) and attempt == 0
            connection = (
                idle.pop() if reused else Connection(*await asyncio.open_connection("127.0.0.1", port))
            )
            try:
                status = await connection.request(method, path, token, body if method == "PUT" else b"")
                break
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                connection.writer.close()
                if not reused or attempt == 1:
                    errors.append(f"{method} {type(exc).__name__}: {exc!r}"[:120])
                    return
        latencies[method].append((time.perf_counter() - scheduled) * 1000)
        if status >= 400:
            errors.append(f"{method} {status}")
        idle.append(connection)

    setup = Connection(*await asyncio.open_connection("127.0.0.1", port))
    group = json.dumps({"location": "eastus"}).encode()
    if await setup.request("PUT", RESOURCE_GROUP, token, group, api_version="2025-04-01") != 201:
        raise SystemExit("could not create the resource group of the clusters")
    if await setup.request("PUT", f"{GROUP}/target", token, body) != 201:
        raise SystemExit("could not create the cluster the GETs read")
    idle.append(setup)
    total = int(rate * seconds)
    every = max(1, round(1 / put_share)) if put_share > 0 else 0
    start = time.perf_counter()
    tasks = []
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        method = "PUT" if every and index % every == 0 else "GET"
        tasks.append(asyncio.create_task(one(index, method, scheduled)))
    await asyncio.gather(*tasks)
    achieved = total / (time.perf_counter() - start)
    for connection in idle:
        connection.writer.close()
    print(
        f"sent {total} requests in {time.perf_counter() - start:.1f} s ({achieved:.0f}/s; asked {rate:.0f}/s)"
    )
    print(f"errors: {len(errors)} {sorted(set(errors))[:5]}")
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    """Run the benchmark and print the latency table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of the load")
    parser.add_argument("--put-share", type=float, default=0.2, help="fraction of PUTs (0..1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tl-api-bench-") as folder:
        port = free_port()
        process, token = start_server(Path(folder), port)
        try:
            latencies = asyncio.run(run_load(port, token, args.rate, args.seconds, args.put_share))
        finally:
            process.terminate()
            process.wait(timeout=10)
    print(f"{'method':<8}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}{'p99/target':>12}")
    rows = [*latencies.items(), ("all", latencies["GET"] + latencies["PUT"])]
    for method, values in rows:
        if not values:
            continue
        p99 = percentile(values, 0.99)
        print(
            f"{method:<8}{len(values):>6}{statistics.median(values):>10.1f}{p99:>10.1f}"
            f"{max(values):>10.1f}{p99 / TARGET_P99_MS:>12.2f}"
        )
    print(f"target: p99 < {TARGET_P99_MS:.0f} ms (ratio < 1.00 meets it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
