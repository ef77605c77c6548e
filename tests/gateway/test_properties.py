"""Property-based tests of the request parsers, through a real gateway.

Hypothesis writes the bodies: any JSON value, nested junk, huge numbers, huge ids, unicode and
wrong types, in the V2 (JSON and binary tensor extension), V1, feedback and admin routing
bodies; most start from a well-formed request and then break one part of it, so that each part
of the parsers gets reached. The properties:

- never a 500, and never a connection dropped without an answer;
- a 4xx always carries JSON {"error": str};
- a 200 carries the shape documented in gateway/openapi.json (and a well-formed request gets it,
  with one answer per row and its id echoed);
- the gateway keeps serving afterwards.

The bugs these tests found (all fixed since) are kept at the end as regression tests.
"""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import gateway
from gateway.app import create_app
from gateway.config import load_config
from tests._models import push_linreg, push_logreg
from tests._server import run_server

MAX_ROWS = 16
ADMIN_TOKEN = "properties-admin"
CONFIG = (
    f'[gateway]\nregistry = "registry"\nmax_batch_rows = {MAX_ROWS}\n'
    'max_body_bytes = 262144\n\n[log]\ndir = "predlog"\n'
)
TOKEN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
ROW = [0.5] * 20
V2 = "/v2/models/churn/infer"
V1 = "/v1/models/churn:predict"
FEEDBACK = "/v1/feedback"
ROUTING = "/admin/models/churn/routing"
# The registry: a 20-feature classifier (v1, v2) and a 3-feature regressor (see tests._models).
FEATURES = {"churn": [f"f{i}" for i in range(20)], "price": [f"f{i}" for i in range(3)]}
# The binary tensor extension's datatypes, as little-endian numpy types.
NUMPY_TYPES = {
    name: np.dtype(code)
    for name, code in [
        ("BOOL", "?"),
        ("UINT8", "u1"),
        ("UINT16", "<u2"),
        ("UINT32", "<u4"),
        ("UINT64", "<u8"),
        ("INT8", "i1"),
        ("INT16", "<i2"),
        ("INT32", "<i4"),
        ("INT64", "<i8"),
        ("FP16", "<f2"),
        ("FP32", "<f4"),
        ("FP64", "<f8"),
    ]
}
DATATYPES = list(NUMPY_TYPES)
SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OPENAPI = json.loads((Path(gateway.__file__).parent / "openapi.json").read_text())


def documented(name: str) -> Any:
    """A validator for one schema of gateway/openapi.json (its $refs resolve in the document)."""
    return jsonschema_rs.validator_for(
        {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    )


INFERENCE_RESPONSE = documented("InferenceResponse")
V1_RESPONSE = documented("V1PredictResponse")
STATUS = documented("Status")
ERROR = documented("Error")


# --- strategies --------------------------------------------------------------------------------

HUGE_INTS = st.sampled_from(
    [2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**101, 10**400, -(10**400)]
)
EXTREMES = st.sampled_from(
    [1e308, -1e308, 1e101, 1e100, -1e100, 5e-324, -0.0, 1.7976931348623157e308]
)
NUMBERS = st.floats() | st.integers() | HUGE_INTS | EXTREMES
TEXT = st.text(max_size=40)
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TEXT, inner, max_size=6),
    max_leaves=30,
)
# A clean value is one a model takes: finite and within the gateway's ±1e100 bound.
CLEAN = st.floats(min_value=-1e100, max_value=1e100) | st.integers(-(2**53), 2**53)
ANY_VALUE = CLEAN | st.booleans() | HUGE_INTS | EXTREMES | st.floats() | TEXT | st.none()
# Nested lists, beyond numpy's 64 dimensions (the explicit cases below go past the JSON parser's
# 1024 levels; here the depth stays well inside Python's recursion limit, which json.dumps needs).
DEEP = st.integers(1, 200).map(lambda d: json.loads("[" * d + "]" * d))


# The ids the gateway takes: they are echoed in x-request-id, so printable ASCII without outer
# blanks (the error message and gateway/openapi.json say so).
ID_RE = re.compile(r"[!-~](?:[ -~]{0,254}[!-~])?")


SAFE_CHARS = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")
IDS = (
    st.from_regex(ID_RE, fullmatch=True)
    | st.text(SAFE_CHARS, min_size=1, max_size=256)
    | st.text(min_size=1, max_size=3000)
    | st.just("")
    | st.from_regex(ID_RE, fullmatch=True).map(lambda v: v + "\n")
    | JSON_VALUES.filter(lambda v: not isinstance(v, str))
)
# The request id a feedback item refers to is only stored, never echoed: any unicode.
FEEDBACK_IDS = st.text(min_size=1, max_size=256) | st.text(min_size=257, max_size=1000)


def dump(value: Any) -> bytes:
    """JSON the way a careless client writes it: NaN and Infinity literals and integers beyond
    64 bits go out as they are (orjson would refuse to write them)."""
    return json.dumps(value, ensure_ascii=False).encode()


@dataclass
class Sent:
    """A request and what a correct answer to it must be."""

    path: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    model: str = "churn"
    # Rows (or feedback items) in the body as built, and whether the request is well formed:
    # then it must get its 2xx, with one answer per row.
    rows: int = 0
    well_formed: bool = False
    request_id: str | None = None


def _matrix(draw: st.DrawFn, n_features: int, clean: bool) -> list[list[Any]]:
    rows = draw(st.integers(0, MAX_ROWS + 2))
    value = CLEAN if clean else ANY_VALUE
    return draw(
        st.lists(
            st.lists(value, min_size=n_features, max_size=n_features), min_size=rows, max_size=rows
        )
    )


def _break(draw: st.DrawFn, body: dict[str, Any], keys: list[str]) -> bool:
    """Replace, drop or add one part of `body` (or of its first input); True if it did."""
    if not draw(st.booleans()):
        return False
    target: dict[str, Any] = body
    if "inputs" in body and body["inputs"] and draw(st.booleans()):
        target = body["inputs"][0]
    key = draw(st.sampled_from([*keys, *target.keys()]) | TEXT)
    action = draw(st.sampled_from(["replace", "drop", "nest"]))
    if action == "drop":
        target.pop(key, None)
    elif action == "nest":
        target[key] = draw(DEEP)
    else:
        target[key] = draw(JSON_VALUES)
    return True


@st.composite
def v2_requests(draw: st.DrawFn) -> Sent:
    model = draw(st.sampled_from(sorted(FEATURES)))
    features = FEATURES[model]
    clean = draw(st.booleans())
    X = _matrix(draw, len(features), clean)
    rows = len(X)
    datatype = draw(st.sampled_from(DATATYPES))
    layout = draw(st.sampled_from(["flat", "nested", "per-feature", "binary"]))
    binary = b""
    inputs: list[dict[str, Any]]
    if layout == "per-feature":
        inputs = [
            {"name": f, "shape": [rows], "datatype": datatype, "data": [r[i] for r in X]}
            for i, f in enumerate(features)
        ]
    elif layout == "binary":
        dtype = NUMPY_TYPES[datatype]
        if clean:
            dtype, datatype = np.dtype("<f8"), "FP64"
            arr = np.asarray(X, dtype=dtype).reshape(rows, len(features))
        else:
            arr = draw(arrays(dtype, (rows, len(features))))
        binary = arr.tobytes()
        size = draw(st.just(len(binary)) | st.integers(-1, 2 * len(binary) + 8))
        inputs = [
            {
                "name": "input-0",
                "shape": [rows, len(features)],
                "datatype": datatype,
                "parameters": {"binary_data_size": size},
            }
        ]
        clean = clean and size == len(binary)
    else:
        data = X if layout == "nested" else [v for r in X for v in r]
        inputs = [
            {"name": "input-0", "shape": [rows, len(features)], "datatype": datatype, "data": data}
        ]
    body: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        body["id"] = draw(IDS)
    if draw(st.booleans()):
        names = ["predict", "predict_proba"] if model == "churn" else ["predict"]
        body["outputs"] = [
            {"name": n, "parameters": {"binary_data": draw(st.booleans())}}
            for n in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2))
        ]
    if draw(st.booleans()):
        body["parameters"] = {"binary_data_output": draw(st.booleans())}
    broken = _break(draw, body, ["id", "inputs", "outputs", "parameters", "shape", "datatype"])
    header = dump(body)
    headers = {}
    if layout == "binary":
        length = draw(st.just(len(header)) | st.integers(-5, len(header) + len(binary) + 5))
        headers["inference-header-content-length"] = str(length)
        broken = broken or length != len(header)
    rid = body.get("id")
    ok_id = isinstance(rid, str) and ID_RE.fullmatch(rid) is not None
    version = draw(st.sampled_from([None, "1"]))
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    well_formed = clean and not broken and 0 < rows <= MAX_ROWS and ("id" not in body or ok_id)
    return Sent(path, header + binary, headers, model, rows, well_formed, rid if ok_id else None)


@st.composite
def v1_requests(draw: st.DrawFn) -> Sent:
    model = draw(st.sampled_from(sorted(FEATURES)))
    features = FEATURES[model]
    clean = draw(st.booleans())
    X = _matrix(draw, len(features), clean)
    instances: list[Any] = X
    if draw(st.booleans()):
        instances = [dict(zip(features, r, strict=True)) for r in X]
    body: dict[str, Any] = {"instances": instances}
    broken = False
    if len(X) > 0 and draw(st.booleans()):
        i = draw(st.integers(0, len(X) - 1))
        instances[i] = draw(JSON_VALUES | DEEP)
        broken = True
    broken = _break(draw, body, ["instances"]) or broken
    headers = {}
    ok_id = True
    if draw(st.booleans()):
        # Bytes: httpx would encode a str header as ASCII; HTTP carries latin-1.
        ids = st.from_regex(ID_RE, fullmatch=True) | st.text(SAFE_CHARS, min_size=1, max_size=300)
        text = draw(ids).strip(" \t")
        headers["x-request-id"] = text.encode("latin-1")
        ok_id = not text or ID_RE.fullmatch(text) is not None
    version = draw(st.sampled_from([None, "1"]))
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    well_formed = clean and not broken and 0 < len(X) <= MAX_ROWS and ok_id
    return Sent(path, dump(body), headers, model, len(X), well_formed)


LABELS = (
    st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(min_size=1, max_size=256)
)


@st.composite
def feedback_requests(draw: st.DrawFn) -> Sent:
    n = draw(st.integers(0, 5))
    items: list[Any] = [
        {
            "request_id": draw(FEEDBACK_IDS),
            "label": draw(LABELS | st.lists(LABELS, min_size=1, max_size=5)),
        }
        for _ in range(n)
    ]
    well_formed = n > 0 and all(len(item["request_id"]) <= 256 for item in items)
    if n > 0 and draw(st.booleans()):
        i = draw(st.integers(0, n - 1))
        key = draw(st.sampled_from(["request_id", "label"]) | TEXT)
        choice = draw(st.sampled_from(["replace", "drop", "wrong"]))
        if choice == "drop":
            items[i].pop(key, None)
        elif choice == "wrong":
            items[i][key] = draw(st.sampled_from([[[1]], {"a": 1}, None, 2**53 + 1, "", "x" * 300]))
        else:
            items[i][key] = draw(JSON_VALUES)
        well_formed = False
    body: Any = items
    if n == 1 and draw(st.booleans()):
        body = items[0]
    return Sent("/v1/feedback", dump(body), rows=n, well_formed=well_formed)


VERSIONS = st.integers(-1, 3) | st.floats(0, 3) | st.booleans() | st.text(SAFE_CHARS, max_size=4)
ROUTING_VALUES = {
    "primary": st.none() | VERSIONS,
    "canary": st.none()
    | st.fixed_dictionaries(
        {}, optional={"version": VERSIONS, "weight": st.floats(-1, 2) | st.integers(-1, 2)}
    )
    | JSON_VALUES,
    "shadow": st.none() | st.lists(VERSIONS, max_size=3) | VERSIONS,
    "sticky_header": st.none() | st.text(max_size=20) | st.integers(),
    "reason": JSON_VALUES,
}
ROUTING_BODIES = (
    st.fixed_dictionaries({}, optional=ROUTING_VALUES)
    | st.dictionaries(TEXT, JSON_VALUES, max_size=3)
    | JSON_VALUES
)


# --- the gateway and the checks ----------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    config: Path
    client: httpx.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("properties")
    work = base / "work"
    work.mkdir()
    push_logreg(base / "registry", work, name="churn", seed=0)
    push_logreg(base / "registry", work, name="churn", seed=1)
    push_linreg(base / "registry", work, name="price")
    path = base / "gatewatch.toml"
    path.write_text(CONFIG)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GATEWATCH_ADMIN_TOKEN", ADMIN_TOKEN)
        env.delenv("GATEWATCH_API_KEYS", raising=False)
        with run_server(create_app(load_config(path))) as url:
            with httpx.Client(base_url=url, timeout=30) as client:
                yield Served(url, path, client)


def settle(served: Served) -> None:
    """Wait until the server has logged the traceback of a failed request.

    The server thread logs it right after answering, and Python 3.11's traceback formatting
    calls ast.parse, whose recursion counter is shared between threads: pytest formatting a
    failure at the same moment fails with "SystemError: AST constructor recursion depth
    mismatch". The server's event loop answers this request only once that logging is done.
    """
    served.client.get("/v2/health/live")


def request(served: Served, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request; when it fails on the server's side, `settle` before the test goes on."""
    try:
        r = served.client.request(method, path, **kwargs)
    except httpx.TransportError:
        settle(served)
        raise
    if r.status_code >= 500:
        settle(served)
    return r


def send(served: Served, sent: Sent) -> httpx.Response:
    return request(served, "POST", sent.path, content=sent.body, headers=sent.headers)


def assert_clean(r: httpx.Response) -> None:
    """Never a 5xx; a 4xx is JSON {"error": "..."}."""
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        ERROR.validate(r.json())
        assert r.json()["error"]


def raw_header(r: httpx.Response, name: bytes) -> bytes:
    """A response header's bytes as sent (httpx guesses a text encoding for the str view)."""
    return next(v for k, v in r.headers.raw if k.lower() == name)


def _answer_headers(r: httpx.Response) -> None:
    assert r.headers["x-model-version"].isdigit()
    assert r.headers["x-route"] in ("primary", "canary", "pinned")
    assert raw_header(r, b"x-request-id")


def assert_infer_answer(r: httpx.Response, sent: Sent) -> None:
    assert_clean(r)
    if sent.well_formed:
        assert r.status_code == 200, r.text[:300]
    if r.status_code != 200:
        return
    _answer_headers(r)
    binary = b""
    if r.headers["content-type"] == "application/octet-stream":
        length = int(r.headers["inference-header-content-length"])
        header = orjson.loads(r.content[:length])
        binary = r.content[length:]
    else:
        assert r.headers["content-type"].startswith("application/json")
        header = r.json()
    INFERENCE_RESPONSE.validate(header)
    assert header["model_name"] == sent.model
    assert header["model_version"] == r.headers["x-model-version"]
    # HTTP drops a header value's outer blanks, so an id's own cannot travel back in it.
    assert raw_header(r, b"x-request-id") == header["id"].encode("latin-1").strip(b" \t")
    if sent.well_formed and sent.request_id is not None:
        assert header["id"] == sent.request_id
    rows = {o["shape"][0] for o in header["outputs"]}
    assert len(rows) <= 1
    if sent.well_formed and header["outputs"]:
        assert rows == {sent.rows}
    sizes = 0
    for out in header["outputs"]:
        if "data" in out:
            assert len(out["data"]) == math.prod(out["shape"])
        else:
            sizes += out["parameters"]["binary_data_size"]
    assert sizes == len(binary)


def assert_v1_answer(r: httpx.Response, sent: Sent) -> None:
    assert_clean(r)
    if sent.well_formed:
        assert r.status_code == 200, r.text[:300]
    if r.status_code != 200:
        return
    _answer_headers(r)
    V1_RESPONSE.validate(r.json())
    if sent.well_formed:
        assert len(r.json()["predictions"]) == sent.rows
    if sent.headers.get("x-request-id"):
        assert raw_header(r, b"x-request-id") == sent.headers["x-request-id"]


def assert_serving(served: Served) -> None:
    """A well-formed V2 and V1 request each still get their answer."""
    r = request(served, "POST", V2, content=_v2())
    assert r.status_code == 200, r.text
    r = request(served, "POST", V1, json={"instances": [ROW]})
    assert r.status_code == 200, r.text


def restore(served: Served) -> None:
    """Put gatewatch.toml back and reload, after a routing change."""
    served.config.write_text(CONFIG)
    assert served.client.post("/admin/reload", headers=TOKEN).status_code == 200


# --- properties --------------------------------------------------------------------------------


def test_v2_bodies(served: Served) -> None:
    @settings(SETTINGS, max_examples=400)
    @given(sent=v2_requests())
    def run(sent: Sent) -> None:
        assert_infer_answer(send(served, sent), sent)

    run()
    assert_serving(served)


def test_v1_bodies(served: Served) -> None:
    @settings(SETTINGS, max_examples=300)
    @given(sent=v1_requests())
    def run(sent: Sent) -> None:
        assert_v1_answer(send(served, sent), sent)

    run()
    assert_serving(served)


def test_feedback_bodies(served: Served) -> None:
    @settings(SETTINGS, max_examples=300)
    @given(sent=feedback_requests())
    def run(sent: Sent) -> None:
        r = send(served, sent)
        assert_clean(r)
        if sent.well_formed:
            assert r.status_code == 202, r.text
        if r.status_code == 202:
            assert r.json() == {"accepted": sent.rows}

    run()
    assert_serving(served)


POST_PATHS = [
    "/v2/models/churn/infer",
    "/v2/models/price/versions/1/infer",
    "/v1/models/churn:predict",
    "/v1/models/price/versions/1:predict",
    "/v1/feedback",
]


def test_any_body_on_any_post_route(served: Served) -> None:
    """Whatever the body (any JSON value, deep nesting, NaN literals, bytes that are not UTF-8),
    every POST route refuses it cleanly or answers it."""

    @settings(SETTINGS, max_examples=300)
    @given(
        path=st.sampled_from(POST_PATHS),
        body=JSON_VALUES.map(dump) | DEEP.map(dump) | st.binary(max_size=200),
    )
    def run(path: str, body: bytes) -> None:
        r = request(served, "POST", path, content=body)
        assert_clean(r)
        if r.status_code == 200:
            assert r.json()

    run()
    assert_serving(served)


def test_routing_bodies(served: Served) -> None:
    """Admin routing changes: refused cleanly, or written; either way the model keeps serving."""

    @settings(SETTINGS, max_examples=100)
    @given(body=ROUTING_BODIES)
    def run(body: Any) -> None:
        try:
            r = request(served, "PUT", ROUTING, content=dump(body), headers=TOKEN)
            assert_clean(r)
            if r.status_code == 200:
                STATUS.validate(r.json())
            assert_serving(served)
        finally:
            restore(served)

    run()


# --- explicit cases the table of test_bad_input.py lacks ---------------------------------------


def _v2(**extra: object) -> bytes:
    tensor = {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": ROW}
    return dump({"inputs": [tensor], **extra})


def _v2_input(**tensor: object) -> bytes:
    """A body whose one tensor is the well-formed one with these fields replaced (None: drop)."""
    base: dict[str, object] = {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": ROW}
    merged = {k: v for k, v in {**base, **tensor}.items() if v is not None}
    return dump({"inputs": [merged]})


def _nest(depth: int, inner: str = "1") -> bytes:
    return ("[" * depth + inner + "]" * depth).encode()


V1_ROW = dump({"instances": [ROW]})
SHAPE_2_62 = {"name": "input-0", "shape": [2**31, 2**31], "datatype": "BOOL"}

# fmt: off
CASES = [
    # (id, method, path, body, status, text in error); /admin/ requests carry the token.
    ("v2-data-deeper-than-numpy", "POST", V2, b'{"inputs":[{"name":"input-0","shape":[1,20],'
     b'"datatype":"FP64","data":' + _nest(100) + b"}]}", 400, "ragged"),
    ("v1-json-over-parser-depth", "POST", V1, b'{"instances":' + _nest(2000, "") + b"}", 400,
     "not valid JSON"),
    ("v1-instances-deeper-than-numpy", "POST", V1, b'{"instances":' + _nest(100) + b"}", 400,
     "instances"),
    ("feedback-json-over-parser-depth", "POST", FEEDBACK, _nest(5000, ""), 400, "not valid JSON"),
    ("feedback-nested-label", "POST", FEEDBACK, dump({"request_id": "r", "label": [[[1]]]}), 400,
     "label"),
    ("v1-huge-number", "POST", V1, dump({"instances": [[1e308] * 20]}), 400, "within"),
    ("v1-int-beyond-double", "POST", V1, dump({"instances": [[10**400] * 20]}), 400,
     "not valid JSON"),
    ("v1-int-beyond-bound", "POST", V1, dump({"instances": [[10**101] * 20]}), 400, "within"),
    ("v2-shape-beyond-2-31", "POST", V2, _v2_input(shape=[2**40, 20]), 400, "non-negative"),
    ("v2-shape-of-2-62-values", "POST", V2, _v2_input(**SHAPE_2_62, data=ROW), 400,
     "needs 4611686018427387904 values"),
    ("v2-binary-size-2-62", "POST", V2, _v2_input(**SHAPE_2_62, data=None,
     parameters={"binary_data_size": 2**62}), 400, "shorter"),
    ("v2-id-257-unicode", "POST", V2, _v2(id="é" * 257), 400, "id must be"),
    ("feedback-huge-request-id", "POST", FEEDBACK, dump({"request_id": "r" * 100_000, "label": 1}),
     400, "request_id"),
    ("feedback-label-beyond-2-53", "POST", FEEDBACK, dump({"request_id": "r", "label": 2**60}),
     400, "too large"),
    ("feedback-10001-labels", "POST", FEEDBACK, dump({"request_id": "r", "label": [1] * 10_001}),
     400, "10000 labels"),
    ("unicode-name-v1", "POST", "/v1/models/%C3%A9t%C3%A9:predict", V1_ROW, 404, "not served"),
    ("unicode-name-metadata", "GET", "/v2/models/%E6%97%A5%E6%9C%AC", None, 404, "not served"),
    ("unicode-name-ready", "GET", "/v2/models/%F0%9F%98%80/ready", None, 404, "not served"),
    ("rtl-name-v1-status", "GET", "/v1/models/%E2%80%AEchurn", None, 404, "not served"),
    ("nul-in-name", "POST", "/v2/models/churn%00/infer", _v2(), 404, "not served"),
    ("newline-in-name", "GET", "/v2/models/churn%0A", None, 404, "not served"),
    ("long-name", "GET", "/v2/models/" + "a" * 5000, None, 404, "not served"),
    ("dot-dot-name", "POST", "/v2/models/%2e%2e/infer", _v2(), 404, "not served"),
    ("traversal-v1", "POST", "/v1/models/..%2F..%2Fetc:predict", V1_ROW, 404, "no such endpoint"),
    ("traversal-metadata", "GET", "/v2/models/..%2F..%2Fetc%2Fpasswd", None, 404,
     "no such endpoint"),
    ("traversal-backslash", "GET", "/v2/models/..%5C..%5Cetc", None, 404, "not served"),
    ("traversal-admin", "PUT", "/admin/models/%2e%2e/routing", dump({"primary": 1}), 400,
     "invalid model name"),
    ("traversal-admin-slashes", "PUT", "/admin/models/..%2F..%2Fetc/routing", b"{}", 404,
     "no such endpoint"),
    ("unicode-name-admin", "PUT", "/admin/models/%C3%A9t%C3%A9/routing", b"{}", 400,
     "invalid model name"),
    ("version-ten-digits", "POST", "/v2/models/churn/versions/1234567890/infer", _v2(), 400,
     "positive integer"),
    ("version-huge", "GET", "/v2/models/churn/versions/" + "9" * 400, None, 400,
     "positive integer"),
    ("version-negative", "GET", "/v2/models/churn/versions/-1/ready", None, 400,
     "positive integer"),
    ("version-float", "POST", "/v1/models/churn/versions/1.0:predict", V1_ROW, 400,
     "positive integer"),
    ("routing-not-object", "PUT", ROUTING, b"[1]", 400, "must be an object"),
    ("routing-not-json", "PUT", ROUTING, b"{", 400, "not valid JSON"),
    ("routing-over-parser-depth", "PUT", ROUTING, _nest(3000, ""), 400, "not valid JSON"),
    ("routing-too-large", "PUT", ROUTING, b" " * 70_000, 413, "max_body_bytes"),
    ("routing-unknown-version", "PUT", ROUTING, dump({"primary": 7}), 422, "not in the registry"),
    ("routing-unknown-model", "PUT", "/admin/models/nosuch/routing", b"{}", 422, "no such model"),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "text"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_refused_cleanly(
    served: Served, method: str, path: str, body: bytes | None, status: int, text: str
) -> None:
    admin = path.startswith("/admin/")
    try:
        r = request(served, method, path, content=body, headers=TOKEN if admin else None)
    finally:
        if admin:
            restore(served)
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    assert text in r.json()["error"]


@pytest.mark.parametrize(
    ("authorization", "status", "text"),
    [
        pytest.param(None, 401, "Bearer", id="none"),
        pytest.param(b"Bearer nope", 403, "not valid", id="wrong"),
        pytest.param(b"Bearer \xe9\xff\x80", 403, "not valid", id="latin-1"),
        pytest.param(b"Bearer " + b"x" * 8000, 403, "not valid", id="huge"),
        pytest.param(b"Basic " + ADMIN_TOKEN.encode(), 401, "Bearer", id="basic"),
    ],
)
def test_admin_token_refusals(
    served: Served, authorization: bytes | None, status: int, text: str
) -> None:
    headers = {b"authorization": authorization} if authorization is not None else {}
    r = request(served, "PUT", ROUTING, content=b'{"primary": 1}', headers=headers)
    assert r.status_code == status, r.text
    assert text in r.json()["error"]


def _raw_get(served: Served, target: bytes) -> bytes:
    """A request line sent as is: HTTP clients resolve `..` segments before sending."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        for _ in range(1000):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize(
    ("target", "status", "text"),
    [
        (b"/v2/models/../../../etc/passwd", b"404", "no such endpoint"),
        (b"/v2/models/churn/../../../../etc/passwd/infer", b"404", "no such endpoint"),
        (b"/v2/models/../infer", b"405", "not allowed"),
        (b"/v1/models/../../etc:predict", b"404", "no such endpoint"),
        (b"/admin/models/../routing", b"405", "not allowed"),
    ],
)
def test_raw_dot_segments_are_refused(
    served: Served, target: bytes, status: bytes, text: str
) -> None:
    """`..` reaches the router as a name like any other: it matches no model and no file."""
    head, _, body = _raw_get(served, target).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status), head
    assert text in orjson.loads(body)["error"]
    assert_serving(served)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/churn/versions/%C2%B2/infer"),
        ("POST", "/v1/models/churn/versions/%C2%B9:predict"),
        ("GET", "/v2/models/churn/versions/%C2%B3"),
        ("GET", "/v2/models/churn/versions/%E2%91%A0/ready"),
        ("POST", "/v2/models/churn/versions/%EF%BC%91/infer"),
    ],
)
def test_version_with_unicode_digits_is_refused(served: Served, method: str, path: str) -> None:
    """'²'.isdigit() is True but int('²') raises: this was a 500 (found here, fixed since)."""
    body = _v2() if "infer" in path else dump({"instances": [ROW]})
    r = request(served, method, path, content=body if method == "POST" else None)
    assert r.status_code == 400, r.text
    assert "positive integer" in r.json()["error"]


def test_header_length_with_unicode_digits_is_refused(served: Served) -> None:
    headers = [(b"inference-header-content-length", b"\xb2")]
    r = request(served, "POST", V2, content=_v2(), headers=headers)
    assert r.status_code == 400, r.text
    assert "must be a number" in r.json()["error"]


# --- bugs found here, fixed since ------------------------------------------------------------


@pytest.mark.parametrize(
    "request_id",
    [
        "€",
        "日本語",
        "😀",
        "é",
        "a\r\nset-cookie: x=1",
        "a\x00b",
        "a\x7fb",
        " a",
        "a ",
        pytest.param("abc\n", id="trailing-newline"),
    ],
)
def test_id_that_cannot_be_a_header_is_refused(served: Served, request_id: str) -> None:
    """The id comes back in x-request-id: outside latin-1 this was a 500, with a control
    character (even a trailing newline) a connection dropped without an answer, both after the
    model ran."""
    r = request(served, "POST", V2, content=_v2(id=request_id))
    assert r.status_code == 400, r.text
    assert "id must be" in r.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"shadow": [None]},
        {"canary": {"version": None, "weight": 0.5}},
        {"canary": {"version": 2, "weight": None}},
    ],
)
def test_routing_with_nested_null_is_refused(served: Served, body: dict[str, Any]) -> None:
    """tomlkit cannot write a null; its ConvertError was a 500."""
    try:
        r = request(served, "PUT", ROUTING, content=dump(body), headers=TOKEN)
    finally:
        restore(served)
    assert r.status_code == 422, r.text
    assert "null" in r.json()["error"]


@pytest.mark.parametrize("name", ["x-€", "x user", "x:y", ""])
def test_sticky_header_that_is_not_a_header_name_is_refused(served: Served, name: str) -> None:
    """A sticky header outside latin-1 was written to gatewatch.toml, after which every
    prediction of the model was a 500 (the name is encoded as latin-1 on each request)."""
    try:
        put = request(served, "PUT", ROUTING, content=dump({"sticky_header": name}), headers=TOKEN)
        infer = request(served, "POST", V2, content=_v2())
    finally:
        restore(served)
    assert put.status_code == 422, put.text
    assert "sticky_header" in put.json()["error"]
    assert infer.status_code == 200, infer.text
