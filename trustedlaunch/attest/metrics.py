"""Prometheus instruments of attestation, in the attest layer so that the verifier side (attest.remote)
and the control plane can both record into them; the API serves REGISTRY at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from trustedlaunch.attest.verifier import AttestationResult

REGISTRY = CollectorRegistry(auto_describe=True)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ATTESTATIONS = Counter(
    "trustedlaunch_attestations",
    "Node attestations by result (passed, failed).",
    ["result"],
    registry=REGISTRY,
)
FAILURES = Counter(
    "trustedlaunch_attestation_failures",
    "Failed attestations by the check that failed (a Check code; one count per check per attestation).",
    ["check"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "trustedlaunch_attestation_duration_seconds",
    "Time to attest a node (quote, enrollment on first contact, verification), by result.",
    ["result"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)


def result_label(result: AttestationResult) -> str:
    """The `result` label value of an attestation."""
    return "passed" if result.ok else "failed"


def record_attestation(result: AttestationResult, seconds: float) -> None:
    """Count one attestation, its failed checks (each once) and its duration."""
    label = result_label(result)
    ATTESTATIONS.labels(result=label).inc()
    LATENCY.labels(result=label).observe(seconds)
    for check in dict.fromkeys(finding.check for finding in result.findings):
        FAILURES.labels(check=check.value).inc()
