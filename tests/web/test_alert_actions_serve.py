"""Acknowledging and resolving alerts from the dashboard of a real `tl serve --workers 2` over HTTP: the
forms of the alerts page change the alert (seen through the API too), a request from another site changes
nothing, a missing alert or action is a 404 page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from serve_process import start_serve
from web_helpers import element

from trustedlaunch.attest.alerts import alerts_from_result
from trustedlaunch.attest.verifier import AttestationResult
from trustedlaunch.control import alert_lifecycle
from trustedlaunch.findings import Check, Finding
from trustedlaunch.store.db import make_engine, session_factory
from trustedlaunch.store.models import AlertRecord
from trustedlaunch.store.vocabulary import AlertType

SUB = "00000000-0000-0000-0000-000000000000"
ALERTS = f"/subscriptions/{SUB}/providers/Microsoft.Security/alerts"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """`tl serve --workers 2` on a SQLite file; its URL, the admin token and the database URL."""
    database = f"sqlite:///{tmp_path / 'serve.db'}"
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "TL_DATABASE_URL": database,
    }
    process, url, _ = start_serve(env, "--workers", "2", "--attestation-interval", "0", "--no-auto-repair")
    try:
        token = (tmp_path / "config" / "trustedlaunch" / "admin-token").read_text().strip()
        yield url, token, database
    finally:
        process.terminate()
        process.wait(timeout=30)


def seed_alert(database: str, node: str, alert_type: AlertType) -> str:
    """One alert of `node` filed as the attestation monitor files it; its id."""
    finding = Finding(Check.EVIDENCE_FORMAT, "agent", f"{node} did not answer")
    [alert] = alerts_from_result(
        AttestationResult(False, (finding,)),
        node=node,
        pool="nodepool1",
        cluster="webcluster",
        alert_type=alert_type,
        remediation=alert_lifecycle.remediation_steps(alert_type),
    )
    engine = make_engine(database)
    try:
        with session_factory(engine).begin() as session:
            record = AlertRecord(
                id=alert.id,
                subscription_id=SUB,
                resource_group="rg-web",
                cluster_name="webcluster",
                pool_name="nodepool1",
                node_name=node,
                severity=alert.severity.value,
                time=alert.time,
            )
            alert_lifecycle.raise_alert(session, alert, record)
    finally:
        engine.dispose()
    return alert.id


def test_acknowledge_and_resolve_from_the_dashboard(serve: tuple[str, str, str]) -> None:
    url, token, database = serve
    unreachable = seed_alert(database, "aks-nodepool1-0", AlertType.NODE_UNREACHABLE)
    failed = seed_alert(database, "aks-nodepool1-1", AlertType.ATTESTATION_FAILURE)
    api = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, params={"api-version": "2024-09-01"}
    )
    browser = httpx.Client(
        base_url=url, headers={"Origin": url, "Sec-Fetch-Site": "same-origin"}, follow_redirects=True
    )
    with api, browser:

        def status(alert_id: str) -> str:
            return str(api.get(f"{ALERTS}/{alert_id}").json()["properties"]["status"])

        assert browser.post("/ui/login", data={"token": token}).status_code == 200  # redirected to /ui/
        page = browser.get("/ui/alerts").text
        row = element(page, f"alert-{unreachable}")
        assert "Active VM_AttestationUnreachable" in row.text and "Acknowledge Resolve" in row.text
        assert f"/ui/alerts/{unreachable}/acknowledge" in page

        # a form posted from another site changes nothing
        for site in (
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "https://evil.example", "Sec-Fetch-Site": ""},
        ):
            refused = browser.post(f"/ui/alerts/{unreachable}/resolve", headers=site)
            assert refused.status_code == 403
        assert status(unreachable) == "Active"

        acknowledged = browser.post(
            f"/ui/alerts/{unreachable}/acknowledge?status=Active", follow_redirects=False
        )
        assert (
            acknowledged.status_code == 303 and acknowledged.headers["location"] == "/ui/alerts?status=Active"
        )
        assert status(unreachable) == "InProgress"
        shown = api.get(f"{ALERTS}/{unreachable}").json()["properties"]
        assert shown["extendedProperties"]["webhookDelivery"] == "Pending"  # the new state goes out once
        page = browser.get("/ui/alerts").text
        row = element(page, f"alert-{unreachable}")
        assert "InProgress" in row.text and "acknowledged" in row.text and "Resolve" in row.text
        assert f"/ui/alerts/{unreachable}/acknowledge" not in page

        assert browser.post(f"/ui/alerts/{unreachable}/resolve").status_code == 200
        assert status(unreachable) == "Resolved"
        page = browser.get("/ui/alerts").text
        assert "Resolved" in element(page, f"alert-{unreachable}").text
        assert f"/ui/alerts/{unreachable}/" not in page  # no more actions
        assert browser.post(f"/ui/alerts/{failed}/resolve").status_code == 200
        assert status(failed) == "Resolved"

        assert "Acknowledge" not in browser.get("/ui/alerts", params={"status": "Resolved"}).text
        assert browser.post("/ui/alerts/no-such-alert/resolve").status_code == 404
        assert browser.post(f"/ui/alerts/{failed}/delete").status_code == 404
        signed_out = httpx.post(f"{url}/ui/alerts/{failed}/acknowledge", headers={"Origin": url})
        assert signed_out.status_code == 303 and "/ui/login" in signed_out.headers["location"]
