"""HTTP endpoints: parse the request, call the service, render the answer. Nothing else."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import __version__
from gateway.errors import GatewayError, InvalidInput, ModelNotFound, PayloadTooLarge
from gateway.models import Model
from gateway.protocol import encode_json, parse_infer, parse_v1, render_infer, render_v1
from gateway.service import Gateway

__all__ = ["ROUTES", "json_response", "read_body"]

JSON = "application/json"


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(encode_json(content), status_code=status, headers=headers, media_type=JSON)


def _gw(request: Request) -> Gateway:
    return request.state.gateway  # type: ignore[no-any-return]


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
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
    if not raw.isdigit() or raw.startswith("0") or len(raw) > 9:
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


async def infer(request: Request) -> Response:
    gw = _gw(request)
    name = request.path_params["model"]
    model, route = gw.choose(name, _version(request), request.headers)
    features, allow_nan = _schema(model)
    try:
        body = await read_body(request, gw.config.max_body_bytes)
        header = request.headers.get("inference-header-content-length")
        if header is not None and not header.isdigit():
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
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        gw.log_refusal(model, route, rid, exc.status_code, exc.message)
        raise
    outcome = gw.predict(model, route, parsed.X, parsed.id)
    content, headers = render_infer(
        name, model.version, parsed, outcome.prediction.labels, outcome.prediction.proba
    )
    headers.update(_answer_headers(parsed.id, model, route))
    gw.metrics.requests.labels(name, str(model.version), route, "200").inc()
    task = BackgroundTask(gw.mirror, name, parsed.X, parsed.id) if gw.table.shadows(name) else None
    return Response(content, headers=headers, background=task)


async def predict_v1(request: Request) -> Response:
    gw = _gw(request)
    name = request.path_params["model"]
    model, route = gw.choose(name, _version(request), request.headers)
    features, allow_nan = _schema(model)
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    try:
        body = await read_body(request, gw.config.max_body_bytes)
        X = parse_v1(body, features, max_rows=gw.config.max_batch_rows, allow_nan=allow_nan)
    except GatewayError as exc:
        gw.log_refusal(model, route, request_id, exc.status_code, exc.message)
        raise
    outcome = gw.predict(model, route, X, request_id)
    gw.metrics.requests.labels(name, str(model.version), route, "200").inc()
    task = BackgroundTask(gw.mirror, name, X, request_id) if gw.table.shadows(name) else None
    return Response(
        render_v1(outcome.prediction.labels),
        headers=_answer_headers(request_id, model, route),
        media_type=JSON,
        background=task,
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


ROUTES = [
    Route("/v2/health/live", live, methods=["GET"]),
    Route("/v2/health/ready", ready, methods=["GET"]),
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/models/{model}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/infer", infer, methods=["POST"]),
    Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    Route("/v1/models", v1_models, methods=["GET"]),
    Route("/v1/models/{model}:predict", predict_v1, methods=["POST"]),
    Route("/v1/models/{model}/versions/{version}:predict", predict_v1, methods=["POST"]),
    Route("/v1/models/{model}", v1_model, methods=["GET"]),
    Route("/v1/feedback", feedback, methods=["POST"]),
    Route("/metrics", metrics, methods=["GET"]),
]
