"""The whole node image upgrade over HTTP, as an operator and a user would do it: `tl image build-version`
builds the older version (linux-image-6.1.0-50-amd64 6.1.176-1, fetched from Debian, its policy predicted),
a 1-node Secure Boot + vTPM pool is on it (its row as an earlier release would have left it), and a real
`tl serve` (API + reconciler) boots its node. Then only the CLI: `tl aks nodepool get-upgrades` names the
latest version (the installed 6.1.0-57 boot chain's, another signed kernel build) with its packages in
componentsByReleases, `tl aks nodepool upgrade --node-image-only` rolls the pool onto it, and the node's new
VM attests against that version's predicted policy. One VM at a time: two boots of one node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from debian_boot_packages import OTHER_KERNEL
from monitoring_helpers import create_trusted_cluster
from reconciler_helpers import SUB
from serve_process import start_serve
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.policy import Policy
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.features import DELAY_ENV
from trustedlaunch.control.node_images import IMAGE_RELEASE
from trustedlaunch.control.node_processes import kill_node_processes
from trustedlaunch.store.models import AgentPool, ImagePolicy, Node

pytestmark = pytest.mark.slow
CLUSTER = "servedupgrade"
POOL = ["--cluster-name", CLUSTER, "-g", "rg", "--nodepool-name", "nodepool1"]
BOOT_SECONDS = 900.0  # a node booted and attested under TCG on 2 busy cores
STOP_SECONDS = 60


def tl(env: dict[str, str], *arguments: str, timeout: float = 120.0) -> Any:
    """`tl ARGUMENTS` in `env`: its JSON output (the command must succeed)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tl"), *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"tl {' '.join(arguments)}: {done.stderr}"
    return json.loads(done.stdout)


def wait_for_node(sessions: sessionmaker[Session], version: str, after_run_dir: str | None = None) -> Node:
    """The pool's one node once it is Ready and attested on `version` (in another VM than `after_run_dir`)."""
    deadline = time.monotonic() + BOOT_SECONDS
    while True:
        with sessions() as session:
            node = session.scalars(select(Node)).one_or_none()
            if (
                node is not None
                and node.node_image_version == version
                and node.run_dir != after_run_dir
                and node.state == "Ready"
                and node.attestation_status == "Attested"
            ):
                session.expunge(node)
                return node
        assert time.monotonic() < deadline, f"no attested node on {version}: {node and node.message}"
        time.sleep(2)


def predicted_policy(sessions: sessionmaker[Session], version: str) -> Policy:
    with sessions() as session:
        return Policy.from_json(session.get_one(ImagePolicy, (version, True)).policy)


def pcr(policy: Policy, index: int) -> str:
    return next(g.value for g in policy.golden_pcrs if (g.bank, g.pcr) == ("sha256", index))


@pytest.fixture
def served(reconciler_base: Path) -> Iterator[tuple[dict[str, str], sessionmaker[Session], Path]]:
    """The environment of a `tl serve` on a store of its own, the store, and its state directory; the serve
    is started by the test and stopped (its VMs with it) here."""
    base = reconciler_base / "served"
    env = {
        **os.environ,
        "HOME": str(base),
        "XDG_CONFIG_HOME": str(base / "config"),
        "XDG_DATA_HOME": str(base / "data"),
        "TL_DATABASE_URL": f"sqlite:///{base / 'serve.db'}",
        "TL_SUBSCRIPTION": SUB,
        DELAY_ENV: "0",
    }
    token_file = base / "config" / "trustedlaunch" / "admin-token"
    engine, sessions = open_store(env["TL_DATABASE_URL"], token_file)
    env["TL_TOKEN"] = token_file.read_text().strip()
    state_dir = base / "data" / "trustedlaunch" / "nodes"
    try:
        yield env, sessions, state_dir
    finally:
        engine.dispose()
        kill_node_processes(state_dir)


def test_a_pool_is_upgraded_to_the_latest_node_image_through_tl_serve(
    served: tuple[dict[str, str], sessionmaker[Session], Path],
) -> None:
    env, sessions, _ = served
    started = time.monotonic()
    package, version = OTHER_KERNEL
    older = tl(env, "image", "build-version", "--kernel", f"{package}={version}", timeout=900)[
        "nodeImageVersion"
    ]
    assert not older.endswith(IMAGE_RELEASE)
    built = time.monotonic()
    pool, _ = create_trusted_cluster(sessions, CLUSTER)
    with sessions.begin() as session:  # as an earlier release left it: the pool on the older version
        session.get_one(AgentPool, pool.id).node_image_version = older

    process, url, _ = start_serve(env, "--attestation-interval", "0", "--no-auto-repair")
    assert process.stderr is not None
    drain = threading.Thread(target=process.stderr.read, daemon=True)  # a full pipe never blocks it
    drain.start()
    env = {**env, "TL_ENDPOINT": url}
    try:
        first = wait_for_node(sessions, older)
        older_policy = predicted_policy(sessions, older)
        assert Policy.from_json(first.attestation_policy or "") == older_policy
        first_attested = time.monotonic()

        properties = tl(env, "aks", "nodepool", "get-upgrades", *POOL)["properties"]
        latest = properties["latestNodeImageVersion"]
        assert latest.endswith(IMAGE_RELEASE) and "TLcontainerd" in latest and latest != older
        [release] = properties["componentsByReleases"]
        components = {component["name"]: component["version"] for component in release["components"]}
        assert components["linux-image-6.1.0-57-amd64"] != version  # the installed kernel build
        assert package not in components
        assert {"shim-signed", "grub-efi-amd64-signed"} <= set(components)

        upgraded = tl(env, "aks", "nodepool", "upgrade", *POOL, "--node-image-only", timeout=BOOT_SECONDS)
        assert (upgraded["properties"]["nodeImageVersion"], upgraded["properties"]["provisioningState"]) == (
            latest,
            "Succeeded",
        )
        node = wait_for_node(sessions, latest, after_run_dir=first.run_dir)
        upgraded_at = time.monotonic()
        latest_policy = predicted_policy(sessions, latest)
        assert Policy.from_json(node.attestation_policy or "") == latest_policy  # predicted before it booted
        assert pcr(latest_policy, 9) != pcr(older_policy, 9)  # another kernel booted
        [machine] = tl(env, "aks", "machine", "list", *POOL)
        assert machine["name"] == node.name and machine["properties"]["nodeImageVersion"] == latest
        [attested] = tl(env, "aks", "nodepool", "attest", *POOL, timeout=BOOT_SECONDS)  # on demand, now
        assert attested["properties"]["machineName"] == node.name and attested["properties"]["passed"]
        assert tl(env, "aks", "nodepool", "show", *POOL)["properties"]["nodeImageVersion"] == latest
        print(
            f"\nserved node image upgrade: build-version {built - started:.0f} s, first node attested "
            f"{first_attested - built:.0f} s, upgrade to the reimaged node attested "
            f"{upgraded_at - first_attested:.0f} s"
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
