"""Attestation metrics recorded with record_attestation, scraped from /metrics of the real app and parsed
with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from trustedlaunch.api.app import create_app
from trustedlaunch.attest.metrics import record_attestation
from trustedlaunch.attest.policy import Policy
from trustedlaunch.attest.remote import attest_node
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.findings import Check, Finding

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

PASSED = AttestationResult(True, ())
SECURE_BOOT_OFF = AttestationResult(
    False,
    (
        Finding(Check.SECURE_BOOT, "firmware", "Secure Boot is disabled", pcr=7),
        Finding(Check.BOOT_APPLICATION, "grub", "grubx64.efi is not in the pool's image policy", pcr=4),
        Finding(Check.BOOT_APPLICATION, "kernel", "vmlinuz is not in the pool's image policy", pcr=4),
    ),
)
REPLAYED_NONCE = AttestationResult(False, (Finding(Check.NONCE, "quote", "the quote's nonce is not ours"),))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    token_file = tmp_path / "config" / "admin-token"
    with TestClient(create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file)) as test_client:
        test_client.headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        yield test_client


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after[key] - before.get(key, 0.0)


def test_attestations_failures_and_latency_are_scraped(client: TestClient) -> None:
    before = scrape(client)
    record_attestation(PASSED, 0.02)
    record_attestation(PASSED, 0.2)
    record_attestation(SECURE_BOOT_OFF, 0.04)
    record_attestation(REPLAYED_NONCE, 3.0)
    after = scrape(client)

    assert delta(before, after, "trustedlaunch_attestations_total", result="passed") == 2
    assert delta(before, after, "trustedlaunch_attestations_total", result="failed") == 2
    failures = "trustedlaunch_attestation_failures_total"
    assert delta(before, after, failures, check="SecureBootStateMismatch") == 1
    assert delta(before, after, failures, check="BootApplicationNotAllowed") == 1  # once per attestation
    assert delta(before, after, failures, check="NonceMismatch") == 1

    histogram = "trustedlaunch_attestation_duration_seconds"
    assert delta(before, after, f"{histogram}_count", result="passed") == 2
    assert delta(before, after, f"{histogram}_sum", result="passed") == pytest.approx(0.22)
    assert delta(before, after, f"{histogram}_bucket", result="passed", le="0.025") == 1
    assert delta(before, after, f"{histogram}_bucket", result="passed", le="0.25") == 2
    assert delta(before, after, f"{histogram}_bucket", result="failed", le="0.05") == 1
    assert delta(before, after, f"{histogram}_bucket", result="failed", le="2.5") == 1
    assert delta(before, after, f"{histogram}_bucket", result="failed", le="+Inf") == 2


def test_metrics_need_the_bearer_token_like_every_private_route(client: TestClient) -> None:
    del client.headers["Authorization"]
    response = client.get("/metrics")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "AuthenticationFailed"


@dataclass(frozen=True)
class UnparsableQuote:
    """What a broken node agent sends: public areas that are not TPM2B_PUBLIC structures."""

    ak_public: bytes = b"\x00\x02\xff"
    ak_name: bytes = b""
    ek_public: bytes = b"\x00\x02\xff"
    quote: bytes = b""
    signature: bytes = b""
    pcr_values: dict[str, dict[int, bytes]] = field(default_factory=dict)
    event_log: bytes | None = None


class BrokenAgent:
    """A node agent that answers with an unparsable quote (the node side of attestation, not our code)."""

    def request_quote(self, nonce: bytes) -> UnparsableQuote:
        return UnparsableQuote()

    def activate(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        raise AssertionError("never reached: the EK does not parse")

    def ek_certificate(self) -> bytes:
        raise AssertionError("never reached: the EK does not parse")


def test_attest_node_records_its_verdict(client: TestClient) -> None:
    before = scrape(client)
    attestation = attest_node(BrokenAgent(), policy=Policy(), ek_ca=[])
    assert [finding.check for finding in attestation.result.findings] == [Check.EVIDENCE_FORMAT]
    after = scrape(client)
    assert delta(before, after, "trustedlaunch_attestations_total", result="failed") == 1
    assert delta(before, after, "trustedlaunch_attestation_failures_total", check="EvidenceMalformed") == 1
    assert delta(before, after, "trustedlaunch_attestation_duration_seconds_count", result="failed") == 1
