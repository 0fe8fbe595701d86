"""The FastAPI application: ARM errors everywhere, bearer-token auth, a request body limit, the routes."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import platformdirs
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trustedlaunch import __version__
from trustedlaunch.api import metrics, routes
from trustedlaunch.attest.tokens import TokenIssuer
from trustedlaunch.control.bootstrap import open_store
from trustedlaunch.control.errors import ArmError
from trustedlaunch.control.tokens import token_is_valid

MAX_BODY_BYTES = 1024 * 1024
JWKS_PATH = "/.well-known/jwks.json"
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
ATTESTATION_ISSUER = "urn:trustedlaunch:attestation"  # `iss` of attestation tokens unless one is given
# relying parties verify attestation tokens without an account here: the signing keys are public
PUBLIC_PATHS = frozenset({"/healthz", "/openapi.json", JWKS_PATH, OPENID_CONFIGURATION_PATH})
TOKEN_CACHE_SECONDS = 30.0
TOKEN_CACHE_SIZE = 1024
HTTP_CODES = {
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
}


def default_token_file() -> Path:
    """Where the bootstrap admin token is written: `admin-token` in the user config dir."""
    return Path(platformdirs.user_config_dir("trustedlaunch")) / "admin-token"


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
    """Every route needs `Authorization: Bearer <token>` except PUBLIC_PATHS; refusals are 401 ARM errors.
    Valid tokens are remembered for TOKEN_CACHE_SECONDS to spare a database read per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.valid_until: dict[str, float] = {}

    def _token_is_valid(self, scope: Scope, token: str) -> bool:
        now = time.monotonic()
        if self.valid_until.get(token, 0.0) > now:
            return True
        with scope["app"].state.sessions() as session:
            valid = token_is_valid(session, token)
        if valid:
            if len(self.valid_until) > TOKEN_CACHE_SIZE:
                self.valid_until.clear()
            self.valid_until[token] = now + TOKEN_CACHE_SECONDS
        return valid

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
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
        if scheme.lower() != "bearer" or not self._token_is_valid(scope, token.strip()):
            error = ArmError(
                401, "InvalidAuthenticationToken", "The bearer token is not valid for this server."
            )
            await arm_response(error, challenge)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _validation_error(exc: RequestValidationError) -> ArmError:
    details = []
    for problem in exc.errors():
        location = [str(part) for part in problem.get("loc", ()) if part != "body"]
        target = ".".join(location) or "body"
        message = f"{target}: {problem.get('msg', 'invalid value')}"
        details.append(ArmError(400, "InvalidRequestContent", message, target))
    first = details[0] if details else ArmError(400, "InvalidRequestContent", "The request is invalid.")
    summary = "The request content is invalid: " + "; ".join(d.message for d in details)
    return ArmError(400, "InvalidRequestContent", summary, first.target, details)


def create_app(
    database_url: str | None = None,
    token_file: Path | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    token_issuer: TokenIssuer | None = None,
) -> FastAPI:
    """The API over the store at `database_url` (default store if None); admin token in `token_file`;
    attestation tokens from `token_issuer` (default: keys in `attestation-keys` beside the token file)."""
    token_path = token_file or default_token_file()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine, sessions = open_store(database_url, token_path)
        app.state.sessions = sessions
        app.state.token_issuer = token_issuer or TokenIssuer(
            token_path.parent / "attestation-keys", issuer=ATTESTATION_ISSUER
        )
        yield
        engine.dispose()

    app = FastAPI(
        title="trustedlaunch control plane",
        version=__version__,
        description="AKS-shaped API for trusted launch node pools (Microsoft.ContainerService subset).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    app.add_middleware(BearerAuth)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(CanonicalArmPath)

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

    app.include_router(routes.router)
    app.include_router(metrics.router)
    return app
