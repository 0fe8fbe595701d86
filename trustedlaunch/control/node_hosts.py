"""Hypervisor hosts as a resource: libvirt hosts an administrator registers for node VMs, and their health.

A host has a name (a lowercase DNS label), a libvirt URI of QEMU (qemu://, qemu+ssh://, qemu+tls://,
qemu+tcp://, qemu+unix://), a capacity (memory MiB and vCPUs node VMs may take of it: given, or probed from
the host with libvirt's getInfo()) and optionally the CA certificate of the EKs its own libvirt gives the
vTPMs it makes. The request limits are rows of the one limits table (control/limits.py `check_host`).

Health (`HostMonitor.check_hosts`, called by the reconciler each pass, never blocking it): every
`CHECK_INTERVAL` each Ready or Lost host is checked in a thread of its own (libvirt open with keepalive set,
then getInfo) given `CHECK_TIMEOUT`, so a dead or hung host never delays another host's check or the pass;
`FAILED_CHECKS` failures in a row make a Ready host Lost with the cause (its nodes are then made again on
other hosts by the reconciler), a success records `last_seen_at`, and a Lost host that answers again is Ready
(and empty). A host becoming Lost raises one HostLost alert for each subscription with nodes on it (naming
only that subscription's nodes), resolved when the host answers again. Each check that reaches a host then
removes the domains this control plane made there for no node now placed on it (`StrayDomainSweep`): what a
Lost host still runs for nodes made again elsewhere once it comes back; then the node-image volumes no
domain of the host named for an hour (`UnusedVolumeSweep`: image versions no node boots any more).

Cordon (`cordon_host`): a cordoned host takes no new node VM (control.placement); control.host_drain drains
one onto the other hosts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.alerts import alerts_from_result
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control import alert_lifecycle
from trustedlaunch.control.errors import ArmError, bad_request, conflict, not_found
from trustedlaunch.control.limits import (
    GUEST_MEMORY_SHARE,
    GUEST_VCPUS_PER_HOST_CPU,
    HOST_MEMORY_MIB,
    HOST_VCPUS,
    HostRequest,
    check_host,
    raise_violations,
)
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import Check, Finding
from trustedlaunch.node.qemu import NODE_MEMORY_MIB, NODE_VCPUS
from trustedlaunch.store.models import AlertRecord, Node, NodeHost, utc_now
from trustedlaunch.store.vocabulary import AlertType, HostState

if TYPE_CHECKING:
    import libvirt

    from trustedlaunch.node.libvirt_driver import HostDomain

log = logging.getLogger(__name__)

CHECK_INTERVAL = 20.0  # seconds between two checks of a host
CHECK_TIMEOUT = 10.0  # seconds a check (libvirt open + getInfo) may take before it counts as failed
PROBE_TIMEOUT = 15.0  # seconds a registration's capacity probe may take
FAILED_CHECKS = 3  # failed checks in a row that make a Ready host Lost
UNUSED_VOLUME_HOLD = 3600.0  # seconds a host's node-image volume stays unused by its domains before deletion
KEEPALIVE_INTERVAL = 2  # seconds between libvirt keepalive messages on a check's connection ...
KEEPALIVE_COUNT = 2  # ... and how many may go unanswered before libvirt closes it
MAX_NAMED_NODES = 20  # node names an error or an alert lists
HOST_ALERT_PREFIX = "host/"  # an alert's node_name for a host ('/' is in no node name or DNS label)
EK_CA_TARGET = "properties.ekCaCertificate"
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


class HostUnreachable(TrustedLaunchError):
    """A host's libvirt did not answer (refused, failed or timed out): the message says why."""


@dataclass(frozen=True)
class HostCapacity:
    """Memory (MiB) and vCPUs: what a host offers node VMs, or what its nodes take of it."""

    memory_mib: int
    vcpus: int


@dataclass(frozen=True)
class HostSpec:
    """A host as registered or updated: capacity fields left None are probed from the host."""

    name: str
    uri: str
    memory_mib: int | None = None
    vcpus: int | None = None
    ek_ca_certificate: str | None = None  # PEM


@dataclass(frozen=True)
class HostUsage:
    """What a host holds: the names of the nodes placed on it, what they take and what is left."""

    nodes: tuple[str, ...]
    allocated: HostCapacity
    free: HostCapacity


@dataclass(frozen=True)
class EkCaSummary:
    """What reads show of a host's EK CA certificate (never the PEM itself)."""

    thumbprint: str  # SHA-256 of the DER certificate, hex
    subject: str
    not_after: datetime


def _libvirt_error(exc: Exception) -> str:
    message = getattr(exc, "get_error_message", lambda: None)() or str(exc)
    return " ".join(str(message).split())[:900] or type(exc).__name__


class StrayDomainSweep:
    """Removes the node domains on a host that this control plane made (their run directories are in
    `runs_dir`) for no node now placed on that host: what a host that was Lost, or hung through a node's
    teardown, still runs or holds for nodes made again elsewhere or deleted meanwhile (a stale VM would
    otherwise run on, with its kubelet's credential). Domains of other control planes are left alone."""

    def __init__(self, sessions: sessionmaker[Session], runs_dir: Path) -> None:
        self.sessions, self.runs_dir = sessions, runs_dir

    def __call__(self, host_id: int, defined: list[HostDomain]) -> list[str]:
        """Remove the stray domains among `defined`, the domains of host `host_id` (read before this call:
        before the nodes are, as a node's run directory is recorded before its domain is defined); their
        names."""
        from trustedlaunch.node.libvirt_driver import owned_domains, remove_domain, run_dir_id

        domains = owned_domains(defined, self.runs_dir)
        if not domains:
            return []
        with self.sessions() as session:
            run_dirs = session.scalars(
                select(Node.run_dir).where(Node.host_id == host_id, Node.run_dir.is_not(None))
            )
            placed = {run_dir_id(Path(run_dir)) for run_dir in run_dirs if run_dir}
        removed = []
        for stray in (owned for owned in domains if owned.run_dir_id not in placed):
            if remove_domain(stray.domain):
                log.warning(
                    "host %s: removed node domain %s: no node is placed there for it", host_id, stray.name
                )
                removed.append(stray.name)
            else:
                log.warning(
                    "host %s: node domain %s, for no node placed there, could not be removed",
                    host_id,
                    stray.name,
                )
        return removed


class UnusedVolumeSweep:
    """Deletes the node-image volumes (uploaded to hosts that share none of our files) that no domain of
    their host has named for `hold` seconds in a row, as seen by this process's sweeps: the volumes of
    image versions no node boots any more. A volume in use again, or being uploaded, is kept (a node's
    volumes are named by its domain as soon as it is defined; an upload takes far less than `hold`); one
    deleted is uploaded again by the next node that needs it."""

    def __init__(self, hold: float = UNUSED_VOLUME_HOLD) -> None:
        self.hold = hold
        self._unused_since: dict[tuple[int, str], float] = {}  # (host id, volume name) -> first seen unused
        self._lock = threading.Lock()

    def __call__(self, host_id: int, connection: libvirt.virConnect, defined: list[HostDomain]) -> list[str]:
        """Delete the volumes of host `host_id` (reached through `connection`, `defined` its domains) that
        have been unused for `hold` seconds; their names."""
        import libvirt  # only where hosts are used

        from trustedlaunch.node.libvirt_driver import unused_image_volumes

        unused = unused_image_volumes(connection, defined)
        if unused is None:  # a definition could not be read: nothing is known unused this time
            return []
        now, deleted = time.monotonic(), []
        with self._lock:
            names = {volume.name() for volume in unused}
            for key in [key for key in self._unused_since if key[0] == host_id and key[1] not in names]:
                del self._unused_since[key]  # in use again (or gone)
            for volume in unused:
                since = self._unused_since.setdefault((host_id, volume.name()), now)
                if now - since < self.hold:
                    continue
                try:
                    volume.delete(0)
                except libvirt.libvirtError as exc:
                    log.warning("host %s: unused volume %s not deleted: %s", host_id, volume.name(), exc)
                    continue
                del self._unused_since[(host_id, volume.name())]
                log.warning(
                    "host %s: deleted volume %s, unused for %.0f s", host_id, volume.name(), now - since
                )
                deleted.append(volume.name())
        return deleted


@dataclass
class _Check:
    """One check of a host running in its own thread: `outcome` is its capacity or why it failed. With
    `sweep`, a host that answered is then swept over the same connection (HostMonitor: stray domains,
    unused volumes), after the outcome is in: a sweep never makes a check late."""

    uri: str
    sweep: Callable[[libvirt.virConnect], object] | None = None
    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: HostCapacity | str = ""
    timed_out: bool = False

    def start(self) -> None:
        """Open the host (keepalive set) and read its memory and CPUs (getInfo) in a daemon thread (a hung
        libvirt call cannot be interrupted: it is left to end when the host answers or the connection
        fails), then sweep it."""
        from trustedlaunch.node.libvirt_driver import open_host  # only where hosts are used: needs libvirt

        def run() -> None:
            connection = None
            try:
                connection = open_host(self.uri, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
                _model, memory_mib, cpus, *_rest = connection.getInfo()
                self.outcome = HostCapacity(int(memory_mib), int(cpus))
            except Exception as exc:  # libvirtError or anything the URI makes libvirt raise
                self.outcome = _libvirt_error(exc)
            self.done.set()
            try:
                if (
                    connection is not None
                    and self.sweep is not None
                    and isinstance(self.outcome, HostCapacity)
                ):
                    self.sweep(connection)
            except Exception as exc:
                log.warning("host %s: its sweep failed: %s", self.uri, _libvirt_error(exc))
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()

        threading.Thread(target=run, name=f"host-check {self.uri[:40]}", daemon=True).start()


def probe_host(uri: str, timeout: float = PROBE_TIMEOUT) -> HostCapacity:
    """The memory (MiB) and CPUs of the host at `uri`, read with libvirt's getInfo() within `timeout`
    seconds; HostUnreachable naming the URI and the cause otherwise."""
    check = _Check(uri)
    check.start()
    if not check.done.wait(timeout):
        raise HostUnreachable(f"host {uri} did not answer within {timeout:g} s")
    if isinstance(check.outcome, str):
        raise HostUnreachable(f"host {uri} did not answer: {check.outcome}")
    return check.outcome


def _ek_ca_error(name: str, problem: str) -> ArmError:
    return bad_request(
        "InvalidEkCaCertificate", f"Host '{name}': the EK CA certificate {problem}.", EK_CA_TARGET
    )


def load_ek_ca_certificate(name: str, pem: str) -> x509.Certificate:
    """The EK CA certificate of host `name` from `pem` (size bounded by the limits table): exactly one PEM
    certificate of a CA that may sign certificates (basicConstraints CA, keyUsage keyCertSign when present),
    valid now; a 400 InvalidEkCaCertificate naming what is wrong otherwise."""
    count = pem.count(PEM_CERTIFICATE)
    if count != 1:
        raise _ek_ca_error(
            name, f"holds {count} PEM certificates ('{PEM_CERTIFICATE}' blocks): give exactly one"
        )
    try:
        certificate = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise _ek_ca_error(name, f"is not a readable PEM certificate ({str(exc)[:200]})") from None
    subject = certificate.subject.rfc4514_string() or "(empty subject)"
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise _ek_ca_error(name, f"{subject} has no basicConstraints: it is not a CA certificate") from None
    if not constraints.ca:
        raise _ek_ca_error(name, f"{subject} is not a CA certificate (basicConstraints CA=false)")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise _ek_ca_error(name, f"{subject} may not sign certificates (keyUsage lacks keyCertSign)")
    now = datetime.now(UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise _ek_ca_error(
            name,
            f"{subject} is not valid now (valid {certificate.not_valid_before_utc.isoformat()} .. "
            f"{certificate.not_valid_after_utc.isoformat()})",
        )
    return certificate


def ek_ca_summary(pem: str | None) -> EkCaSummary | None:
    """The thumbprint, subject and expiry of a stored EK CA certificate (None without one)."""
    if pem is None:
        return None
    certificate = x509.load_pem_x509_certificate(pem.encode())
    return EkCaSummary(
        certificate.fingerprint(hashes.SHA256()).hex(),
        certificate.subject.rfc4514_string(),
        certificate.not_valid_after_utc,
    )


def check_spec(spec: HostSpec, host_count: int = 0) -> None:
    """Raise one ArmError listing every limit `spec` breaks (limits table), then check its EK CA
    certificate; `host_count` is the number of hosts once it is registered (0: not counted)."""
    request = HostRequest(
        spec.name,
        spec.uri,
        spec.memory_mib,
        spec.vcpus,
        len((spec.ek_ca_certificate or "").encode()),
        host_count,
    )
    raise_violations(check_host(request))
    if spec.ek_ca_certificate is not None:
        load_ek_ca_certificate(spec.name, spec.ek_ca_certificate)


def node_capacity(host: HostCapacity) -> HostCapacity:
    """What node VMs may take of a host with `host`'s memory and CPUs, by the rule of this machine's own
    quotas (limits.py): GUEST_MEMORY_SHARE of its memory (guest memory is not overcommitted; the rest is the
    host's) and GUEST_VCPUS_PER_HOST_CPU vCPUs per CPU (node VMs mostly idle), within the limits table's
    ranges."""
    return HostCapacity(
        min(int(GUEST_MEMORY_SHARE * host.memory_mib), HOST_MEMORY_MIB[1]),
        min(GUEST_VCPUS_PER_HOST_CPU * host.vcpus, HOST_VCPUS[1]),
    )


def resolve_capacity(spec: HostSpec) -> HostSpec:
    """`spec` with its missing capacity taken from the host's memory and CPUs (probe_host, node_capacity);
    400 HostUnreachable naming the cause when the host does not answer. A spec giving both is returned as
    it is, without contacting the host."""
    if spec.memory_mib is not None and spec.vcpus is not None:
        return spec
    try:
        probed = node_capacity(probe_host(spec.uri))
    except HostUnreachable as exc:
        raise bad_request(
            "HostUnreachable",
            f"Host '{spec.name}': its capacity could not be read ({exc}); give --memory-mib and --vcpus "
            "(properties.capacity) or make the host reachable.",
            "properties.uri",
        ) from None
    resolved = HostSpec(
        spec.name,
        spec.uri,
        spec.memory_mib if spec.memory_mib is not None else probed.memory_mib,
        spec.vcpus if spec.vcpus is not None else probed.vcpus,
        spec.ek_ca_certificate,
    )
    check_spec(resolved)  # a probed capacity is bounded as a given one (a host too small for one node)
    return resolved


def find_host(session: Session, name: str) -> NodeHost | None:
    """The host called `name`, if registered."""
    return session.scalar(select(NodeHost).where(NodeHost.name == name))


def get_host(session: Session, name: str) -> NodeHost:
    """The host called `name`, or a 404 HostNotFound."""
    host = find_host(session, name)
    if host is None:
        raise not_found(
            "HostNotFound", f"Host '{name[:100]}' is not registered (tl host list shows them).", "name"
        )
    return host


def list_hosts(session: Session) -> list[NodeHost]:
    """Every registered host, by name."""
    return list(session.scalars(select(NodeHost).order_by(NodeHost.name)))


def node_names_by_host(session: Session, host_ids: Iterable[int] | None = None) -> dict[int, list[str]]:
    """The names of the nodes placed on each host (all hosts, or `host_ids`), by name."""
    query = select(Node.host_id, Node.name).where(Node.host_id.is_not(None)).order_by(Node.name)
    if host_ids is not None:
        query = query.where(Node.host_id.in_(list(host_ids)))
    names: dict[int, list[str]] = defaultdict(list)
    for host_id, name in session.execute(query):
        if host_id is not None:
            names[host_id].append(name)
    return names


def usage(host: NodeHost, node_names: Iterable[str]) -> HostUsage:
    """What the nodes `node_names` placed on `host` take of it (each node VM: node/qemu.py's memory and
    vCPUs) and what is left (negative when a capacity was lowered below its nodes)."""
    nodes = tuple(node_names)
    allocated = HostCapacity(len(nodes) * NODE_MEMORY_MIB, len(nodes) * NODE_VCPUS)
    free = HostCapacity(host.memory_mib - allocated.memory_mib, host.vcpus - allocated.vcpus)
    return HostUsage(nodes, allocated, free)


def host_usage(session: Session, host: NodeHost) -> HostUsage:
    """`usage` of one host, its nodes read from the store."""
    return usage(host, node_names_by_host(session, [host.id]).get(host.id, []))


def _named(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED_NODES])
    return shown + (f" and {len(names) - MAX_NAMED_NODES} more" if len(names) > MAX_NAMED_NODES else "")


def put_host(session: Session, spec: HostSpec) -> tuple[NodeHost, bool]:
    """Register `spec` (its capacity resolved: `resolve_capacity`) or update the host of its name; (the host,
    whether it was created). 409 when its URI is another host's, when a host with nodes would change its URI
    or EK CA, or when its capacity would drop below what its nodes take."""
    assert spec.memory_mib is not None and spec.vcpus is not None, "resolve_capacity first"
    host = find_host(session, spec.name)
    count = session.scalar(select(func.count()).select_from(NodeHost)) or 0
    check_spec(spec, count + (1 if host is None else 0))
    other = session.scalar(select(NodeHost.name).where(NodeHost.uri == spec.uri, NodeHost.name != spec.name))
    if other is not None:
        raise conflict(
            "HostUriInUse", f"Host '{other}' is registered with URI '{spec.uri}' already.", "properties.uri"
        )
    created = host is None
    if host is None:
        host = NodeHost(name=spec.name, uri=spec.uri, memory_mib=spec.memory_mib, vcpus=spec.vcpus)
        session.add(host)
    else:
        nodes = host_usage(session, host)
        changed = [
            label
            for label, differs in (
                ("its URI", host.uri != spec.uri),
                ("its EK CA certificate", host.ek_ca_certificate != spec.ek_ca_certificate),
            )
            if differs
        ]
        if nodes.nodes and changed:
            raise conflict(
                "HostInUse",
                f"Host '{host.name}' cannot change {' and '.join(changed)} while nodes run on it: "
                f"{_named(list(nodes.nodes))}.",
                "properties.uri" if "its URI" in changed else EK_CA_TARGET,
            )
        if spec.memory_mib < nodes.allocated.memory_mib or spec.vcpus < nodes.allocated.vcpus:
            raise conflict(
                "HostCapacityInUse",
                f"Host '{host.name}': its {len(nodes.nodes)} node(s) take {nodes.allocated.memory_mib} MiB "
                f"and {nodes.allocated.vcpus} vCPUs; the capacity cannot be lowered below that "
                f"({spec.memory_mib} MiB, {spec.vcpus} vCPUs given).",
                "properties.capacity",
            )
        host.uri, host.memory_mib, host.vcpus = spec.uri, spec.memory_mib, spec.vcpus
    host.ek_ca_certificate = spec.ek_ca_certificate
    session.flush()
    return host, created


def cordon_host(session: Session, name: str, cordoned: bool) -> NodeHost:
    """Cordon `name` (placement puts no new node VM on it; the nodes on it stay) or uncordon it; the host,
    404 if it is not registered."""
    host = get_host(session, name)
    host.cordoned = cordoned
    session.flush()
    return host


def remove_host(session: Session, name: str) -> None:
    """Unregister the host called `name` (404 if there is none) and resolve its open HostLost alerts; 409
    HostInUse naming its nodes while any node is placed on it."""
    host = get_host(session, name)
    nodes = host_usage(session, host).nodes
    if nodes:
        raise conflict(
            "HostInUse",
            f"Host '{host.name}' runs {len(nodes)} node(s): {_named(list(nodes))}. Move them to other "
            f"hosts first (tl host drain -n {host.name}, then remove it once they are gone), or delete or "
            "scale down their pools.",
            "name",
        )
    alert_lifecycle.resolve_open_alerts(session, HOST_ALERT_PREFIX + host.name, (AlertType.HOST_LOST,))
    session.delete(host)


@dataclass(frozen=True)
class HostCheck:
    """One recorded check of a host: `cause` is None when it answered."""

    host_id: int
    cause: str | None = None
    capacity: HostCapacity | None = None


@dataclass(frozen=True)
class HostStateChange:
    """A host a check made Lost (with the cause) or Ready again."""

    host_id: int
    name: str
    state: HostState
    cause: str | None


def record_check(
    session: Session, host: NodeHost, check: HostCheck, failed_checks: int = FAILED_CHECKS
) -> bool:
    """Apply one check to `host`: a success clears its failures and records when it was seen (a Lost host is
    Ready again, its alerts resolved); a failure counts, and the `failed_checks`-th in a row makes a Ready
    host Lost with the cause and raises its alerts. True if the host's state changed."""
    now = utc_now()
    if check.cause is None:
        host.failed_checks, host.last_seen_at, host.state_cause = 0, now, None
        if host.state != HostState.LOST:
            return False
        host.state = HostState.READY
        alert_lifecycle.resolve_open_alerts(session, HOST_ALERT_PREFIX + host.name, (AlertType.HOST_LOST,))
        return True
    host.failed_checks += 1
    if host.state != HostState.READY or host.failed_checks < failed_checks:
        host.state_cause = check.cause[:1024]
        return False
    host.state = HostState.LOST
    host.state_cause = f"no answer to {host.failed_checks} checks in a row: {check.cause}"[:1024]
    _raise_lost_alerts(session, host, now)
    return True


def _raise_lost_alerts(session: Session, host: NodeHost, now: datetime) -> None:
    """One HostLost alert per subscription with nodes on `host`, naming that subscription's nodes only."""
    by_subscription: dict[str, list[Node]] = defaultdict(list)
    for node in session.scalars(select(Node).where(Node.host_id == host.id).order_by(Node.name)):
        by_subscription[node.pool.cluster.subscription_id].append(node)
    alert_node = HOST_ALERT_PREFIX + host.name
    for subscription_id, nodes in by_subscription.items():
        findings = (
            Finding(Check.NODE_HEALTH, "host", host.state_cause or "lost"),
            Finding(Check.NODE_HEALTH, "host", f"nodes on it: {_named([node.name for node in nodes])}"),
        )
        for alert in alerts_from_result(
            AttestationResult(False, findings),
            node=alert_node,
            pool="",
            cluster="",
            now=now,
            alert_type=AlertType.HOST_LOST,
            remediation=alert_lifecycle.remediation_steps(AlertType.HOST_LOST),
        ):
            record = AlertRecord(
                id=alert.id,
                subscription_id=subscription_id,
                resource_group="",
                cluster_name="",
                pool_name="",
                node_name=alert_node,
                severity=alert.severity.value,
                time=alert.time,
                alert_type=alert.alert_type.value,
                status="Active",
                last_seen=alert.time,
                count=1,
                delivery_state=alert_lifecycle.PENDING,
                document=alert.to_dict(),
            )
            alert_lifecycle.refresh_document(record)
            session.add(record)


class HostMonitor:
    """The health checks of every Ready or Lost host, for the reconciler to step each pass (`check_hosts`):
    each host is checked every `interval` seconds in a thread of its own and its outcome recorded once it
    is in, or as a failure once `timeout` passed. A host whose earlier check still hangs gets no second
    thread: each interval it hangs counts as one more failure. With `runs_dir` (the folder of the
    reconciler's run directories) a host that answered has its stray domains removed (StrayDomainSweep),
    then its node-image volumes no domain named for `volume_hold` seconds (UnusedVolumeSweep)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        interval: float = CHECK_INTERVAL,
        timeout: float = CHECK_TIMEOUT,
        failed_checks: int = FAILED_CHECKS,
        runs_dir: Path | None = None,
        volume_hold: float = UNUSED_VOLUME_HOLD,
    ) -> None:
        self.sessions, self.interval, self.timeout, self.failed_checks = (
            sessions,
            interval,
            timeout,
            failed_checks,
        )
        self.domain_sweep = StrayDomainSweep(sessions, runs_dir) if runs_dir is not None else None
        self.volume_sweep = UnusedVolumeSweep(volume_hold)
        self._checks: dict[int, _Check] = {}
        self._next_check: dict[int, float] = {}

    def check_hosts(self) -> list[HostStateChange]:
        """Record the checks that ended or timed out, start the checks that are due; never waits. The hosts
        whose state these checks changed (Ready -> Lost, Lost -> Ready), for the caller to react to."""
        now = time.monotonic()
        outcomes: list[HostCheck] = []
        for host_id, check in list(self._checks.items()):
            if check.done.is_set():
                del self._checks[host_id]
                if not check.timed_out:
                    outcomes.append(self._outcome(host_id, check.outcome))
            elif not check.timed_out and now - check.started >= self.timeout:
                check.timed_out = True
                outcomes.append(HostCheck(host_id, f"{check.uri} did not answer within {self.timeout:g} s"))
        with self.sessions() as session:
            hosts = session.execute(
                select(NodeHost.id, NodeHost.uri).where(NodeHost.state.in_((HostState.READY, HostState.LOST)))
            ).all()
        self._next_check = {
            host_id: due for host_id, due in self._next_check.items() if host_id in dict(hosts)
        }
        for host_id, uri in hosts:
            if self._next_check.get(host_id, 0.0) > now:
                continue
            self._next_check[host_id] = now + self.interval
            hung = self._checks.get(host_id)
            if hung is not None:  # an earlier check still hangs: this interval failed too
                if hung.timed_out:
                    cause = f"{hung.uri} has not answered a check started {now - hung.started:.0f} s ago"
                    outcomes.append(HostCheck(host_id, cause))
                continue
            sweep = functools.partial(self._sweep, host_id) if self.domain_sweep is not None else None
            self._checks[host_id] = check = _Check(uri, sweep)
            check.start()
        return self._record(outcomes) if outcomes else []

    def _sweep(self, host_id: int, connection: libvirt.virConnect) -> None:
        """Remove host `host_id`'s stray domains, then its unused volumes (the domains read once for both)."""
        from trustedlaunch.node.libvirt_driver import host_domains

        assert self.domain_sweep is not None
        defined = host_domains(connection)
        removed = set(self.domain_sweep(host_id, defined))
        self.volume_sweep(host_id, connection, [domain for domain in defined if domain.name not in removed])

    @staticmethod
    def _outcome(host_id: int, outcome: HostCapacity | str) -> HostCheck:
        if isinstance(outcome, str):
            return HostCheck(host_id, outcome)
        return HostCheck(host_id, None, outcome)

    def _record(self, outcomes: list[HostCheck]) -> list[HostStateChange]:
        changes = []
        with self.sessions.begin() as session:
            for outcome in outcomes:
                host = session.get(NodeHost, outcome.host_id, with_for_update=True)
                if host is None or host.state not in (HostState.READY, HostState.LOST):
                    continue
                if record_check(session, host, outcome, self.failed_checks):
                    changes.append(
                        HostStateChange(host.id, host.name, HostState(host.state), host.state_cause)
                    )
        return changes
