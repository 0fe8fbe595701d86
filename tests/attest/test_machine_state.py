"""Verify apart from evaluate: only the verifier's first step makes a VerifiedBoot, from a real swtpm quote
of a real event log, and the policy rules take nothing else."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from trustedlaunch.attest.derivation import policy_from_summary
from trustedlaunch.attest.evaluation import evaluate
from trustedlaunch.attest.evidence import Evidence, collect_evidence, extend_event_log
from trustedlaunch.attest.machine_state import Rejected, VerifiedBoot, verify_boot
from trustedlaunch.attest.policy import GoldenPcr
from trustedlaunch.eventlog.parser import parse_event_log
from trustedlaunch.findings import Check
from trustedlaunch.tpm.swtpm import Swtpm

RHEL8 = "go-tpm-tools/eventlogs/rhel8-uefi.bin"
PCRS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 14)
NONCE = bytes.fromhex("5eed5eed5eed5eed")


@pytest.fixture(scope="module")
def evidence(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    raw_log = (testdata / RHEL8).read_bytes()
    with Swtpm() as tpm:
        extend_event_log(tpm, parse_event_log(raw_log))
        yield collect_evidence(
            tpm, raw_log, nonce=NONCE, pcrs=PCRS, banks=("sha256",), workdir=tmp_path_factory.mktemp("q")
        )


def test_a_quoted_log_becomes_a_verified_boot_the_rules_evaluate(evidence: Evidence) -> None:
    boot = verify_boot(evidence, nonce=NONCE, cache_log=False)
    assert isinstance(boot, VerifiedBoot)
    assert evidence.pcr_values is not None
    assert {pcr: boot.pcr_values["sha256"][pcr] for pcr in PCRS} == evidence.pcr_values["sha256"]
    assert boot.summary.secure_boot is True and boot.clock is not None
    assert evaluate(policy_from_summary(boot.summary), boot) == []


def test_evidence_failing_the_quote_checks_gives_no_verified_boot(evidence: Evidence) -> None:
    rejected = verify_boot(evidence, nonce=bytes(8), cache_log=False)
    assert isinstance(rejected, Rejected)
    assert [finding.check for finding in rejected.findings] == [Check.NONCE]


def test_only_verify_boot_makes_a_verified_boot(evidence: Evidence) -> None:
    boot = verify_boot(evidence, nonce=NONCE, cache_log=False)
    assert isinstance(boot, VerifiedBoot)
    with pytest.raises(TypeError, match=r"made only by attest\.machine_state\.verify_boot"):
        VerifiedBoot(
            object(),
            log=boot.log,
            summary=boot.summary,
            pcr_values=boot.pcr_values,
            replayed_pcrs=boot.replayed_pcrs,
            clock=boot.clock,
        )
    edited = dataclasses.replace(boot.summary, secure_boot=False)
    with pytest.raises(ValueError, match="seal"):
        dataclasses.replace(boot, summary=edited)


def test_a_verified_boot_holds_only_what_the_quote_vouches_for(evidence: Evidence) -> None:
    """The log's sha1 digests and the PCRs outside the selection are not bound by the sha256 quote: a
    golden value for them is a finding, never compared with what the log (or TPM2_Startup) says."""
    boot = verify_boot(evidence, nonce=NONCE, cache_log=False)
    assert isinstance(boot, VerifiedBoot)
    assert {bank: set(values) for bank, values in boot.pcr_values.items()} == {"sha256": set(PCRS)}
    replayed_sha1 = boot.replayed_pcrs["sha1"][0].hex()
    unquoted = [GoldenPcr("sha1", 0, replayed_sha1, ()), GoldenPcr("sha256", 16, "00" * 32, ())]
    policy = dataclasses.replace(policy_from_summary(boot.summary), golden_pcrs=tuple(unquoted))
    findings = evaluate(policy, boot)
    assert [(finding.check, finding.pcr) for finding in findings] == [
        (Check.PCR_VALUE, 0),
        (Check.PCR_VALUE, 16),
    ]
    assert all("does not vouch" in finding.message for finding in findings)
