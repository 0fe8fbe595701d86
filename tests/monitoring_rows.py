"""Store rows of integrity monitoring written the way the reconciler writes them (nodes, attestations with
real evidence from a real swtpm, alerts from attest.alerts), for the API and CLI tests of the operator
surface. Shared by tests/api and tests/cli_aks."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from trustedlaunch.attest.alerts import alerts_from_result
from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import Evidence, collect_evidence, extend_event_log
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.store.models import AgentPool, AlertRecord, AttestationRecord, Node, utc_now
from trustedlaunch.tpm.swtpm import Swtpm

EVENT_LOG = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
QUOTED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14)
NONCE = bytes.fromhex("0ddba11ca5cade00")


@dataclasses.dataclass(frozen=True)
class RealAttestation:
    """Evidence quoted by a real swtpm and the verifier's verdicts on it: `passed` against the log's own
    policy, `failed` against one that wants Secure Boot off."""

    evidence: Evidence
    passed: AttestationResult
    failed: AttestationResult


def real_attestation(testdata: Path, workdir: Path) -> RealAttestation:
    """Extend a real OVMF event log into a fresh swtpm, quote it and verify the quote twice."""
    raw_log = (testdata / EVENT_LOG).read_bytes()
    log = parse_event_log(raw_log)
    with Swtpm() as tpm:
        extend_event_log(tpm, log)
        evidence = collect_evidence(
            tpm, raw_log, nonce=NONCE, pcrs=QUOTED_PCRS, banks=("sha256",), workdir=workdir
        )
    policy = policy_from_summary(summarize(log))
    passed = verify(evidence, nonce=NONCE, policy=policy)
    failed = verify(evidence, nonce=NONCE, policy=dataclasses.replace(policy, secure_boot=False))
    assert passed.ok and not failed.ok
    return RealAttestation(evidence, passed, failed)


def add_node(session: Session, pool: AgentPool, ordinal: int, state: str = "Ready") -> Node:
    """A node row of `pool` as the reconciler leaves it once provisioned."""
    node = Node(
        pool_id=pool.id,
        ordinal=ordinal,
        name=f"aks-{pool.name}-{ordinal}",
        node_image_version=pool.node_image_version,
        enable_secure_boot=pool.enable_secure_boot,
        enable_vtpm=pool.enable_vtpm,
        state=state,
        attestation_status="Attested" if state == "Ready" else None,
        labels={"kubernetes.azure.com/agentpool": pool.name},
    )
    session.add(node)
    session.flush()
    return node


def add_attestation(
    session: Session,
    node: Node,
    attestation: RealAttestation,
    *,
    ok: bool,
    when: datetime,
    issuer: TokenIssuer | None = None,
    trigger: str = "Interval",
) -> AttestationRecord:
    """An attestation record of `node` with the real evidence and the passed or failed verdict; a token
    from `issuer` when it passed; the node's last_attested_at moves to `when`."""
    result = attestation.passed if ok else attestation.failed
    evidence = attestation.evidence
    pcrs = {
        bank: {str(i): v.hex() for i, v in values.items()} for bank, values in result.replayed_pcrs.items()
    }
    record = AttestationRecord(
        pool_id=node.pool_id,
        node_name=node.name,
        time=when,
        trigger=trigger,
        ok=ok,
        status="Attested" if ok else "AttestationFailed",
        findings=[finding.to_dict() for finding in result.findings],
        secure_boot=result.summary.secure_boot if result.summary is not None else None,
        pcrs=pcrs,
        nonce=NONCE.hex(),
        ak_public=evidence.ak_public,
        quote=evidence.quote,
        signature=evidence.signature,
        event_log=evidence.event_log,
        duration_ms=12.5,
        token=issuer.issue(result, node=node.name, pool=node.pool.name, image_version=node.node_image_version)
        if ok and issuer is not None
        else None,
    )
    session.add(record)
    node.last_attested_at = when
    node.attestation_status = record.status
    session.flush()
    return record


def add_alert(
    session: Session,
    node: Node,
    attestation: RealAttestation,
    *,
    subscription_id: str,
    when: datetime,
    record: AttestationRecord | None = None,
    status: str = "Active",
) -> AlertRecord:
    """The alert the failed verdict raises for `node`, stored as the reconciler stores it."""
    pool = node.pool
    cluster = pool.cluster
    (alert,) = alerts_from_result(
        attestation.failed, node=node.name, pool=pool.name, cluster=cluster.name, now=when
    )
    row = AlertRecord(
        id=alert.id,
        attestation_id=record.id if record is not None else None,
        subscription_id=subscription_id,
        resource_group=cluster.resource_group,
        cluster_name=cluster.name,
        pool_name=pool.name,
        node_name=node.name,
        severity=alert.severity.value,
        status=status,
        time=when,
        last_seen=when,
        document=alert.to_dict(),
    )
    session.add(row)
    session.flush()
    return row


def minutes_ago(minutes: float) -> datetime:
    """A time `minutes` before now (UTC)."""
    return utc_now() - timedelta(minutes=minutes)
