"""The gateway on a real uvicorn, driven by Triton's own HTTP client and the V1 API."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import skops.io as sio
import tritonclient.http as triton

from gateway.app import create_app
from gateway.config import parse_config
from gateway.registry import read_manifest, version_dir
from tests._server import run_server


def _config(registry: Path, tmp_path: Path, extra: str = "") -> object:
    return parse_config(
        {"gateway": {"registry": str(registry)}, "log": {"dir": str(tmp_path / "predlog")}},
        tmp_path,
    )


@pytest.fixture
def server(registry: Path, tmp_path: Path) -> Iterator[str]:
    with run_server(create_app(_config(registry, tmp_path))) as url:
        yield url


def _model(registry: Path, version: int) -> object:
    path = version_dir(registry, "churn", version) / "model.skops"
    return sio.load(path, trusted=sio.get_untrusted_types(file=path))


def test_triton_client_health_metadata(server: str) -> None:
    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("churn")
        assert client.is_model_ready("churn", "1")
        assert not client.is_model_ready("nosuch")
        meta = client.get_model_metadata("churn")
        assert meta["name"] == "churn"
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 20]}]
        assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
        assert meta["outputs"][1]["shape"] == [-1, 2]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [
        pytest.param(False, False, id="json-in-json-out"),
        pytest.param(True, False, id="binary-in-json-out"),
        pytest.param(False, True, id="json-in-binary-out"),
        pytest.param(True, True, id="binary-in-binary-out"),
    ],
)
def test_triton_infer_matches_predict_proba(
    server: str, registry: Path, binary_in: bool, binary_out: bool
) -> None:
    x = np.random.default_rng(3).normal(size=(7, 20)).astype(np.float32)
    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        inp = triton.InferInput("input-0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        outputs = [
            triton.InferRequestedOutput("predict_proba", binary_data=binary_out),
            triton.InferRequestedOutput("predict", binary_data=binary_out),
        ]
        result = client.infer("churn", [inp], outputs=outputs, request_id="abc-1")
    finally:
        client.close()
    model = _model(registry, 2)
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(x), atol=1e-6)
    assert result.as_numpy("predict").tolist() == model.predict(x).tolist()
    response = result.get_response()
    assert response["id"] == "abc-1"
    assert response["model_version"] == "2"


def test_pinned_version_and_headers(server: str, registry: Path) -> None:
    x = np.random.default_rng(4).normal(size=(3, 20))
    body = {
        "inputs": [{"name": "input-0", "shape": [3, 20], "datatype": "FP64", "data": x.tolist()}]
    }
    r = httpx.post(f"{server}/v2/models/churn/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1"
    assert r.headers["x-route"] == "pinned"
    assert r.headers["x-request-id"] == r.json()["id"]
    proba = np.array(r.json()["outputs"][1]["data"]).reshape(3, 2)
    np.testing.assert_allclose(proba, _model(registry, 1).predict_proba(x), atol=1e-9)
    r = httpx.post(f"{server}/v2/models/churn/infer", json=body)
    assert (r.headers["x-model-version"], r.headers["x-route"]) == ("2", "primary")


def test_per_feature_inputs(server: str, registry: Path) -> None:
    x = np.random.default_rng(5).normal(size=(4, 20))
    inputs = [
        {"name": f"f{i}", "shape": [4], "datatype": "FP64", "data": x[:, i].tolist()}
        for i in range(20)
    ]
    r = httpx.post(
        f"{server}/v2/models/churn/infer", json={"inputs": inputs, "outputs": [{"name": "predict"}]}
    )
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["predict"]
    assert r.json()["outputs"][0]["data"] == _model(registry, 2).predict(x).tolist()


def test_v1_predict_and_models(server: str, registry: Path) -> None:
    x = np.random.default_rng(6).normal(size=(5, 20))
    r = httpx.post(f"{server}/v1/models/churn:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": _model(registry, 2).predict(x).tolist()}
    assert r.headers["x-route"] == "primary"
    r = httpx.post(f"{server}/v1/models/churn/versions/1:predict", json={"instances": x.tolist()})
    assert r.json() == {"predictions": _model(registry, 1).predict(x).tolist()}
    assert r.headers["x-route"] == "pinned"
    named = [{f"f{i}": v for i, v in enumerate(row)} for row in x.tolist()]
    r = httpx.post(f"{server}/v1/models/churn:predict", json={"instances": named})
    assert r.json() == {"predictions": _model(registry, 2).predict(x).tolist()}
    assert httpx.get(f"{server}/v1/models").json() == {"models": ["churn", "price"]}
    assert httpx.get(f"{server}/v1/models/churn").json()["versions"] == [1, 2]


def test_regression_model(server: str) -> None:
    r = httpx.post(
        f"{server}/v1/models/price:predict", json={"instances": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}
    )
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], [4.0, 1.0], atol=1e-9)
    body = {"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP32", "data": [1, 1, 1]}]}
    out = httpx.post(f"{server}/v2/models/price/infer", json=body).json()["outputs"]
    assert [o["name"] for o in out] == ["predict"]
    assert out[0]["datatype"] == "FP64"
    assert out[0]["data"] == pytest.approx([2.5])


def test_an_empty_outputs_list_answers_every_output(server: str) -> None:
    """As when `outputs` is left out (the protocol: "if not specified, all outputs")."""
    row = {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.0] * 20}
    for body in ({"inputs": [row]}, {"inputs": [row], "outputs": []}):
        answer = httpx.post(f"{server}/v2/models/churn/infer", json=body).json()
        assert [o["name"] for o in answer["outputs"]] == ["predict", "predict_proba"]


def test_server_metadata_and_metrics(server: str) -> None:
    assert httpx.get(f"{server}/v2").json()["name"] == "gatewatch"
    assert httpx.get(f"{server}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server}/v2/health/ready").json() == {"ready": True}
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.0] * 20}]
    }
    assert httpx.post(f"{server}/v2/models/churn/infer", json=body).status_code == 200
    text = httpx.get(f"{server}/metrics").text
    assert (
        'gatewatch_requests_total{model="churn",route="primary",status="200",version="2"} 1.0'
        in text
    )
    assert 'gatewatch_request_latency_seconds_count{model="churn",version="2"} 1.0' in text
    assert "gatewatch_model_load_failures_total" in text
    assert "gatewatch_in_flight" in text
    assert "gatewatch_predlog_dropped_total 0.0" in text


def test_tampered_artifact_is_refused_others_serve(
    registry: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = read_manifest(registry, "churn", 2)
    artifact = version_dir(registry, "churn", 2) / manifest["artifact"]
    original = artifact.read_bytes()
    artifact.write_bytes(original + b"tampered")
    with (
        caplog.at_level("ERROR", logger="gatewatch.loader"),
        run_server(create_app(_config(registry, tmp_path))) as url,
    ):
        body = {
            "inputs": [
                {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.0] * 20}
            ]
        }
        r = httpx.post(f"{url}/v2/models/churn/infer", json=body)
        assert r.status_code == 200
        assert r.headers["x-model-version"] == "1"
        r = httpx.post(f"{url}/v2/models/churn/versions/2/infer", json=body)
        assert r.status_code == 404
        assert "not loaded" in r.json()["error"]
        text = httpx.get(f"{url}/metrics").text
        assert 'gatewatch_model_load_failures_total{model="churn"} 1.0' in text
        # Repaired in place (same version folder): the watch follows a refused version's
        # files, so it is tried again without a SIGHUP.
        artifact.write_bytes(original)
        deadline = time.monotonic() + 30
        while httpx.post(f"{url}/v2/models/churn/versions/2/infer", json=body).status_code != 200:
            assert time.monotonic() < deadline, "the repaired version was never loaded"
            time.sleep(0.1)
    assert any("does not match the manifest" in rec.getMessage() for rec in caplog.records)


def test_pickle_is_refused_unless_allowed(tmp_path: Path) -> None:
    from tests._models import push_gated

    work = tmp_path / "work"
    work.mkdir()
    push_gated(tmp_path / "registry", work, "block")
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": [0.0] * 20}]
    }
    refused = parse_config(
        {"gateway": {"registry": str(tmp_path / "registry")}, "log": {"dir": str(tmp_path / "l")}},
        tmp_path,
    )
    with run_server(create_app(refused)) as url:
        r = httpx.post(f"{url}/v2/models/churn/infer", json=body)
        assert r.status_code == 503 and "no version that loaded" in r.json()["error"]
    allowed = parse_config(
        {
            "gateway": {"registry": str(tmp_path / "registry"), "allow_pickle": True},
            "log": {"dir": str(tmp_path / "l")},
        },
        tmp_path,
    )
    with run_server(create_app(allowed)) as url:
        assert httpx.post(f"{url}/v2/models/churn/infer", json=body).status_code == 200


def test_openapi_document_is_served_and_lists_every_route(server: str) -> None:
    from gateway.admin import ADMIN_ROUTES
    from gateway.endpoints import ROUTES

    doc = httpx.get(f"{server}/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    routed = {r.path for r in [*ROUTES, *ADMIN_ROUTES] if hasattr(r, "path")}
    predict = {
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/v1/models/{model}:predict",
        "/v1/models/{model}/versions/{version}:predict",
    }
    assert set(doc["paths"]) == routed | predict | {"/openapi.json"}


def test_startup_state_is_frozen_out_of_the_collector_while_serving(
    registry: Path, tmp_path: Path
) -> None:
    """What is loaded at startup is not walked by full collections (they stalled the loop ~100
    ms under load); the freeze is undone when the app stops."""
    gc.unfreeze()
    with run_server(create_app(_config(registry, tmp_path))) as url:
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200
        frozen = gc.get_freeze_count()
    assert frozen > 10_000, "scikit-learn, numpy and the models are frozen"
    assert gc.get_freeze_count() == 0
