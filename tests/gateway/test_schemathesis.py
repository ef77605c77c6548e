"""Schemathesis against a real gateway, from two specs: the Open Inference Protocol's own
OpenAPI document (what KServe/Triton/MLServer clients expect) and the gateway's openapi.json
(every route, admin included).

Each spec runs twice: once with the path parameters set to the model and versions the registry
really has (and the admin token sent), so that the generated headers and bodies reach the
parsers, and once with everything left as generated (unicode, traversal, junk). The checks are only "no 5xx" and "an error is JSON {"error": str}": the OIP
spec's error schemas are not ours to match, so 4xx bodies are judged by shape, not by schema.
The runs take about a minute together, so they are marked slow (CI runs them).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from starlette.routing import Route

import gateway
from gateway.admin import ADMIN_ROUTES
from gateway.app import create_app
from gateway.config import load_config
from gateway.endpoints import ROUTES
from tests._models import push_logreg
from tests._server import run_server

OIP_SPEC = Path(__file__).parent.parent / "data" / "open_inference_rest.yaml"
OWN_SPEC = Path(gateway.__file__).parent / "openapi.json"
MODEL = "churn"
VERSIONS = (1, 2)
ADMIN_TOKEN = "schemathesis-admin"
CONFIG = '[gateway]\nregistry = "registry"\nmax_body_bytes = 1048576\n\n[log]\ndir = "predlog"\n'
# Fuzzing steps per operation (the coverage and examples phases add their own cases): enough
# for at least 1,000 requests per spec across its two runs, in about a minute for both specs.
OIP_EXAMPLES = 40
OWN_EXAMPLES = 10
MIN_REQUESTS = 1000
# PredictRoute matches these four by splitting the path, so it has no `path` to read.
PREDICT_PATHS = (
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/v1/models/{model}:predict",
    "/v1/models/{model}/versions/{version}:predict",
)
# Answers whose documented body is not an error object.
NOT_ERRORS = {("GET", "/v2/health/ready", 503)}
# (spec, run) -> requests sent.
SENT: Counter[tuple[str, str]] = Counter()


def _load(path: Path, max_examples: int) -> Any:
    config = {"generation": {"mode": "all", "max-examples": max_examples, "database": "none"}}
    return schemathesis.openapi.from_path(path, config=schemathesis.Config.from_dict(config))


Case = schemathesis.Case[Any]
F = TypeVar("F", bound=Callable[..., None])


def parametrized(schema: Any) -> Callable[[F], F]:
    """`schema.parametrize()`, typed: one test per operation of the spec."""
    return cast(Callable[[F], F], schema.parametrize())


OIP = _load(OIP_SPEC, OIP_EXAMPLES)
OWN = _load(OWN_SPEC, OWN_EXAMPLES)


def _use_real_names(case: Case, n: int) -> None:
    """Point the case at the model the registry has, and at one of its versions in turn.

    Whatever schemathesis generated for the path (in its negative mode and coverage phase too)
    is replaced, so that the headers and bodies it generated reach the parsers."""
    for name in ("MODEL_NAME", "model"):
        if f"{{{name}}}" in case.operation.path:
            case.path_parameters[name] = MODEL
    for name in ("MODEL_VERSION", "version"):
        if f"{{{name}}}" in case.operation.path:
            case.path_parameters[name] = str(VERSIONS[n % len(VERSIONS)])


def error_is_json(ctx: Any, response: schemathesis.Response, case: Case) -> None:
    """A 4xx or 5xx answer is JSON {"error": "..."}: what every client of the gateway parses."""
    status = response.status_code
    if status < 400 or (case.method.upper(), case.operation.path, status) in NOT_ERRORS:
        return
    content_type = response.headers.get("content-type", [""])[0]
    assert content_type.startswith("application/json"), f"{status} answered as {content_type!r}"
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
        f"{status} body is not {{'error': str}}: {response.text[:200]!r}"
    )


@dataclass(frozen=True)
class Served:
    url: str
    config: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """churn v1 and v2 behind a gateway with a config file (the admin API writes routing)."""
    base = tmp_path_factory.mktemp("schemathesis")
    work = base / "work"
    work.mkdir()
    for seed in range(len(VERSIONS)):
        push_logreg(base / "registry", work, name=MODEL, seed=seed)
    path = base / "gatewatch.toml"
    path.write_text(CONFIG)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GATEWATCH_ADMIN_TOKEN", ADMIN_TOKEN)
        env.delenv("GATEWATCH_API_KEYS", raising=False)
        with run_server(create_app(load_config(path))) as url:
            yield Served(url, path)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def _restore(served: Served, session: requests.Session) -> None:
    """Put the routing back after an admin call, so every later case meets the same gateway."""
    served.config.write_text(CONFIG)
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert session.post(f"{served.url}/admin/reload", headers=auth, timeout=30).status_code == 200


def _settle(served: Served, session: requests.Session) -> None:
    """Wait until the server has logged the traceback of a failed request: Python 3.11 formats
    it with ast.parse, whose recursion counter is shared between threads, and a failure being
    reported here at the same moment would end in "AST constructor recursion depth mismatch".
    The server's event loop answers this request only once that logging is done."""
    session.get(f"{served.url}/v2/health/live", timeout=30)


def _exercise(case: Case, served: Served, session: requests.Session, spec: str, run: str) -> None:
    if run == "real":
        _use_real_names(case, SENT[spec, run])
    admin = case.operation.path.startswith("/admin/")
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin and run == "real" else {}
    try:
        response = case.call(base_url=served.url, session=session, headers=headers, timeout=30)
    except requests.ConnectionError:
        _settle(served, session)
        raise
    finally:
        SENT[spec, run] += 1
        if admin and run == "real":
            _restore(served, session)
    if response.status_code >= 500:
        _settle(served, session)
    case.validate_response(response, checks=[not_a_server_error, error_is_json])


@pytest.mark.slow
@parametrized(OIP)
def test_oip_spec_real_names(case: Case, served: Served, session: requests.Session) -> None:
    _exercise(case, served, session, "oip", "real")


@pytest.mark.slow
@parametrized(OIP)
def test_oip_spec_free_names(case: Case, served: Served, session: requests.Session) -> None:
    _exercise(case, served, session, "oip", "free")


@pytest.mark.slow
@parametrized(OWN)
def test_own_spec_real_names(case: Case, served: Served, session: requests.Session) -> None:
    _exercise(case, served, session, "own", "real")


@pytest.mark.slow
@parametrized(OWN)
def test_own_spec_free_names(case: Case, served: Served, session: requests.Session) -> None:
    _exercise(case, served, session, "own", "free")


@pytest.mark.slow
def test_request_budget(served: Served, request: pytest.FixtureRequest) -> None:
    """At least 1,000 generated requests per spec, counted over the runs above; the gateway
    still answers a well-formed prediction after all of them."""
    ran = {getattr(item, "originalname", item.name) for item in request.session.items}
    runs = {
        "test_oip_spec_real_names",
        "test_oip_spec_free_names",
        "test_own_spec_real_names",
        "test_own_spec_free_names",
    }
    if not runs <= ran:
        pytest.fail("the request budget is counted over the whole module: run all of it")
    print(f"requests sent: {dict(SENT)}")
    assert SENT["oip", "real"] + SENT["oip", "free"] >= MIN_REQUESTS
    assert SENT["own", "real"] + SENT["own", "free"] >= MIN_REQUESTS
    row = {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.5] * 20}
    r = httpx.post(f"{served.url}/v2/models/{MODEL}/infer", json={"inputs": [row]}, timeout=30)
    assert r.status_code == 200, r.text


def _documented() -> set[tuple[str, str]]:
    doc = json.loads(OWN_SPEC.read_text())
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_openapi_documents_every_route() -> None:
    """openapi.json lists exactly the routes of endpoints.py and admin.py, and itself."""
    served = {("POST", path) for path in PREDICT_PATHS}
    for route in [*ROUTES, *ADMIN_ROUTES]:
        if isinstance(route, Route):
            served |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    served.add(("GET", "/openapi.json"))
    assert _documented() == served


def test_openapi_is_valid_and_names_this_release() -> None:
    schema = schemathesis.openapi.from_path(OWN_SPEC)
    schema.validate()
    assert json.loads(OWN_SPEC.read_text())["info"]["version"] == gateway.__version__


def test_gateway_serves_its_openapi(served: Served) -> None:
    """The runs above load the document from the package; the gateway serves the same bytes."""
    r = httpx.get(f"{served.url}/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.content == OWN_SPEC.read_bytes()
