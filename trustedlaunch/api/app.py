"""The FastAPI application: ARM errors everywhere, bearer-token auth, a request body limit, the routes."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustedlaunch import __version__
from trustedlaunch.api import (
    attestation_monitor_routes,
    host_routes,
    metrics,
    monitoring_routes,
    routes,
    token_routes,
    upgrade_routes,
    verifier_routes,
)
from trustedlaunch.api.limits import RequestLimits
from trustedlaunch.attest.destinations import allowed_networks_from_environment
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.plane import ControlPlane
from trustedlaunch.control.system_data import tenant_from_environment
from trustedlaunch.control.tokens import PrincipalCache
from trustedlaunch.errors import TrustedLaunchError
from trustedlaunch.web import dashboard

MAX_BODY_BYTES = 1024 * 1024
JWKS_PATH = "/.well-known/jwks.json"
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
# relying parties verify attestation tokens without an account here: the signing keys are public
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", JWKS_PATH, OPENID_CONFIGURATION_PATH})
# paths every valid token may read, whatever its scope (they name no resource)
ANY_TOKEN_PATHS = frozenset({attestation_monitor_routes.ATTESTATION_MONITOR_PATH})
TOKEN_CACHE_SECONDS = 5.0  # longest time a token revoked by another server process keeps working here
TOKEN_CACHE_SIZE = 1024
HTTP_CODES = {
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
}


PUBLIC_URL_ENV = "TL_PUBLIC_URL"


def public_url_from_environment() -> str | None:
    """The base URL clients reach the API at (TL_PUBLIC_URL, e.g. https://tl.example.com behind a TLS
    proxy): the long-running operation URLs start with it. None when unset: they start with the request's
    own base URL (with X-Forwarded-Proto/-For honoured from FORWARDED_ALLOW_IPS proxies, uvicorn's default
    127.0.0.1). A value that is not an http(s) URL without query or fragment fails the start."""
    raw = os.environ.get(PUBLIC_URL_ENV, "").strip()
    if not raw:
        return None
    parsed = urlsplit(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.query or parsed.fragment:
        raise TrustedLaunchError(f"{PUBLIC_URL_ENV}: '{raw[:200]}' is not an http(s) base URL")
    return raw.rstrip("/")


def arm_response(error: ArmError, headers: dict[str, str] | None = None) -> JSONResponse:
    """An ARM error envelope with the error's HTTP status."""
    return JSONResponse(error.to_body(), status_code=error.status, headers=headers)


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 (by Content-Length, or while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return arm_response(
            ArmError(
                413,
                "RequestEntityTooLarge",
                f"The request body is larger than the limit of {self.max_bytes} bytes.",
                "body",
            )
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large()(scope, receive, send)
            return
        # Buffer the body (bounded) so chunked uploads are limited too, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


ARM_SEGMENTS = (
    "resourceGroups",
    "managedClusters",
    "agentPools",
    "Microsoft.ContainerService",
    "Microsoft.Features",
    "listClusterUserCredential",
    "listClusterAdminCredential",
    "kubernetesVersions",
    "Microsoft.Security",
    "alertWebhook",
    "getAttestationToken",
)
CANONICAL_SEGMENT = {name.lower(): name for name in ARM_SEGMENTS}
SEGMENT_PATTERN = re.compile(r"/(" + "|".join(map(re.escape, ARM_SEGMENTS)) + r")(?=/|$)", re.IGNORECASE)


class CanonicalArmPath:
    """ARM paths are case-insensitive: rewrite known segments (`resourcegroups`, `managedclusters`, ...)
    to the casing the routes use, so resource ids returned by the API can be used as-is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = SEGMENT_PATTERN.sub(lambda m: "/" + CANONICAL_SEGMENT[m.group(1).lower()], scope["path"])
            if path != scope["path"]:
                scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class BearerAuth:
    """Every route needs `Authorization: Bearer <token>` except PUBLIC_PATHS; refusals are 401 ARM errors. A
    token scoped to a subscription or resource group gets 403 AuthorizationFailed outside its scope (rules in
    control/tokens.py). Principals are cached (app.state.principals) for the app's token cache time; the
    request's principal is request.state.principal."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # the dashboard (/ui) authenticates its own requests with a session cookie
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS or dashboard.owns_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="trustedlaunch"'}
        if not header:
            error = ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed: the 'Authorization: Bearer <token>' header is missing "
                "(set TL_TOKEN; the bootstrap admin token is the server's config-dir file admin-token).",
            )
            await arm_response(error, challenge)(scope, receive, send)
            return
        principal = None
        if scheme.lower() == "bearer":
            principals: PrincipalCache = scope["app"].state.principals
            try:
                if scope["path"] in ANY_TOKEN_PATHS:
                    principal = principals.resolve(token.strip())
                else:
                    principal = principals.authorize(token.strip(), scope["method"], scope["path"])
            except ArmError as refused:
                await arm_response(refused)(scope, receive, send)
                return
        if principal is None:
            error = ArmError(
                401, "InvalidAuthenticationToken", "The bearer token is not valid for this server."
            )
            await arm_response(error, challenge)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal  # request.state.principal in the routes
        await self.app(scope, receive, send)


MAX_ECHOED_INPUT = 64  # characters of a refused value said back in an error
POOL_COUNT_RANGE = "greater than or equal to 0 and less than or equal to 1000"  # models.AgentPoolBody.count


def _validation_error(exc: RequestValidationError) -> ArmError:
    details = []
    for problem in exc.errors():
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        target = ".".join(location) or "body"
        out_of_range = problem.get("type") in ("greater_than_equal", "less_than_equal")
        if location and location[-1] == "count" and out_of_range:  # as AKS words it
            given = str(problem.get("input"))[:MAX_ECHOED_INPUT]
            message = (
                f"The value of parameter agentPoolProfile.count was {given}. It must be {POOL_COUNT_RANGE}."
            )
            details.append(ArmError(400, "InvalidParameter", message, target))
        else:
            message = f"{target}: {problem.get('msg', 'invalid value')}"
            details.append(ArmError(400, "InvalidRequestContent", message, target))
    first = details[0] if details else ArmError(400, "InvalidRequestContent", "The request is invalid.")
    if len(details) == 1 and first.code == "InvalidParameter":
        return first
    summary = "The request content is invalid: " + "; ".join(d.message for d in details)
    return ArmError(400, "InvalidRequestContent", summary, first.target, details)


def create_app(
    database_url: str | None = None,
    token_file: Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    token_issuer: TokenIssuer | None = None,
    token_cache_seconds: float = TOKEN_CACHE_SECONDS,
    plane: ControlPlane | None = None,
) -> FastAPI:
    """The API over the control plane `plane` (kept open: its owner closes it) or, without one, over a
    control plane it opens on start and closes on shutdown: the store at `database_url` (default store if
    None), admin token in `token_file`, attestation tokens from `token_issuer` (default: keys in
    `attestation-keys` beside the token file)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        serving = plane or ControlPlane(database_url, token_file, token_issuer=token_issuer)
        app.state.sessions = serving.sessions
        app.state.principals = PrincipalCache(serving.sessions, token_cache_seconds, TOKEN_CACHE_SIZE)
        app.state.token_issuer = serving.token_issuer
        app.state.challenges = serving.challenges
        try:
            yield
        finally:
            if plane is None:
                serving.close()

    app = FastAPI(
        title="trustedlaunch control plane",
        version=__version__,
        description="AKS-shaped API for trusted launch node pools (Microsoft.ContainerService subset).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    # Outermost last: header/URL limits, canonical ARM casing, authentication (before any body is read).
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(BearerAuth)
    app.add_middleware(CanonicalArmPath)
    app.add_middleware(RequestLimits)

    @app.exception_handler(ArmError)
    async def arm_error(_request: Request, exc: ArmError) -> JSONResponse:
        return arm_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return arm_response(_validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "BadRequest")
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return arm_response(ArmError(exc.status_code, code, message), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        message = f"{request.method} {request.url.path} failed on the server: {type(exc).__name__}: {exc}"
        return arm_response(ArmError(500, "InternalServerError", message[:2000]))

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(JWKS_PATH, include_in_schema=False)
    def jwks(request: Request) -> dict[str, object]:
        issuer: TokenIssuer = request.app.state.token_issuer
        return issuer.jwks()

    @app.get(OPENID_CONFIGURATION_PATH, include_in_schema=False)
    def openid_configuration(request: Request) -> dict[str, object]:
        issuer: TokenIssuer = request.app.state.token_issuer
        return issuer.openid_configuration(str(request.url_for("jwks")))

    app.state.webhook_networks = allowed_networks_from_environment()  # a bad setting fails the start
    app.state.public_url = public_url_from_environment()
    # the reconciler beside this API (BackgroundServer, `tl serve`) replaces it with what it runs
    app.state.attestation_monitor = attestation_monitor_routes.AttestationMonitorStatus.from_environment()
    tenant_from_environment()  # a TL_TENANT_ID that is not a GUID fails the start
    # first: the attestation hot path (1,000 requests/s) should not be matched against every ARM route
    app.include_router(verifier_routes.router)
    app.include_router(routes.router)
    app.include_router(upgrade_routes.router)
    app.include_router(monitoring_routes.router)
    app.include_router(metrics.router)
    app.include_router(token_routes.router)
    app.include_router(host_routes.router)
    app.include_router(attestation_monitor_routes.router)
    app.include_router(dashboard.router)
    return app
