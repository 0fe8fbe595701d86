"""The dashboard under /ui: clusters, pools, nodes with live attestation state, alerts (acknowledge and
resolve them), evidence.

Pages are rendered on the server (Jinja2, autoescaped); the only script is the vendored htmx, which polls
the node table. The dashboard does its own authentication: a login form takes an API token (admin,
subscription or resource group; not a verifier API token), checks it like the API does and opens a
server-side session (control/ui_sessions.py) whose random id goes into an HttpOnly SameSite=Strict cookie
scoped to /ui (Secure over https); signing out ends the session. Every state-changing request (sign-in,
sign-out, acknowledging or resolving an alert) must come from the dashboard's own pages (Sec-Fetch-Site /
Origin), so another site can neither sign a browser in nor out nor change an alert.
A token scoped to a subscription or resource group sees only the clusters (and
their pools, nodes, attestations and alerts) inside its scope; the rest is "not found". Every response
carries a strict Content-Security-Policy (no inline script or style).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context
from jinja2.runtime import Context
from starlette.concurrency import run_in_threadpool

from trustedlaunch.control import alert_lifecycle, overview
from trustedlaunch.control.labels import VERDICT_LABELS
from trustedlaunch.control.node_health import ready_nodes, rolled_up_health
from trustedlaunch.control.overview import ALERT_STATUSES
from trustedlaunch.control.records import AgentPool, ManagedCluster, Node, Session
from trustedlaunch.control.ui_sessions import (
    SESSION_SECONDS,
    SignInRefusal,
    close_session,
    open_session,
    session_principal,
)
from trustedlaunch.web.charts import FLEET_WINDOW, bucket_ends, fleet_chart, node_timeline
from trustedlaunch.web.evidence import build_evidence_view, expected_pcrs, pcr_rows
from trustedlaunch.web.generations import history_rows

PREFIX = "/ui"
SESSION_COOKIE = "tl_dashboard"
POLL_SECONDS = 3  # how often the node table refreshes its attestation state
MAX_TOKEN_LENGTH = 512
MAX_LOGIN_BODY = 4096
ALERT_LIMIT = 500
HISTORY_LIMIT = 200
NODES_PER_PAGE = 25  # a pool holds up to 1000 nodes; each row of the table is polled every POLL_SECONDS
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
STATIC_DIR = Path(str(resources.files("trustedlaunch.web") / "static"))
STATIC_FILES = {"htmx.min.js": "text/javascript", "dashboard.css": "text/css", "favicon.svg": "image/svg+xml"}
PUBLIC_ROUTES = frozenset({"dashboard_login", "dashboard_login_submit", "dashboard_static"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATUS_CLASSES = {
    "Attested": "state-ok",
    "AttestationFailed": "state-failed",
    "Unreachable": "state-failed",
    "Succeeded": "state-ok",
    "Running": "state-ok",
    "Failed": "state-failed",
    "Active": "state-failed",
    "InProgress": "state-warn",
    "Resolved": "state-ok",
    "High": "state-failed",
    "Medium": "state-warn",
    "Low": "state-warn",
    "Delivered": "state-ok",
    "Healthy": "state-ok",
    "Degraded": "state-failed",
    "Unhealthy": "state-failed",
    "Repairing": "state-warn",
    "Stopped": "state-failed",
}


def owns_path(path: str) -> bool:
    """Whether a request path belongs to the dashboard (which authenticates its own requests)."""
    return path == PREFIX or path.startswith(PREFIX + "/")


class PageNotFound(Exception):
    """A page about a row that does not exist (rendered as an HTML 404)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@pass_context
def _path_for(context: Context, route: str, /, **params: object) -> str:
    request: Request = context["request"]
    return str(request.url_for(route, **params).path)


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _state_class(value: object) -> str:
    return STATUS_CLASSES.get(str(value), "state-neutral")


def _yes_no(value: bool | None) -> str:
    return {True: "enabled", False: "disabled", None: "unknown"}[value]


def _split_labels(labels: Mapping[str, str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A node's labels sorted by key: the attestation verdict's (shown) and the others (folded away)."""
    ordered = sorted(labels.items())
    return (
        [(key, value) for key, value in ordered if key in VERDICT_LABELS],
        [(key, value) for key, value in ordered if key not in VERDICT_LABELS],
    )


def _attested(nodes: Iterable[Node]) -> str:
    """ "N/M attested": how many of `nodes` passed their latest attestation."""
    nodes = list(nodes)
    return f"{overview.attested_nodes(nodes)}/{len(nodes)} attested"


templates = Environment(
    loader=PackageLoader("trustedlaunch.web", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.globals.update(path_for=_path_for, poll_seconds=POLL_SECONDS)
templates.filters.update(
    when=_when,
    state_class=_state_class,
    enabled=_yes_no,
    health=rolled_up_health,
    ready_count=ready_nodes,
    attested=_attested,
    split_labels=_split_labels,
)


def _open_alert_count(request: Request) -> int | None:
    """The open alerts in the signed-in session's scope; None without a session (the sign-in form)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        return None
    with request.app.state.sessions() as session:
        return overview.open_alert_count(session, principal)


def render(request: Request, name: str, status_code: int = 200, **context: object) -> HTMLResponse:
    """Render a template of the dashboard (autoescaped) into an HTML response; the navigation of a signed-in
    page counts the open alerts in the session's scope (only pages with the navigation ask)."""
    html = templates.get_template(name).render(
        request=request, open_alert_count=lambda: _open_alert_count(request), **context
    )
    return HTMLResponse(html, status_code=status_code, headers={"Cache-Control": "no-store"})


def _signed_in(request: Request) -> bool:
    """Whether the cookie names an open session; its principal goes to `request.state.principal`."""
    with request.app.state.sessions() as session:
        principal = session_principal(session, request.cookies.get(SESSION_COOKIE, ""))
    request.state.principal = principal
    return principal is not None


def _from_own_page(request: Request) -> bool:
    """Whether a state-changing request comes from a page of this dashboard: the browser's fetch metadata
    says same-origin or, from a browser without it, the Origin is this server's. An Origin of another site
    is always refused. (The dashboard's pages send no referrer, so browsers send their forms' Origin as
    "null" and Sec-Fetch-Site decides.)"""
    origin = request.headers.get("origin")
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin not in (None, "null", own):
        return False
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    return origin == own


def _safe_next(target: str | None) -> str:
    """Where to go after login: a dashboard path only (never another site)."""
    if target and owns_path(target) and "//" not in target and "\\" not in target:
        return target
    return PREFIX + "/"


def _login_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = str(request.url_for("dashboard_login").path) + "?" + urlencode({"next": target})
    if request.headers.get("HX-Request"):  # a poll from a page whose session ended: reload into the form
        return Response(status_code=401, headers={"HX-Redirect": login})
    return RedirectResponse(login, status_code=303)


class DashboardRoute(APIRoute):
    """A dashboard route: state changes only from the dashboard's own pages (403 otherwise), sign-in
    required (except PUBLIC_ROUTES), HTML 404s, security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        public = self.name in PUBLIC_ROUTES

        async def dashboard_handler(request: Request) -> Response:
            response: Response
            if request.method not in SAFE_METHODS and not _from_own_page(request):
                response = render(request, "refused.html", 403)
            elif not public and not await run_in_threadpool(_signed_in, request):
                response = _login_redirect(request)
            else:
                try:
                    response = await handler(request)
                except PageNotFound as exc:
                    response = render(request, "not_found.html", 404, what=exc.what)
                except RequestValidationError:
                    response = render(request, "not_found.html", 404, what=f"page {request.url.path}")
            response.headers.update(SECURITY_HEADERS)
            return response

        return dashboard_handler


router = APIRouter(prefix=PREFIX, route_class=DashboardRoute, include_in_schema=False)


@router.get("/login", name="dashboard_login")
def login_form(request: Request, next_path: str | None = Query(None, alias="next")) -> HTMLResponse:
    """The sign-in form."""
    return render(request, "login.html", next=_safe_next(next_path), error=None)


def _open_session(request: Request, token: str) -> str | SignInRefusal:
    """A new session for `token`; a session the browser still had ends."""
    with request.app.state.sessions.begin() as session:
        close_session(session, request.cookies.get(SESSION_COOKIE, ""))
        return open_session(session, token)


@router.post("/login", name="dashboard_login_submit")
async def login(request: Request) -> Response:
    """Check the API token from the form; on success open a session, put its id in the cookie, go on."""
    body = await request.body()
    form = parse_qs(body[:MAX_LOGIN_BODY].decode("utf-8", errors="replace"))
    token = form.get("token", [""])[0].strip()
    target = _safe_next(form.get("next", [None])[0])
    if not token:
        return render(request, "login.html", 401, next=target, error="Enter an API token.")
    opened = (
        SignInRefusal.INVALID_TOKEN
        if len(token) > MAX_TOKEN_LENGTH
        else await run_in_threadpool(_open_session, request, token)
    )
    if isinstance(opened, SignInRefusal):
        return render(request, "login.html", 401, next=target, error=opened.value)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        opened,
        max_age=SESSION_SECONDS,
        path=PREFIX,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/logout", name="dashboard_logout")
def logout(request: Request) -> Response:
    """End the session (its cookie no longer signs in anywhere), forget the cookie, show the sign-in form."""
    with request.app.state.sessions.begin() as session:
        close_session(session, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse(str(request.url_for("dashboard_login").path), status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict")
    return response


@router.get("/static/{name}", name="dashboard_static")
def static(name: str) -> Response:
    """The vendored htmx and the style sheet (nothing else is served from the package)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise PageNotFound(f"static file {name!r}")
    return FileResponse(
        STATIC_DIR / name, media_type=media_type, headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get("", name="dashboard_root")
def root(request: Request) -> Response:
    """/ui -> /ui/."""
    return RedirectResponse(str(request.url_for("dashboard_clusters").path), status_code=303)


@router.get("/", name="dashboard_clusters")
def clusters(request: Request) -> HTMLResponse:
    """Every managed cluster with its pools, node count, attested nodes and active alerts, and the fleet's
    % attested over the last FLEET_WINDOW."""
    now = datetime.now(UTC)
    with request.app.state.sessions() as session:
        found = overview.visible_clusters(session, request.state.principal)
        alerts = overview.active_alert_counts(session)
        pool_ids = [pool.id for cluster in found for pool in cluster.agent_pools]
        since, ends = now - FLEET_WINDOW, bucket_ends(now)
        fleet = fleet_chart(overview.fleet_attested(session, pool_ids, ends), since, ends)
        return render(request, "clusters.html", clusters=found, alerts=alerts, fleet=fleet)


def _cluster(request: Request, session: Session, cluster_id: int) -> ManagedCluster:
    cluster = overview.visible_cluster(session, request.state.principal, cluster_id)
    if cluster is None:
        raise PageNotFound(f"cluster #{cluster_id}")
    return cluster


def _pool(request: Request, session: Session, pool_id: int) -> AgentPool:
    pool = overview.visible_pool(session, request.state.principal, pool_id)
    if pool is None:
        raise PageNotFound(f"agent pool #{pool_id}")
    return pool


@router.get("/clusters/{cluster_id}", name="dashboard_cluster")
def cluster_pools(request: Request, cluster_id: int) -> HTMLResponse:
    """A cluster's agent pools with their trusted launch settings and node attestation counts."""
    with request.app.state.sessions() as session:
        cluster = _cluster(request, session, cluster_id)
        return render(request, "pools.html", cluster=cluster, pools=cluster.agent_pools)


@dataclass(frozen=True)
class NodePage:
    """One page of a pool's node table: its nodes, their latest attestation ids, where it lies."""

    nodes: list[Node]
    latest: dict[str, int]
    number: int  # 1-based
    pages: int
    first: int  # 1-based position of its first node (0 without nodes)
    total: int

    @property
    def last(self) -> int:
        """1-based position of its last node."""
        return self.first + len(self.nodes) - 1 if self.nodes else 0


def _node_page(session: Session, pool: AgentPool, number: int) -> NodePage:
    """Page `number` of the pool's nodes (NODES_PER_PAGE each; out of range: the nearest page)."""
    total = len(pool.nodes)
    pages = max(1, -(-total // NODES_PER_PAGE))
    number = min(max(number, 1), pages)
    offset = (number - 1) * NODES_PER_PAGE
    nodes = overview.pool_nodes_page(session, pool, offset, NODES_PER_PAGE)
    latest = overview.latest_attestation_ids(session, pool.id, (node.name for node in nodes))
    return NodePage(nodes, latest, number, pages, offset + 1 if nodes else 0, total)


@router.get("/pools/{pool_id}", name="dashboard_pool")
def pool_nodes(request: Request, pool_id: int, page: int = 1) -> HTMLResponse:
    """A pool's nodes with live attestation state, Secure Boot, vTPM and labels, NODES_PER_PAGE a page."""
    with request.app.state.sessions() as session:
        pool = _pool(request, session, pool_id)
        return render(
            request, "nodes.html", cluster=pool.cluster, pool=pool, page=_node_page(session, pool, page)
        )


@router.get("/pools/{pool_id}/node-rows", name="dashboard_node_rows")
def pool_node_rows(request: Request, pool_id: int, page: int = 1) -> HTMLResponse:
    """One page of the node table body alone: what the nodes page polls."""
    with request.app.state.sessions() as session:
        pool = _pool(request, session, pool_id)
        return render(request, "node_rows.html", pool=pool, page=_node_page(session, pool, page))


@router.get("/pools/{pool_id}/nodes/{node_name}", name="dashboard_node_history")
def node_history(request: Request, pool_id: int, node_name: str) -> HTMLResponse:
    """The attestation history of one node of a pool, newest first: a timeline, then the attestations
    grouped by the VM and vTPM they came from."""
    with request.app.state.sessions() as session:
        pool = _pool(request, session, pool_id)
        records = overview.node_history(session, pool, node_name, HISTORY_LIMIT)
        if records is None:
            raise PageNotFound(f"node {node_name!r} of pool {pool.name!r}")
        node = next((node for node in pool.nodes if node.name == node_name), None)
        return render(
            request,
            "history.html",
            cluster=pool.cluster,
            pool=pool,
            node_name=node_name,
            node=node,
            rows=history_rows(records, node.enrolled_ak_name if node else None),
            timeline=node_timeline(records),
        )


def _alert_components(document: dict[str, Any]) -> str:
    properties = document.get("properties")
    extended = properties.get("extendedProperties") if isinstance(properties, dict) else None
    components = extended.get("failedComponents") if isinstance(extended, dict) else None
    return str(components) if components else "—"


def _alert_findings(document: dict[str, Any]) -> list[str]:
    """The alert's findings as operator lines ("PCR4: ..."), from its Defender-shaped document."""
    properties = document.get("properties")
    evidence = properties.get("supportingEvidence") if isinstance(properties, dict) else None
    findings = evidence.get("findings") if isinstance(evidence, dict) else None
    lines = []
    for finding in findings if isinstance(findings, list) else []:
        if isinstance(finding, dict):
            pcr = finding.get("pcr")
            message = str(finding.get("message", ""))
            lines.append(f"PCR{pcr}: {message}" if isinstance(pcr, int) else message)
    return lines


def _alert_remediation(document: dict[str, Any]) -> list[str]:
    """The alert's remediation steps (what was done, what to do), from its Defender-shaped document."""
    properties = document.get("properties")
    steps = properties.get("remediationSteps") if isinstance(properties, dict) else None
    return [str(step) for step in steps] if isinstance(steps, list) else []


@router.get("/alerts", name="dashboard_alerts")
def alerts(request: Request, status: str | None = None) -> HTMLResponse:
    """Integrity alerts in the token's scope, newest first (at most ALERT_LIMIT), optionally only those of
    one status (Active, InProgress or Resolved), each linking to its cluster, pool and node, with its
    remediation."""
    if status not in ALERT_STATUSES:
        status = None
    with request.app.state.sessions() as session:
        found = overview.visible_alerts(session, request.state.principal, status, ALERT_LIMIT)
        places = overview.alert_places(session, found)
        rows = []
        for alert in found:
            cluster_id, pool_id = places.get(
                (alert.subscription_id, alert.resource_group, alert.cluster_name, alert.pool_name),
                (None, None),
            )
            rows.append(
                {
                    "alert": alert,
                    "cluster_id": cluster_id,
                    "pool_id": pool_id,
                    "components": _alert_components(alert.document),
                    "findings": _alert_findings(alert.document),
                    "remediation": _alert_remediation(alert.document),
                }
            )
        return render(request, "alerts.html", rows=rows, status=status, statuses=ALERT_STATUSES)


ALERT_ACTIONS = {"acknowledge": alert_lifecycle.acknowledge, "resolve": alert_lifecycle.resolve}


@router.post("/alerts/{alert_id}/{action}", name="dashboard_alert_action")
def alert_action(request: Request, alert_id: str, action: str, status: str | None = None) -> Response:
    """Acknowledge (Active -> InProgress) or resolve an alert in the session's scope, then show the alerts
    again (with the `status` filter the page had)."""
    change = ALERT_ACTIONS.get(action)
    if change is None:
        raise PageNotFound(f"alert action {action!r}")
    with request.app.state.sessions.begin() as session:
        alert = overview.visible_alert(session, request.state.principal, alert_id)
        if alert is None:
            raise PageNotFound(f"alert {alert_id!r}")
        change(alert_lifecycle.lock(session, alert))
    target = str(request.url_for("dashboard_alerts").path)
    if status in ALERT_STATUSES:
        target += "?" + urlencode({"status": status})
    return RedirectResponse(target, status_code=303)


@router.get("/attestations/{record_id}", name="dashboard_attestation")
def attestation(request: Request, record_id: int, pcr: int | None = None) -> HTMLResponse:
    """One attestation's evidence: findings, the quoted PCRs next to the node's predicted ones, the event
    log grouped by PCR (only PCR `pcr` when given) with the failing events highlighted."""
    with request.app.state.sessions() as session:
        record = overview.attestation_record(session, record_id)
        if record is None:
            raise PageNotFound(f"attestation #{record_id}")
        pool = _pool(request, session, record.pool_id)
        view = build_evidence_view(record.event_log, record.findings or [])
        failed_pcrs = {finding.pcr for finding in view.findings if finding.pcr is not None}
        expected, no_expected = expected_pcrs(overview.current_vm_policy(session, record))
        return render(
            request,
            "evidence.html",
            cluster=pool.cluster,
            pool=pool,
            record=record,
            view=view,
            pcrs=pcr_rows(record.pcrs, expected),
            no_expected=no_expected,
            failed_pcrs=failed_pcrs,
            pcr=pcr,
        )
