"""The gateway's Starlette app: a factory, a lifespan that owns the shared state, error mapping."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.admin import ADMIN_ROUTES
from gateway.config import GatewayConfig, load_config
from gateway.endpoints import ROUTES, json_response
from gateway.errors import GatewayError, Overloaded
from gateway.middleware import ApiKeys, LoadShedding
from gateway.service import Gateway

__all__ = ["create_app", "create_app_from_env"]

log = logging.getLogger("gatewatch.gateway")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    gw: Gateway | None = getattr(request.state, "gateway", None)
    if gw is not None and exc.status_code < 500:
        gw.metrics.client_errors.labels(str(exc.status_code)).inc()
    headers = {"retry-after": "1"} if isinstance(exc, Overloaded) else None
    return json_response({"error": exc.message}, status=exc.status_code, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: f"no such endpoint: {request.url.path[:200]}",
        405: f"method {request.method} is not allowed here",
    }
    message = messages.get(exc.status_code, str(exc.detail))
    return json_response(
        {"error": message}, status=exc.status_code, headers=dict(exc.headers or {})
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return json_response({"error": f"internal error: {type(exc).__name__}"}, status=500)


OPENAPI = (Path(__file__).parent / "openapi.json").read_bytes()


async def openapi(request: Request) -> Response:
    """The gateway's own OpenAPI document (the Open Inference Protocol routes and ours)."""
    return Response(OPENAPI, media_type="application/json")


def create_app(config: GatewayConfig, *, seed: int | None = None) -> Starlette:
    gateway = Gateway(config, seed=seed)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await gateway.start()
        # What is loaded by now (scikit-learn, scipy, the models: a million objects) lives as
        # long as the process. Left in the collector's oldest generation, every full collection
        # walked it and stopped the loop for ~100 ms, the p99 of a loaded server.
        gc.collect()
        gc.freeze()
        try:
            yield {"gateway": gateway}
        finally:
            gc.unfreeze()
            await gateway.stop()

    middleware = [
        Middleware(LoadShedding, max_in_flight=config.max_in_flight, metrics=gateway.metrics),
        Middleware(ApiKeys),
    ]
    if config.cors_origins:
        # Off unless configured: a browser page on another origin may not call the API.
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "content-type"],
            ),
        )
    app = Starlette(
        middleware=middleware,
        routes=[*ROUTES, *ADMIN_ROUTES, Route("/openapi.json", openapi, methods=["GET"])],
        lifespan=lifespan,
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )
    app.state.gateway = gateway
    return app


def create_app_from_env() -> Starlette:
    """Factory for uvicorn workers: the config path travels in GATEWATCH_CONFIG."""
    path = os.environ.get("GATEWATCH_CONFIG") or None
    seed = os.environ.get("GATEWATCH_SEED")
    return create_app(load_config(path), seed=int(seed) if seed else None)
