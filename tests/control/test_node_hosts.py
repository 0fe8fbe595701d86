"""Hypervisor hosts (control/node_hosts.py) on a real store (its rules on SQLite and PostgreSQL) and real
libvirt client connections: registration limits and EK CA checks, capacity and what nodes take of it, removal
refused while nodes are placed, and the health checks (Lost after 3 failed checks with the cause, one alert
per subscription with nodes on it, Ready again when the host answers; a host that accepts but never answers
neither stalls another host's check nor the caller). libvirt's own test driver (`test:///default`, in the
client library) is a host that answers; a socket nobody listens on one that refuses; a socket that is
listened on but never accepted one that hangs."""

from __future__ import annotations

import datetime
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from monitoring_rows import add_node
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.features import register_feature, register_provider
from trustedlaunch.control.limits import HOST_MEMORY_MIB, HOST_VCPUS, MAX_EK_CA_PEM_BYTES, MAX_HOSTS
from trustedlaunch.control.node_hosts import (
    FAILED_CHECKS,
    HostCapacity,
    HostCheck,
    HostMonitor,
    HostSpec,
    HostStateChange,
    check_spec,
    ek_ca_summary,
    get_host,
    host_usage,
    list_hosts,
    node_capacity,
    probe_host,
    put_host,
    record_check,
    remove_host,
    resolve_capacity,
)
from trustedlaunch.control.resources import ClusterSpec, PoolSpec, ResourcePath, put_cluster
from trustedlaunch.store.models import AgentPool, AlertRecord, NodeHost
from trustedlaunch.tpm.ekca import create_ek_ca

SUB = "11111111-2222-3333-4444-555555555555"
OTHER_SUB = "99999999-8888-7777-6666-555555555555"
TEST_DRIVER = "test:///default"  # libvirt's test driver: 3072 MiB, 16 CPUs
URI = "qemu+tls://host1.example/system"


def violation_codes(spec: HostSpec, host_count: int = 0) -> list[tuple[str, str]]:
    with pytest.raises(ArmError) as raised:
        check_spec(spec, host_count)
    error = raised.value
    return [(detail.code, str(detail.target)) for detail in error.details] or [
        (error.code, str(error.target))
    ]


def test_registration_limits_name_every_property_at_fault() -> None:
    assert violation_codes(HostSpec("Host_1", URI)) == [("InvalidHostName", "name")]
    assert violation_codes(HostSpec("a" * 64, URI)) == [("InvalidHostName", "name")]
    for uri in (
        "http://host/system",
        "qemu+ssh://host /system",
        "test:///default",
        "qemu+tls://h/" + "x" * 600,
    ):
        assert violation_codes(HostSpec("host1", uri)) == [("InvalidHostUri", "properties.uri")], uri
    assert violation_codes(HostSpec("host1", URI, memory_mib=100, vcpus=0)) == [
        ("InvalidHostCapacity", "properties.capacity.memoryMiB"),
        ("InvalidHostCapacity", "properties.capacity.vCPUs"),
    ]
    big = HostSpec("host1", URI, ek_ca_certificate="x" * (MAX_EK_CA_PEM_BYTES + 1))
    assert violation_codes(big) == [("InvalidEkCaCertificate", "properties.ekCaCertificate")]
    with pytest.raises(ArmError) as raised:
        check_spec(HostSpec("host1", URI), MAX_HOSTS + 1)
    assert (raised.value.status, raised.value.code) == (409, "TooManyHosts")
    for scheme in ("qemu", "qemu+ssh", "qemu+tls", "qemu+tcp", "qemu+unix"):
        check_spec(HostSpec("host-1", f"{scheme}:///system?socket=/run/x", 4096, 4), MAX_HOSTS)


def _certificate(*, ca: bool | None, key_cert_sign: bool = True, days: int = 30) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host1 EK CA")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=60))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    builder = builder.add_extension(x509.KeyUsage(key_cert_sign=key_cert_sign, **usage), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def ek_ca_message(pem: str) -> str:
    with pytest.raises(ArmError) as raised:
        check_spec(HostSpec("host1", URI, ek_ca_certificate=pem))
    error = raised.value
    assert (error.status, error.code, error.target) == (
        400,
        "InvalidEkCaCertificate",
        "properties.ekCaCertificate",
    )
    return error.message


def test_an_ek_ca_certificate_must_be_one_ca_certificate_that_signs(tmp_path: Path) -> None:
    assert "holds 0 PEM certificates" in ek_ca_message("not a certificate")
    good = _certificate(ca=True)
    assert "holds 2 PEM certificates" in ek_ca_message(good + good)
    assert "is not a readable PEM certificate" in ek_ca_message(good.replace("M", "A", 3))
    assert "CN=host1 EK CA has no basicConstraints: it is not a CA" in ek_ca_message(_certificate(ca=None))
    assert "is not a CA certificate (basicConstraints CA=false)" in ek_ca_message(_certificate(ca=False))
    assert "may not sign certificates (keyUsage lacks keyCertSign)" in ek_ca_message(
        _certificate(ca=True, key_cert_sign=False)
    )
    assert "is not valid now" in ek_ca_message(_certificate(ca=True, days=-1))
    platform_ca = create_ek_ca(tmp_path / "ek-ca", common_name="host1 EK CA")
    pem = platform_ca.certificate_path.read_text()
    check_spec(HostSpec("host1", URI, 4096, 4, pem))
    summary = ek_ca_summary(pem)
    assert summary is not None and summary.subject == "CN=host1 EK CA"
    assert summary.thumbprint == platform_ca.certificate.fingerprint(hashes.SHA256()).hex()


def _pool(session: Session, subscription: str = SUB, cluster: str = "hosts") -> AgentPool:
    register_feature(session, subscription, "Microsoft.ContainerService", "TrustedLaunchPreview")
    register_provider(session, subscription, "Microsoft.ContainerService")
    spec = PoolSpec(
        "nodepool1", count=2, vm_size="Standard_D4s_v3", enable_secure_boot=True, enable_vtpm=True
    )
    created, _, _ = put_cluster(
        session, ResourcePath(subscription, "rg", cluster), ClusterSpec("eastus", agent_pools=[spec])
    )
    [pool] = created.agent_pools
    return pool


def test_register_update_and_remove_a_host_with_nodes_on_it(store: sessionmaker[Session]) -> None:
    assert resolve_capacity(HostSpec("host1", URI, 4096, 4)) == HostSpec("host1", URI, 4096, 4)
    with store.begin() as session:
        host, created = put_host(session, HostSpec("host1", URI, 4096, 4))
        assert created and host.state == "Ready" and host.failed_checks == 0
        with pytest.raises(ArmError) as raised:
            put_host(session, HostSpec("host2", URI, 4096, 4))
        assert (raised.value.status, raised.value.code) == (409, "HostUriInUse")
        assert "Host 'host1' is registered with URI" in raised.value.message
        pool = _pool(session)
        nodes = [add_node(session, pool, ordinal) for ordinal in range(2)]
        for node in nodes:
            node.host_id, node.driver = host.id, "libvirt"
        session.flush()
        held = host_usage(session, host)
        assert held.nodes == ("aks-nodepool1-0", "aks-nodepool1-1")
        assert held.allocated == HostCapacity(1024, 2) and held.free == HostCapacity(3072, 2)
    with store.begin() as session:
        with pytest.raises(ArmError) as raised:
            remove_host(session, "host1")
        error = raised.value
        assert (error.status, error.code) == (409, "HostInUse")
        assert "runs 2 node(s): aks-nodepool1-0, aks-nodepool1-1" in error.message
        assert "tl host drain -n host1" in error.message
        with pytest.raises(ArmError) as raised:
            put_host(session, HostSpec("host1", URI, 1000, 4))
        assert (
            raised.value.code == "HostCapacityInUse" and "take 1024 MiB and 2 vCPUs" in raised.value.message
        )
        with pytest.raises(ArmError) as raised:
            put_host(session, HostSpec("host1", "qemu+tls://elsewhere/system", 4096, 4))
        assert (
            raised.value.code == "HostInUse"
            and "cannot change its URI while nodes run" in raised.value.message
        )
        host, created = put_host(session, HostSpec("host1", URI, 8192, 8))
        assert not created and (host.memory_mib, host.vcpus) == (8192, 8)
    with store.begin() as session:
        for node in get_host(session, "host1").nodes:
            session.delete(node)
    with store.begin() as session:
        remove_host(session, "host1")
    with store.begin() as session:
        assert list_hosts(session) == []
        with pytest.raises(ArmError) as raised:
            get_host(session, "host1")
        assert (raised.value.status, raised.value.code) == (404, "HostNotFound")


def test_capacity_is_probed_with_libvirt_getinfo() -> None:
    assert probe_host(TEST_DRIVER) == HostCapacity(3072, 16)
    # node VMs may take 75 % of a host's memory and 16 vCPUs per CPU, within the limits table's ranges
    assert node_capacity(HostCapacity(3072, 16)) == HostCapacity(2304, 256)
    assert node_capacity(HostCapacity(2**30, 1024)) == HostCapacity(HOST_MEMORY_MIB[1], HOST_VCPUS[1])


def test_an_unreachable_host_cannot_be_registered_without_its_capacity() -> None:
    with pytest.raises(ArmError) as raised:
        resolve_capacity(HostSpec("host1", "qemu:///system?socket=/nonexistent/sock", vcpus=2))
    error = raised.value
    assert (error.status, error.code, error.target) == (400, "HostUnreachable", "properties.uri")
    assert "/nonexistent/sock" in error.message and "give --memory-mib and --vcpus" in error.message


def _alerts(session: Session) -> list[AlertRecord]:
    return list(session.scalars(select(AlertRecord).order_by(AlertRecord.subscription_id)))


def test_a_host_is_lost_after_three_failed_checks_ready_when_it_answers_and_removable(
    store: sessionmaker[Session],
) -> None:
    with store.begin() as session:
        host, _ = put_host(session, HostSpec("host1", URI, 4096, 4))
        for subscription, cluster in ((SUB, "a"), (OTHER_SUB, "b")):
            node = add_node(session, _pool(session, subscription, cluster), 0)
            node.name, node.host_id = f"aks-{cluster}-0", host.id
        session.flush()
        refused = HostCheck(host.id, "Failed to connect socket: Connection refused")
        assert [record_check(session, host, refused) for _ in range(FAILED_CHECKS)] == [False, False, True]
        assert host.state == "Lost" and host.failed_checks == FAILED_CHECKS
        assert (
            host.state_cause == "no answer to 3 checks in a row: Failed to connect socket: Connection refused"
        )
        alerts = _alerts(session)
        assert [(a.subscription_id, a.alert_type, a.status, a.node_name) for a in alerts] == [
            (SUB, "Host_Lost", "Active", "host/host1"),
            (OTHER_SUB, "Host_Lost", "Active", "host/host1"),
        ]
        description = str(alerts[0].document["properties"]["description"])  # type: ignore[index]
        assert description.startswith("Hypervisor host/host1 was lost:")
        assert "aks-a-0" in description and "aks-b-0" not in description  # each tenant sees its own nodes
        assert record_check(session, host, refused) is False  # still Lost: no second alert
        assert len(_alerts(session)) == 2
        assert record_check(session, host, HostCheck(host.id, None, HostCapacity(4096, 4))) is True
        assert host.state == "Ready" and host.failed_checks == 0 and host.state_cause is None
        assert host.last_seen_at is not None
        assert {alert.status for alert in _alerts(session)} == {"Resolved"}

        # lost again, its nodes made elsewhere, then removed: its alerts are resolved with it
        for _ in range(FAILED_CHECKS):
            record_check(session, host, refused)
        assert [alert.status for alert in _alerts(session)].count("Active") == 2
        for node in host.nodes:
            node.host_id = None
        session.flush()
        session.expire(host, ["nodes"])
        remove_host(session, "host1")
        assert {alert.status for alert in _alerts(session)} == {"Resolved"}


@pytest.fixture
def hanging_socket() -> Iterator[Path]:
    """A unix socket that is listened on but never accepted: libvirt connects, asks, and never hears back
    (a host whose daemon hangs)."""
    folder = Path(tempfile.mkdtemp(prefix="tl-hang-"))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(folder / "sock"))
    listener.listen(8)
    yield folder / "sock"
    listener.close()


def _host_row(session: Session, name: str, uri: str) -> int:
    """A host row with a URI registration would refuse (libvirt's test driver, a test socket)."""
    host = NodeHost(name=name, uri=uri, memory_mib=4096, vcpus=4)
    session.add(host)
    session.flush()
    return host.id


def test_a_hung_host_neither_stalls_the_caller_nor_another_host(
    sessions: sessionmaker[Session], hanging_socket: Path
) -> None:
    with sessions.begin() as session:
        answering = _host_row(session, "answering", TEST_DRIVER)
        hung = _host_row(session, "hung", f"qemu:///system?socket={hanging_socket}")
        refused = _host_row(session, "refused", "qemu:///system?socket=/nonexistent/libvirt-sock")
    monitor = HostMonitor(sessions, interval=1.0, timeout=0.5)
    threads_before = threading.active_count()
    deadline = time.monotonic() + 30
    longest_call = 0.0
    changes: list[HostStateChange] = []
    while time.monotonic() < deadline:
        started = time.monotonic()
        changes += monitor.check_hosts()
        longest_call = max(longest_call, time.monotonic() - started)
        with sessions() as session:
            states = {host.name: (host.state, host.failed_checks) for host in list_hosts(session)}
        if states["hung"][0] == "Lost" and states["refused"][0] == "Lost":
            break
        time.sleep(0.1)
    assert longest_call < 0.5  # never waits for a check
    assert sorted((change.name, change.state) for change in changes) == [
        ("hung", "Lost"),
        ("refused", "Lost"),
    ]
    assert states == {"answering": ("Ready", 0), "hung": ("Lost", 3), "refused": ("Lost", 3)}
    # the hung host holds one thread (not one per check), besides libvirt's event loop thread
    assert threading.active_count() <= threads_before + 2
    with sessions() as session:
        hosts = {host.id: host for host in list_hosts(session)}
        assert hosts[answering].last_seen_at is not None
        assert str(hosts[hung].state_cause).startswith(
            "no answer to 3 checks in a row: qemu:///system?socket="
        )
        assert "has not answered a check started" in str(hosts[hung].state_cause)
        assert hosts[refused].state_cause is not None
        assert "/nonexistent/libvirt-sock" in hosts[refused].state_cause
        assert hosts[hung].last_seen_at is None
