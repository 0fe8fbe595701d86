"""Prometheus instruments of attestation, in the attest layer so that the verifier side (attest.remote)
and the control plane can both record into them; the API serves `scraped_registry()` at /metrics.

One process (the API with its reconciler) serves its own REGISTRY. With several processes (`tl serve
--workers N`: API workers beside the reconciler's process) every process records into files of a shared
directory (prometheus_client's multiprocess mode, `record_across_processes`) and a scrape of any worker
adds them all up.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values

from trustedlaunch.attest.verifier import AttestationResult

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's switch to multiprocess mode
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


def record_across_processes(directory: Path) -> None:
    """Record every metric value from now on into files in `directory` (empty, shared with the processes
    started after this call, which inherit the setting); scrapes then add up every process's values."""
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory)
    # prometheus_client chose in-memory values when it was imported; the instruments above are labelled,
    # so they make their values on first use, from this class
    values.ValueClass = values.get_value_class()


def scraped_registry() -> CollectorRegistry:
    """What /metrics renders: this process's REGISTRY, or every process's values in multiprocess mode."""
    if MULTIPROCESS_DIR_ENV not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry
