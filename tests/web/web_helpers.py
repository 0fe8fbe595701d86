"""Real dashboard data: a real OVMF/RHEL event log extended into a real swtpm, quoted, and verified by the
real verifier against the log's own policy (passes) and against policies that fail (another grub digest,
Secure Boot off); the results are stored as the reconciler stores them."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from trustedlaunch.attest.alerts import alerts_from_result
from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import Evidence, collect_evidence, extend_event_log
from trustedlaunch.attest.policy import BootStep, Policy
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.control.alert_lifecycle import remediation_steps
from trustedlaunch.control.labels import join_labels, node_labels
from trustedlaunch.eventlog.model import BootSummary, EventLog
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.store.models import (
    AgentPool,
    AlertRecord,
    AttestationRecord,
    ManagedCluster,
    Node,
    NodeImage,
)
from trustedlaunch.store.vocabulary import AlertType
from trustedlaunch.tpm.swtpm import Swtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
QUOTED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14)
NONCE = bytes.fromhex("0ddba11cafe5ca1e")
OTHER_GRUB_DIGEST = "ab" * 32
VOID_ELEMENTS = frozenset(
    {"br", "hr", "img", "input", "link", "meta", "wbr", "source", "col", "area", "base"}
)
SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"


@dataclasses.dataclass(frozen=True)
class Verdicts:
    """One real piece of evidence and the real verdicts on it."""

    evidence: Evidence
    log: EventLog
    summary: BootSummary
    passed: AttestationResult  # the log's own policy
    grub_failed: AttestationResult  # a policy that expects another grub digest
    secure_boot_failed: AttestationResult  # a policy that wants Secure Boot off


def grub_policy(policy: Policy) -> Policy:
    """The policy with another allowed grub digest (the second boot application)."""
    steps = list(policy.boot_applications or ())
    assert steps[1].component == "grub"
    steps[1] = BootStep("grub", frozenset({OTHER_GRUB_DIGEST}))
    return dataclasses.replace(policy, boot_applications=tuple(steps))


def real_verdicts(testdata: Path, workdir: Path) -> Verdicts:
    """Quote the real log in a fresh swtpm and verify it against a passing and two failing policies."""
    raw_log = (testdata / RHEL8).read_bytes()
    log = parse_event_log(raw_log)
    with Swtpm() as tpm:
        extend_event_log(tpm, log)
        evidence = collect_evidence(
            tpm, raw_log, nonce=NONCE, pcrs=QUOTED_PCRS, banks=("sha256",), workdir=workdir
        )
    summary = summarize(log)
    policy = policy_from_summary(summary)
    verdicts = Verdicts(
        evidence,
        log,
        summary,
        passed=verify(evidence, nonce=NONCE, policy=policy),
        grub_failed=verify(evidence, nonce=NONCE, policy=grub_policy(policy)),
        secure_boot_failed=verify(
            evidence, nonce=NONCE, policy=dataclasses.replace(policy, secure_boot=False)
        ),
    )
    assert verdicts.passed.ok and not verdicts.grub_failed.ok and not verdicts.secure_boot_failed.ok
    return verdicts


@dataclasses.dataclass(frozen=True)
class Seeded:
    """Ids of the rows `seed_store` wrote."""

    cluster_id: int
    pool_id: int
    node_names: tuple[str, ...]
    records: dict[str, int]  # node name -> id of its latest attestation record
    alert_id: str


def _pcr_json(evidence: Evidence) -> dict[str, dict[str, str]]:
    return {
        bank: {str(index): value.hex() for index, value in values.items()}
        for bank, values in (evidence.pcr_values or {}).items()
    }


def attestation_record(
    pool_id: int, node_name: str, result: AttestationResult, evidence: Evidence, when: datetime
) -> AttestationRecord:
    """An attestation row with the full evidence, as the reconciler writes it."""
    return AttestationRecord(
        pool_id=pool_id,
        node_name=node_name,
        time=when,
        trigger="Interval",
        ok=result.ok,
        status="Attested" if result.ok else "AttestationFailed",
        findings=[finding.to_dict() for finding in result.findings],
        secure_boot=result.summary.secure_boot if result.summary else None,
        pcrs=_pcr_json(evidence),
        nonce=NONCE.hex(),
        ak_public=evidence.ak_public,
        quote=evidence.quote,
        signature=evidence.signature,
        event_log=evidence.event_log,
        duration_ms=42.0,
    )


def seed_store(
    sessions: sessionmaker[Session], verdicts: Verdicts, *, cluster_name: str = "WebCluster"
) -> Seeded:
    """A cluster with one trusted launch pool of three nodes: one attested, one failing on its grub digest
    (with its alert), one failing on Secure Boot."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        image = session.scalars(
            select(NodeImage.version).where(NodeImage.trusted_launch_capable).order_by(NodeImage.version)
        ).first()
        assert image is not None
        cluster = ManagedCluster(
            subscription_id=SUBSCRIPTION,
            resource_group="rg-web",
            name=cluster_name.lower(),
            display_name=cluster_name,
            location="eastus",
            kubernetes_version="1.30.6",
            dns_prefix="web",
            fqdn="web-dns.hcp.eastus.example",
            kube_token="kube-token",
            provisioning_state="Succeeded",
        )
        pool = AgentPool(
            cluster=cluster,
            name="tlpool",
            mode="System",
            count=3,
            vm_size="Standard_D4s_v3",
            os_type="Linux",
            os_sku="Ubuntu",
            pool_type="VirtualMachineScaleSets",
            orchestrator_version="1.30.6",
            os_disk_type="Managed",
            os_disk_size_gb=30,
            enable_secure_boot=True,
            enable_vtpm=True,
            node_image_version=image,
            provisioning_state="Succeeded",
        )
        results = (verdicts.passed, verdicts.grub_failed, verdicts.secure_boot_failed)
        names = tuple(f"aks-tlpool-{ordinal}" for ordinal in range(len(results)))
        for ordinal, (name, result) in enumerate(zip(names, results, strict=True)):
            pool.nodes.append(
                Node(
                    ordinal=ordinal,
                    name=name,
                    node_image_version=image,
                    enable_secure_boot=True,
                    enable_vtpm=True,
                    state="Ready",
                    attestation_status="Attested" if result.ok else "AttestationFailed",
                    labels={"kubernetes.azure.com/trusted-launch": "attested" if result.ok else "failed"},
                    message="" if result.ok else str(result.findings[0]),
                    last_attested_at=now,
                )
            )
        session.add(cluster)
        session.flush()
        records = {}
        for name, result in zip(names, results, strict=True):
            older = attestation_record(
                pool.id, name, verdicts.passed, verdicts.evidence, now - timedelta(hours=1)
            )
            latest = attestation_record(pool.id, name, result, verdicts.evidence, now)
            session.add_all([older, latest])
            session.flush()
            records[name] = latest.id
        (alert,) = alerts_from_result(
            verdicts.grub_failed,
            node=names[1],
            pool=pool.name,
            cluster=cluster.name,
            remediation=remediation_steps(AlertType.ATTESTATION_FAILURE),
        )
        session.add(
            AlertRecord(
                id=alert.id,
                attestation_id=records[names[1]],
                subscription_id=SUBSCRIPTION,
                resource_group=cluster.resource_group,
                cluster_name=cluster.name,
                pool_name=pool.name,
                node_name=names[1],
                severity=alert.severity.value,
                time=alert.time,
                document=alert.to_dict(),
            )
        )
        return Seeded(cluster.id, pool.id, names, records, alert.id)


def png_rows(png: bytes) -> tuple[int, int, set[bytes]]:
    """Width, height and the distinct scanlines of a PNG (decoded with zlib; filter bytes included)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    position, idat, width, height = 8, b"", 0, 0
    while position < len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        body = png[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    return width, height, {raw[row * stride : (row + 1) * stride] for row in range(height)}


class _ElementFinder(HTMLParser):
    """Collects the attributes and the text of the element with a given id (and of its descendants)."""

    def __init__(self, element_id: str) -> None:
        super().__init__()
        self.element_id = element_id
        self.attributes: dict[str, str] | None = None
        self.depth = 0
        self.text: list[str] = []
        self.descendants: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        void = tag in VOID_ELEMENTS
        if self.depth:
            self.depth += 0 if void else 1
            self.descendants.append((tag, {name: value or "" for name, value in attrs}))
        elif dict(attrs).get("id") == self.element_id and self.attributes is None:
            self.attributes = {name: value or "" for name, value in attrs}
            self.depth = 0 if void else 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.text.append(data)


@dataclasses.dataclass(frozen=True)
class Element:
    """An element of a page: its attributes and its text (whitespace collapsed)."""

    attributes: dict[str, str]
    text: str
    descendants: tuple[tuple[str, dict[str, str]], ...] = ()  # (tag, attributes) in document order

    def all(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        """The attributes of the descendants with `tag` (and `css_class`, when given), in document order."""
        return [
            attributes
            for name, attributes in self.descendants
            if name == tag and (css_class is None or css_class in attributes.get("class", "").split())
        ]

    @property
    def classes(self) -> set[str]:
        """The element's CSS classes."""
        return set(self.attributes.get("class", "").split())


def element(html: str, element_id: str) -> Element:
    """The element with `element_id` in `html` (fails the test when there is none)."""
    finder = _ElementFinder(element_id)
    finder.feed(html)
    assert finder.attributes is not None, f"no element with id {element_id!r} in the page"
    return Element(finder.attributes, " ".join(" ".join(finder.text).split()), tuple(finder.descendants))


@dataclasses.dataclass(frozen=True)
class Fleet:
    """Ids of the rows `seed_fleet` wrote."""

    cluster_id: int
    pool_ids: tuple[int, ...]
    nodes: int


def seed_fleet(
    sessions: sessionmaker[Session], verdicts: Verdicts, *, nodes: int = 200, pools: int = 3
) -> Fleet:
    """A second cluster with `nodes` nodes in `pools` pools, labelled as joined nodes are (join and verdict
    labels), each with an attestation an hour ago and one now; every seventh node fails its latest on its
    grub digest, every thirteenth is Unhealthy."""
    now = datetime.now(UTC)
    with sessions.begin() as session:
        image = session.scalars(
            select(NodeImage.version).where(NodeImage.trusted_launch_capable).order_by(NodeImage.version)
        ).first()
        assert image is not None
        cluster = ManagedCluster(
            subscription_id=SUBSCRIPTION,
            resource_group="rg-fleet",
            name="fleetcluster",
            display_name="FleetCluster",
            location="westeurope",
            kubernetes_version="1.36.3",
            dns_prefix="fleet",
            fqdn="fleet-dns.hcp.westeurope.example",
            kube_token="kube-token",
            provisioning_state="Succeeded",
        )
        for number in range(pools):
            name = f"fleet{number}"
            pool = AgentPool(
                cluster=cluster,
                name=name,
                mode="System" if number == 0 else "User",
                count=nodes // pools + (number < nodes % pools),
                vm_size="Standard_D4s_v3",
                os_type="Linux",
                os_sku="Ubuntu",
                pool_type="VirtualMachineScaleSets",
                orchestrator_version="1.36.3",
                os_disk_type="Managed",
                os_disk_size_gb=30,
                enable_secure_boot=True,
                enable_vtpm=True,
                node_image_version=image,
                provisioning_state="Succeeded",
            )
            for ordinal in range(pool.count):
                failed = (number * 1000 + ordinal) % 7 == 3
                status = "AttestationFailed" if failed else "Attested"
                pool.nodes.append(
                    Node(
                        ordinal=ordinal,
                        name=f"aks-{name}-{ordinal}",
                        node_image_version=image,
                        enable_secure_boot=True,
                        enable_vtpm=True,
                        state="Unhealthy" if ordinal % 13 == 5 else "Ready",
                        attestation_status=status,
                        labels=join_labels(
                            name,
                            pool.mode,
                            image,
                            "Ubuntu",
                            "Standard_D4s_v3",
                            node_labels(name, True, True, status),
                        ),
                        message=str(verdicts.grub_failed.findings[0]) if failed else "",
                        last_attested_at=now,
                    )
                )
        session.add(cluster)
        session.flush()
        for pool in cluster.agent_pools:
            for node in pool.nodes:
                result = verdicts.grub_failed if node.attestation_status != "Attested" else verdicts.passed
                session.add_all(
                    [
                        attestation_record(
                            pool.id, node.name, verdicts.passed, verdicts.evidence, now - timedelta(hours=1)
                        ),
                        attestation_record(pool.id, node.name, result, verdicts.evidence, now),
                    ]
                )
        return Fleet(cluster.id, tuple(pool.id for pool in cluster.agent_pools), nodes)
