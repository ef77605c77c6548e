"""Malformed requests: each gets its 4xx and a message naming the problem; none is a 500."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import orjson
import pytest

from gateway.app import create_app
from gateway.config import parse_config
from tests._server import run_server

ROW = [0.5] * 20


def v2(inputs: object, **extra: object) -> bytes:
    return orjson.dumps({"inputs": inputs, **extra})


def tensor(
    shape: object = (1, 20), datatype: object = "FP64", data: object = ROW, name: object = "input-0"
) -> dict[str, object]:
    return {
        "name": name,
        "shape": list(shape) if isinstance(shape, tuple) else shape,
        "datatype": datatype,
        "data": data,
    }


INFER = "/v2/models/churn/infer"


def binary_nan() -> tuple[bytes, dict[str, str]]:
    """A binary-extension body whose FP64 tensor holds a NaN (JSON itself cannot carry one)."""
    import numpy as np

    x = np.zeros((1, 20))
    x[0, 3] = np.nan
    header = v2(
        [
            {
                "name": "input-0",
                "shape": [1, 20],
                "datatype": "FP64",
                "parameters": {"binary_data_size": 160},
            }
        ]
    )
    return header + x.tobytes(), {"inference-header-content-length": str(len(header))}


CASES = [
    # (id, method, path, body, headers, status, text in error)
    ("not-json", "POST", INFER, b"{nope", {}, 400, "not valid JSON"),
    ("json-array", "POST", INFER, b"[1, 2]", {}, 400, "JSON object"),
    ("no-inputs", "POST", INFER, b"{}", {}, 400, "'inputs'"),
    ("empty-inputs", "POST", INFER, v2([]), {}, 400, "'inputs'"),
    ("input-not-object", "POST", INFER, v2([1]), {}, 400, "each input"),
    (
        "no-name",
        "POST",
        INFER,
        v2([{"shape": [1, 20], "datatype": "FP64", "data": ROW}]),
        {},
        400,
        "lacks its name",
    ),
    ("few-features", "POST", INFER, v2([tensor((1, 19), data=ROW[:19])]), {}, 400, "19 features"),
    (
        "many-features",
        "POST",
        INFER,
        v2([tensor((1, 21), data=ROW + [1.0])]),
        {},
        400,
        "21 features",
    ),
    ("shape-vs-data", "POST", INFER, v2([tensor((2, 20))]), {}, 400, "needs 40 values"),
    ("shape-not-list", "POST", INFER, v2([tensor("1x20")]), {}, 400, "shape must be a list"),
    ("negative-shape", "POST", INFER, v2([tensor([-1, 20])]), {}, 400, "non-negative"),
    (
        "unknown-datatype",
        "POST",
        INFER,
        v2([tensor(datatype="FP128")]),
        {},
        400,
        "unknown datatype",
    ),
    (
        "bytes-datatype",
        "POST",
        INFER,
        v2([tensor(datatype="BYTES", data=["a"] * 20)]),
        {},
        400,
        "BYTES",
    ),
    ("strings", "POST", INFER, v2([tensor(data=["x"] * 20)]), {}, 400, "strings"),
    ("mixed-strings", "POST", INFER, v2([tensor(data=[1.0] * 19 + ["1"])]), {}, 400, "strings"),
    ("nulls", "POST", INFER, v2([tensor(data=[None] * 20)]), {}, 400, "not numbers"),
    ("booleans", "POST", INFER, v2([tensor(data=[True] * 20)]), {}, 400, "booleans"),
    ("ragged", "POST", INFER, v2([tensor((2, 20), data=[ROW, ROW[:3]])]), {}, 400, "ragged"),
    (
        "nan-literal",
        "POST",
        INFER,
        b'{"inputs":[{"name":"input-0","shape":[1,1],"datatype":"FP64","data":[NaN]}]}',
        {},
        400,
        "not valid JSON",
    ),
    (
        "number-overflows-double",
        "POST",
        INFER,
        v2([tensor(data=[7.0] * 20)]).replace(b"7.0", b"1e999", 1),
        {},
        400,
        "not valid JSON",
    ),
    ("huge-number", "POST", INFER, v2([tensor(data=[1e308] * 20)]), {}, 400, "within"),
    ("binary-nan", "POST", INFER, *binary_nan(), 400, "NaN is not accepted"),
    ("zero-rows", "POST", INFER, v2([tensor((0, 20), data=[])]), {}, 400, "no rows"),
    (
        "too-many-rows",
        "POST",
        INFER,
        v2([tensor((11, 20), data=ROW * 11)]),
        {},
        400,
        "max_batch_rows",
    ),
    (
        "unknown-output",
        "POST",
        INFER,
        v2([tensor()], outputs=[{"name": "embedding"}]),
        {},
        400,
        "unknown output",
    ),
    ("outputs-not-list", "POST", INFER, v2([tensor()], outputs="predict"), {}, 400, "'outputs'"),
    ("id-not-string", "POST", INFER, v2([tensor()], id=5), {}, 400, "id must be"),
    ("huge-id", "POST", INFER, v2([tensor()], id="x" * 10_000), {}, 400, "id must be"),
    (
        "missing-feature-input",
        "POST",
        INFER,
        v2([tensor((1,), data=[1.0], name="f0"), tensor((1,), data=[1.0], name="f1")]),
        {},
        400,
        "missing inputs",
    ),
    (
        "unknown-input-names",
        "POST",
        INFER,
        v2([tensor((1,), data=[1.0], name="a"), tensor((1,), data=[1.0], name="b")]),
        {},
        400,
        "unknown inputs",
    ),
    (
        "binary-size-mismatch",
        "POST",
        INFER,
        v2(
            [
                {
                    "name": "input-0",
                    "shape": [1, 20],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 4},
                }
            ]
        ),
        {},
        400,
        "does not match",
    ),
    (
        "binary-short",
        "POST",
        INFER,
        v2(
            [
                {
                    "name": "input-0",
                    "shape": [1, 20],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 80},
                }
            ]
        ),
        {},
        400,
        "shorter",
    ),
    (
        "bad-header-length",
        "POST",
        INFER,
        v2([tensor()]),
        {"inference-header-content-length": "99999"},
        400,
        "outside the body",
    ),
    (
        "header-length-text",
        "POST",
        INFER,
        v2([tensor()]),
        {"inference-header-content-length": "abc"},
        400,
        "must be a number",
    ),
    ("huge-body", "POST", INFER, b"[" + b"1," * 40_000 + b"1]", {}, 413, "max_body_bytes"),
    ("deeply-nested", "POST", INFER, b"[" * 100_000 + b"]" * 100_000, {}, 413, "max_body_bytes"),
    (
        "nested-json-under-limit",
        "POST",
        INFER,
        b'{"inputs":' + b"[" * 2000 + b"]" * 2000 + b"}",
        {},
        400,
        "not valid JSON",
    ),
    ("unknown-model", "POST", "/v2/models/nosuch/infer", v2([tensor()]), {}, 404, "not served"),
    (
        "unknown-version",
        "POST",
        "/v2/models/churn/versions/9/infer",
        v2([tensor()]),
        {},
        404,
        "version 9 is not loaded",
    ),
    (
        "bad-version",
        "POST",
        "/v2/models/churn/versions/abc/infer",
        v2([tensor()]),
        {},
        400,
        "positive integer",
    ),
    (
        "zero-version",
        "POST",
        "/v2/models/churn/versions/0/infer",
        v2([tensor()]),
        {},
        400,
        "positive integer",
    ),
    (
        "traversal-name",
        "POST",
        "/v2/models/..%2F..%2Fetc/infer",
        v2([tensor()]),
        {},
        404,
        "no such endpoint",
    ),
    (
        "unicode-name",
        "POST",
        "/v2/models/%C3%A9t%C3%A9/infer",
        v2([tensor()]),
        {},
        404,
        "not served",
    ),
    ("wrong-method-infer", "GET", INFER, None, {}, 405, "not allowed"),
    ("wrong-method-health", "POST", "/v2/health/live", b"", {}, 405, "not allowed"),
    ("unknown-path", "GET", "/v3/anything", None, {}, 404, "no such endpoint"),
    ("unknown-model-meta", "GET", "/v2/models/nosuch", None, {}, 404, "not served"),
    (
        "v1-no-instances",
        "POST",
        "/v1/models/churn:predict",
        b'{"rows": []}',
        {},
        400,
        "'instances'",
    ),
    ("v1-empty", "POST", "/v1/models/churn:predict", b'{"instances": []}', {}, 400, "non-empty"),
    (
        "v1-wrong-width",
        "POST",
        "/v1/models/churn:predict",
        orjson.dumps({"instances": [[1, 2]]}),
        {},
        400,
        "list of 20 numbers",
    ),
    (
        "v1-strings",
        "POST",
        "/v1/models/churn:predict",
        orjson.dumps({"instances": [["a"] * 20]}),
        {},
        400,
        "numbers only",
    ),
    (
        "v1-missing-named-feature",
        "POST",
        "/v1/models/churn:predict",
        orjson.dumps({"instances": [{"f0": 1}]}),
        {},
        400,
        "lacks feature",
    ),
    (
        "v1-request-id-too-long",
        "POST",
        "/v1/models/churn:predict",
        orjson.dumps({"instances": [ROW]}),
        {"x-request-id": "r" * 300},
        400,
        "x-request-id must be 1 to 256 printable ASCII",
    ),
    (
        "v1-request-id-not-ascii",
        "POST",
        "/v1/models/churn:predict",
        orjson.dumps({"instances": [ROW]}),
        {"x-request-id": "café".encode()},
        400,
        "printable ASCII",
    ),
    (
        "v1-unknown-model",
        "POST",
        "/v1/models/nosuch:predict",
        orjson.dumps({"instances": [ROW]}),
        {},
        404,
        "not served",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests._models import push_logreg

    base = tmp_path_factory.mktemp("bad")
    work = base / "work"
    work.mkdir()
    push_logreg(base / "registry", work)
    config = parse_config(
        {
            "gateway": {
                "registry": str(base / "registry"),
                "max_batch_rows": 10,
                "max_body_bytes": 64_000,
            },
            "log": {"dir": str(base / "predlog")},
        },
        base,
    )
    with run_server(create_app(config)) as url:
        yield url


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "text"),
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_malformed_request(
    server: str,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    status: int,
    text: str,
) -> None:
    r = httpx.request(method, server + path, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert text in r.json()["error"]


def test_server_still_up_after_malformed_requests(server: str) -> None:
    for case in CASES:
        httpx.request(case[1], server + case[2], content=case[3], headers=case[4], timeout=30)
    r = httpx.post(server + INFER, content=v2([tensor()]))
    assert r.status_code == 200
    assert len(CASES) >= 30
