"""Plain ASGI middleware in front of the router: load shedding and optional API keys.

Load shedding answers 503 with Retry-After at once when a worker already has `max_in_flight`
requests, instead of letting a queue grow until every caller times out. API keys (bearer,
compared in constant time) guard the prediction and feedback endpoints when
GATEWATCH_API_KEYS is set; health, server metadata and /metrics stay open for probes.
"""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.metrics import GatewayMetrics
from gateway.protocol import encode_json

__all__ = ["ApiKeys", "LoadShedding", "parse_tokens"]

OPEN_PATHS = ("/v2/health/", "/metrics", "/openapi.json")


async def _error(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = encode_json({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class LoadShedding:
    def __init__(self, app: ASGIApp, max_in_flight: int, metrics: GatewayMetrics) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            self.metrics.shed.inc()
            await _error(
                send,
                503,
                f"overloaded: {self.in_flight} requests in flight on this worker (max_in_flight); retry shortly",
                [(b"retry-after", b"1")],
            )
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()


def parse_tokens(raw: str) -> dict[str, str]:
    """`token` or `name=token,name=token` (names show in the audit trail)."""
    tokens = {}
    for i, part in enumerate(p.strip() for p in raw.split(",") if p.strip()):
        name, sep, token = part.partition("=")
        tokens[name if sep else f"key{i}"] = token if sep else part
    return tokens


def match_token(header: str, tokens: dict[str, str]) -> str | None:
    """The name of the bearer token presented, checking every token in constant time."""
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented:
        return None
    found = None
    for name, token in tokens.items():
        if hmac.compare_digest(presented.encode(), token.encode()):
            found = name
    return found


class ApiKeys:
    def __init__(self, app: ASGIApp, tokens: dict[str, str] | None = None) -> None:
        self.app = app
        self.tokens = (
            parse_tokens(os.environ.get("GATEWATCH_API_KEYS", "")) if tokens is None else tokens
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        guarded = path.startswith(("/v1/", "/v2/models")) and scope["type"] == "http"
        if not self.tokens or not guarded:
            await self.app(scope, receive, send)
            return
        header = ""
        for key, value in scope["headers"]:
            if key == b"authorization":
                header = value.decode("latin-1")
        if not header:
            await _error(send, 401, "this gateway needs 'Authorization: Bearer <api key>'", [])
            return
        if match_token(header, self.tokens) is None:
            await _error(send, 403, "that API key is not valid", [])
            return
        await self.app(scope, receive, send)
