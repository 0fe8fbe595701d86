"""Limits on the request line and headers: URL path and query length (414), number of headers, one header's
size and all headers' size (431), answered with ARM errors before anything else runs.

The server bounds what reaches the app first: uvicorn runs with h11 (`UVICORN_HTTP`), whose receive buffer
for a request line plus headers is capped at H11_MAX_INCOMPLETE_EVENT_SIZE; a request over that cap never
reaches the app and gets uvicorn's plain-text 400 with the connection closed. The cap sits above these
limits, so every request between the two gets its ARM error from RequestLimits.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from trustedlaunch.control.errors import ArmError

MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 4096
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 8192  # one header: name + value
MAX_HEADERS_TOTAL_BYTES = 32 * 1024  # every header as on the wire ("name: value\r\n")
UVICORN_HTTP = "h11"  # the HTTP implementation whose buffer limit is configured (httptools has none)
H11_MAX_INCOMPLETE_EVENT_SIZE = 64 * 1024
SHOWN_NAME_CHARS = 64


@dataclass(frozen=True)
class HeaderLimits:
    """The limits one app enforces (the module constants by default)."""

    max_path_bytes: int = MAX_PATH_BYTES
    max_query_bytes: int = MAX_QUERY_BYTES
    max_header_count: int = MAX_HEADER_COUNT
    max_header_bytes: int = MAX_HEADER_BYTES
    max_headers_total_bytes: int = MAX_HEADERS_TOTAL_BYTES

    def violation(self, scope: Scope) -> ArmError | None:
        """The ARM error for the first limit the request exceeds, or None."""
        path = scope.get("raw_path") or scope["path"].encode()
        if len(path) > self.max_path_bytes:
            return ArmError(
                414,
                "RequestUriTooLong",
                f"The request URL path is {len(path)} bytes long; the limit is {self.max_path_bytes} bytes.",
                "path",
            )
        query = scope.get("query_string", b"")
        if len(query) > self.max_query_bytes:
            return ArmError(
                414,
                "RequestUriTooLong",
                f"The query string is {len(query)} bytes long; the limit is {self.max_query_bytes} bytes.",
                "query",
            )
        headers = scope["headers"]
        if len(headers) > self.max_header_count:
            return ArmError(
                431,
                "RequestHeaderFieldsTooLarge",
                f"The request has {len(headers)} headers; the limit is {self.max_header_count}.",
                "headers",
            )
        total = 0
        for name, value in headers:
            size = len(name) + len(value)
            if size > self.max_header_bytes:
                shown = name[:SHOWN_NAME_CHARS].decode("latin-1")
                return ArmError(
                    431,
                    "RequestHeaderFieldsTooLarge",
                    f"Header '{shown}' is {size} bytes long; the limit for one header is "
                    f"{self.max_header_bytes} bytes.",
                    shown,
                )
            total += size + 4
        if total > self.max_headers_total_bytes:
            return ArmError(
                431,
                "RequestHeaderFieldsTooLarge",
                f"The request headers total {total} bytes; the limit is {self.max_headers_total_bytes} "
                "bytes.",
                "headers",
            )
        return None


class RequestLimits:
    """ASGI middleware refusing HTTP requests over `limits` with an ARM error (the outermost middleware)."""

    def __init__(self, app: ASGIApp, limits: HeaderLimits | None = None) -> None:
        self.app = app
        self.limits = limits or HeaderLimits()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            error = self.limits.violation(scope)
            if error is not None:
                response = JSONResponse(
                    error.to_body(), status_code=error.status, headers={"Connection": "close"}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
