"""Attack (issue 12, item 6): a subscription token points the alert webhook at the control plane's host or
networks (loopback in every spelling getaddrinfo reads, link-local metadata, RFC 1918, ULA, the API
itself) and reads the delivery error as a port scanner.

Expected: the URL is refused when it is set (400 InvalidWebhookUrl naming the address and the operator's
allow-list setting) and again before every delivery, which sends no packet to a refused address; a redirect
is never followed; a non-admin caller sees only "delivery failed after N attempt(s)", never the remote's
status or the connection error. Driven through `tl serve --workers 2`; the only receivers are on 127.0.0.1
and nothing is ever sent to another address (refusals happen before any connection)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from served_store import API, OTHER_SUB, SUB, ServedStore, arm_error, bearer, served_store, serving

from trustedlaunch.attest.alerts import alerts_from_result
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control.tokens import create_token
from trustedlaunch.findings import Check, Finding
from trustedlaunch.store.models import AlertRecord, AlertWebhook

SECURITY = "providers/Microsoft.Security"
DELIVERY_SECONDS = 60


def webhook_path(subscription: str) -> str:
    return f"/subscriptions/{subscription}/{SECURITY}/alertWebhook"


def alerts_path(subscription: str) -> str:
    return f"/subscriptions/{subscription}/{SECURITY}/alerts"


class Receiver:
    """An HTTP server on 127.0.0.1 that counts the connections it accepts and answers every POST with
    `status` (and `location`)."""

    def __init__(self, status: int = 202, location: str | None = None) -> None:
        self.connections = 0
        self.hosts: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.hosts.append(self.headers.get("Host", ""))
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(status)
                if location is not None:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class CountingServer(ThreadingHTTPServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                receiver.connections += 1
                super().process_request(request, client_address)

        self.server = CountingServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    started: list[Receiver] = []
    yield started
    for receiver in started:
        receiver.close()


def add_alert(store: ServedStore, subscription: str) -> str:
    """A Pending alert of the subscription, as the reconciler stores a failed attestation's alert."""
    finding = Finding(Check.SECURE_BOOT, "firmware", "Secure Boot is disabled", pcr=7)
    (alert,) = alerts_from_result(AttestationResult(False, (finding,)), node="n0", pool="p1", cluster="c1")
    with store.sessions.begin() as session:
        session.add(
            AlertRecord(
                id=alert.id,
                subscription_id=subscription,
                resource_group="rg",
                cluster_name="c1",
                pool_name="p1",
                node_name="n0",
                severity=alert.severity.value,
                status="Active",
                time=alert.time,
                document=alert.to_dict(),
                delivery_state="Pending",
            )
        )
    return alert.id


def delivered_alert(url: str, token: str, subscription: str, alert_id: str) -> dict[str, str]:
    """The alert's extendedProperties once its delivery ended (Delivered or Failed)."""
    deadline = time.monotonic() + DELIVERY_SECONDS
    while True:
        response = httpx.get(
            f"{url}{alerts_path(subscription)}/{alert_id}", headers=bearer(token), params=API
        )
        assert response.status_code == 200, response.text
        extended: dict[str, str] = response.json()["properties"]["extendedProperties"]
        if extended["webhookDelivery"] != "Pending":
            return extended
        assert time.monotonic() < deadline, "the alert was not delivered"
        time.sleep(0.3)


def tenant_token(store: ServedStore, name: str, subscription: str) -> str:
    with store.sessions.begin() as session:
        return create_token(session, name, f"/subscriptions/{subscription}")


def test_internal_destinations_are_refused_when_set_and_before_delivery(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    receiver = Receiver()
    receivers.append(receiver)
    port = receiver.port
    with served_store(tmp_path) as store:
        # the attacker's subscription has no alert: even a server that stored these URLs would send nothing
        attacker = tenant_token(store, "attacker", OTHER_SUB)
        victim_tenant = tenant_token(store, "tenant", SUB)
        # a webhook stored before this check existed (or whose name resolves elsewhere by now)
        with store.sessions.begin() as session:
            session.add(AlertWebhook(subscription_id=SUB, url=receiver.url))
        alert_id = add_alert(store, SUB)
        with serving(store) as url:
            refused = {
                f"http://127.0.0.1:{port}/": "127.0.0.1 is a loopback address",
                f"http://localhost:{port}/": "resolves to",
                f"http://0x7f000001:{port}/": "'0x7f000001' resolves to 127.0.0.1, a loopback address",
                f"http://2130706433:{port}/": "'2130706433' resolves to 127.0.0.1, a loopback address",
                f"http://127.1:{port}/": "'127.1' resolves to 127.0.0.1, a loopback address",
                f"http://017700000001:{port}/": "resolves to 127.0.0.1, a loopback address",
                f"http://[::1]:{port}/": "::1 is a loopback address",
                f"http://[::ffff:127.0.0.1]:{port}/": "a loopback address",
                f"http://0.0.0.0:{port}/": "an unspecified address",
                "http://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
                "http://[fe80::1]/": "a link-local address",
                "http://10.0.0.5/": "10.0.0.5 is a private address",
                "https://172.16.0.1/": "172.16.0.1 is a private address",
                "http://192.168.1.1:8080/": "192.168.1.1 is a private address",
                "http://[fd00::1]/": "fd00::1 is a private address",
                "http://100.64.0.1/": "a non-public address",
                "http://224.0.0.1/": "a multicast address",
                "http://[64:ff9b::a00:5]/": "a private address",  # NAT64 form of 10.0.0.5
                f"{url}/subscriptions/{OTHER_SUB}/{SECURITY}/alerts": "a loopback address",  # the API itself
            }
            for target, reason in refused.items():
                for token in (attacker, store.admin_token):
                    response = httpx.put(
                        f"{url}{webhook_path(OTHER_SUB)}",
                        json={"properties": {"url": target}},
                        headers=bearer(token),
                        params=API,
                    )
                    message = arm_error(response, 400, "InvalidWebhookUrl")
                    assert reason in message and "TL_WEBHOOK_ALLOWED_NETWORKS" in message, (target, message)
            stored = httpx.get(f"{url}{webhook_path(OTHER_SUB)}", headers=bearer(attacker), params=API)
            arm_error(stored, 404, "WebhookNotFound")

            # the stored loopback webhook is checked again before its delivery: refused, no connection
            tenant_view = delivered_alert(url, victim_tenant, SUB, alert_id)
            admin_view = delivered_alert(url, store.admin_token, SUB, alert_id)
    assert receiver.connections == 0
    assert tenant_view["webhookDelivery"] == admin_view["webhookDelivery"] == "Failed"
    assert tenant_view["webhookDeliveryError"] == "delivery failed after 1 attempt(s)"
    assert "127.0.0.1 is a loopback address" in admin_view["webhookDeliveryError"]


def test_redirects_are_not_followed_and_tenants_see_no_remote_detail(
    tmp_path: Path, receivers: list[Receiver]
) -> None:
    target = Receiver()
    redirecting = Receiver(status=302, location=target.url)
    receivers.extend((target, redirecting))
    # the operator allows a private receiver on 127.0.0.1 (and only there)
    with served_store(tmp_path, TL_WEBHOOK_ALLOWED_NETWORKS="127.0.0.1/32") as store:
        tenant = tenant_token(store, "tenant", SUB)
        with serving(store) as url:
            for refused in ("http://10.0.0.5/", f"http://[::1]:{target.port}/"):
                response = httpx.put(
                    f"{url}{webhook_path(SUB)}",
                    json={"properties": {"url": refused}},
                    headers=bearer(tenant),
                    params=API,
                )
                arm_error(response, 400, "InvalidWebhookUrl")
            response = httpx.put(
                f"{url}{webhook_path(SUB)}",
                json={"properties": {"url": redirecting.url}},
                headers=bearer(tenant),
                params=API,
            )
            assert response.status_code == 201, response.text
            alert_id = add_alert(store, SUB)
            tenant_view = delivered_alert(url, tenant, SUB, alert_id)
            admin_view = delivered_alert(url, store.admin_token, SUB, alert_id)
    assert redirecting.hosts == [f"127.0.0.1:{redirecting.port}"]  # one POST, Host of the URL
    assert target.connections == 0  # the redirect was not followed
    assert (tenant_view["webhookDelivery"], tenant_view["webhookDeliveryAttempts"]) == ("Failed", "1")
    assert tenant_view["webhookDeliveryError"] == "delivery failed after 1 attempt(s)"
    assert admin_view["webhookDeliveryError"] == (
        f"{redirecting.url} answered HTTP 302, a redirect (redirects are never followed)"
    )
