"""Limits on the request line and headers: URL path and query length (414), number of headers, one header's
size and all headers' size (431), answered with ARM errors before anything else runs.

The server bounds what reaches the app first: uvicorn runs with `HeadCappedHttpToolsProtocol` (its fast
httptools parser, which has no limit of its own), which refuses a request head still incomplete after
MAX_INCOMPLETE_HEAD_BYTES with a 431 ARM error and closes the connection, so a client cannot make the server
buffer an endless request line or header. Complete heads reach the app, where RequestLimits applies the
finer limits below (all under that cap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from trustedlaunch.control.errors import ArmError

MAX_PATH_BYTES = 2048
MAX_QUERY_BYTES = 4096
MAX_HEADER_COUNT = 100
MAX_HEADER_BYTES = 8192  # one header: name + value
MAX_HEADERS_TOTAL_BYTES = 32 * 1024  # every header as on the wire ("name: value\r\n")
MAX_INCOMPLETE_HEAD_BYTES = 64 * 1024  # received bytes of a request head that has not ended yet
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


class HeadCappedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools HTTP/1.1 protocol with a bound on an unfinished request head: once more than
    MAX_INCOMPLETE_HEAD_BYTES arrived without the head ending, answer 431 (ARM error) and close.

    Bytes are counted per received chunk while a head is open. The chunk in which a pipelined request ended
    and the next one's head began is not counted (where the new head starts in it is unknown), so buffering
    stays under the cap plus two chunks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_open = True
        self._head_bytes = 0
        self._head_reopened = False

    def on_headers_complete(self) -> None:
        self._head_open = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._head_open, self._head_bytes, self._head_reopened = True, 0, True
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        self._head_reopened = False
        super().data_received(data)
        if not self._head_open or self._head_reopened or self.transport.is_closing():
            return
        self._head_bytes += len(data)
        if self._head_bytes > MAX_INCOMPLETE_HEAD_BYTES:
            self._refuse_head()

    def _refuse_head(self) -> None:
        error = ArmError(
            431,
            "RequestHeaderFieldsTooLarge",
            f"The request line and headers did not end within {MAX_INCOMPLETE_HEAD_BYTES} bytes.",
            "headers",
        )
        body = json.dumps(error.to_body()).encode()
        head = b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        self.transport.write(STATUS_LINE[431] + head % len(body) + body)
        self.transport.close()
