"""The reconciler on libvirt hosts (issue 18): two private libvirt daemons registered as node hosts, each
making the vTPMs of its node VMs with its own EK CA. A 1-node Secure Boot + vTPM pool is placed on the host
with the most room (a), its node boots through the libvirt driver and passes attestation against that host's
EK CA only; a restarted reconciler adopts it by its domain UUID and attests it again. Host a is drained
(`tl host drain`): cordoned, its node is reimaged by its pool's Update operation onto host b (the same row,
its attestation history kept; a refuses `tl host remove` until then, accepts it after). Host a uncordoned,
once host b is Lost (its libvirtd killed, then its VMs) the node is made again on host a: the same row, its
attestation history and its alert kept; enrolled again against another host's CA, its EK certificate is
refused. Three VM boots."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import libvirt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from reconciler_helpers import (
    SUB,
    nodes,
    processes_under,
    run_until_finished,
    trusted_launch_store,
    wait_until,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.host_drain import DrainedNode, drain_host
from trustedlaunch.control.labels import LABEL_TRUSTED_LAUNCH
from trustedlaunch.control.node_hosts import HostMonitor, cordon_host, remove_host
from trustedlaunch.control.reconciler import Reconciler
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, delete_cluster, put_cluster
from trustedlaunch.node.libvirt_host import LibvirtHost
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS
from trustedlaunch.store.models import AlertRecord, AttestationRecord, Node, NodeHost
from trustedlaunch.store.vocabulary import HostState
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca

pytestmark = pytest.mark.slow
PATH = ResourcePath(SUB, "rg", "lvcluster")
SETTINGS = {"attestation_interval": 0, "liveness_interval": 2.0, "boot_timeout": 600}
STEP_TIMEOUT = 900  # seconds: a TCG boot on two cores shared with other VM tests


@pytest.fixture(scope="module")
def sessions(reconciler_base: Path) -> Iterator[sessionmaker[Session]]:
    with trusted_launch_store(f"sqlite:///{reconciler_base / 'libvirt.db'}") as factory:
        yield factory


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[LibvirtHost, LibvirtHost]]:
    """Hosts a and b, each a private libvirtd whose libvirt makes vTPMs certified by its own EK CA."""
    base = Path(tempfile.mkdtemp(prefix="tl-lvr-"))  # short: unix socket paths
    ca_a, ca_b = (create_ek_ca(base / f"ca-{name}", common_name=f"host {name} EK CA") for name in "ab")
    with LibvirtHost(base / "a", ek_ca=ca_a) as a, LibvirtHost(base / "b", ek_ca=ca_b) as b:
        yield a, b
    shutil.rmtree(base, ignore_errors=True)


def pem(host: LibvirtHost) -> str:
    """The PEM certificate of the host's EK CA."""
    ca: EkCa | None = host.ek_ca
    assert ca is not None
    return ca.certificate.public_bytes(Encoding.PEM).decode()


def register(session: Session, name: str, host: LibvirtHost, nodes_room: int) -> None:
    """The host's row as `tl host add` makes it (room for `nodes_room` node VMs; its EK CA)."""
    session.add(
        NodeHost(
            name=name,
            uri=host.uri,
            memory_mib=nodes_room * NODE_MEMORY_MIB,
            vcpus=nodes_room * NODE_VCPUS,
            ek_ca_certificate=pem(host),
        )
    )


def the_node(sessions: sessionmaker[Session]) -> tuple[Node, str | None]:
    with sessions() as session:
        node = session.scalars(select(Node)).one()
        return node, node.host.name if node.host is not None else None


def domain_runs(host: LibvirtHost, uuid: str) -> bool:
    connection = libvirt.open(host.uri)
    try:
        return bool(connection.lookupByUUIDString(uuid).isActive())
    finally:
        connection.close()


def records(sessions: sessionmaker[Session]) -> list[AttestationRecord]:
    with sessions() as session:
        return list(session.scalars(select(AttestationRecord).order_by(AttestationRecord.id)))


def domains(host: LibvirtHost) -> list[str]:
    """The names of the domains defined on `host`."""
    connection = libvirt.open(host.uri)
    try:
        return [domain.name() for domain in connection.listAllDomains(0)]
    finally:
        connection.close()


def test_a_node_on_a_libvirt_host_is_adopted_drained_and_made_again_when_its_host_is_lost(
    sessions: sessionmaker[Session], state_dir: Path, hosts: tuple[LibvirtHost, LibvirtHost]
) -> None:
    a, b = hosts
    with sessions.begin() as session:
        register(session, "a", a, 2)  # the most free memory: the first node goes there
        register(session, "b", b, 1)
        pool = PoolSpec(
            "nodepool1", count=1, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
        )
        _, create, _ = put_cluster(session, PATH, ClusterSpec("eastus", agent_pools=[pool]))
    first = Reconciler(sessions, state_dir, **SETTINGS)
    reconciler = first
    try:
        created = run_until_finished(first, sessions, create.id, STEP_TIMEOUT)
        node, host = the_node(sessions)
        assert created.status == "Succeeded", (created.error, node.message)
        assert (node.state, node.attestation_status, node.driver, host) == (
            "Ready",
            "Attested",
            "libvirt",
            "a",
        )
        assert node.handle is not None and len(node.handle) == 36 and domain_runs(a, node.handle)  # a UUID
        assert LABEL_TRUSTED_LAUNCH in node.labels
        [provisioning] = records(sessions)
        assert (provisioning.trigger, provisioning.status) == ("Provisioning", "Attested")
        first.release()

        reconciler = Reconciler(sessions, state_dir, **SETTINGS)  # a restarted control plane
        with sessions.begin() as session:
            session.scalars(select(Node)).one().attestation_requested_at = datetime.now(UTC)
        assert reconciler.run_once()  # adopts the VM by its UUID and attests it over a new console stream
        adopted, _ = the_node(sessions)
        assert (adopted.state, adopted.handle, adopted.run_dir) == ("Ready", node.handle, node.run_dir)
        on_demand = records(sessions)[-1]
        assert (on_demand.trigger, on_demand.status) == ("OnDemand", "Attested"), on_demand.findings

        with sessions.begin() as session:  # tl host drain -n a
            drained_host, drained = drain_host(session, "a")
            assert drained_host.cordoned
            [update] = drained
            assert (update.name, update.state, update.started) == (node.name, "Ready", True)
            with pytest.raises(ArmError) as in_use:
                remove_host(session, "a")
            assert in_use.value.code == "HostInUse" and "tl host drain -n a" in in_use.value.message
        assert update == DrainedNode(node.name, "Ready", update.operation_id, True)
        assert update.operation_id is not None
        reimaged = run_until_finished(reconciler, sessions, update.operation_id, STEP_TIMEOUT)
        drained_node, where = the_node(sessions)
        assert reimaged.status == "Succeeded", (reimaged.error, drained_node.message)
        assert (drained_node.id, drained_node.name, where) == (node.id, node.name, "b")
        assert (drained_node.state, drained_node.attestation_status) == ("Ready", "Attested")
        assert drained_node.reimage_reason is None and LABEL_TRUSTED_LAUNCH in drained_node.labels
        assert drained_node.handle is not None and domain_runs(b, drained_node.handle)
        assert domains(a) == []  # its VM on a was torn down by the reimage
        assert [(r.trigger, r.status) for r in records(sessions)] == [
            ("Provisioning", "Attested"),
            ("OnDemand", "Attested"),
            ("Provisioning", "Attested"),
        ]
        with sessions() as session:  # tl host remove -n a would succeed now (not committed: a is kept)
            remove_host(session, "a")
            session.rollback()
        with sessions.begin() as session:  # tl host uncordon -n a
            cordon_host(session, "a", False)

        reconciler.host_monitor = HostMonitor(  # its checks, quicker
            sessions, interval=1.0, timeout=2.0, runs_dir=reconciler.runs_dir
        )
        b.kill()  # the daemon dies,
        b.stop()  # then its VMs: the checks make host b Lost

        def made_again() -> Node | None:
            reconciler.run_once()
            current, where = the_node(sessions)
            done = current.repairs and current.repairs[-1]["outcome"]
            return current if where == "a" and current.state == "Ready" and done else None

        moved = wait_until(made_again, STEP_TIMEOUT, "the node to be made again on host a")
        assert (moved.id, moved.name, moved.ordinal) == (node.id, node.name, node.ordinal)
        assert moved.attestation_status == "Attested" and LABEL_TRUSTED_LAUNCH in moved.labels
        assert moved.handle not in (None, node.handle, drained_node.handle)
        assert moved.run_dir not in (node.run_dir, drained_node.run_dir)
        assert moved.handle is not None and domain_runs(a, moved.handle)
        with sessions() as session:
            lost = session.scalars(select(NodeHost).where(NodeHost.name == "b")).one()
            assert lost.state == HostState.LOST and "Connection refused" in (lost.state_cause or "")
        *reboots, repair = moved.repairs  # a reboot tried before the checks made the host Lost fails
        assert repair["action"] == "Reimage" and repair["outcome"].startswith("done"), repair
        assert "host b" in repair["cause"], repair  # its VM seen gone, or its host seen Lost, first
        unreachable = "cannot reach the libvirt host"
        assert all(r["action"] == "Reboot" and unreachable in r["outcome"] for r in reboots), reboots
        history = records(sessions)
        assert [(r.trigger, r.status) for r in history] == [
            ("Provisioning", "Attested"),
            ("OnDemand", "Attested"),
            ("Provisioning", "Attested"),
            ("Provisioning", "Attested"),
        ]
        with sessions() as session:
            [alert] = session.scalars(select(AlertRecord).where(AlertRecord.alert_type == "VM_NodeUnhealthy"))
            assert alert.status == "Resolved" and alert.node_name == node.name

        with sessions.begin() as session:  # enrolled anew while host a's registered EK CA is host b's
            session.scalars(select(NodeHost).where(NodeHost.name == "a")).one().ek_ca_certificate = pem(b)
            row = session.get_one(Node, node.id)
            row.attestation_state = row.enrolled_ak_name = None
            row.attestation_requested_at = datetime.now(UTC)
        assert reconciler.run_once()
        refused = records(sessions)[-1]
        assert (refused.trigger, refused.status) == ("OnDemand", "AttestationFailed")
        [finding] = refused.findings
        assert (finding["check"], finding["component"]) == ("EkCertificateInvalid", "EK")
        assert "the EK certificate is not from a trusted EK CA" in str(finding["message"])

        reconciler.release()
        stopped = libvirt.open(a.uri)
        try:
            stopped.lookupByUUIDString(moved.handle).destroy()  # stopped, still defined: no longer adoptable
        finally:
            stopped.close()
    finally:
        reconciler.release()
        cleaner = Reconciler(sessions, state_dir, liveness_interval=0)
        with sessions.begin() as session:
            deletion = delete_cluster(session, PATH)
        if deletion is not None:
            run_until_finished(cleaner, sessions, deletion.id, 300)
        cleaner.release()
    assert nodes(sessions) == []
    assert domains(a) == []  # the stopped domain was undefined with its node
    assert processes_under(state_dir / "vm") == []
