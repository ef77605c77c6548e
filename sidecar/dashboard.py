"""The sidecar's dashboard: two HTML pages, their static files and the JSON they chart.

Pages are static files rendered in the browser from the sidecar's own JSON endpoints
(``/status``, ``/alerts``, ``/webhooks``, ``/rollouts``, and the two added here), so there is
no build step and no template engine; they load nothing from outside the sidecar, which a
Content-Security-Policy of ``'self'`` enforces. Every URL in the pages is relative, so the
dashboard also works behind a reverse proxy that mounts the sidecar under a prefix.

Routes (``dashboard_routes()``):

* ``GET /`` overview, one card per model; ``GET /ui/models/{model}`` one model's page;
* ``GET /static/...`` the page's CSS, JS and the vendored uPlot;
* ``GET /history/{model}[?minutes=N]`` the model's per-minute series (``History.series``),
  with the current status as its newest point;
* ``GET /histogram/{model}/{version}/{feature}`` reference bins of a feature (manifest) and
  the counts of the version's last input rows over the same edges.

The history is the ``History`` the consumer keeps in ``Sidecar.extra[HISTORY_KEY]``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.errors import RegistryError
from gateway.registry import NAME_RE, read_manifest
from sidecar.responses import ORJSONResponse

if TYPE_CHECKING:
    from sidecar.app import Sidecar
from sidecar.history import HISTORY_KEY, History, current_canary_weights

__all__ = ["DASHBOARD_PATH", "STATIC_DIR", "dashboard_routes"]

DASHBOARD_PATH = "/"
"""Where the overview is served; the model pages are under ``/ui/models/``."""
STATIC_DIR = Path(__file__).parent / "static"

# Pages may only talk to the sidecar itself. uPlot sizes its elements through inline styles.
_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
}


def _page(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def _sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.state.sidecar
    return sidecar


def _error(message: str, status: int) -> Response:
    return ORJSONResponse({"error": message}, status)


async def overview_page(request: Request) -> Response:
    return HTMLResponse(_page("index.html"), headers=_HEADERS)


async def model_page(request: Request) -> Response:
    name = request.path_params["model"]
    if not NAME_RE.match(name):
        return HTMLResponse("<!doctype html><title>Not Found</title><p>No such model.", 404)
    return HTMLResponse(_page("model.html"), headers=_HEADERS)


async def history_endpoint(request: Request) -> Response:
    name = request.path_params["model"]
    window = request.query_params.get("minutes")
    if window is not None and (not window.isdigit() or int(window) < 1):
        return _error(f"minutes must be a positive whole number, got {window!r}", 400)
    minutes = int(window) if window is not None else None
    sidecar = _sidecar(request)
    history = sidecar.extra.get(HISTORY_KEY)
    if not isinstance(history, History):
        return _error("this sidecar keeps no history", 404)
    status = await sidecar.status()
    if name not in status["models"] and name not in history.models():
        return _error(f"unknown model {name!r}: no record of it yet", 404)
    path = sidecar.config.path

    def build() -> dict[str, Any]:
        weights = current_canary_weights(path) if path is not None else None
        return history.series(name, live=status, canary_weights=weights, minutes=minutes)

    return ORJSONResponse(await asyncio.to_thread(build))


async def histogram_endpoint(request: Request) -> Response:
    name = request.path_params["model"]
    version: int = request.path_params["version"]
    feature = request.path_params["feature"]
    sidecar = _sidecar(request)
    try:
        manifest = await asyncio.to_thread(read_manifest, sidecar.config.registry, name, version)
    except RegistryError as exc:
        return _error(str(exc), 404)
    names = list((manifest.get("inputs") or {}).get("names") or [])
    reference = ((manifest.get("reference") or {}).get("features") or {}).get(feature)
    if feature not in names or not isinstance(reference, dict) or not reference.get("edges"):
        return _error(f"{name} v{version}: no reference statistics for feature {feature!r}", 404)
    edges = [float(e) for e in reference["edges"]]
    counts = [int(c) for c in reference.get("counts") or []]
    history = sidecar.extra.get(HISTORY_KEY)
    live, rows = (
        history.live_histogram(name, version, names.index(feature), edges)
        if isinstance(history, History)
        else ([], 0)
    )
    model = await sidecar.model_status(name)
    versions = (model or {}).get("versions", {})
    drift = versions.get(str(version), {}).get("feature_drift", {}).get("features", {})
    return ORJSONResponse(
        {
            "model": name,
            "version": version,
            "feature": feature,
            "edges": edges,
            "reference": {"counts": counts, "share": _shares(counts), "rows": sum(counts)},
            "live": {"counts": live, "share": _shares(live), "rows": rows},
            "drift": drift.get(feature),
        }
    )


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total for c in counts] if total else [0.0 for _ in counts]


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes, for ``create_app(config, extra_routes=dashboard_routes())``."""
    return [
        Route(DASHBOARD_PATH, overview_page, methods=["GET"]),
        Route("/ui/models/{model}", model_page, methods=["GET"]),
        Route("/history/{model}", history_endpoint, methods=["GET"]),
        Route("/histogram/{model}/{version:int}/{feature}", histogram_endpoint, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
