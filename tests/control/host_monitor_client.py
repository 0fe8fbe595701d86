"""Run inside the client network namespace (tests/control/test_node_hosts_libvirt.py): check the store's hosts
with a HostMonitor (as the reconciler does each pass) until STOP_FILE exists or DEADLINE seconds passed.

Usage: python host_monitor_client.py DATABASE_URL INTERVAL TIMEOUT STOP_FILE DEADLINE RUNS_DIR
(RUNS_DIR: the folder of the run directories whose stray domains the checks remove, as the reconciler's)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from trustedlaunch.control.node_hosts import HostMonitor
from trustedlaunch.store.db import make_engine, session_factory

PASS_SECONDS = 0.1  # the reconciler's pass, shortened


def main(
    database_url: str, interval: str, timeout: str, stop_file: str, deadline: str, runs_dir: str
) -> None:
    engine = make_engine(database_url)
    monitor = HostMonitor(
        session_factory(engine), interval=float(interval), timeout=float(timeout), runs_dir=Path(runs_dir)
    )
    end = time.monotonic() + float(deadline)
    while not Path(stop_file).exists() and time.monotonic() < end:
        monitor.check_hosts()
        time.sleep(PASS_SECONDS)
    engine.dispose()


if __name__ == "__main__":
    main(*sys.argv[1:])
