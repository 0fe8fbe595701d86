"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium) against
the real app served by uvicorn over a temp SQLite store holding real verdicts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait
from sqlalchemy import func, select, update
from web_helpers import Seeded, Verdicts, png_rows, seed_fleet, seed_store

from trustedlaunch.api.app import create_app
from trustedlaunch.api.server import BackgroundServer
from trustedlaunch.attest.policy import GoldenPcr, Policy
from trustedlaunch.store.models import AlertRecord, Node
from trustedlaunch.web.dashboard import NODES_PER_PAGE, POLL_SECONDS

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WINDOW = (1400, 1000)
WAIT_SECONDS = 30

pytestmark = pytest.mark.slow


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium through the Debian chromedriver (selenium-manager is never asked to download)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are missing: run scripts/install-system-packages.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def served(tmp_path: Path, verdicts: Verdicts) -> Iterator[tuple[str, str, BackgroundServer, Seeded]]:
    """The real app on a loopback port, its admin token, and the seeded rows."""
    token_file = tmp_path / "config" / "admin-token"
    server = BackgroundServer(create_app(f"sqlite:///{tmp_path / 'control.db'}", token_file))
    url = server.start()
    try:
        seeded = seed_store(server.server.config.app.state.sessions, verdicts)
        yield url, token_file.read_text().strip(), server, seeded
    finally:
        server.stop()


def _severe_console_messages(driver: WebDriver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_sign_in_nodes_screenshot_evidence_and_live_update(
    browser: WebDriver, served: tuple[str, str, BackgroundServer, Seeded], tmp_path: Path, verdicts: Verdicts
) -> None:
    url, token, server, seeded = served
    wait = WebDriverWait(browser, WAIT_SECONDS)

    # a page without a session leads to the login form, and back to the page after signing in
    browser.get(f"{url}/ui/pools/{seeded.pool_id}")
    wait.until(expected_conditions.presence_of_element_located((By.ID, "token")))
    browser.find_element(By.ID, "token").send_keys("tl_wrong")
    browser.find_element(By.ID, "sign-in").click()
    assert (
        "not valid"
        in wait.until(expected_conditions.presence_of_element_located((By.CLASS_NAME, "error"))).text
    )
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "nodes")))
    # the refused login logged its 401; nothing may have been blocked by the Content-Security-Policy
    assert not [m for m in _severe_console_messages(browser) if "Content Security Policy" in m]
    assert browser.current_url == f"{url}/ui/pools/{seeded.pool_id}"
    rows = browser.find_elements(By.CSS_SELECTOR, "#node-rows tr.node")
    assert [row.find_element(By.TAG_NAME, "a").text for row in rows] == list(seeded.node_names)
    assert browser.find_element(By.CSS_SELECTOR, "#node-1 .attestation").text == "AttestationFailed"
    # the style sheet applied (a CSP-blocked sheet would leave the failed badge unstyled)
    badge = browser.find_element(By.CSS_SELECTOR, "#node-1 .attestation")
    assert badge.value_of_css_property("color") == "rgba(207, 34, 46, 1)"

    screenshot = browser.get_screenshot_as_png()
    (tmp_path / "nodes.png").write_bytes(screenshot)
    width, height, scanlines = png_rows(screenshot)
    assert [width, height] == browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert len(screenshot) > 20_000 and len(scanlines) > 50, "the screenshot is (nearly) blank"

    # the node's latest attestation: the grub application event is highlighted, the finding shown
    browser.find_element(By.CSS_SELECTOR, "#node-1 a.evidence").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "events")))
    assert browser.current_url == f"{url}/ui/attestations/{seeded.records['aks-tlpool-1']}"
    grub = verdicts.summary.boot_apps[1].event
    highlighted = browser.find_elements(By.CSS_SELECTOR, "#events tr.event-failed")
    assert [row.get_attribute("id") for row in highlighted] == [f"event-{grub.index}"]
    assert "grubx64.efi" in highlighted[0].text
    (finding,) = verdicts.grub_failed.findings
    assert finding.message in browser.find_element(By.ID, "finding-1").text
    assert highlighted[0].value_of_css_property("background-color") == "rgba(255, 235, 233, 1)"
    # the finding links to its event
    browser.find_element(By.CSS_SELECTOR, f"#finding-1 a[href='#event-{grub.index}']").click()
    assert browser.current_url.endswith(f"#event-{grub.index}")
    (tmp_path / "evidence.png").write_bytes(browser.get_screenshot_as_png())

    # the node table follows the store without a page reload (htmx polls the fragment)
    browser.get(f"{url}/ui/pools/{seeded.pool_id}")
    heading = wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "h1")))
    with server.server.config.app.state.sessions.begin() as session:
        session.execute(
            update(Node)
            .where(Node.name == "aks-tlpool-0")
            .values(attestation_status="AttestationFailed", message="PCR7: Secure Boot is disabled")
        )
    wait.until(
        expected_conditions.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#node-0 .attestation"), "AttestationFailed"
        )
    )
    assert "PCR7: Secure Boot is disabled" in browser.find_element(By.ID, "node-0").text
    try:
        assert heading.text == "Pool tlpool"  # the same document: only the table body was swapped
    except StaleElementReferenceException:
        pytest.fail("the page reloaded instead of swapping the node rows")
    assert POLL_SECONDS < WAIT_SECONDS
    assert _severe_console_messages(browser) == []  # no CSP violation, no failed request

    # the cookie is a session id, not the token; signing out (a same-origin form POST) ends the session
    cookie = browser.get_cookie("tl_dashboard")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert token not in cookie["value"]
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "token")))
    browser.add_cookie({**cookie, "path": "/ui"})  # the old cookie, replayed, no longer signs in
    browser.get(f"{url}/ui/pools/{seeded.pool_id}")
    wait.until(expected_conditions.presence_of_element_located((By.ID, "token")))


def test_acknowledge_and_resolve_an_alert_in_the_browser(
    browser: WebDriver, served: tuple[str, str, BackgroundServer, Seeded]
) -> None:
    """The alert forms work in a real browser (same-origin POSTs the CSP lets through)."""
    url, token, server, seeded = served
    wait = WebDriverWait(browser, WAIT_SECONDS)
    browser.get(f"{url}/ui/alerts")
    wait.until(expected_conditions.presence_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    row = f"#alert-{seeded.alert_id}"
    wait.until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, f"{row} button.acknowledge"))
    )
    browser.find_element(By.CSS_SELECTOR, f"{row} button.acknowledge").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, row), "InProgress"))
    assert browser.current_url == f"{url}/ui/alerts"
    sessions = server.server.config.app.state.sessions
    with sessions() as session:
        assert session.get_one(AlertRecord, seeded.alert_id).status == "InProgress"
    assert browser.find_elements(By.CSS_SELECTOR, f"{row} button.acknowledge") == []
    browser.find_element(By.CSS_SELECTOR, f"{row} button.resolve").click()
    wait.until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, row), "resolved "))
    with sessions() as session:
        assert session.get_one(AlertRecord, seeded.alert_id).status == "Resolved"
    assert "Resolved" in browser.find_element(By.CSS_SELECTOR, row).text
    assert browser.find_elements(By.CSS_SELECTOR, f"{row} button") == []
    assert _severe_console_messages(browser) == []  # no CSP violation, no failed request


def _sign_in(browser: WebDriver, url: str, token: str, page: str) -> WebDriverWait[WebDriver]:
    wait = WebDriverWait(browser, WAIT_SECONDS)
    browser.get(f"{url}{page}")
    wait.until(expected_conditions.presence_of_element_located((By.ID, "token"))).send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    wait.until(expected_conditions.presence_of_element_located((By.TAG_NAME, "h1")))
    return wait


def _fill(browser: WebDriver, css: str) -> list[str]:
    return [mark.value_of_css_property("fill") for mark in browser.find_elements(By.CSS_SELECTOR, css)]


def _policy(verdicts: Verdicts) -> str:
    """A predicted policy expecting another PCR 4 than the quote's, and its PCR 7."""
    assert verdicts.evidence.pcr_values is not None
    pcr7 = verdicts.evidence.pcr_values["sha256"][7].hex()
    return Policy(golden_pcrs=(GoldenPcr("sha256", 4, "ab" * 32), GoldenPcr("sha256", 7, pcr7))).to_json()


def test_health_charts_and_evidence_in_the_browser(
    browser: WebDriver, served: tuple[str, str, BackgroundServer, Seeded], tmp_path: Path, verdicts: Verdicts
) -> None:
    """The overview's attested counts, alert count and Degraded roll-up; the SVG charts drawn and styled
    (no script, nothing the CSP blocks); the event log's PCR groups open and filter without script."""
    url, token, server, seeded = served
    _sign_in(browser, url, token, "/ui/")
    assert browser.find_element(By.ID, "alert-count").text == "1"
    pool = browser.find_element(By.ID, f"pool-{seeded.pool_id}")
    assert pool.text == "tlpool 1/3 attested Healthy"
    with server.server.config.app.state.sessions.begin() as session:
        session.execute(update(Node).where(Node.name == "aks-tlpool-2").values(state="Unhealthy"))
    browser.refresh()
    health = browser.find_element(By.CSS_SELECTOR, f"#pool-{seeded.pool_id} .health")
    assert health.text == "Degraded" and health.value_of_css_property("color") == "rgba(207, 34, 46, 1)"
    assert "Degraded" in browser.find_element(By.ID, f"cluster-{seeded.cluster_id}").text

    # the fleet chart: 24 buckets; the last two hold the seeded verdicts (3/3 an hour ago, 1/3 now)
    buckets = browser.find_elements(By.CSS_SELECTOR, "#fleet-chart g.bucket")
    assert len(buckets) == 24
    assert [b.get_attribute("data-attested") for b in buckets[-2:]] == ["3", "1"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#fleet-chart rect.bar-attested")
    full, third = (bar.rect["height"] for bar in bars)
    assert full > 30 and abs(third - full / 3) < 2  # drawn at the chart's scale
    assert set(_fill(browser, "#fleet-chart rect.bar-attested")) == {"rgb(26, 127, 55)"}
    browser.get_screenshot_as_file(str(tmp_path / "overview.png"))

    # the timeline of the failing node: its two attestations, green then red, each a visible tick
    browser.get(f"{url}/ui/pools/{seeded.pool_id}/nodes/aks-tlpool-1")
    ticks = browser.find_elements(By.CSS_SELECTOR, "#timeline rect.tick")
    assert [tick.get_attribute("data-record-id") for tick in ticks][-1] == str(seeded.records["aks-tlpool-1"])
    assert _fill(browser, "#timeline rect.tick") == ["rgb(26, 127, 55)", "rgb(207, 34, 46)"]
    assert all(tick.rect["height"] > 5 and tick.rect["width"] > 1 for tick in ticks)
    browser.get_screenshot_as_file(str(tmp_path / "history.png"))
    with server.server.config.app.state.sessions.begin() as session:  # the VM's predicted policy
        session.execute(
            update(Node).where(Node.name == "aks-tlpool-1").values(attestation_policy=_policy(verdicts))
        )
    ticks[-1].click()  # a tick links to its evidence
    WebDriverWait(browser, WAIT_SECONDS).until(expected_conditions.url_contains("/ui/attestations/"))

    # expected next to quoted PCRs: the mismatching one highlighted, the matching one not
    mismatch = browser.find_element(By.ID, "pcr-sha256-4")
    assert "ab" * 32 in mismatch.text and "differs" in mismatch.text
    assert mismatch.value_of_css_property("background-color") == "rgba(255, 235, 233, 1)"
    assert "matches" in browser.find_element(By.ID, "pcr-sha256-7").text
    browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "pcrs"))
    browser.get_screenshot_as_file(str(tmp_path / "pcrs.png"))

    # the evidence: the failing PCR's group is open, another closed until its summary is clicked
    grub_row = browser.find_element(By.CSS_SELECTOR, "#pcr-group-4 tr.event-failed")
    assert grub_row.is_displayed()
    closed = browser.find_element(By.CSS_SELECTOR, "#pcr-group-0 tr.event")
    assert not closed.is_displayed()
    browser.find_element(By.CSS_SELECTOR, "#pcr-group-0 summary").click()
    assert closed.is_displayed()
    browser.find_element(By.LINK_TEXT, "7").click()  # the filter: only PCR 7's events
    WebDriverWait(browser, WAIT_SECONDS).until(expected_conditions.url_contains("?pcr=7"))
    groups = browser.find_elements(By.CSS_SELECTOR, "#events details")
    assert [group.get_attribute("id") for group in groups] == ["pcr-group-7"]
    assert _severe_console_messages(browser) == []


def test_no_page_scrolls_sideways_in_an_800_pixel_window(
    browser: WebDriver, served: tuple[str, str, BackgroundServer, Seeded], tmp_path: Path
) -> None:
    url, token, _, seeded = served
    browser.set_window_size(800, 1000)
    _sign_in(browser, url, token, "/ui/")
    assert browser.execute_script("return window.innerWidth") <= 800
    pages = {
        "clusters": "/ui/",
        "pools": f"/ui/clusters/{seeded.cluster_id}",
        "nodes": f"/ui/pools/{seeded.pool_id}",
        "history": f"/ui/pools/{seeded.pool_id}/nodes/aks-tlpool-1",
        "evidence": f"/ui/attestations/{seeded.records['aks-tlpool-1']}",
        "alerts": "/ui/alerts",
    }
    for name, page in pages.items():
        browser.get(f"{url}{page}")
        WebDriverWait(browser, WAIT_SECONDS).until(
            expected_conditions.presence_of_element_located((By.TAG_NAME, "h1"))
        )
        scroll_width, client_width = browser.execute_script(
            "const e = document.scrollingElement; return [e.scrollWidth, e.clientWidth]"
        )
        browser.get_screenshot_as_file(str(tmp_path / f"narrow-{name}.png"))
        assert scroll_width <= client_width, f"{page} scrolls sideways: {scroll_width} > {client_width}"
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()  # and the sign-in form
    WebDriverWait(browser, WAIT_SECONDS).until(
        expected_conditions.presence_of_element_located((By.ID, "token"))
    )
    assert browser.execute_script(
        "const e = document.scrollingElement; return e.scrollWidth <= e.clientWidth"
    )
    assert _severe_console_messages(browser) == []


def _no_sideways_scroll(browser: WebDriver) -> tuple[int, int]:
    """The page's (scroll width, height), after checking it does not scroll sideways."""
    scroll_width, client_width, height = browser.execute_script(
        "const e = document.scrollingElement; return [e.scrollWidth, e.clientWidth, e.scrollHeight]"
    )
    assert scroll_width <= client_width, (
        f"{browser.current_url} scrolls sideways: {scroll_width} > {client_width}"
    )
    return scroll_width, height


def test_a_200_node_fleet_at_800_and_1280_pixels(
    browser: WebDriver, served: tuple[str, str, BackgroundServer, Seeded], tmp_path: Path, verdicts: Verdicts
) -> None:
    """200 more nodes in 3 pools: the overview's figures and chart count them all, a pool's node table shows
    NODES_PER_PAGE rows a page (the live refresh stays on its page), labels other than the verdict's are
    folded, and nothing scrolls sideways at 800 or 1280 px."""
    url, token, server, seeded = served
    sessions = server.server.config.app.state.sessions
    fleet = seed_fleet(sessions, verdicts)
    with sessions() as session:
        attested = session.scalar(  # the chart counts the records: their verdicts match the nodes' now
            select(func.count()).where(Node.attestation_status == "Attested")
        )
    first_pool = fleet.pool_ids[0]
    wait = _sign_in(browser, url, token, "/ui/")
    for width in (800, 1280):
        browser.set_window_size(width, 1000)
        browser.get(f"{url}/ui/")
        wait.until(expected_conditions.presence_of_element_located((By.ID, "fleet-chart")))
        _no_sideways_scroll(browser)
        with sessions() as session:
            pool_attested = session.scalar(
                select(func.count()).where(Node.pool_id == first_pool, Node.attestation_status == "Attested")
            )
        assert (
            browser.find_element(By.ID, f"pool-{first_pool}").text
            == f"fleet0 {pool_attested}/67 attested Degraded"
        )
        last = browser.find_elements(By.CSS_SELECTOR, "#fleet-chart g.bucket")[-1]
        assert (last.get_attribute("data-attested"), last.get_attribute("data-total")) == (
            str(attested),
            str(fleet.nodes + len(seeded.node_names)),
        )
        browser.get_screenshot_as_file(str(tmp_path / f"fleet-overview-{width}.png"))
        browser.get(f"{url}/ui/clusters/{fleet.cluster_id}")
        _no_sideways_scroll(browser)
        browser.get_screenshot_as_file(str(tmp_path / f"fleet-pools-{width}.png"))

        # the first page: NODES_PER_PAGE rows, the pager below them
        browser.get(f"{url}/ui/pools/{first_pool}")
        rows = browser.find_elements(By.CSS_SELECTOR, "#node-rows tr.node")
        assert [row.get_attribute("id") for row in rows] == [f"node-{n}" for n in range(NODES_PER_PAGE)]
        _, height = _no_sideways_scroll(browser)
        assert height < NODES_PER_PAGE * (400 if width == 800 else 250), height
        pager = browser.find_element(By.ID, "node-pager")
        assert pager.text.startswith(f"Nodes 1–{NODES_PER_PAGE} of 67")
        browser.get_screenshot_as_file(str(tmp_path / f"fleet-nodes-{width}.png"))
        # the labels other than the verdict's are folded until their summary is clicked
        folded = browser.find_element(By.CSS_SELECTOR, "#node-0 details.more-labels")
        pool_label = folded.find_elements(By.CLASS_NAME, "label")[0]
        assert not pool_label.is_displayed()
        assert browser.find_element(By.CSS_SELECTOR, "#node-0 td.labels > .label").is_displayed()
        folded.find_element(By.TAG_NAME, "summary").click()
        assert pool_label.is_displayed() and pool_label.text == "kubernetes.azure.com/agentpool=fleet0"

        # the last page through the pager, its rows refreshed in place without leaving the page
        pager.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
        pager = wait.until(expected_conditions.presence_of_element_located((By.ID, "node-pager")))
        browser.find_element(By.CSS_SELECTOR, "#node-pager a[rel=next]").click()
        wait.until(expected_conditions.url_contains("?page=3"))
        rows = browser.find_elements(By.CSS_SELECTOR, "#node-rows tr.node")
        assert [row.get_attribute("id") for row in rows] == [f"node-{n}" for n in range(50, 67)]
        assert browser.find_element(By.ID, "node-pager").text.startswith("Nodes 51–67 of 67")
        browser.execute_script("arguments[0].scrollIntoView()", browser.find_element(By.ID, "node-pager"))
        browser.get_screenshot_as_file(str(tmp_path / f"fleet-nodes-page3-{width}.png"))
        status = "AttestationFailed" if width == 800 else "Unreachable"
        with sessions.begin() as session:
            session.execute(
                update(Node).where(Node.name == "aks-fleet0-60").values(attestation_status=status)
            )
        wait.until(
            expected_conditions.text_to_be_present_in_element(
                (By.CSS_SELECTOR, "#node-60 .attestation"), status
            )
        )
        assert len(browser.find_elements(By.CSS_SELECTOR, "#node-rows tr.node")) == 17  # still page 3
        _no_sideways_scroll(browser)
    assert _severe_console_messages(browser) == []
