"""HTTP endpoints: parse the request, call the service, render the answer. Nothing else.

The predict routes, the only ones under load, are plain ASGI (`PredictRoute`); the others are
ordinary Starlette routes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import orjson
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.errors import GatewayError, InvalidInput, ModelNotFound, PayloadTooLarge
from gateway.models import Model
from gateway.protocol import (
    encode_json,
    new_request_id,
    parse_infer,
    parse_v1,
    render_infer,
    render_v1,
    request_id,
)
from gateway.service import Gateway

__all__ = ["ROUTES", "PredictRoute", "json_response", "read_body"]

JSON = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(encode_json(content), status_code=status, headers=headers, media_type=JSON)


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also admits '²' or '①', which int() refuses."""
    return text.isascii() and text.isdigit()


def _gw(request: Request) -> Gateway:
    return request.state.gateway  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not _digits(declared):
            raise InvalidInput("content-length must be a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes is over max_body_bytes ({limit})")
        return await request.body()
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over max_body_bytes ({limit})")
        chunks.append(chunk)
    return b"".join(chunks)


def _version(request: Request) -> int | None:
    raw = request.path_params.get("version")
    if raw is None:
        return None
    if not _digits(raw) or raw.startswith("0") or len(raw) > 9:
        raise InvalidInput(f"version {raw[:40]!r} must be a positive integer")
    return int(raw)


def _model_for(request: Request) -> Model:
    name = request.path_params["model"]
    version = _version(request)
    routes = _gw(request).table.routes(name)
    if version is None:
        if routes.primary is None:
            raise ModelNotFound(f"model {name!r} has no version loaded")
        return routes.versions[routes.primary]
    model = routes.versions.get(version)
    if model is None:
        raise ModelNotFound(
            f"model {name!r} version {version} is not loaded (loaded: {sorted(routes.versions)})"
        )
    return model


def _answer_headers(request_id: str, model: Model, route: str) -> dict[str, str]:
    return {"x-request-id": request_id, "x-model-version": str(model.version), "x-route": route}


def _schema(model: Model) -> tuple[list[str], bool]:
    inputs = model.manifest["inputs"]
    return inputs["names"], bool(inputs.get("allow_nan", False))


class _Headers(Mapping[str, str]):
    """Request headers as `Request.headers` reads them (first value wins), without a Request."""

    __slots__ = ("_raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw

    def get(self, key: str, default: Any = None) -> Any:
        name = key.encode("latin-1")
        for k, v in self._raw:
            if k == name:
                return v.decode("latin-1")
        return default

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[str]:
        return (k.decode("latin-1") for k, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)


async def _read_raw_body(receive: Receive, headers: _Headers, limit: int) -> bytes:
    """`read_body` on raw ASGI messages: the same refusals, in the same order."""
    declared = headers.get("content-length")
    if declared is not None:
        if not _digits(declared):
            raise InvalidInput("content-length must be a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes is over max_body_bytes ({limit})")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if declared is None and size > limit:
                raise PayloadTooLarge(f"body is over max_body_bytes ({limit})")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _version_param(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _digits(raw) or raw.startswith("0") or len(raw) > 9:
        raise InvalidInput(f"version {raw[:40]!r} must be a positive integer")
    return int(raw)


async def _answer(
    send: Send, status: int, content: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"content-length", str(len(content)).encode()), (b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": content})


def _answer_raw_headers(request_id: str, model: Model, route: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"x-request-id", request_id.encode("latin-1")),
        (b"x-model-version", str(model.version).encode()),
        (b"x-route", route.encode()),
    ]


async def _infer(
    gw: Gateway, name: str, version: int | None, headers: _Headers, receive: Receive, send: Send
) -> None:
    """POST /v2/models/{model}[/versions/{version}]/infer (Open Inference Protocol)."""
    started = time.perf_counter()
    model, route = gw.choose(name, version, headers)
    features, allow_nan = _schema(model)
    try:
        body = await _read_raw_body(receive, headers, gw.config.max_body_bytes)
        header = headers.get("inference-header-content-length")
        if header is not None and not _digits(header):
            raise InvalidInput("Inference-Header-Content-Length must be a number")
        parsed = parse_infer(
            body,
            int(header) if header is not None else None,
            features,
            max_rows=gw.config.max_batch_rows,
            allow_nan=allow_nan,
            output_names=model.manifest.get("outputs") or ("predict",),
        )
    except GatewayError as exc:
        rid = headers.get("x-request-id") or new_request_id()
        gw.log_refusal(model, route, rid, exc.status_code, exc.message)
        raise
    outcome = await gw.infer(model, route, parsed.X, parsed.id)
    content, extra = render_infer(
        name, model.version, parsed, outcome.prediction.labels, outcome.prediction.proba
    )
    content_type = extra.pop("content-type").encode()
    raw = [(k.encode(), v.encode()) for k, v in extra.items()]
    raw += _answer_raw_headers(parsed.id, model, route)
    gw.count_answer(model, route, started)
    await _answer(send, 200, content, content_type, raw)
    # After the answer is sent, like a background task: shadows never delay the caller.
    gw.mirror(name, parsed.X, parsed.id)


async def _predict_v1(
    gw: Gateway, name: str, version: int | None, headers: _Headers, receive: Receive, send: Send
) -> None:
    """POST /v1/models/{model}[/versions/{version}]:predict (KServe V1 `instances`)."""
    started = time.perf_counter()
    model, route = gw.choose(name, version, headers)
    features, allow_nan = _schema(model)
    rid: str | None = None
    try:
        rid = request_id(headers.get("x-request-id") or None, "x-request-id")
        body = await _read_raw_body(receive, headers, gw.config.max_body_bytes)
        X = parse_v1(body, features, max_rows=gw.config.max_batch_rows, allow_nan=allow_nan)
    except GatewayError as exc:
        gw.log_refusal(model, route, rid or new_request_id(), exc.status_code, exc.message)
        raise
    outcome = await gw.infer(model, route, X, rid)
    gw.count_answer(model, route, started)
    content = render_v1(outcome.prediction.labels)
    await _answer(send, 200, content, JSON.encode(), _answer_raw_headers(rid, model, route))
    gw.mirror(name, X, rid)


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the app's root_path when it is mounted under one."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :]
    return path


def _predict_path(path: str) -> tuple[bool, dict[str, str]] | None:
    """(is V1, path params) when `path` is one of the four predict paths, matched as the
    `{param}` (one non-empty segment) routes of Starlette would match it."""
    parts = path.split("/")
    n = len(parts)
    if n < 4 or parts[0] or parts[2] != "models" or not all(parts[3:]):
        return None
    if parts[1] == "v2":
        if n == 5 and parts[4] == "infer":
            return False, {"model": parts[3]}
        if n == 7 and parts[4] == "versions" and parts[6] == "infer":
            return False, {"model": parts[3], "version": parts[5]}
        return None
    if parts[1] == "v1" and parts[-1].endswith(":predict") and len(parts[-1]) > 8:
        if n == 4:
            return True, {"model": parts[3][:-8]}
        if n == 6 and parts[4] == "versions":
            return True, {"model": parts[3], "version": parts[5][:-8]}
    return None


class PredictRoute(BaseRoute):
    """The four predict routes as plain ASGI, placed first in the route list.

    These are the only routes under load. Splitting the path once replaces trying a regex per
    route, and answering with ASGI messages skips building a Request and a Response per call
    (measured in loadtests/RESULTS.md). Every refusal is still raised as a GatewayError or an
    HTTPException, so the app's exception handlers answer exactly as for any other route.
    """

    methods = frozenset({"POST"})

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        found = _predict_path(_route_path(scope))
        if found is None:
            return Match.NONE, {}
        v1, params = found
        child = {"endpoint": _predict_v1 if v1 else _infer, "path_params": params}
        return (Match.FULL if scope["method"] == "POST" else Match.PARTIAL), child

    def url_path_for(self, name: str, /, **path_params: Any) -> URLPath:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            raise HTTPException(status_code=405, headers={"Allow": "POST"})
        params = scope["path_params"]
        gw: Gateway = scope["state"]["gateway"]
        version = _version_param(params.get("version"))
        await scope["endpoint"](
            gw, params["model"], version, _Headers(scope["headers"]), receive, send
        )


async def feedback(request: Request) -> Response:
    gw = _gw(request)
    body = await read_body(request, gw.config.max_body_bytes)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise InvalidInput("an empty list of feedback")
    if len(items) > gw.config.max_batch_rows:
        raise InvalidInput(f"{len(items)} feedback items is more than max_batch_rows")
    accepted = gw.feedback(items)
    return json_response({"accepted": accepted}, status=202)


def _metadata(model: Model, versions: list[int] | None) -> dict[str, Any]:
    manifest = model.manifest
    n = int(manifest["inputs"]["count"])
    outputs: list[dict[str, Any]] = [
        {"name": "predict", "datatype": _label_type(model), "shape": [-1]}
    ]
    if model.has_proba and model.classes is not None:
        outputs.append(
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, len(model.classes)]}
        )
    return {
        "name": model.name,
        "versions": [str(v) for v in (versions or [model.version])],
        "platform": str(manifest.get("flavor", "sklearn")),
        "inputs": [
            {
                "name": "input-0",
                "datatype": manifest["inputs"].get("datatype", "FP64"),
                "shape": [-1, n],
            }
        ],
        "outputs": outputs,
        "parameters": {
            "version": str(model.version),
            "task": model.task,
            "feature_names": list(manifest["inputs"]["names"]),
            "classes": manifest.get("classes"),
        },
    }


def _label_type(model: Model) -> str:
    if model.task == "regression":
        return "FP64"
    if model.classes is not None:
        kind = model.classes.dtype.kind
        return {"b": "BOOL", "i": "INT64", "u": "INT64", "f": "FP64"}.get(kind, "BYTES")
    return "BYTES"


async def model_metadata(request: Request) -> Response:
    model = _model_for(request)
    versions = None
    if "version" not in request.path_params:
        versions = sorted(_gw(request).table.routes(model.name).versions)
    return json_response(_metadata(model, versions))


async def model_ready(request: Request) -> Response:
    model = _model_for(request)
    return json_response({"name": model.name, "version": str(model.version), "ready": True})


async def live(request: Request) -> Response:
    return json_response({"live": True})


async def ready(request: Request) -> Response:
    if not _gw(request).ready:
        return json_response({"ready": False}, status=503)
    return json_response({"ready": True})


async def server_metadata(request: Request) -> Response:
    return json_response(
        {"name": "gatewatch", "version": __version__, "extensions": ["binary_tensor_data"]}
    )


async def v1_models(request: Request) -> Response:
    table = _gw(request).table
    return json_response({"models": sorted(table.models)})


async def v1_model(request: Request) -> Response:
    model = _model_for(request)
    routes = _gw(request).table.routes(model.name)
    return json_response(
        {
            "name": model.name,
            "ready": True,
            "primary": routes.primary,
            "canary": routes.canary,
            "versions": sorted(routes.versions),
        }
    )


async def metrics(request: Request) -> Response:
    gw = _gw(request)
    gw.metrics.observe_predlog(gw.predlog_counters(), gw.predlog.queued)
    return Response(gw.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


ROUTES: list[BaseRoute] = [
    PredictRoute(),
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/models/{model}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
    Route("/v1/models", v1_models, methods=["GET"]),
    Route("/v1/models/{model}", v1_model, methods=["GET"]),
    Route("/v1/feedback", feedback, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
