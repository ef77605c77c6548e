"""Admin endpoints under /admin/, behind a bearer token.

GATEWATCH_ADMIN_TOKEN holds one token, or several as `name=token,name=token` so the audit trail
can say who acted. With none set the admin API is off and says so with 403.
"""

from __future__ import annotations

import os

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import audit
from gateway.endpoints import json_response, read_body
from gateway.errors import ConfigError, Forbidden, InvalidInput, Unauthorized
from gateway.middleware import match_token, parse_tokens
from gateway.registry import validate_name
from gateway.rollout import edit_routing, set_routing
from gateway.service import Gateway

__all__ = ["ADMIN_ROUTES", "authorize"]


def authorize(request: Request) -> str:
    """The name of the admin token presented (a lone token is named "admin")."""
    raw = os.environ.get("GATEWATCH_ADMIN_TOKEN", "")
    tokens = {("admin" if name == "key0" else name): t for name, t in parse_tokens(raw).items()}
    if not tokens:
        raise Forbidden("the admin API is disabled: set GATEWATCH_ADMIN_TOKEN to enable it")
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise Unauthorized("admin endpoints need 'Authorization: Bearer <token>'")
    found = match_token(header, tokens)
    if found is None:
        raise Forbidden("that admin token is not valid")
    return found


def _gw(request: Request) -> Gateway:
    return request.state.gateway  # type: ignore[no-any-return]


async def status(request: Request) -> Response:
    authorize(request)
    return json_response(_gw(request).status())


async def reload(request: Request) -> Response:
    who = authorize(request)
    gw = _gw(request)
    ok = await gw.reload("POST /admin/reload", who=f"admin:{who}")
    if ok:
        return json_response(gw.status())
    # Like every other refusal, an "error" that says why; the state shows what keeps serving.
    error = f"reload refused, the last good config keeps serving: {gw.last_reload['error']}"
    return json_response({"error": error, **gw.status()}, status=422)


async def put_routing(request: Request) -> Response:
    who = authorize(request)
    gw = _gw(request)
    name = request.path_params["model"]
    try:
        validate_name(name)
    except Exception as exc:
        raise InvalidInput(str(exc)) from None
    path = gw.config.path
    if path is None:
        raise InvalidInput("the gateway runs without a config file, so routing cannot be written")
    body = await read_body(request, 64 * 1024)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("body must be an object with primary, canary, shadow or sticky_header")
    why = str(data.pop("reason", "PUT /admin/models/{m}/routing"))[:500]
    try:
        before, after = edit_routing(path, name, set_routing(data))
    except ConfigError as exc:
        return json_response({"error": f"routing refused: {exc}"}, status=422)
    audit.append(
        gw.audit_path,
        who=f"admin:{who}",
        action="edit",
        model=name,
        before=before,
        after=after,
        why=why,
    )
    await gw.reload(f"routing of {name} set through the admin API", who=f"admin:{who}")
    return json_response(gw.status())


ADMIN_ROUTES = [
    Route("/admin/status", status, methods=["GET"]),
    Route("/admin/reload", reload, methods=["POST"]),
    Route("/admin/models/{model}/routing", put_routing, methods=["PUT"]),
]
