"""The node reconciler: drives the nodes of every pool with an InProgress operation to the pool's desired
state (create, scale, rolling reimage on a Secure Boot / vTPM change, delete), attests every vTPM node,
labels the nodes and finishes the operation.

Each node's VM runs under the node driver its row names (control.node_drivers): the direct QEMU driver on
this machine when no node host is registered, else libvirt on the Ready host control.placement chose when
the node was provisioned (recorded before its VM starts). Its driver's handle (QEMU's pid, the domain's
UUID) finds the VM again after a restart. Its attestations accept only the EK CA of the host that made its
vTPM (node_ek_cas); a node whose host is Lost is made again elsewhere (node_health's repair: a reimage).

Crash safety: each step records its intent in the store before acting (a node row is Provisioning with
its run directory before QEMU starts, Reimaging / Deleting before its VM is killed), so a reconciler
killed at any point is resumed by the next one: interrupted steps are redone from scratch after killing
every qemu/swtpm process whose command line names the node's run directory; Ready nodes whose VM still
answers are adopted, and so is a node left Provisioning whose VM still runs (its boot is waited for, then
it is attested). VMs outlive the reconciler's process on purpose (the `tl` embedded server exits after each
command; VMs run in sessions of their own, so Ctrl-C or a hang-up of its terminal does not reach them). One
reconciler per state directory at a time (an advisory file lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, NoReturn

import httpx2
import platformdirs
from cryptography import x509
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.derivation import policy_for_image
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control import alert_lifecycle
from trustedlaunch.control.attestation_monitor import (
    DEFAULT_ATTESTATION_INTERVAL,
    AlertDelivery,
    AttestationMonitor,
    Trigger,
    attestation_due,
    attestation_order,
    describe_failure,
    due_trigger,
    resolve_alerts,
)
from trustedlaunch.control.cluster_planes import SUPERVISE_SECONDS, ClusterPlanes, ControlPlaneFailedError
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.image_policies import record_image_policy
from trustedlaunch.control.kubernetes import KubernetesAdapterError
from trustedlaunch.control.labels import join_labels, node_labels
from trustedlaunch.control.limits import LINUX_ONLY_MESSAGE, OS_TYPE_NOT_SUPPORTED, boots_here, surge_nodes
from trustedlaunch.control.node_drain import (
    DEFAULT_DRAIN_TIMEOUT_MINUTES,
    AfterFailedDrain,
    NodeDrainer,
    NodeDrainFailedError,
    after_failed_drain,
    soak_note,
)
from trustedlaunch.control.node_drivers import QEMU, AdoptedMachine, ControlNodeDriver, node_driver
from trustedlaunch.control.node_health import (
    BUSY_AGENT_SILENCE,
    LIVENESS_INTERVAL,
    PING_TIMEOUT,
    REIMAGE_AFTER,
    LivenessCheck,
    RepairAction,
    finish_repair,
    next_repair,
    record_check,
    start_repair,
)
from trustedlaunch.control.node_hosts import HostMonitor
from trustedlaunch.control.node_image_versions import chain_of_build, version_build
from trustedlaunch.control.node_images import OPERATOR_IMAGES_DIR, build_release_image, is_release_image
from trustedlaunch.control.node_join import (
    ALREADY_STARTED,
    JOIN_TIMEOUT,
    NodeAgentOutdatedError,
    NodeJoiner,
    NodeJoinFailedError,
    joins_cluster,
    node_network,
    record_kubelet_port,
)
from trustedlaunch.control.node_plan import (
    Action,
    DesiredPool,
    NodePhase,
    ObservedNode,
    Step,
    is_current,
    plan_next_step,
)
from trustedlaunch.control.node_processes import (
    SUPERVISOR_NAME,
    is_stopped,
    kill_node_processes,
    node_processes,
)
from trustedlaunch.control.operations import finish_operation, operation_resource, start_node_reimage
from trustedlaunch.control.placement import NoHostRoomError, place_node
from trustedlaunch.control.retention import Retention
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.findings import Check, Finding
from trustedlaunch.node.agent_client import NodeAgent
from trustedlaunch.node.channel import AgentChannel, AgentError
from trustedlaunch.node.diagnose import diagnose_boot_failure
from trustedlaunch.node.driver import NodeMachine
from trustedlaunch.node.image import NodeImage, has_current_agent, refresh_agent
from trustedlaunch.node.qemu import BootFailedError, NodeVMError, firmware_varstore
from trustedlaunch.node.supervisor import vm_end
from trustedlaunch.store.models import (
    OPERATION_NOTE_LENGTH,
    AgentPool,
    AttestationRecord,
    ManagedCluster,
    Node,
    NodeHost,
    Operation,
    utc_now,
)
from trustedlaunch.store.vocabulary import (
    AlertType,
    AttestationStatus,
    HostState,
    OperationStatus,
    UndrainableNodeBehavior,
)
from trustedlaunch.tpm.ekca import EkCa, create_ek_ca, load_ek_ca
from trustedlaunch.tpm.vtpm import Vtpm

DEFAULT_BOOT_TIMEOUT = 300.0
SUPERVISOR_RECORD_SECONDS = 2.0  # how long a VM's supervisor may take to record the end of QEMU
# Nodes attested at once, each in its own thread: a node whose agent hangs (up to its timeout) or answers
# garbage holds one of these, never the operations or the other nodes' attestations.
MAX_PARALLEL_ATTESTATIONS = 8
# A whole re-attestation (some 15 agent requests, seconds in all) ends by then, whatever the node answers.
ATTESTATION_TIME_LIMIT = 180.0
# A re-attestation that broke on our side (store, Kubernetes) is retried after this many seconds, not at once.
ATTESTATION_RETRY_SECONDS = 30.0
# A joined node whose pool labels and taints could not be set (plane unreachable) is tried again after this.
NODE_SETTINGS_RETRY_SECONDS = 30.0
# seconds during which a libvirt host whose driver could not be made is not tried again
UNREACHABLE_RETRY_SECONDS = 10.0
LOCK_FILE = "reconciler.lock"
LIVE_PHASES = (NodePhase.READY, NodePhase.UNHEALTHY)  # the nodes whose liveness is checked
VTPM_DIR = "tpm"

log = logging.getLogger(__name__)


class NodeStays(StrEnum):
    """Why a node a step would take stays where it is (Reconciler._drain)."""

    QUARANTINED = "quarantined"  # the upgrade could not drain it (Cordon): the plan goes on without it
    SOAKING = "soaking"  # drained; its soak's deadline has not passed yet


def default_state_dir() -> Path:
    """Where the reconciler keeps node images, the platform EK CA and the VMs' run directories."""
    return Path(platformdirs.user_data_dir("trustedlaunch")) / "nodes"


@dataclass(frozen=True)
class VmLocation:
    """Where a node's VM runs, read from its row (usable without a store session): its driver, its host
    (name, libvirt URI and state; None: this machine), whether the host's libvirt makes its vTPM, the
    driver's handle and the run directory."""

    driver: str
    host: str | None
    uri: str | None
    host_state: str | None
    host_tpm: bool
    handle: str | None
    run_dir: str | None
    host_failing: bool = False  # the host checks' latest check of its host failed

    @classmethod
    def of(cls, node: Node) -> VmLocation:
        """The location node's row records."""
        host = node.host
        if host is None:
            return cls(node.driver, None, None, None, False, node.handle, node.run_dir)
        tpm = host.ek_ca_certificate is not None
        failing = host.failed_checks > 0
        return cls(node.driver, host.name, host.uri, host.state, tpm, node.handle, node.run_dir, failing)

    @property
    def host_ready(self) -> bool:
        """Whether its VM's host is this machine or a Ready host."""
        return self.host_state in (None, HostState.READY)


class NodeProvisioningError(TrustedLaunchError):
    """A node could not be brought to Ready; `error` is the ARM error its operation ends with, in `status`
    (Failed; Canceled for an upgrade that quarantined a node no surge node can replace, as AKS)."""

    def __init__(self, error: ArmError, status: str = OperationStatus.FAILED):
        super().__init__(error.message)
        self.error = error
        self.status = status


def _desired(pool: AgentPool, deleting: bool) -> DesiredPool:
    return DesiredPool(
        count=pool.count,
        secure_boot=pool.enable_secure_boot,
        vtpm=pool.enable_vtpm,
        image_version=pool.node_image_version,
        deleting=deleting,
    )


def _observed(node: Node, operation_id: str | None = None) -> ObservedNode:
    return ObservedNode(
        node.id,
        node.ordinal,
        node.state,
        node.enable_secure_boot,
        node.enable_vtpm,
        node.node_image_version,
        node.reimage_reason,
        quarantined=operation_id is not None and node.quarantined_by_operation == operation_id,
    )


class Reconciler:
    """Drives nodes to the desired state of the store behind `sessions`; VM files live in `state_dir`.

    A pool's upgradeSettings.maxSurge >= 1 node creates a replacement node before deleting an outdated one
    during a rolling reimage; `max_surge` is the default for pools without one (0: reimage in place, one
    node at a time).

    Ready vTPM nodes are attested again every `attestation_interval` seconds (0: only on demand) and when
    asked (`attestation_requested_at`), never while an operation works on their pool, up to
    `max_parallel_attestations` at once in threads of their own (operations advance meanwhile): see
    `attestation_monitor` for the history, tokens (`token_issuer`), alerts and the quarantine (applied to
    the Node objects of the cluster's own kube-apiserver with `cluster_planes`). `run_forever` delivers
    alerts in a second thread.

    Every Ready or Unhealthy node's liveness is checked every `liveness_interval` seconds (a thread of its
    own in `run_forever`, so that a long step does not delay it; `run_once` checks when due): see
    `node_health` for the rules, and the auto-repair of Unhealthy nodes (reboot, then reimage) that
    `auto_repair` turns on.

    With `cluster_planes`, every cluster gets its own hosted Kubernetes control plane (cluster_planes): made
    by the cluster's Create or Update operation before its nodes, removed by its Delete operation after
    them, adopted when this reconciler takes the state directory and supervised every SUPERVISE_SECONDS.
    A node whose image has a root filesystem then joins its cluster (control.node_join): a vTPM node gets
    its kubelet credential only once it passed attestation, and is Ready only once its Node is Ready,
    attested and labelled (within `join_timeout` seconds); its Node is deleted before its VM is stopped.

    Before a joined Ready node's VM is torn down by a reimage, a scale down, the surge's deletion of an
    outdated node or its pool's deletion (not its cluster's: the plane goes too), its Node is cordoned and
    drained through the Eviction API (control.node_drain), within the pool's
    upgradeSettings.drainTimeoutInMinutes (AKS's default 30 without one); `drain_timeout` (seconds), when
    set, overrides every pool's (tests use seconds, the API takes whole minutes). A pool Delete with
    ignore-pod-disruption-budget deletes the pods instead of evicting them. An upgrade (a reimage, or the
    deletion of an outdated node a surge node replaced: node_plan's Step.upgrade; not a scale down) then
    soaks the drained node for the pool's upgradeSettings.nodeSoakDurationInMinutes before it goes
    (`node_soak_duration`, seconds, overrides it): a deadline on the node's row, checked on each pass
    while other operations, renewals and plane supervision go on, that every operation's step on the node
    waits for while its operation is InProgress (cleared when it ends); and handles a node it cannot drain as
    upgradeSettings.undrainableNodeBehavior says: Schedule (AKS's default) uncordons it and fails the
    operation; Cordon keeps it cordoned and labelled
    kubernetes.azure.com/upgrade-status=Quarantined, leaves it out of the operation's plan (its surge node
    stays in its place) and goes on, the operation failing at the end naming it (Canceled at once when
    the node was being reimaged in place: no surge node can replace it). A later operation drains such a
    node (or one whose upgrade ended during its soak) again, or releases it (uncordoned, unlabelled) when it
    is current again (its pool reverted); an
    uncordon never lifts the attestation verdict's cordon (control.kubernetes).

    Its kubelet certificates are renewed every `attestation_interval` (control.node_join: right after each
    passing re-attestation of a vTPM node, never after a failing one; while Ready for a node without vTPM),
    and then its Node's pool labels (control.labels.pool_labels) are brought back to its row if they differ.

    A joined node gets its pool's nodeLabels (set at the join) and nodeTaints (its kubelet registers with
    them) and maxPods (its kubelet's); an operation on a pool whose nodes are all current then sets the
    pool's nodeLabels and nodeTaints on every joined Ready node whose Node has others (as AKS, no reimage).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        state_dir: Path,
        *,
        max_surge: int = 0,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        poll_seconds: float = 1.0,
        attestation_interval: float = DEFAULT_ATTESTATION_INTERVAL,
        token_issuer: TokenIssuer | None = None,
        max_parallel_attestations: int = MAX_PARALLEL_ATTESTATIONS,
        attestation_time_limit: float = ATTESTATION_TIME_LIMIT,
        liveness_interval: float = LIVENESS_INTERVAL,
        auto_repair: bool = True,
        reimage_after: timedelta = REIMAGE_AFTER,
        cluster_planes: ClusterPlanes | None = None,
        join_timeout: float = JOIN_TIMEOUT,
        drain_timeout: float | None = None,
        node_soak_duration: float | None = None,
    ) -> None:
        self.sessions = sessions
        self.state_dir = state_dir
        self.max_surge = max_surge
        self.boot_timeout = boot_timeout
        self.poll_seconds = poll_seconds
        self.attestation_interval = attestation_interval
        self.monitor = AttestationMonitor(
            token_issuer=token_issuer,
            kubernetes=cluster_planes.node_adapter if cluster_planes is not None else None,
        )
        self.alert_delivery = AlertDelivery(sessions)
        self.retention = Retention(sessions)  # settings from the environment (control/retention.py)
        self.max_parallel_attestations = max_parallel_attestations
        self.attestation_time_limit = attestation_time_limit  # seconds a whole re-attestation may take
        self._vms: dict[int, NodeMachine] = {}  # node id -> VM this process started
        self._drivers: dict[tuple[str, str | None, bool], ControlNodeDriver] = {}  # made once per host
        self._drivers_lock = threading.Lock()
        self._driver_locks: dict[tuple[str, str | None, bool], threading.Lock] = {}  # held while one opens
        self._unreachable: dict[tuple[str, str | None, bool], tuple[float, str]] = {}  # -> (retry at, cause)
        self.runs_dir = state_dir / "vm"  # the node VMs' run directories
        # node hosts' health (Lost hosts' nodes are made again) and the removal of their stray domains
        self.host_monitor = HostMonitor(sessions, runs_dir=self.runs_dir)
        self._lock: IO[bytes] | None = None
        self._ek_ca: EkCa | None = None
        self._artefacts_lock = threading.RLock()  # node images and the EK CA, made once for all threads
        self._attesting: dict[int, threading.Thread] = {}  # node id -> the thread attesting it
        self._attesting_lock = threading.Lock()
        self._retry_after: dict[int, float] = {}  # node id -> monotonic time before which it is not retried
        self._stop_event = threading.Event()  # set by run_forever's stop: no more waiting for attestations
        self.liveness_interval = liveness_interval
        self.auto_repair = auto_repair
        self.reimage_after = reimage_after
        self._agent_locks: dict[int, threading.Lock] = {}  # node id -> held while its agent is in use
        self._agent_locks_lock = threading.Lock()
        self._channels_in_use: dict[int, AgentChannel] = {}  # node id -> the channel attesting it
        self._liveness_lock = threading.Lock()  # one liveness round at a time (loop and liveness thread)
        self._next_liveness_at = 0.0
        self.cluster_planes = cluster_planes
        self.joiner = (
            NodeJoiner(cluster_planes, join_timeout, attestation_interval)
            if cluster_planes is not None
            else None
        )
        # node id -> the monotonic time its kubelet credentials were last issued
        self._renewed_at: dict[int, float] = {}
        self._next_supervision_at = 0.0
        # node id -> the monotonic time before which its pool labels and taints are not tried again
        self._settings_retry_after: dict[int, float] = {}
        self._next_settings_scan_at = 0.0
        self.node_settings_retry = NODE_SETTINGS_RETRY_SECONDS
        self.drain_timeout = drain_timeout
        self.node_soak_duration = node_soak_duration

    # -- ownership -------------------------------------------------------------------------------------

    def _acquire(self) -> bool:
        if self._lock is not None:
            return True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.state_dir / LOCK_FILE).open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            return False
        self._lock = lock
        self._adopt_ready_nodes()
        self._adopt_control_planes()
        return True

    def release(self) -> None:
        """Give up the state directory to another reconciler; running VMs keep running (to be adopted).
        Attestations in flight are waited for, `attestation_time_limit` seconds in all at most (they run in
        daemon threads; an unfinished one is redone by the next reconciler)."""
        deadline = time.monotonic() + self.attestation_time_limit
        for thread in self._attestation_threads():
            thread.join(max(0.0, deadline - time.monotonic()))
        self._vms.clear()  # their agent connections close with them; the next reconciler adopts the VMs
        with self._drivers_lock:
            for driver in self._drivers.values():
                driver.close()  # a libvirt host's connection; its domains keep running
            self._drivers.clear()
        if self.cluster_planes is not None:
            self.cluster_planes.close()  # the Kubernetes adapters' connections; the planes keep running
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _adopt_ready_nodes(self) -> None:
        """Adopt the nodes of an earlier reconciler: check every Ready or Unhealthy node's liveness at once
        (a Ready node whose agent answers is adopted); a repair it left half done leaves the node Unhealthy,
        for the next repair step."""
        with self.sessions.begin() as session:
            for node in session.scalars(select(Node).where(Node.state == NodePhase.REPAIRING)):
                log.warning("node %s: its repair was interrupted; it stays Unhealthy", node.name)
                node.state = NodePhase.UNHEALTHY
        with self._liveness_lock:
            self._next_liveness_at = time.monotonic() + self.liveness_interval
            for check, state in self.check_liveness():
                if check.cause is None and state == NodePhase.READY:
                    log.info("adopted node %s", check.node_name)

    def _adopt_control_planes(self) -> None:
        """Remove the control planes no cluster records any more, adopt the running processes of the others
        and start their dead ones again (data kept)."""
        if self.cluster_planes is None:
            return
        with self.sessions() as session:
            self.cluster_planes.remove_orphans(session)
            self.cluster_planes.supervise(session)
        self._next_supervision_at = time.monotonic() + SUPERVISE_SECONDS

    def _supervise_control_planes_if_due(self) -> None:
        if self.cluster_planes is None or time.monotonic() < self._next_supervision_at:
            return
        self._next_supervision_at = time.monotonic() + SUPERVISE_SECONDS
        with self.sessions() as session:
            self.cluster_planes.supervise(session)

    def _driver(self, where: VmLocation) -> ControlNodeDriver:
        """The driver of the VM at `where` (made once per host, again once its connection died);
        NodeVMError when its host cannot be reached, at once for UNREACHABLE_RETRY_SECONDS after a failed
        attempt (each open may take the driver's whole open timeout: a hung host would hold every caller).
        Only callers for the same host wait for one another."""
        key = (where.driver, where.uri, where.host_tpm)
        with self._drivers_lock:
            lock = self._driver_locks.setdefault(key, threading.Lock())
        with lock:
            driver = self._drivers.get(key)
            if driver is not None and driver.alive:
                return driver
            retry_at, cause = self._unreachable.get(key, (0.0, ""))
            if time.monotonic() < retry_at:
                raise NodeVMError(cause)
            if driver is not None:
                driver.close()
            try:
                driver = self._drivers[key] = node_driver(where.driver, where.uri, host_tpm=where.host_tpm)
            except NodeVMError as exc:
                self._unreachable[key] = (time.monotonic() + UNREACHABLE_RETRY_SECONDS, str(exc))
                raise
            self._unreachable.pop(key, None)
            return driver

    def _adopt(self, where: VmLocation) -> AdoptedMachine | None:
        """The running VM at `where` that another reconciler process (or this one, before a release)
        started, found by its driver; None if it is gone, was never started or its host is not Ready."""
        if not where.handle or not where.run_dir or not where.host_ready:
            return None
        try:
            return self._driver(where).adopt(where.handle, Path(where.run_dir))
        except NodeVMError as exc:
            log.warning("VM %s (%s): %s", where.handle, where.run_dir, exc)
            return None

    def _host_silence(self, where: VmLocation) -> str | None:
        """Why the libvirt host of the VM at `where` cannot be reached now (its driver's connection is dead
        and cannot be opened again); None when it answers or the VM runs on this machine."""
        if where.host is None:
            return None
        try:
            self._driver(where)
        except NodeVMError as exc:
            return str(exc)
        return None

    def _vm_alive(self, node: Node) -> bool:
        """True while the node's VM (ours or adopted) runs."""
        vm = self._vms.get(node.id)
        if vm is not None:
            return vm.running
        return self._adopt(VmLocation.of(node)) is not None

    def _agent_lock(self, node_id: int) -> threading.Lock:
        """The lock held while node `node_id`'s agent is in use (an attestation, a liveness PING): its serial
        port serves one connection at a time."""
        with self._agent_locks_lock:
            return self._agent_locks.setdefault(node_id, threading.Lock())

    @contextlib.contextmanager
    def _attesting_over(self, node_id: int, channel: AgentChannel) -> Iterator[None]:
        """While node `node_id` is attested over `channel`: no agent request waits past
        `attestation_time_limit` seconds from now, and liveness checks watch the channel instead of
        sending a PING of their own."""
        channel.deadline = time.monotonic() + self.attestation_time_limit
        self._channels_in_use[node_id] = channel
        try:
            yield
        finally:
            self._channels_in_use.pop(node_id, None)
            channel.deadline = None

    # -- liveness and auto-repair ----------------------------------------------------------------------

    def check_liveness(self) -> list[tuple[LivenessCheck, str]]:
        """Check the liveness of every Ready or Unhealthy node whose pool no operation works on (in parallel,
        each PING bounded by PING_TIMEOUT) and record the outcomes (node_health); the checks made, each with
        the node's state after it. A node whose agent an attestation is using gets no PING: it fails the
        check if the attestation's request has waited more than BUSY_AGENT_SILENCE for its answer. A node on
        a libvirt host that does not answer gets no verdict: its VM is not known to be gone, and the host
        checks decide (a Lost host's nodes are Unhealthy at once, then made again elsewhere)."""
        with self.sessions() as session:
            busy = self._busy_pools(session)
            targets = [
                (node.id, node.name, VmLocation.of(node))
                for node in session.scalars(select(Node).where(Node.state.in_(LIVE_PHASES)))
                if node.pool_id not in busy
            ]
        if not targets:
            return []
        with ThreadPoolExecutor(min(len(targets), MAX_PARALLEL_ATTESTATIONS), "tl-liveness") as pool:
            checks = [check for check in pool.map(lambda target: self._check_node(*target), targets) if check]
        return self._record_checks(checks)

    def _check_node(self, node_id: int, node_name: str, where: VmLocation) -> LivenessCheck | None:
        if not where.host_ready:  # its host is Lost or removed: its VM is gone for this control plane
            cause = f"VM lost: its host {where.host} is {where.host_state}"
            return LivenessCheck(node_id, node_name, cause, certain=True, vm_exited=True)
        if where.host_failing:  # not contacted: a hung host would hold this check (the host checks decide)
            log.warning("node %s: no liveness verdict while host %s fails its checks", node_name, where.host)
            return None
        vm = self._vms.get(node_id)
        adopted = self._adopt(where) if vm is None else None
        machine = vm if vm is not None else adopted
        if machine is None or not machine.running or not where.handle:
            if where.handle and (silence := self._host_silence(where)) is not None:
                log.warning(
                    "node %s: no liveness verdict while its host does not answer: %s", node_name, silence
                )
                return None  # not known to be gone: the host checks decide (Lost: its nodes are made again)
            cause = f"VM exited: {_vm_end(where)}"
            return LivenessCheck(node_id, node_name, cause, certain=True, vm_exited=True)
        if where.driver == QEMU and is_stopped(int(where.handle)):
            return LivenessCheck(node_id, node_name, "VM paused: its QEMU process is stopped", certain=True)
        lock = self._agent_lock(node_id)
        if not lock.acquire(blocking=False):  # an attestation is talking to the agent: is it answering?
            channel = self._channels_in_use.get(node_id)
            waiting = channel.waiting_since if channel is not None else None
            silent = time.monotonic() - waiting if waiting is not None else 0.0
            if silent <= BUSY_AGENT_SILENCE:
                return None
            cause = f"the agent has not answered the attestation's request for {silent:.0f} s"
            return LivenessCheck(node_id, node_name, cause)
        try:
            answered = machine.agent().channel.ping(secrets.token_hex(4), PING_TIMEOUT)
        except (AgentError, NodeVMError):
            answered = False
        finally:
            if adopted is not None:
                adopted.disconnect()
            lock.release()
        if answered:
            return LivenessCheck(node_id, node_name)
        return LivenessCheck(node_id, node_name, f"the agent did not answer a PING within {PING_TIMEOUT:g} s")

    def _record_checks(self, checks: Sequence[LivenessCheck]) -> list[tuple[LivenessCheck, str]]:
        recorded = []
        for check in checks:
            with self.sessions() as session:
                node = session.get(Node, check.node_id)
                if node is None or node.state not in LIVE_PHASES:
                    continue  # an operation or a repair took it meanwhile
                if check.vm_exited and node.handle is not None:
                    self._stop_processes(node)  # what is left of it (its vTPM): a repair starts it again
                    node.handle = None
                changed = record_check(session, node, check)
                if changed and node.state == NodePhase.UNHEALTHY:
                    log.warning("node %s: unhealthy: %s", node.name, node.health_cause)
                session.commit()
                if changed:  # no store transaction open during the API server's calls
                    unhealthy = node.state == NodePhase.UNHEALTHY
                    if unhealthy or not node.enable_vtpm:  # a vTPM node gets its labels back once attested
                        self.monitor.sync_kubernetes(node, node.health_cause if unhealthy else None)
                        session.commit()
                recorded.append((check, node.state))
        return recorded

    def _check_liveness_if_due(self) -> None:
        if self.liveness_interval <= 0 or not self._liveness_lock.acquire(blocking=False):
            return
        try:
            if time.monotonic() >= self._next_liveness_at:
                self._next_liveness_at = time.monotonic() + self.liveness_interval
                self.check_liveness()
        finally:
            self._liveness_lock.release()

    def _check_liveness_forever(self, stop_event: threading.Event) -> None:
        while not stop_event.wait(1.0):
            if self._lock is None:
                continue  # another reconciler owns the VMs
            try:
                self._check_liveness_if_due()
            except Exception:
                log.exception("liveness check failed; retrying")

    def _repair_due_node(self) -> bool:
        """Take the next auto-repair step of one Unhealthy node (node_health.next_repair); True if one was
        taken. Called only while no operation is in progress (an operation replaces Unhealthy nodes)."""
        now = utc_now()
        with self.sessions() as session:
            for node in session.scalars(select(Node).where(Node.state == NodePhase.UNHEALTHY)).all():
                action = next_repair(node, now, enabled=self.auto_repair, reimage_after=self.reimage_after)
                if action is not None:
                    self._repair(session, node, action)
                    return True
        return False

    def _repair(self, session: Session, node: Node, action: RepairAction) -> None:
        """Reboot (the same vTPM and identity, enrolled again) or reimage (a new VM and vTPM) Unhealthy
        `node`: Ready again once attested, else Unhealthy still, with the failure recorded."""
        pool = node.pool
        log.warning("node %s: auto-repair: %s (%s)", node.name, action.value.lower(), node.health_cause)
        start_repair(session, node, action)  # write-ahead: a reconciler killed now leaves it Unhealthy
        session.commit()
        try:
            if action == RepairAction.REBOOT:
                self._stop_processes(node)
                node.handle = None
                node.attestation_state = node.enrolled_ak_name = None  # the AK is enrolled again
                self._boot(session, pool, node)
            else:
                self._teardown(node)
                self._provision(session, pool, node)
        except NodeProvisioningError as exc:
            log.warning("node %s: auto-repair %s failed: %s", node.name, action.value.lower(), exc)
            node.state = NodePhase.UNHEALTHY
            node.health_cause = f"{action.value.lower()} failed: {exc.error.message}"[:1024]
            node.message = f"unhealthy: {node.health_cause}"[:4000]
            finish_repair(session, node, f"failed: {exc.error.message}")
            session.commit()
            return
        node.failed_checks = 0
        node.health_cause = None
        node.unhealthy_since = None
        finish_repair(session, node, f"done: {node.message}")
        alert_lifecycle.resolve_open_alerts(session, node.name, (AlertType.NODE_UNHEALTHY,))
        session.commit()

    # -- the loop --------------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """One pass: start attesting the due nodes (in threads, up to `max_parallel_attestations`), then take
        one step on the oldest InProgress operation (or finish it when its nodes converged); without an
        operation, wait for the attestations in flight until they end or an operation comes in. Returns
        True if something was done, False if there was nothing to do (or another reconciler owns the state
        directory)."""
        if not self._acquire():
            return False
        self.host_monitor.check_hosts()  # never waits: each host is checked in its own thread
        self._check_liveness_if_due()
        self._supervise_control_planes_if_due()
        self._renew_unattested_credentials_if_due()
        self._bring_node_settings_if_due()
        self._end_soaks_of_ended_operations()
        operation_ids = self._operations_in_progress()
        if not operation_ids:
            if self._repair_due_node():
                return True
            started = self._start_due_attestations()
            return self._wait_for_attestations() or started
        started = self._start_due_attestations()
        advanced = any(self._advance(operation_id) for operation_id in operation_ids)  # the first step only
        return started or advanced

    def _operations_in_progress(self) -> list[str]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(Operation.id)
                    .where(Operation.status == "InProgress")
                    .order_by(Operation.start_time)
                )
            )

    def run_forever(self, stop_event: threading.Event) -> None:
        """Run passes until `stop_event` is set; errors are logged and retried on the next pass. Alerts are
        delivered meanwhile by a second thread (stopped with the loop)."""
        delivery = threading.Thread(
            target=self.alert_delivery.run_forever, args=(stop_event,), name="tl-alert-delivery", daemon=True
        )
        delivery.start()
        liveness = threading.Thread(
            target=self._check_liveness_forever, args=(stop_event,), name="tl-liveness", daemon=True
        )
        liveness.start()
        self._stop_event = stop_event
        try:
            while not stop_event.is_set():
                self.retention.prune_if_due()  # alerts and attestation evidence by age and count
                try:
                    worked = self.run_once()
                except Exception:
                    log.exception("reconciler pass failed; retrying")
                    worked = False
                if not worked:
                    stop_event.wait(self.poll_seconds)
        finally:
            self.release()

    def _advance(self, operation_id: str) -> bool:
        with self.sessions() as session:
            operation = session.get(Operation, operation_id)
            if operation is None or operation.status != "InProgress":
                return False
            resource = operation_resource(session, operation)
            if resource is None:
                finish_operation(
                    session, operation, "Succeeded" if operation.kind == "Delete" else "Canceled"
                )
                session.commit()
                return True
            pools = [resource] if isinstance(resource, AgentPool) else list(resource.agent_pools)
            deleting = operation.kind == "Delete"
            if isinstance(resource, ManagedCluster) and not deleting and self.cluster_planes is not None:
                try:
                    if self.cluster_planes.ensure(session, resource):  # before the nodes, which join it
                        return True
                except ControlPlaneFailedError as failure:
                    session.refresh(operation)
                    if operation.status == "InProgress":
                        finish_operation(session, operation, "Failed", failure.error)
                    session.commit()
                    return True
            for pool in pools:
                if not deleting and self._release_held_node(session, pool, operation):
                    return True
                surge = self.max_surge if pool.max_surge is None else surge_nodes(pool.max_surge, pool.count)
                observed = [_observed(n, operation.id) for n in pool.nodes]
                step = plan_next_step(_desired(pool, deleting), observed, surge)
                if step.action == Action.DONE:
                    if not deleting and self._update_node_settings(session, pool, operation):
                        return True
                    continue

                def progress(note: str, prefix: str = f"agent pool {pool.name}: ") -> None:
                    if operation.note != (prefix + note)[:OPERATION_NOTE_LENGTH]:  # written when it changes
                        operation.note = prefix + note
                        session.commit()

                taken = session.get(Node, step.node_id) if step.node_id is not None else None
                if taken is None or not self._soaking(session, taken):  # else the soak's note, written once
                    progress(step.note)

                drain = progress if not (deleting and isinstance(resource, ManagedCluster)) else None
                try:
                    return self._take(session, pool, step, drain, operation)
                except NodeProvisioningError as failure:
                    session.refresh(operation)
                    if operation.status == "InProgress":
                        finish_operation(session, operation, failure.status, failure.error)
                    session.commit()
                return True
            if (
                isinstance(resource, ManagedCluster)
                and deleting
                and self.cluster_planes is not None
                and self.cluster_planes.remove(session, resource)  # after the nodes
            ):
                return True
            session.refresh(operation)
            quarantined = [
                node for pool in pools for node in pool.nodes if node.quarantined_by_operation == operation.id
            ]
            if operation.status == "InProgress" and quarantined:
                operation.note = f"nodes not upgraded: {', '.join(node.name for node in quarantined)}"
                why = quarantined[0].message.removeprefix("quarantined: ")
                error = ArmError(500, "UpgradeFailed", why, quarantined[0].name)
                finish_operation(session, operation, "Failed", error)
            elif operation.status == "InProgress":
                operation.note = "all nodes ready" if not deleting else "all nodes deleted"
                finish_operation(session, operation, "Succeeded")
            session.commit()
            return True

    # -- steps -----------------------------------------------------------------------------------------

    def _take(
        self,
        session: Session,
        pool: AgentPool,
        step: Step,
        drain: Callable[[str], None] | None = None,
        operation: Operation | None = None,
    ) -> bool:
        """Take `step` on `pool` for `operation`; a node that a reimage or deletion takes is drained (and, in
        an upgrade, soaked) first when `drain` (the operation's progress note) is given (not for a cluster's
        deletion): a node left in place (quarantined) is not taken. False when the step waits (its node
        soaks: nothing was done, the next pass checks the soak's deadline again), else True."""
        if step.action == Action.CREATE:
            assert step.ordinal is not None
            node = Node(
                pool_id=pool.id,
                ordinal=step.ordinal,
                name=f"aks-{pool.name}-{pool.id:08d}-vmss{step.ordinal:06d}",
                node_image_version=pool.node_image_version,
                state=NodePhase.PROVISIONING,
                labels={},
            )
            session.add(node)
            self._provision(session, pool, node)
            return True
        node = session.get_one(Node, step.node_id)
        if step.action == Action.RESUME:
            if self._adopt_booting_vm(session, pool, node):
                return True
            self._teardown(node)
            self._provision(session, pool, node)
        elif step.action == Action.REIMAGE:
            if drain is not None and (stays := self._drain(session, pool, node, step, drain, operation)):
                return stays == NodeStays.QUARANTINED
            node.state = NodePhase.REIMAGING
            session.commit()
            self._teardown(node)  # the vTPM goes with the run dir: the new VM gets new EKs
            self._provision(session, pool, node)
        elif step.action == Action.DELETE:
            if drain is not None and (stays := self._drain(session, pool, node, step, drain, operation)):
                return stays == NodeStays.QUARANTINED
            node.state = NodePhase.DELETING
            session.commit()
            self._teardown(node)
            resolve_alerts(session, node.name)  # nothing is left to remediate on a deleted node
            session.delete(node)
            session.commit()
        return True

    def _drain(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        step: Step,
        progress: Callable[[str], None],
        operation: Operation | None,
    ) -> NodeStays | None:
        """Cordon and drain the Node of joined Ready `node` before `step` takes it (a node that is not Ready
        or whose VM is gone has no kubelet to end its pods: its Node is deleted at once, and with it its
        pods), then soak it when the step is an upgrade (`_soak`). A node that soaks (an earlier pass of any
        InProgress operation drained it) is neither drained again nor taken before its soak's deadline,
        whatever the step. None when the node may go, else why it stays (NodeStays).

        On a failed drain of an upgrade (a reimage in place: no surge node) the pool's
        undrainableNodeBehavior decides (see the class); on a failed drain of a scale down or a pool's
        deletion the node stays Ready, cordoned, its VM running, and the operation fails with
        PodDrainFailure."""
        if self._soaking(session, node):  # drained by an earlier pass of this or another operation
            return self._soak(session, pool, node, progress, operation)
        if (
            self.cluster_planes is None
            or node.kubelet_port is None
            or node.state != NodePhase.READY
            or not self._vm_alive(node)
        ):
            return None
        adapter = self.cluster_planes.node_adapter(node)
        if adapter is None:
            return None
        minutes = pool.drain_timeout_in_minutes or DEFAULT_DRAIN_TIMEOUT_MINUTES
        timeout = self.drain_timeout if self.drain_timeout is not None else minutes * 60.0
        ignore_budgets = operation is not None and operation.ignore_pod_disruption_budget
        node.message = "draining"
        session.commit()  # no store transaction open while the API server answers
        drainer = NodeDrainer(adapter.client, timeout, progress, ignore_pod_disruption_budget=ignore_budgets)
        try:
            drainer.drain(node.name)
        except NodeDrainFailedError as exc:
            if not step.upgrade:
                node.message = f"cordoned: {exc}"[:4000]
                session.commit()
                message = f"{exc} {after_failed_drain(AfterFailedDrain.CORDONED)}"
                raise NodeProvisioningError(ArmError(500, "PodDrainFailure", message, node.name)) from exc
            in_place = step.action == Action.REIMAGE
            self._undrainable(session, pool, node, drainer, exc, operation, in_place)
            return NodeStays.QUARANTINED
        node.quarantined_by_operation = None
        session.commit()
        return self._soak(session, pool, node, progress, operation) if step.upgrade else None

    def _undrainable(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        drainer: NodeDrainer,
        failure: NodeDrainFailedError,
        operation: Operation | None,
        in_place: bool,
    ) -> None:
        """An upgrade could not drain `node`: quarantine it and go on (Cordon; Canceled at once `in_place`,
        no surge node taking its place), or make it schedulable again and fail (Schedule)."""
        try:
            if pool.undrainable_node_behavior == UndrainableNodeBehavior.CORDON:
                drainer.quarantine(node.name)
            elif failure.cordoned_by_drain or node.quarantined_by_operation is not None:
                drainer.uncordon(node.name)
        except (httpx2.HTTPError, KubernetesAdapterError) as exc:  # the drain's failure says more
            log.warning("node %s after its failed drain: %s", node.name, exc)
        if pool.undrainable_node_behavior == UndrainableNodeBehavior.CORDON:
            node.message = f"quarantined: {failure} {after_failed_drain(AfterFailedDrain.QUARANTINED)}"[:4000]
            node.quarantined_by_operation = operation.id if operation is not None else None
            session.commit()
            if in_place:
                error = ArmError(500, "UpgradeFailed", node.message, node.name)
                raise NodeProvisioningError(error, OperationStatus.CANCELED) from failure
            return
        node.quarantined_by_operation = None
        outcome = after_failed_drain(AfterFailedDrain.SCHEDULABLE, failure.cordoned_by_drain)
        node.message = f"not upgraded: {failure} {outcome}"[:4000]
        session.commit()
        message = f"{failure} {outcome}"
        raise NodeProvisioningError(ArmError(500, "UpgradeFailed", message, node.name)) from failure

    @staticmethod
    def _soaking(session: Session, node: Node) -> bool:
        """Whether `node` soaks: an operation still InProgress drained it and recorded its soak's deadline
        (the soak is the node's: every operation's step waits for it)."""
        if node.soak_until is None or node.soaked_by_operation is None:
            return False
        soaker = session.get(Operation, node.soaked_by_operation)
        return soaker is not None and soaker.status == "InProgress"

    def _soak(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        progress: Callable[[str], None],
        operation: Operation | None,
    ) -> NodeStays | None:
        """Soak `node`, which the upgrade drained, for the pool's nodeSoakDurationInMinutes: its deadline is
        recorded on the node's row at the first call and checked at each (the operation's note counting the
        minutes down), so nothing waits meanwhile and a restarted reconciler resumes it. None once it has
        passed (or without a soak), else NodeStays.SOAKING."""
        if not self._soaking(session, node):
            minutes = pool.node_soak_duration_in_minutes or 0
            seconds = self.node_soak_duration if self.node_soak_duration is not None else minutes * 60.0
            if seconds <= 0:
                return None
            node.soak_until = utc_now() + timedelta(seconds=seconds)
            node.soaked_by_operation = operation.id if operation is not None else None
            node.message = "soaking"
            session.commit()
        assert node.soak_until is not None
        left = (node.soak_until - utc_now()).total_seconds()
        if left <= 0:
            return None
        progress(soak_note(node.name, left))
        return NodeStays.SOAKING

    def _stop_processes(self, node: Node) -> None:
        """Stop the node's VM and vTPM (ours, adopted or left by a killed reconciler) and remove what its
        driver made for it outside the run directory (a libvirt domain's definition): a new start makes it
        anew. On a host that is not Ready only the vTPM processes of this machine are stopped."""
        where = VmLocation.of(node)
        vm = self._vms.pop(node.id, None) or self._adopt(where)
        if where.host_ready:  # a Lost host is not waited for: its VMs are gone for us
            if vm is not None:
                vm.destroy()
            if where.run_dir:
                try:
                    self._driver(where).remove_leftovers(Path(where.run_dir))
                except NodeVMError as exc:
                    log.warning("node %s: %s", node.name, exc)
        if node.run_dir:
            kill_node_processes(Path(node.run_dir))

    def _teardown(self, node: Node) -> None:
        """Delete the node's Node object in its cluster (if it joined one), stop its VM and vTPM and delete
        its run directory (varstore, ESP copy, TPM state)."""
        if self.joiner is not None and node.kubelet_port is not None:
            try:
                self.joiner.forget(node)
            except NodeJoinFailedError as exc:  # its cluster's apiserver is down: the VM goes all the same
                log.warning("%s", exc)
        self._renewed_at.pop(node.id, None)
        self._settings_retry_after.pop(node.id, None)
        self._stop_processes(node)
        if node.run_dir:
            shutil.rmtree(node.run_dir, ignore_errors=True)

    def _provision(self, session: Session, pool: AgentPool, node: Node) -> None:
        """Boot a fresh VM for `node` with the pool's settings where control.placement puts it (recorded
        before the VM starts), attest it, label it: Ready or Failed."""
        run_dir = self.runs_dir / f"n{pool.id}-{secrets.token_hex(3)}"
        try:
            placement = place_node(session, node)
        except NoHostRoomError as exc:
            self._fail(session, node, exc.error.code, exc.error.message)
        node.driver, node.host = placement.driver, placement.host
        node.state = NodePhase.PROVISIONING
        node.enable_secure_boot = pool.enable_secure_boot
        node.enable_vtpm = pool.enable_vtpm
        node.node_image_version = pool.node_image_version
        node.run_dir = str(run_dir)
        node.handle = None
        node.attestation_status = None
        node.attestation_state = node.enrolled_ak_name = None  # a new vTPM: its AK is enrolled anew
        node.attestation_policy = None  # its new VM's, recorded by its provisioning attestation
        node.reimage_reason = None  # reimaged: the current image's agent
        node.soak_until = node.soaked_by_operation = None
        node.labels = {}
        node.message = "provisioning"
        node.updated_at = utc_now()
        session.commit()  # write-ahead: the run dir is known before any process is started
        self._boot(session, pool, node)

    def _boot(self, session: Session, pool: AgentPool, node: Node) -> None:
        """Start `node`'s VM in its run directory with the node's settings (its vTPM made there, or the one
        already there kept), wait for its agent, attest (vTPM) and label it: Ready, or Failed with the
        operation's ARM error raised."""
        run_dir = Path(str(node.run_dir))
        if not boots_here(pool.os_type):  # a Windows pool an earlier version stored: no image of it boots
            message = LINUX_ONLY_MESSAGE.format(pool=pool.name, os_type=pool.os_type)
            self._fail(session, node, OS_TYPE_NOT_SUPPORTED, f"node {node.name} was not started: {message}")
        try:
            image = self._image(node.node_image_version)
            network = None
            if self.joiner is not None and joins_cluster(node, image):
                record_kubelet_port(session, node)
                session.commit()  # write-ahead: an adopted VM keeps its kubelet port
                network = node_network(node)
            driver = self._driver(VmLocation.of(node))
            vtpm = None
            if node.enable_vtpm:  # a host that makes its own gets only its place: nothing manufactured here
                tpm_dir = run_dir / VTPM_DIR
                vtpm = (
                    Vtpm(tpm_dir) if driver.host_tpm else Vtpm.create(tpm_dir, ek_ca=self._platform_ek_ca())
                )
            vm = driver.create(
                image, run_dir, secure_boot=node.enable_secure_boot, vtpm=vtpm, network=network
            )
            self._vms[node.id] = vm
            vm.start()
        except TrustedLaunchError as exc:
            self._fail(
                session, node, "NodeProvisioningFailed", f"node {node.name} could not be started: {exc}"
            )
        node.handle = vm.handle  # not from /proc: right after exec QEMU's command line may still be empty
        node.message = "booting"
        session.commit()
        try:
            vm.wait_ready(self.boot_timeout)
        except BootFailedError as exc:
            diagnosis = diagnose_boot_failure(vm, exc)  # names the refused component (shim, grub, kernel)
            if diagnosis.component is not None:  # an integrity failure, not a crash: alerted as such
                finding = Finding(Check.BOOT_INTEGRITY, diagnosis.component, diagnosis.message[:2000])
                alert_lifecycle.raise_node_alert(
                    session, node, AttestationResult(False, (finding,)), AlertType.BOOT_INTEGRITY, utc_now()
                )
            self._fail(session, node, "NodeBootFailed", f"node {node.name} did not boot: {diagnosis.message}")
        ready = f"ready after {vm.ready_after:.0f} s" if vm.ready_after is not None else "ready"
        self._finish_provisioning(session, pool, node, vm, image, ready)

    def _finish_provisioning(
        self, session: Session, pool: AgentPool, node: Node, vm: NodeMachine, image: NodeImage, message: str
    ) -> None:
        """Attest (vTPM) and label the booted node through its VM's agent, join it to its cluster (only once
        it passed attestation), then record it Ready with `message`."""
        agent = vm.agent()
        if pool.enable_vtpm:
            self._attest_new_node(session, pool, node, agent, image)
        else:
            node.attestation_status = AttestationStatus.NOT_APPLICABLE
            node.labels = node_labels(
                pool.name, pool.enable_secure_boot, False, AttestationStatus.NOT_APPLICABLE
            )
        if self.joiner is not None and joins_cluster(node, image):
            message = self._join(session, pool, node, agent, message)
        node.state = NodePhase.READY
        node.message = message
        node.updated_at = utc_now()
        session.commit()
        self.monitor.sync_kubernetes(node)  # no store transaction open during the API server's calls
        session.commit()

    def _join(self, session: Session, pool: AgentPool, node: Node, agent: NodeAgent, message: str) -> str:
        """Hand the attested (or non-vTPM) node its kubelet credential over its agent channel and initialize
        its Node (address, labels, taints removed); `message` with the join's duration. Fails the node."""
        assert self.joiner is not None
        channel = agent.channel
        node.message = "joining its cluster"
        session.commit()  # no store transaction open while the agent and the apiserver answer
        labels = join_labels(
            pool.name,
            pool.mode,
            node.node_image_version,
            pool.os_sku,
            pool.vm_size,
            node.labels,
            pool.node_labels,
        )
        started = time.monotonic()
        try:
            previous_boot_id = self.joiner.boot_id(node)  # a Node left by this node's VM before a reboot
            account = self.joiner.hand_credential(node, channel)
            log.info("node %s: kubelet started: %s", node.name, account.replace("\n", "; "))
            kubelet_started = time.monotonic() - started
            self._renewed_at[node.id] = time.monotonic()
            if account == ALREADY_STARTED:  # adopted mid-join: its kubelet may have registered already
                previous_boot_id = None
            seconds = self.joiner.initialize(node, labels, channel, previous_boot_id)
            # a new Node has the pool's labels (just set) and taints (its kubelet registered with them): this
            # records them; a Node a rebooted VM kept gets those the pool changed meanwhile
            self.joiner.bring_node_settings(node)
        except NodeJoinFailedError as exc:
            with contextlib.suppress(NodeJoinFailedError):
                self.joiner.forget(node)  # a Node its kubelet registered goes with the failed VM
            self._fail(session, node, "NodeJoinFailed", str(exc), keep_attestation=True)
        return (
            f"{message}; joined its cluster: kubelet started in {kubelet_started:.1f} s, "
            f"Node Ready and labelled {seconds:.1f} s later"
        )

    def _update_node_settings(self, session: Session, pool: AgentPool, operation: Operation) -> bool:
        """Give the Node of the first joined Ready node of converged `pool` whose pool labels and taints
        differ from the pool's (nodeLabels and nodeTaints changed by an update) the pool's, as AKS does
        without a reimage (NodeJoiner.bring_node_settings); True when it took that step (its operation fails
        when the Node could not be changed), False when every node has them."""
        if self.joiner is None:
            return False
        node = next(
            (
                node
                for node in pool.nodes
                if node.state == NodePhase.READY and self._joined(node) and self._settings_differ(node)
            ),
            None,
        )
        if node is None:
            return False
        operation.note = f"agent pool {pool.name}: setting node labels and taints on {node.name}"
        session.commit()  # no store transaction open while the apiserver answers
        try:
            self.joiner.bring_node_settings(node)
        except NodeJoinFailedError as exc:
            session.refresh(operation)
            if operation.status == "InProgress":
                error = ArmError(500, "NodeSettingsUpdateFailed", str(exc), node.name)
                finish_operation(session, operation, "Failed", error)
        session.commit()
        return True

    def _release_held_node(self, session: Session, pool: AgentPool, operation: Operation) -> bool:
        """End the hold of an earlier upgrade on the first node of `pool` it left cordoned that is current
        again (the pool's settings were reverted: nothing will drain it): one it quarantined (Cordon), or one
        it drained and was soaking when it ended (Failed, Canceled). Its Node is uncordoned and unlabelled
        (unless the attestation verdict cordoned it: kubernetes.upgrade_release_patch), then its row
        released. True when it took that step; the operation fails, the row kept, when the Node cannot be
        changed (its cluster's control plane unreachable included)."""
        desired = _desired(pool, False)
        node = next(
            (
                node
                for node in pool.nodes
                if self._held(session, node, operation) and is_current(_observed(node), desired)
            ),
            None,
        )
        if node is None:
            return False
        operation.note = f"agent pool {pool.name}: releasing node {node.name} from an upgrade's hold"
        joined = self.cluster_planes is not None and node.kubelet_port is not None
        adapter = (
            self.cluster_planes.node_adapter(node) if self.cluster_planes is not None and joined else None
        )
        session.commit()  # no store transaction open while the apiserver answers
        try:
            if joined and adapter is None:
                raise KubernetesAdapterError(
                    f"node {node.name}: its cluster's control plane cannot be reached"
                )
            if adapter is not None:
                adapter.release_upgrade_hold(node.name)
        except KubernetesAdapterError as exc:
            session.refresh(operation)
            if operation.status == "InProgress":
                message = f"node {node.name} stays held by an earlier upgrade: {exc}"
                finish_operation(
                    session, operation, "Failed", ArmError(500, "NodeReleaseFailed", message, node.name)
                )
            session.commit()
            return True
        node.quarantined_by_operation = node.soaked_by_operation = node.soak_until = None
        node.message = "released from an earlier upgrade's hold: its pool's settings are current again"
        log.info("node %s: %s", node.name, node.message)
        session.commit()
        return True

    def _held(self, session: Session, node: Node, operation: Operation) -> bool:
        """Whether an upgrade other than `operation` left `node` cordoned: it quarantined it, or it drained
        it and ended during its soak."""
        if node.quarantined_by_operation not in (None, operation.id):
            return True
        return node.soaked_by_operation not in (None, operation.id) and not self._soaking(session, node)

    def _end_soaks_of_ended_operations(self) -> None:
        """Clear the soak deadline of the nodes whose soaking operation ended (Failed, Canceled) meanwhile: no
        step waits for it any more. soaked_by_operation stays: the node's Node stays cordoned by that drain
        until an operation takes the node or, once it is current again, releases it (_release_held_node)."""
        with self.sessions.begin() as session:
            soaking = (
                select(Node)
                .outerjoin(Operation, Operation.id == Node.soaked_by_operation)
                .where(
                    Node.soak_until.is_not(None),
                    or_(Operation.id.is_(None), Operation.status != "InProgress"),
                )
            )
            for node in session.scalars(soaking):
                node.soak_until = None
                node.message = "cordoned: the upgrade that drained it ended during its soak"
                log.info("node %s: %s", node.name, node.message)

    @staticmethod
    def _settings_differ(node: Node) -> bool:
        """Whether the pool labels and taints last set on `node`'s Node are not its pool's."""
        pool = node.pool
        wanted = (dict(pool.node_labels or {}), list(pool.node_taints or []))
        return (dict(node.applied_node_labels or {}), list(node.applied_node_taints or [])) != wanted

    def _bring_node_settings_if_due(self) -> None:
        """Give the Node of each joined Ready node whose pool no operation works on the pool's nodeLabels and
        nodeTaints where the last attempt failed (its plane was unreachable at the join's operation):
        tried again every `node_settings_retry` seconds per node until it holds (not counted as work: the
        loop sleeps between passes). The nodes are scanned at most that often (sooner when a node's retry
        is due), and the apiserver is called with no store transaction open."""
        now = time.monotonic()
        if self.joiner is None or now < self._next_settings_scan_at:
            return
        self._next_settings_scan_at = now + self.node_settings_retry
        with self.sessions() as session:
            busy_pools = self._busy_pools(session)
            joined = select(Node).where(Node.state == NodePhase.READY, Node.kubelet_port.is_not(None))
            due: list[int] = []
            for node in session.scalars(joined).all():
                if node.pool_id in busy_pools or not self._settings_differ(node):
                    continue
                retry_at = self._settings_retry_after.get(node.id, 0.0)
                if retry_at > now:
                    self._next_settings_scan_at = min(self._next_settings_scan_at, retry_at)
                else:
                    due.append(node.id)
        for node_id in due:
            self._bring_node_settings(node_id)

    def _bring_node_settings(self, node_id: int) -> None:
        """One try of _bring_node_settings_if_due on the node `node_id`, if it is still joined and Ready."""
        assert self.joiner is not None
        with self.sessions() as session:
            node = session.get(Node, node_id)
            if node is None or node.state != NodePhase.READY or node.kubelet_port is None:
                return
            _ = node.pool.cluster.control_plane  # loaded now: the apiserver call reads no more of the store
            session.commit()  # no store transaction open while the apiserver answers
            try:
                self.joiner.bring_node_settings(node)
            except NodeJoinFailedError as exc:
                log.warning("%s; tried again in %g s", exc, self.node_settings_retry)
                self._settings_retry_after[node_id] = time.monotonic() + self.node_settings_retry
                why = str(exc).removeprefix(f"node {node.name}: ")
                node.message = f"{why}; tried again every {self.node_settings_retry:g} s"[:4000]
                session.commit()
                return
            self._settings_retry_after.pop(node_id, None)
            log.info("node %s: pool labels and taints set", node.name)
            session.commit()

    def _adopt_booting_vm(self, session: Session, pool: AgentPool, node: Node) -> bool:
        """Finish provisioning a node left Provisioning whose VM still runs (the `tl` that started it was
        interrupted: Ctrl-C, hang-up, kill): wait for its agent, then attest it over a new connection, instead
        of booting it again. False (nothing done) if its VM is gone, is not of the pool's settings or does not
        answer within the boot timeout: the caller then provisions the node from scratch."""
        settings = (node.enable_secure_boot, node.enable_vtpm, node.node_image_version)
        if (
            not boots_here(pool.os_type)  # no VM boots under a Windows pool's name: _boot refuses it
            or settings != (pool.enable_secure_boot, pool.enable_vtpm, pool.node_image_version)
            or (machine := self._adopt(VmLocation.of(node))) is None
        ):
            return False
        log.info("node %s: adopting its booting VM (%s %s)", node.name, node.driver, node.handle)
        try:
            machine.wait_ready(self.boot_timeout)
            image = self._image(node.node_image_version)
        except BootFailedError as exc:
            log.warning("node %s: its adopted VM did not boot (%s): booting it again", node.name, exc)
            machine.disconnect()
            return False
        except TrustedLaunchError as exc:  # fails this node and its operation, not every pass
            machine.disconnect()
            message = f"node {node.name} could not be adopted: {exc}"
            self._fail(session, node, "NodeProvisioningFailed", message)
        try:
            self._finish_provisioning(session, pool, node, machine, image, "ready (VM adopted while booting)")
        finally:
            machine.disconnect()
        log.info("node %s: its adopted booting VM is ready", node.name)
        return True

    def _policy(self, session: Session, node: Node, image: NodeImage) -> Policy:
        """The policy `node` is attested against: its image booted on the firmware of its Secure Boot
        setting (the VM's varstore is a copy of that template made at start), so a node that booted
        otherwise fails attestation. Recorded in the store for the verifier API's `poolId`."""
        policy = policy_for_image(
            image.esp_dir, firmware_varstore(node.enable_secure_boot), node_image=node.node_image_version
        )
        record_image_policy(session, node.node_image_version, node.enable_secure_boot, policy)
        return policy

    def _provisioned_policy(self, session: Session, node: Node) -> Policy:
        """The policy Ready `node` is re-attested against: the one its VM was provisioned against (predicted
        from the image build it booted, even if its image version was built anew since), else (a node an
        older release provisioned) its image's current one."""
        if node.attestation_policy is not None:
            return Policy.from_json(node.attestation_policy)
        return self._policy(session, node, self._image(node.node_image_version))

    def _attest_new_node(
        self, session: Session, pool: AgentPool, node: Node, agent: NodeAgent, image: NodeImage
    ) -> None:
        """First attestation (enrollment) of a freshly booted node; a failure fails the node."""
        try:
            policy = self._policy(session, node, image)
            ek_ca = self._ek_cas(node)
        except TrustedLaunchError as exc:
            self._fail(session, node, "NodeAttestationFailed", f"node {node.name} was not attested: {exc}")
        node.attestation_policy = policy.to_json()  # the VM booted this build: its re-attestations use it
        record = self.monitor.attest(
            session,
            pool,
            node,
            agent,
            policy=policy,
            ek_ca=ek_ca,
            trigger=Trigger.PROVISIONING,
        )
        if record.status != AttestationStatus.ATTESTED:
            message = describe_failure(record)
            self._fail(session, node, "NodeAttestationFailed", message, keep_attestation=True)

    def _attestation_threads(self) -> list[threading.Thread]:
        with self._attesting_lock:
            return list(self._attesting.values())

    def _start_due_attestations(self) -> bool:
        """Start attesting the most overdue Ready vTPM nodes (on-demand requests first) whose pool no
        operation is working on, each in a thread of its own, while fewer than `max_parallel_attestations`
        run; True if one was started."""
        started = False
        while len(self._attestation_threads()) < self.max_parallel_attestations:
            node_id = self._next_due_node()
            if node_id is None:
                break
            thread = threading.Thread(
                target=self._attest_in_thread, args=(node_id,), name=f"tl-attest-{node_id}", daemon=True
            )
            with self._attesting_lock:
                self._attesting[node_id] = thread
            thread.start()
            started = True
        return started

    def _wait_for_attestations(self) -> bool:
        """Wait for the attestations in flight until they ended, an operation comes in, another due node
        can take a free slot (a hanging node holds up no other node) or the loop stops; True if one ended
        meanwhile."""
        ended = False
        while (threads := self._attestation_threads()) and not self._stop_event.is_set():
            threads[0].join(1.0)
            running = self._attestation_threads()
            ended = ended or len(running) < len(threads)
            if self._operations_in_progress() or (
                len(running) < self.max_parallel_attestations and self._next_due_node() is not None
            ):
                break
        return ended

    def _attest_in_thread(self, node_id: int) -> None:
        try:
            with self._agent_lock(node_id), self.sessions() as session:
                node = session.get(Node, node_id)
                if node is not None and node.state == NodePhase.READY:
                    self._reattest(session, node)
        except Exception:  # a store or Kubernetes failure: the node stays due, retried after a pause
            log.exception("node %s: attestation failed; retrying in %g s", node_id, ATTESTATION_RETRY_SECONDS)
            with self._attesting_lock:
                self._retry_after[node_id] = time.monotonic() + ATTESTATION_RETRY_SECONDS
        finally:
            with self._attesting_lock:
                self._attesting.pop(node_id, None)

    def _next_due_node(self) -> int | None:
        """The id of the most overdue Ready vTPM node (on-demand requests first) not being attested whose
        pool no operation is working on, if any."""
        now = utc_now()
        with self.sessions() as session:
            busy_pools = self._busy_pools(session)
            ready = session.scalars(
                select(Node).where(Node.state == NodePhase.READY, Node.enable_vtpm.is_(True))
            )
            with self._attesting_lock:
                attesting = set(self._attesting)
                pausing = {
                    node_id for node_id, until in self._retry_after.items() if until > time.monotonic()
                }
            due = [
                node
                for node in ready
                if node.pool_id not in busy_pools
                and node.id not in attesting
                and node.id not in pausing
                and attestation_due(node, self.attestation_interval, now)
                and self._vm_alive(node)  # else the node is lost, not unreachable: see check_liveness
            ]
            return min(due, key=attestation_order).id if due else None

    @staticmethod
    def _busy_pools(session: Session) -> set[int]:
        """The ids of the pools an InProgress operation works on."""
        busy: set[int] = set()
        for operation in session.scalars(select(Operation).where(Operation.status == "InProgress")):
            resource = operation_resource(session, operation)
            if isinstance(resource, AgentPool):
                busy.add(resource.id)
            elif resource is not None:
                busy.update(pool.id for pool in resource.agent_pools)
        return busy

    def _reattest(self, session: Session, node: Node) -> None:
        """Attest Ready `node` (in an attestation thread) and apply the verdict, unless an operation or
        the loss of its VM changed the node meanwhile (its verdict would be about a VM that is gone)."""
        pool = node.pool
        trigger = due_trigger(node)
        run_dir = node.run_dir
        try:
            policy = self._provisioned_policy(session, node)
            ek_ca = self._ek_cas(node)
        except TrustedLaunchError as exc:  # the verifier's side: not the node's fault, try on the interval
            log.error("node %s: no attestation policy: %s", node.name, exc)
            node.message = f"not attested ({trigger.value}): no attestation policy: {exc}"[:4000]
            node.last_attested_at = utc_now()
            node.attestation_requested_at = None
            session.commit()
            return
        session.commit()  # no store transaction open while the node's agent answers (or does not)
        vm = self._vms.get(node.id)
        if vm is not None:
            agent = vm.agent()
            with self._attesting_over(node.id, agent.channel):
                record = self.monitor.attest(
                    session, pool, node, agent, policy=policy, ek_ca=ek_ca, trigger=trigger
                )
        else:
            record = self._attest_adopted(session, pool, node, policy, ek_ca, trigger)
        current = session.execute(
            select(Node.state, Node.run_dir).where(Node.id == node.id).with_for_update()
        ).one_or_none()
        if current is None or current.run_dir != run_dir or current.state not in LIVE_PHASES:
            log.info("node %s changed while it was attested: its verdict is dropped", node.name)
            session.rollback()
            return
        if current.state == NodePhase.UNHEALTHY:  # the same VM, unhealthy meanwhile: keep the verdict,
            status = str(node.attestation_status)  # but the labels stay off (it is quarantined already)
            node.labels = node_labels(
                pool.name, node.enable_secure_boot, node.enable_vtpm, status, healthy=False
            )
            session.commit()
            return
        reason = None if record.status == AttestationStatus.ATTESTED else describe_failure(record)
        node.message = f"attested ({trigger.value})" if reason is None else f"quarantined: {reason}"[:4000]
        session.commit()
        self.monitor.sync_kubernetes(node, reason)  # no store transaction open during the API server's calls
        session.commit()
        if reason is None and self._joined(node):  # only a passing attestation renews its credentials
            node.message = f"{node.message}; {self._renew_credential(node)}"[:4000]
            self._bring_pool_labels(node)
            session.commit()

    def _bring_pool_labels(self, node: Node) -> None:
        """Bring the pool labels of joined `node`'s Node back to its row where they differ (NodeJoiner.
        bring_pool_labels), noted in its message; a failure is logged, not fatal (tried again next time)."""
        assert self.joiner is not None
        try:
            changes = self.joiner.bring_pool_labels(node)
        except NodeJoinFailedError as exc:
            log.warning("%s", exc)
            return
        if changes:
            log.info("node %s: labels brought back to its row: %s", node.name, "; ".join(changes))
            node.message = f"{node.message}; labels brought back to its row: {'; '.join(changes)}"[:4000]

    def _joined(self, node: Node) -> bool:
        """Whether `node` (Ready) joined its cluster: it was given a kubelet port to join with."""
        return self.joiner is not None and node.kubelet_port is not None

    def _renew_credential(self, node: Node) -> str:
        """Renew the kubelet certificates of joined `node` over its agent (its agent lock held by the
        caller); what happened, for the node's message. A failure is logged, not fatal: the node keeps its
        current certificates until they expire."""
        assert self.joiner is not None
        vm = self._vms.get(node.id)
        adopted = self._adopt(VmLocation.of(node)) if vm is None else None
        try:
            machine = vm if vm is not None else adopted
            if machine is None:
                raise TrustedLaunchError("its VM is gone")
            renewed = self.joiner.renew_credential(node, machine.agent().channel)
        except NodeAgentOutdatedError as exc:
            return self._reimage_outdated_agent(node, exc)
        except TrustedLaunchError as exc:
            log.error("node %s: %s", node.name, exc)
            return f"kubelet credentials not renewed: {exc}"
        finally:
            if adopted is not None:
                adopted.disconnect()
        self._renewed_at[node.id] = time.monotonic()
        log.info("node %s: kubelet credentials renewed: %s", node.name, " ".join(renewed.replaced))
        return "kubelet credentials renewed"

    def _reimage_outdated_agent(self, node: Node, refusal: NodeAgentOutdatedError) -> str:
        """Joined `node`'s agent refused to renew its kubelet credentials (an older node image's initramfs,
        without KUBELETCERTS): have it reimaged onto its pool's current image (operations.start_node_reimage:
        an Update operation's rolling reimage, drained first) while its credentials are still valid (they
        last 3 renewal intervals); what happened, for the node's message."""
        session = Session.object_session(node)
        assert session is not None
        reason = (
            "its agent (an older node image's initramfs) cannot renew its kubelet credentials: reimaged "
            "onto the current image before they expire"
        )
        operation = start_node_reimage(session, node, reason)
        session.commit()
        log.warning("node %s: %s (%s)", node.name, reason, refusal)
        started = f" (operation {operation.id})" if operation is not None else ""
        return f"kubelet credentials not renewed: {refusal}; reimage scheduled{started}"

    def _renew_unattested_credentials_if_due(self) -> None:
        """Renew the kubelet certificates of the joined Ready nodes without vTPM (nothing to attest: they
        are renewed while Ready) every `attestation_interval` (0: never), whose pool no operation works on
        and whose agent is free."""
        if self.joiner is None or self.attestation_interval <= 0:
            return
        with self.sessions() as session:
            busy_pools = self._busy_pools(session)
            due = [
                node.id
                for node in session.scalars(
                    select(Node).where(Node.state == NodePhase.READY, Node.enable_vtpm.is_(False))
                )
                if self._joined(node)
                and node.pool_id not in busy_pools
                and time.monotonic() - self._renewed_at.get(node.id, -self.attestation_interval)
                >= self.attestation_interval
                and self._vm_alive(node)
            ]
        for node_id in due:
            lock = self._agent_lock(node_id)
            if not lock.acquire(blocking=False):
                continue  # its agent is busy: on the next pass
            try:
                with self.sessions() as session:
                    node = session.get(Node, node_id)
                    if node is not None and node.state == NodePhase.READY:
                        self._renew_credential(node)  # logged
                        self._bring_pool_labels(node)
                        session.commit()
            finally:
                lock.release()

    def _attest_adopted(
        self,
        session: Session,
        pool: AgentPool,
        node: Node,
        policy: Policy,
        ek_ca: Sequence[x509.Certificate],
        trigger: Trigger,
    ) -> AttestationRecord:
        """Attest a node whose VM another reconciler process started, over a new agent connection."""
        machine = self._adopt(VmLocation.of(node))
        try:
            if machine is None:
                raise TrustedLaunchError("its VM is gone")
            agent = machine.agent()
        except TrustedLaunchError as exc:
            return self.monitor.record_unreachable(session, pool, node, exc, trigger)
        try:
            with self._attesting_over(node.id, agent.channel):
                return self.monitor.attest(
                    session, pool, node, agent, policy=policy, ek_ca=ek_ca, trigger=trigger
                )
        finally:
            machine.disconnect()

    def _fail(
        self, session: Session, node: Node, code: str, message: str, *, keep_attestation: bool = False
    ) -> NoReturn:
        """Stop the node's VM, record it Failed with `message`, and raise the operation's ARM error."""
        self._stop_processes(node)
        node.state = NodePhase.FAILED
        node.message = message[:4000]
        if not keep_attestation:
            node.attestation_status = None
        node.handle = None
        node.updated_at = utc_now()
        session.commit()
        raise NodeProvisioningError(ArmError(500, code, message, node.name))

    # -- shared artefacts ------------------------------------------------------------------------------

    def _image(self, version: str) -> NodeImage:
        """The built node image of catalogue `version`, built once into the state dir (with its dm-verity
        root filesystem: kubelet, the container runtime, the pre-loaded images and the operator's archives in
        `{state dir}/container-images`), from the boot chain of its build record (a version built from other
        Debian packages than the installed ones: control.node_image_versions). An image built from other
        releases, archives or packages (or without a root filesystem) is built anew; one whose only
        difference is an older agent gets the current agent (its initramfs), keeping its boot chain. Running
        nodes keep the policy of the build they booted.

        The boot chain's packages are fetched (`apt-get download`, where not cached) before the image lock
        is taken and with no store session open: a slow or failing fetch holds up no other image, step or
        attestation. Raises TrustedLaunchError naming `version` when its boot chain cannot be had."""
        out_dir = self.state_dir / "images" / version
        with self.sessions() as session:
            build = version_build(session, version)
        try:
            chain = None if build is None else chain_of_build(build)
        except TrustedLaunchError as exc:
            raise TrustedLaunchError(f"node image {version}: its boot chain cannot be had: {exc}") from exc
        with self._artefacts_lock:
            operator_images = self.state_dir / OPERATOR_IMAGES_DIR
            if not out_dir.is_dir() or not is_release_image(NodeImage.load(out_dir), operator_images, chain):
                log.info("building node image %s in %s", version, out_dir)
                _create_atomically(
                    out_dir,
                    lambda scratch: build_release_image(
                        scratch, operator_images=operator_images, boot_chain=chain
                    ),
                )
            image = NodeImage.load(out_dir)
            if not has_current_agent(image):
                log.warning("node image %s holds an older agent: replacing its initramfs", version)
                _create_atomically(out_dir, lambda scratch: refresh_agent(image, scratch))
                image = NodeImage.load(out_dir)
            return image

    def _ek_cas(self, node: Node) -> list[x509.Certificate]:
        """The EK CA `node`'s attestations accept (node_ek_cas)."""
        return node_ek_cas(node, self._platform_ek_ca().certificate)

    def _platform_ek_ca(self) -> EkCa:
        """The installation's platform EK CA (created on first use)."""
        with self._artefacts_lock:
            if self._ek_ca is None:
                directory = self.state_dir / "ek-ca"
                if not directory.is_dir():
                    _create_atomically(directory, create_ek_ca)
                self._ek_ca = load_ek_ca(directory)
            return self._ek_ca


def host_ek_ca(host: NodeHost) -> x509.Certificate:
    """The EK CA certificate registered for `host`'s libvirt-made vTPMs; TrustedLaunchError naming the host
    when it is not one PEM certificate."""
    pem = host.ek_ca_certificate or ""
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        message = f"node host {host.name}: its EK CA certificate is not a PEM certificate: {exc}"
        raise TrustedLaunchError(message) from None


def node_ek_cas(node: Node, platform_ek_ca: x509.Certificate) -> list[x509.Certificate]:
    """The one EK CA `node`'s enrollment and re-attestations accept: that of the host that created its vTPM,
    i.e. the host's registered EK CA (NodeHost.ek_ca_certificate) when the host's libvirt made it, else
    `platform_ek_ca` (the swtpm this control plane started for it). TrustedLaunchError naming the host
    when its registered certificate is unreadable."""
    host = node.host
    if node.driver != QEMU and host is not None and host.ek_ca_certificate is not None:
        return [host_ek_ca(host)]
    return [platform_ek_ca]


def _vm_end(where: VmLocation) -> str:
    """How the node's VM ended: for the direct driver, as its supervisor and QEMU's log recorded it (waiting
    a moment for a supervisor still writing its record)."""
    if not where.run_dir:
        return "the node has no run directory"
    if where.driver != QEMU:
        # (no handle: an earlier check found the domain gone and cleared it)
        domain = f"domain {where.handle}" if where.handle else "domain"
        return f"its {where.driver} {domain} on host {where.host} is gone or stopped"
    run_dir = Path(where.run_dir)
    deadline = time.monotonic() + SUPERVISOR_RECORD_SECONDS
    while (ended := vm_end(run_dir)).status is None and time.monotonic() < deadline:
        if SUPERVISOR_NAME not in node_processes(run_dir).values():
            break
        time.sleep(0.05)
    return ended.describe()


def _create_atomically(directory: Path, create: Callable[[Path], object]) -> None:
    """Run `create` on a scratch directory and rename it to `directory` (replacing it if it exists): a
    reconciler killed halfway leaves no half-made image or CA behind under the final name."""
    scratch = directory.with_name(directory.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    create(scratch)
    if directory.exists():
        retired = directory.with_name(directory.name + ".retired")
        shutil.rmtree(retired, ignore_errors=True)
        directory.rename(retired)
        scratch.rename(directory)
        shutil.rmtree(retired)
    else:
        scratch.rename(directory)


class ReconcilerThread:
    """A reconciler running in a daemon thread (the API server's companion); `stop` waits for the current
    step to end (a VM boot can take minutes under TCG)."""

    def __init__(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        self._stop_event = threading.Event()
        self._thread = threading.Thread(
            target=reconciler.run_forever, args=(self._stop_event,), name="tl-reconciler", daemon=True
        )

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to stop and wait up to `timeout` seconds (None: until it stopped); a loop that never
        started (its server failed to start first) has nothing to wait for."""
        self._stop_event.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)
