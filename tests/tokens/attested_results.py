"""Real attestation results: a real swtpm extended with a real OVMF event log, quoted, and verified by the
real verifier (the approach of tests/attest/test_verifier.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evidence import collect_evidence, extend_event_log
from trustedlaunch.attest.verifier import AttestationResult, verify
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.eventlog.summary import summarize
from trustedlaunch.tpm.swtpm import Swtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
QUOTED_PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14)
NONCE = bytes.fromhex("5ca1ab1e0ddba115")


@dataclasses.dataclass(frozen=True)
class Verdicts:
    passed: AttestationResult  # the log's own policy
    failed: AttestationResult  # a policy that wants Secure Boot off


def verdicts_from_swtpm(testdata: Path, workdir: Path) -> Verdicts:
    """Quote the real log in a fresh swtpm and verify it against its own policy and a failing one."""
    raw_log = (testdata / RHEL8).read_bytes()
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
    return Verdicts(passed, failed)
