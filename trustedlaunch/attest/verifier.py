"""The attestation verifier: evidence in, verdict out.

Verification is two steps, as go-tpm-tools splits it: `attest.machine_state.verify_boot` turns evidence
into a `VerifiedBoot` (quote, nonce, log replay, clock, event data: see its docstring for the order), and
`attest.evaluation.evaluate` checks that verified state against the pool's policy. A failure before the
policy stops verification (nothing later can be trusted) with one finding, or one per edited event;
policy failures are all reported together. The policy evaluation runs on every call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trustedlaunch.attest.evaluation import evaluate
from trustedlaunch.attest.evidence import Evidence, PcrValues
from trustedlaunch.attest.machine_state import Rejected, verify_boot
from trustedlaunch.attest.policy import Policy, boot_app_components
from trustedlaunch.attest.quote import ClockState
from trustedlaunch.eventlog.model import BootSummary
from trustedlaunch.findings import Finding


@dataclass(frozen=True)
class AttestationResult:
    """The verdict on one piece of evidence."""

    ok: bool
    findings: tuple[Finding, ...]
    summary: BootSummary | None = None  # None when verification stopped before the summary
    replayed_pcrs: PcrValues = field(default_factory=dict)  # bank -> PCR -> value the log replays to
    clock: ClockState | None = None  # store it for the node and pass it as last_clock next time

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form of the verdict."""
        return {
            "ok": self.ok,
            "findings": [finding.to_dict() for finding in self.findings],
            "clock": None
            if self.clock is None
            else {"resetCount": self.clock.reset_count, "clock": self.clock.clock},
            "replayedPcrs": {
                bank: {str(pcr): value.hex() for pcr, value in sorted(values.items())}
                for bank, values in self.replayed_pcrs.items()
            },
            "boot": None if self.summary is None else summary_to_dict(self.summary),
        }


def summary_to_dict(summary: BootSummary) -> dict[str, Any]:
    """The parts of a boot summary an operator looks at, JSON-ready."""
    return {
        "secureBoot": summary.secure_boot,
        "variables": {
            name: {"pcr": var.event.pcr, "eventIndex": var.event.index, "entries": len(var.signatures)}
            for name, var in summary.variables.items()
        },
        "bootApplications": [
            {
                "component": component,
                "devicePath": app.device_path,
                "pcr": app.event.pcr,
                "eventIndex": app.event.index,
                "digests": {bank: digest.hex() for bank, digest in app.event.digests.items()},
            }
            for app, component in zip(summary.boot_apps, boot_app_components(summary.boot_apps), strict=True)
        ],
        "kernelCmdline": summary.kernel_cmdline,
        "separatorsOk": summary.separators_ok,
        "notes": list(summary.notes),
    }


def verify(
    evidence: Evidence,
    *,
    nonce: bytes,
    policy: Policy,
    last_clock: ClockState | None = None,
    cache_log: bool = True,
) -> AttestationResult:
    """Verify evidence against a nonce, a policy and the node's last clock state; never raises on bad
    evidence (every problem becomes a finding). `cache_log=False` parses the event log for this call only
    (evidence of an AK the caller does not know must not take the cache's room)."""
    boot = verify_boot(evidence, nonce=nonce, last_clock=last_clock, cache_log=cache_log)
    if isinstance(boot, Rejected):
        return AttestationResult(False, boot.findings, replayed_pcrs=boot.replayed_pcrs)
    findings = tuple(evaluate(policy, boot))
    return AttestationResult(not findings, findings, boot.summary, boot.replayed_pcrs, boot.clock)
