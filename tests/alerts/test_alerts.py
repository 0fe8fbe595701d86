"""Integrity alerts from attestation verdicts, and their webhook delivery to a real HTTP server on
127.0.0.1 (allowed as an operator allows a private receiver) that fails its first requests."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from trustedlaunch.attest.alerts import Alert, WebhookDelivery, alerts_from_result
from trustedlaunch.attest.destinations import parse_networks, pinned_request, refusal_reason, resolve
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.findings import Check, Finding
from trustedlaunch.store.vocabulary import AlertSeverity

GRUB_NOT_ALLOWED = Finding(
    Check.BOOT_APPLICATION,
    "grub",
    "grubx64.efi digest 3f09…a1 is not in the pool's image policy",
    pcr=4,
    event_index=17,
)
SECURE_BOOT_OFF = Finding(Check.SECURE_BOOT, "firmware", "Secure Boot is disabled", pcr=7, event_index=3)
CMDLINE = Finding(
    Check.KERNEL_CMDLINE, "kernel", "the kernel command line has forbidden 'init=/bin/sh'", pcr=8
)
WHEN = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
LOOPBACK = parse_networks("127.0.0.1/32")  # the receivers of these tests, allowed as an operator would
RESOURCE = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c1/agentPools/p1"
)


def failed_alert(*findings: Finding) -> Alert:
    [alert] = alerts_from_result(
        AttestationResult(False, findings),
        node="aks-p1-0",
        pool="p1",
        cluster="c1",
        now=WHEN,
        resource_id=RESOURCE,
    )
    return alert


def test_passed_attestation_raises_no_alert() -> None:
    assert alerts_from_result(AttestationResult(True, ()), node="n", pool="p", cluster="c") == []


def test_one_alert_lists_every_failed_component_with_its_pcr() -> None:
    alert = failed_alert(SECURE_BOOT_OFF, GRUB_NOT_ALLOWED, CMDLINE)
    assert alert.severity is AlertSeverity.HIGH
    assert (alert.node, alert.pool, alert.cluster, alert.time) == ("aks-p1-0", "p1", "c1", WHEN)
    assert alert.failed_components == ["firmware", "grub", "kernel"]
    assert alert.description.splitlines() == [
        "Node aks-p1-0 of pool p1 (cluster c1) failed attestation:",
        "- PCR7: Secure Boot is disabled",
        "- PCR4: grubx64.efi digest 3f09…a1 is not in the pool's image policy",
        "- PCR8: the kernel command line has forbidden 'init=/bin/sh'",
    ]


@pytest.mark.parametrize(
    ("findings", "severity"),
    [
        ((CMDLINE,), AlertSeverity.MEDIUM),
        ((Finding(Check.FORBIDDEN_DB, "dbx", "dbx lacks 3 revocations", pcr=7),), AlertSeverity.MEDIUM),
        ((CMDLINE, GRUB_NOT_ALLOWED), AlertSeverity.HIGH),
        ((SECURE_BOOT_OFF,), AlertSeverity.HIGH),
        (
            (Finding(Check.PCR_VALUE, "firmware", "PCR0 differs from the golden value", pcr=0),),
            AlertSeverity.HIGH,
        ),
        ((Finding(Check.QUOTE_SIGNATURE, "quote", "bad signature"),), AlertSeverity.HIGH),
    ],
)
def test_severity_is_that_of_the_worst_finding(
    findings: tuple[Finding, ...], severity: AlertSeverity
) -> None:
    assert failed_alert(*findings).severity is severity


def test_json_form_is_shaped_like_a_defender_alert() -> None:
    alert = failed_alert(GRUB_NOT_ALLOWED, CMDLINE)
    document = alert.to_dict()
    assert document["id"] == document["name"] == alert.id
    properties = document["properties"]
    assert properties["alertDisplayName"] == "VM attestation failure"
    assert properties["alertType"] == "VM_AttestationFailure"
    assert properties["severity"] == "High" and properties["status"] == "Active"
    assert properties["compromisedEntity"] == "aks-p1-0"
    assert properties["timeGeneratedUtc"] == properties["startTimeUtc"] == "2026-11-23T10:30:00Z"
    assert properties["resourceIdentifiers"] == [{"type": "AzureResource", "azureResourceId": RESOURCE}]
    assert properties["extendedProperties"] == {
        "cluster": "c1",
        "nodePool": "p1",
        "node": "aks-p1-0",
        "failedComponents": "grub, kernel",
    }
    assert properties["supportingEvidence"]["findings"] == [
        {
            "check": "BootApplicationNotAllowed",
            "component": "grub",
            "pcr": 4,
            "eventIndex": 17,
            "message": "grubx64.efi digest 3f09…a1 is not in the pool's image policy",
            "severity": "High",
        },
        {
            "check": "KernelCmdlineNotAllowed",
            "component": "kernel",
            "pcr": 8,
            "eventIndex": None,
            "message": "the kernel command line has forbidden 'init=/bin/sh'",
            "severity": "Medium",
        },
    ]
    assert json.loads(json.dumps(document)) == document


class FlakyReceiver:
    """A real HTTP server on 127.0.0.1 answering `failures` with `fail_status`, then 202; keeps bodies."""

    def __init__(self, failures: int, fail_status: int = 503) -> None:
        self.failures = failures
        self.fail_status = fail_status
        self.received: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.received.append((self.headers["Content-Type"], body))
                failing = len(receiver.received) <= receiver.failures
                self.send_response(receiver.fail_status if failing else 202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def serve() -> Iterator[Callable[..., FlakyReceiver]]:
    """Start FlakyReceivers (closed after the test)."""
    started: list[FlakyReceiver] = []

    def start(failures: int, fail_status: int = 503) -> FlakyReceiver:
        started.append(FlakyReceiver(failures, fail_status))
        return started[-1]

    yield start
    for receiver in started:
        receiver.close()


def test_delivery_retries_5xx_with_exponential_backoff(serve: Callable[..., FlakyReceiver]) -> None:
    receiver = serve(failures=3)
    waits: list[float] = []
    delivery = WebhookDelivery(
        receiver.url, max_attempts=5, base_delay=0.25, sleep=waits.append, allowed_networks=LOOPBACK
    )
    alert = failed_alert(GRUB_NOT_ALLOWED)
    assert delivery.deliver(alert)
    assert waits == [0.25, 0.5, 1.0]
    assert [(a.attempt, a.status, a.waited) for a in delivery.log] == [
        (1, 503, 0.0),
        (2, 503, 0.25),
        (3, 503, 0.5),
        (4, 202, 1.0),
    ]
    assert delivery.log[-1].delivered and {a.alert_id for a in delivery.log} == {alert.id}
    assert receiver.received == [("application/json", alert.to_dict())] * 4


def test_delivery_gives_up_after_max_attempts_with_capped_backoff(
    serve: Callable[..., FlakyReceiver],
) -> None:
    receiver = serve(failures=10, fail_status=500)
    waits: list[float] = []
    delivery = WebhookDelivery(
        receiver.url,
        max_attempts=4,
        base_delay=1.0,
        max_delay=2.5,
        sleep=waits.append,
        allowed_networks=LOOPBACK,
    )
    assert not delivery.deliver(failed_alert(SECURE_BOOT_OFF))
    assert waits == [1.0, 2.0, 2.5]
    assert [a.status for a in delivery.log] == [500] * 4 and len(receiver.received) == 4


def test_4xx_is_not_retried(serve: Callable[..., FlakyReceiver]) -> None:
    receiver = serve(failures=1, fail_status=400)
    delivery = WebhookDelivery(receiver.url, sleep=lambda _: None, allowed_networks=LOOPBACK)
    assert not delivery.deliver(failed_alert(CMDLINE))
    assert [(a.attempt, a.status) for a in delivery.log] == [(1, 400)]
    assert len(receiver.received) == 1


def test_connection_errors_are_retried_with_real_waits() -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    delivery = WebhookDelivery(
        f"http://127.0.0.1:{port}/alerts", max_attempts=3, base_delay=0.01, allowed_networks=LOOPBACK
    )
    assert not delivery.deliver(failed_alert(CMDLINE))
    assert [(a.attempt, a.status, a.waited) for a in delivery.log] == [
        (1, None, 0.0),
        (2, None, 0.01),
        (3, None, 0.02),
    ]
    assert all(a.error is not None and "ConnectError" in a.error for a in delivery.log)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f000001", "127.1", "localhost", "[::ffff:127.0.0.1]"]
)
def test_a_refused_destination_gets_no_request(serve: Callable[..., FlakyReceiver], host: str) -> None:
    receiver = serve(failures=0)
    url = receiver.url.replace("127.0.0.1", host)
    delivery = WebhookDelivery(url, sleep=lambda _: None, allowed_networks=())
    assert not delivery.deliver(failed_alert(CMDLINE))
    (attempt,) = delivery.log  # refused: final, not retried
    assert attempt.status is None and attempt.error is not None and "a loopback address" in attempt.error
    assert receiver.received == []


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("2002:7f00:1::", "a loopback address"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::1", "a private address"),  # 6to4 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "a private address"),  # Teredo, client 10.0.0.1
        ("64:ff9b::7f00:1", "a loopback address"),  # NAT64 of 127.0.0.1
    ],
)
def test_ipv6_forms_that_embed_a_refused_ipv4_address_are_refused(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason


def _certificate_for_localhost(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for DNS name localhost (also its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_https_goes_to_the_checked_address_with_the_url_host_name(tmp_path: Path) -> None:
    """The POST connects to the address the check resolved, while TLS (SNI, certificate check) and the
    Host header use the URL's host name."""
    cert_file, key_file = _certificate_for_localhost(tmp_path)
    seen: dict[str, str | None] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen["host"] = self.headers["Host"]
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda _socket, name, _context: seen.__setitem__("sni", name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = httpx.URL(f"https://localhost:{server.server_address[1]}/alerts")
        (address, *_) = resolve(url, LOOPBACK)
        assert str(address) == "127.0.0.1"
        trusted = ssl.create_default_context(cafile=str(cert_file))
        with httpx.Client(verify=trusted, trust_env=False) as client:
            response = client.send(pinned_request(client, url, address, {"id": "a"}))
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert response.status_code == 202
    assert seen == {"sni": "localhost", "host": f"localhost:{url.port}"}
