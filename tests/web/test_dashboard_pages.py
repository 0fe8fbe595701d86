"""Every dashboard page through the real app (TestClient) over a real store holding real verdicts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import Dashboard, sign_in
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update
from web_helpers import OTHER_GRUB_DIGEST, SUBSCRIPTION, Verdicts, element, seed_fleet

from trustedlaunch.control.tokens import create_token
from trustedlaunch.store.models import AgentPool, AlertRecord, ApiToken, ManagedCluster, Node
from trustedlaunch.web.dashboard import CONTENT_SECURITY_POLICY, NODES_PER_PAGE, SESSION_COOKIE

PAGES = (
    "/ui/",
    "/ui/alerts",
    "/ui/clusters/{cluster_id}",
    "/ui/pools/{pool_id}",
    "/ui/pools/{pool_id}/node-rows",
    "/ui/pools/{pool_id}/nodes/aks-tlpool-1",
    "/ui/attestations/{grub_record}",
)


def _pages(dashboard: Dashboard) -> list[str]:
    seeded = dashboard.seeded
    ids = {
        "cluster_id": seeded.cluster_id,
        "pool_id": seeded.pool_id,
        "grub_record": seeded.records["aks-tlpool-1"],
    }
    return [page.format(**ids) for page in PAGES]


def test_every_page_renders_with_the_security_headers(dashboard: Dashboard) -> None:
    for page in _pages(dashboard):
        response = dashboard.client.get(page)
        assert response.status_code == 200, page
        assert response.headers["content-type"].startswith("text/html"), page
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, page
        assert response.headers["x-frame-options"] == "DENY"
        assert "<script>" not in response.text and " style=" not in response.text, page


def test_pages_without_a_session_redirect_to_the_login_form(
    dashboard: Dashboard, anonymous: TestClient
) -> None:
    anonymous.cookies.clear()
    for page in _pages(dashboard):
        response = anonymous.get(page, follow_redirects=False)
        assert response.status_code == 303, page
        assert response.headers["location"].startswith("/ui/login?next=%2Fui%2F"), page
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    # the API's bearer header is no dashboard session
    response = anonymous.get(
        "/ui/", headers={"Authorization": f"Bearer {dashboard.token}"}, follow_redirects=False
    )
    assert response.status_code == 303
    # an htmx poll of a page whose session ended asks htmx to load the login form
    poll = anonymous.get(_pages(dashboard)[4], headers={"HX-Request": "true"}, follow_redirects=False)
    assert poll.status_code == 401 and poll.headers["hx-redirect"].startswith("/ui/login?next=")


def test_the_dashboard_bypass_does_not_open_the_api(anonymous: TestClient) -> None:
    assert (
        anonymous.get(
            f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters"
        ).status_code
        == 401
    )
    assert anonymous.get("/uiother").status_code == 401
    assert anonymous.get("/metrics").status_code == 401


def test_login_with_a_bad_token_is_refused(anonymous: TestClient) -> None:
    response = anonymous.post("/ui/login", data={"token": "tl_not-a-token"})
    assert response.status_code == 401
    assert "That API token is not valid for this server." in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")
    assert anonymous.get("/ui/", follow_redirects=False).status_code == 303
    empty = anonymous.post("/ui/login", data={"token": ""})
    assert empty.status_code == 401 and "Enter an API token." in empty.text


def test_login_sets_a_strict_http_only_cookie_and_goes_to_next(anonymous: TestClient, tmp_path: Path) -> None:
    token = (tmp_path / "config" / "admin-token").read_text().strip()
    form = anonymous.get("/ui/login?next=/ui/alerts")
    assert element(form.text, "token").attributes["type"] == "password"
    response = anonymous.post(
        "/ui/login", data={"token": token, "next": "/ui/alerts"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/alerts"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert anonymous.get("/ui/alerts").status_code == 200


@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/ui/", "/subscriptions", "/ui\\..\\x"]
)
def test_login_only_goes_on_to_dashboard_pages(anonymous: TestClient, tmp_path: Path, target: str) -> None:
    token = (tmp_path / "config" / "admin-token").read_text().strip()
    response = anonymous.post("/ui/login", data={"token": token, "next": target}, follow_redirects=False)
    assert response.headers["location"] == "/ui/"


def test_logout_ends_the_session(dashboard: Dashboard) -> None:
    response = dashboard.client.post("/ui/logout", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/login"
    assert (
        f'{SESSION_COOKIE}=""' in response.headers["set-cookie"]
        or "Max-Age=0" in response.headers["set-cookie"]
    )
    assert dashboard.client.get("/ui/", follow_redirects=False).status_code == 303


def test_a_revoked_token_ends_its_session(dashboard: Dashboard) -> None:
    assert dashboard.client.get("/ui/").status_code == 200
    with dashboard.sessions.begin() as session:
        session.execute(delete(ApiToken))
    assert dashboard.client.get("/ui/", follow_redirects=False).status_code == 303


def test_clusters_page_lists_pools_nodes_and_active_alerts(dashboard: Dashboard) -> None:
    page = dashboard.client.get("/ui/").text
    table = element(page, "clusters").text
    assert "WebCluster" in table and "rg-web" in table and "eastus" in table and "1.30.6" in table
    assert f'href="/ui/clusters/{dashboard.seeded.cluster_id}"' in page
    row = table.split("WebCluster", 1)[1]
    # 1 of 3 nodes attested, its one pool (1 of 3 attested), 3 of 3 nodes ready, 1 active alert
    assert "Succeeded Running Healthy 1/3 attested tlpool 1/3 attested Healthy 3 / 3 1" in row
    with dashboard.sessions.begin() as session:
        session.execute(update(AlertRecord).values(status="Resolved", resolved_at=datetime.now(UTC)))
        session.execute(update(Node).where(Node.name == "aks-tlpool-2").values(state="Unhealthy"))
    # one node lost: the cluster rolls up to Degraded, 2 of its 3 nodes ready
    clusters = element(dashboard.client.get("/ui/").text, "clusters").text
    assert "Succeeded Running Degraded 1/3 attested tlpool 1/3 attested Degraded 2 / 3 0" in clusters
    pools = element(dashboard.client.get(f"/ui/clusters/{dashboard.seeded.cluster_id}").text, "pools").text
    assert "tlpool System 2 / 3" in pools and pools.rstrip().endswith("Succeeded Degraded")


def test_pools_page_shows_trusted_launch_and_attestation_counts(dashboard: Dashboard) -> None:
    page = dashboard.client.get(f"/ui/clusters/{dashboard.seeded.cluster_id}").text
    table = element(page, "pools").text
    assert "tlpool System 3 / 3 Standard_D4s_v3 Linux Ubuntu" in table
    assert "enabled enabled 1/3 attested 2 Succeeded Healthy" in table  # Secure Boot, vTPM, 2 failed


def test_nodes_page_shows_live_state_secure_boot_vtpm_and_labels(dashboard: Dashboard) -> None:
    seeded = dashboard.seeded
    page = dashboard.client.get(f"/ui/pools/{seeded.pool_id}").text
    rows = element(page, "node-rows")
    assert rows.attributes["hx-get"] == f"/ui/pools/{seeded.pool_id}/node-rows"
    assert rows.attributes["hx-trigger"] == "every 3s" and rows.attributes["hx-swap"] == "outerHTML"
    attested, grub, secure_boot = (element(page, f"node-{ordinal}").text for ordinal in range(3))
    assert attested.startswith("aks-tlpool-0 Ready Attested")
    assert "enabled enabled kubernetes.azure.com/trusted-launch=attested" in attested
    assert "AttestationFailed" in grub and "BootApplicationNotAllowed (grub, PCR4, event #26)" in grub
    assert "SecureBootStateMismatch" in secure_boot
    assert f'href="/ui/attestations/{seeded.records["aks-tlpool-1"]}"' in page
    assert '<script src="/ui/static/htmx.min.js" defer></script>' in page


def test_the_node_table_is_read_a_page_at_a_time(dashboard: Dashboard, verdicts: Verdicts) -> None:
    fleet = seed_fleet(dashboard.sessions, verdicts, nodes=60, pools=1)
    (pool_id,) = fleet.pool_ids

    def rows(html: str) -> list[str]:
        return [row["id"] for row in element(html, "node-rows").all("tr", "node")]

    page = dashboard.client.get(f"/ui/pools/{pool_id}?page=2").text
    assert rows(page) == [f"node-{n}" for n in range(NODES_PER_PAGE, 2 * NODES_PER_PAGE)]
    assert element(page, "node-rows").attributes["hx-get"] == f"/ui/pools/{pool_id}/node-rows?page=2"
    assert element(page, "node-pager").text == "Nodes 26–50 of 60 ‹ Previous 1 2 3 Next ›"
    assert len(element(page, "node-rows").all("a", "evidence")) == NODES_PER_PAGE  # this page's only
    fragment = dashboard.client.get(f"/ui/pools/{pool_id}/node-rows?page=3").text
    assert rows(fragment) == [f"node-{n}" for n in range(50, 60)]
    # a page out of range shows the nearest one; a pool of one page has no pager
    assert rows(dashboard.client.get(f"/ui/pools/{pool_id}?page=99").text) == rows(fragment)
    assert rows(dashboard.client.get(f"/ui/pools/{pool_id}?page=0").text)[0] == "node-0"
    assert "node-pager" not in dashboard.client.get(f"/ui/pools/{dashboard.seeded.pool_id}").text


def test_node_rows_fragment_follows_the_store(dashboard: Dashboard) -> None:
    seeded = dashboard.seeded
    fragment = dashboard.client.get(f"/ui/pools/{seeded.pool_id}/node-rows").text
    assert fragment.lstrip().startswith('<tbody id="node-rows"') and "<html" not in fragment
    assert "Attested" in element(fragment, "node-0").text
    with dashboard.sessions.begin() as session:
        session.execute(
            update(Node)
            .where(Node.name == "aks-tlpool-0")
            .values(attestation_status="Unreachable", message="the agent did not answer", state="Stopped")
        )
    row = element(dashboard.client.get(f"/ui/pools/{seeded.pool_id}/node-rows").text, "node-0").text
    assert "aks-tlpool-0 Stopped Unreachable" in row and "the agent did not answer" in row


def test_alerts_page_shows_severity_components_and_status(dashboard: Dashboard) -> None:
    page = dashboard.client.get("/ui/alerts").text
    table = element(page, "alerts").text
    assert table.count("High") == 1
    assert "High Active" in table and "cluster webcluster pool tlpool node aks-tlpool-1 grub" in table
    assert "PCR4: grubx64.efi" in table and OTHER_GRUB_DIGEST not in table.split("allowed:")[0]
    assert "Pending" in table
    assert f'href="/ui/attestations/{dashboard.seeded.records["aks-tlpool-1"]}"' in page
    assert "aks-tlpool-1" not in dashboard.client.get("/ui/alerts?status=Resolved").text
    assert "aks-tlpool-1" in dashboard.client.get("/ui/alerts?status=Active").text


def test_evidence_page_highlights_the_failing_grub_event(dashboard: Dashboard, verdicts: Verdicts) -> None:
    record = dashboard.seeded.records["aks-tlpool-1"]
    page = dashboard.client.get(f"/ui/attestations/{record}").text
    grub = next(app for app in verdicts.summary.boot_apps if app.device_path.endswith("grubx64.efi"))
    row = element(page, f"event-{grub.event.index}")
    assert "event-failed" in row.classes
    assert row.text.startswith(f"{grub.event.index} 4 EV_EFI_BOOT_SERVICES_APPLICATION {grub.digest().hex()}")
    assert "grub: \\EFI\\redhat\\grubx64.efi" in row.text and "finding 1" in row.text
    failed_rows = [
        event.index
        for event in verdicts.log.events
        if "event-failed" in element(page, f"event-{event.index}").classes
    ]
    assert failed_rows == [grub.event.index]
    (finding,) = verdicts.grub_failed.findings
    finding_row = element(page, "finding-1").text
    assert finding.message in finding_row and "BootApplicationNotAllowed grub 4" in finding_row
    assert f"#{grub.event.index}" in finding_row
    # the quote's PCR values, the PCR of the failing component marked
    pcr4 = element(page, "pcr-sha256-4")
    assert "pcr-failed" in pcr4.classes
    assert verdicts.evidence.pcr_values is not None
    assert pcr4.text == f"sha256 4 — {verdicts.evidence.pcr_values['sha256'][4].hex()}"  # none predicted
    assert "pcr-failed" not in element(page, "pcr-sha256-7").classes
    verdict = element(page, "verdict").text
    assert "AttestationFailed" in verdict and "0ddba11cafe5ca1e" in verdict


def test_evidence_page_maps_a_secure_boot_finding_to_the_variable(
    dashboard: Dashboard, verdicts: Verdicts
) -> None:
    page = dashboard.client.get(f"/ui/attestations/{dashboard.seeded.records['aks-tlpool-2']}").text
    variable = verdicts.summary.variables["SecureBoot"].event
    row = element(page, f"event-{variable.index}")
    assert "event-failed" in row.classes and "SecureBoot = enabled" in row.text
    assert "Secure Boot is enabled" in element(page, "finding-1").text


def test_evidence_page_of_a_passed_attestation_has_no_highlight(dashboard: Dashboard) -> None:
    page = dashboard.client.get(f"/ui/attestations/{dashboard.seeded.records['aks-tlpool-0']}").text
    assert "every check passed" in element(page, "no-findings").text
    assert 'class="event event-failed' not in page and "event-in-failed-pcr" not in page


def test_history_page_lists_the_attestations_of_a_node(dashboard: Dashboard) -> None:
    seeded = dashboard.seeded
    page = dashboard.client.get(f"/ui/pools/{seeded.pool_id}/nodes/aks-tlpool-1").text
    table = element(page, "history").text
    assert table.index("AttestationFailed") < table.index("Attested ")  # newest first
    assert f'href="/ui/attestations/{seeded.records["aks-tlpool-1"]}"' in page
    missing = dashboard.client.get(f"/ui/pools/{seeded.pool_id}/nodes/aks-nope-9")
    assert missing.status_code == 404 and "There is no node" in missing.text


@pytest.mark.parametrize(
    "page",
    [
        "/ui/clusters/999",
        "/ui/pools/999",
        "/ui/pools/999/node-rows",
        "/ui/attestations/999",
        "/ui/pools/abc",
        "/ui/static/dashboard.py",
    ],
)
def test_missing_rows_are_html_404s(dashboard: Dashboard, page: str) -> None:
    response = dashboard.client.get(page)
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "Not found" in response.text


def test_static_files_are_the_vendored_htmx_and_the_style_sheet(anonymous: TestClient) -> None:
    htmx = anonymous.get("/ui/static/htmx.min.js")
    assert htmx.status_code == 200 and htmx.headers["content-type"].startswith("text/javascript")
    assert htmx.text.startswith("/*! htmx.org 2.0.11") and "Zero-Clause BSD" in htmx.text[:1200]
    assert "var htmx=function()" in htmx.text
    for outside in ("/ui/static/..%2Fdashboard.py", "/ui/static/%2E%2E/dashboard.py", "/ui/static/"):
        response = anonymous.get(outside)
        assert response.status_code == 404 and "import" not in response.text, outside
    css = anonymous.get("/ui/static/dashboard.css")
    assert css.status_code == 200 and ".event-failed" in css.text


def test_everything_shown_is_escaped(dashboard: Dashboard) -> None:
    attack = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    with dashboard.sessions.begin() as session:
        session.execute(update(ManagedCluster).values(display_name=f"c{attack}"))
        session.execute(update(AgentPool).values(vm_size=attack[:60]))
        node = session.scalars(select(Node).where(Node.name == "aks-tlpool-0")).one()
        node.labels = {f"k{attack}": attack}
        node.message = attack
        alert = session.scalars(select(AlertRecord)).one()
        alert.node_name = attack
        alert.document = {
            "properties": {
                "extendedProperties": {"failedComponents": attack},
                "supportingEvidence": {"findings": [{"pcr": 4, "message": attack}]},
            }
        }
    seeded = dashboard.seeded
    for page in (
        "/ui/",
        f"/ui/clusters/{seeded.cluster_id}",
        f"/ui/pools/{seeded.pool_id}",
        "/ui/alerts",
        f"/ui/attestations/{seeded.records['aks-tlpool-0']}",
    ):
        text = dashboard.client.get(page).text
        assert "<script>alert" not in text and "<img src=x" not in text, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, page
    login = dashboard.client.get("/ui/login", params={"next": '/ui/"><script>alert(3)</script>'}).text
    assert (
        "<script>alert(3)" not in login
        and 'value="/ui/&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;"' in login
    )


def test_a_second_session_signs_in_with_the_same_token(dashboard: Dashboard, anonymous: TestClient) -> None:
    anonymous.cookies.clear()
    sign_in(anonymous, dashboard.token)
    assert anonymous.get(f"/ui/pools/{dashboard.seeded.pool_id}").status_code == 200


@pytest.mark.parametrize(
    ("scope", "sees"),
    [
        (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-web", True),
        (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-other", False),
        ("/subscriptions/99999999-2222-3333-4444-555555555555", False),
    ],
)
def test_a_scoped_token_sees_only_its_scope(
    dashboard: Dashboard, anonymous: TestClient, scope: str, sees: bool
) -> None:
    with dashboard.sessions.begin() as session:
        token = create_token(session, "operator", scope=scope)
    anonymous.cookies.clear()
    sign_in(anonymous, token)
    for page in _pages(dashboard)[2:]:
        assert anonymous.get(page).status_code == (200 if sees else 404), page
    assert ("WebCluster" in anonymous.get("/ui/").text) is sees
    assert ("aks-tlpool-1" in anonymous.get("/ui/alerts").text) is sees
    # an alert outside the scope cannot be acknowledged either
    acknowledge = anonymous.post(
        f"/ui/alerts/{dashboard.seeded.alert_id}/acknowledge", follow_redirects=False
    )
    assert acknowledge.status_code == (303 if sees else 404)
    with dashboard.sessions() as session:
        status = session.get_one(AlertRecord, dashboard.seeded.alert_id).status
    assert status == ("InProgress" if sees else "Active")
