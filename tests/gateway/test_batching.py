"""Adaptive batching: same answers as unbatched, lone requests not held, failures contained.

Servers are real uvicorn instances; the Batcher-level tests drive the public API on a real
event loop with real models.
"""

from __future__ import annotations

import asyncio
import http.client
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier

from gateway.app import create_app
from gateway.batching import Batcher, BatchSettings
from gateway.cli import main as gatewatch
from gateway.config import load_config, parse_config
from gateway.errors import ConfigError
from gateway.models import Prediction
from gateway.predlog import decode
from tests import _blockers
from tests._models import make_data, push_gated, push_logreg, write_csv
from tests._server import metric, run_server

JSON = {"content-type": "application/json"}


def push_forest(registry: Path, work: Path) -> None:
    """A RandomForest: its per-row arithmetic does not depend on the other rows of a call."""
    X, y = make_data(seed=3)
    artifact = work / "forest.skops"
    sio.dump(
        RandomForestClassifier(n_estimators=15, max_depth=6, random_state=0).fit(X, y), artifact
    )
    data = write_csv(work / "forest.csv", X, y)
    args = ["registry", "--registry", str(registry), "push", "forest", "--model", str(artifact)]
    assert gatewatch([*args, "--train-data", str(data), "--target", "label"]) == 0


@pytest.fixture
def base(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    push_forest(tmp_path / "registry", work)
    return tmp_path


def write(base: Path, name: str, gateway: str, models: str = "") -> Path:
    path = base / f"{name}.toml"
    path.write_text(
        f'[gateway]\nregistry = "registry"\n{gateway}\n[log]\ndir = "log-{name}"\n{models}'
    )
    return path


def records(logdir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted(logdir.glob("predlog-*.jsonl")):
        out += [decode(line) for line in path.read_bytes().splitlines() if line]
    return out


def body(i: int, rows: np.ndarray) -> bytes:
    shape = list(rows.shape)
    tensor = {"name": "input-0", "shape": shape, "datatype": "FP64", "data": rows.ravel().tolist()}
    return orjson.dumps({"id": f"req-{i}", "inputs": [tensor]})


def send_all(url: str, model: str, xs: list[np.ndarray], width: int = 48) -> dict[str, Any]:
    """Send the bodies in waves of `width`: every request of a wave is written before any
    answer is read, so the server finds them queued together. Answers by request id."""
    answers: dict[str, Any] = {}
    port = int(url.rsplit(":", 1)[1])
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(width)]
    try:
        for start in range(0, len(xs), width):
            wave = list(range(start, min(start + width, len(xs))))
            for conn, i in zip(connections, wave, strict=False):
                conn.request("POST", f"/v2/models/{model}/infer", body(i, xs[i]), JSON)
            for conn, i in zip(connections, wave, strict=False):
                answer = conn.getresponse()
                data = answer.read()
                assert answer.status == 200, data
                answers[f"req-{i}"] = orjson.loads(data)["outputs"]
    finally:
        for conn in connections:
            conn.close()
    return answers


def serve_and_send(config: Path, model: str, xs: list[np.ndarray]) -> tuple[dict[str, Any], str]:
    with run_server(create_app(load_config(config))) as url:
        answers = send_all(url, model, xs)
        text = httpx.get(f"{url}/metrics").text
    return answers, text


@pytest.mark.parametrize(
    "model", [pytest.param("forest", id="forest"), pytest.param("churn", id="logreg")]
)
def test_batched_answers_equal_unbatched(base: Path, model: str) -> None:
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=(1 + i % 3, 20)).round(6) for i in range(600)]
    on = write(base, "on", "batching = true\nmax_batch_size = 16\nmax_wait_ms = 5.0")
    off = write(base, "off", "batching = false")
    batched, text_on = serve_and_send(on, model, xs)
    unbatched, text_off = serve_and_send(off, model, xs)

    batches = metric(text_on, "gatewatch_batches_total", model=model, result="ok")
    assert metric(text_on, "gatewatch_batched_requests_total", model=model) == 600
    assert batches < 600 / 2, "requests were stacked: on average more than 2 per predict call"
    assert metric(text_off, "gatewatch_batches_total") == 0
    assert batched.keys() == unbatched.keys() == {f"req-{i}" for i in range(600)}
    for rid, outputs in batched.items():
        labels, proba = outputs[0]["data"], outputs[1]["data"]
        assert labels == unbatched[rid][0]["data"]
        if model == "forest":
            assert outputs == unbatched[rid], "bit for bit"
        else:
            # BLAS picks its kernel by matrix shape (dot for one row, gemv for a stack), so a
            # row's probabilities may differ in the last bit with the rows beside it; the
            # same happens without batching when a client sends rows together.
            np.testing.assert_allclose(proba, unbatched[rid][1]["data"], rtol=0, atol=1e-15)

    for name, answers in (("on", batched), ("off", unbatched)):
        logged = [r for r in records(base / f"log-{name}") if r["model"] == model]
        assert sorted(r["id"] for r in logged) == sorted(answers), "one record per request"
        for r in logged:
            i = int(r["id"].split("-")[1])
            assert r["inputs"] == xs[i].tolist()
            assert r["prediction"] == answers[r["id"]][0]["data"]
            assert np.asarray(r["outputs"]).ravel().tolist() == answers[r["id"]][1]["data"]


def test_failing_batch_fails_only_its_requests_and_is_counted(base: Path) -> None:
    push_gated(base / "registry", base / "work", "raise", name="gated")
    # The gated model's class lives in the tests, so it is a pickle.
    config = write(base, "gated", "batching = true\nmax_wait_ms = 5.0\nallow_pickle = true")
    row = np.zeros((1, 20))
    _blockers.reset()
    try:
        with run_server(create_app(load_config(config))) as url:

            async def mixed() -> list[tuple[str, int, str]]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:

                    async def one(i: int) -> tuple[str, int, str]:
                        model = "gated" if i % 2 else "churn"
                        r = await client.post(f"/v2/models/{model}/infer", content=body(i, row))
                        return model, r.status_code, r.text

                    return await asyncio.gather(*(one(i) for i in range(200)))

            _blockers.ARMED.set()
            armed = asyncio.run(mixed())
            _blockers.ARMED.clear()
            healed = asyncio.run(mixed())
            text = httpx.get(f"{url}/metrics").text
    finally:
        _blockers.reset()
    assert {(m, s) for m, s, _ in armed} == {("churn", 200), ("gated", 500)}
    message = "model gated v1 failed to predict: RuntimeError: shadow model exploded on purpose"
    assert all(orjson.loads(t) == {"error": message} for m, _, t in armed if m == "gated")
    assert {(m, s) for m, s, _ in healed} == {("churn", 200), ("gated", 200)}, "batcher lives on"
    assert metric(text, "gatewatch_predict_errors_total", model="gated") == 100
    assert metric(text, "gatewatch_predict_errors_total", model="churn") == 0
    assert metric(text, "gatewatch_batches_total", model="gated", result="error") >= 1
    assert metric(text, "gatewatch_batches_total", model="churn", result="error") == 0
    failed = [r for r in records(base / "log-gated") if r["status"] == 500]
    assert len(failed) == 100 and all(
        r["model"] == "gated" and "exploded" in r["error"] for r in failed
    )


def test_stuck_model_times_out_and_never_blocks_the_loop(base: Path) -> None:
    push_gated(base / "registry", base / "work", "block", name="gated")
    config = write(base, "stuck", "predict_timeout = 0.3\nallow_pickle = true")
    _blockers.reset()
    try:
        with run_server(create_app(load_config(config))) as url:

            async def scenario() -> tuple[int, int, int, str]:
                async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                    _blockers.ARMED.set()
                    stuck = asyncio.ensure_future(
                        client.post("/v2/models/gated/infer", content=body(1, np.zeros((1, 20))))
                    )
                    while not _blockers.ENTERED.is_set():
                        await asyncio.sleep(0.01)
                    # The model is blocked in its thread: the loop still answers.
                    health = await client.get("/v2/health/ready")
                    other = await client.post(
                        "/v2/models/churn/infer", content=body(2, np.zeros((1, 20)))
                    )
                    answer = await stuck
                    _blockers.RELEASE.set()
                    return health.status_code, other.status_code, answer.status_code, answer.text

            health, other, status, text = asyncio.run(scenario())
    finally:
        _blockers.reset()
    assert (health, other, status) == (200, 200, 504)
    assert orjson.loads(text) == {
        "error": "model gated v1 did not answer in time: no answer within 0.3 s (predict_timeout)"
    }


class Recorder:
    """A real model that remembers how many rows each call got."""

    name, version = "recorder", 1

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, X: np.ndarray) -> Prediction:
        self.calls.append(len(X))
        return Prediction(X[:, 0] * 10.0, np.column_stack([X[:, 0], -X[:, 0]]))


def test_lone_request_closes_its_batch_at_once() -> None:
    """With a 1-second window, a request alone in the queue does not wait for company: one
    that arrives a few loop turns later gets a batch of its own."""

    async def scenario() -> list[int]:
        model = Recorder()
        batcher = Batcher(model, BatchSettings(max_batch_size=32, max_wait_ms=1000.0))  # type: ignore[arg-type]
        first = asyncio.ensure_future(batcher.predict(np.ones((1, 2))))
        for _ in range(20):
            await asyncio.sleep(0)
        second = asyncio.ensure_future(batcher.predict(np.ones((2, 2))))
        await asyncio.gather(first, second)
        await batcher.close()
        return model.calls

    assert asyncio.run(scenario()) == [1, 2]


def test_cancelled_caller_is_left_out_and_the_batch_goes_on() -> None:
    async def scenario() -> tuple[list[list[float]], list[int], bool]:
        model = Recorder()
        batcher = Batcher(model, BatchSettings(max_batch_size=8, max_wait_ms=50.0))  # type: ignore[arg-type]
        tasks = [
            asyncio.ensure_future(batcher.predict(np.full((i + 1, 2), float(i)))) for i in range(4)
        ]
        await asyncio.sleep(0)  # every request is queued, the batch is still gathering
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        # The batcher still answers afterwards.
        after = await batcher.predict(np.full((1, 2), 7.0))
        await batcher.close()
        labels = [d.labels.tolist() for d in done if isinstance(d, Prediction)]
        return (
            labels + [after.labels.tolist()],
            model.calls,
            isinstance(done[1], asyncio.CancelledError),
        )

    labels, calls, cancelled = asyncio.run(scenario())
    assert cancelled
    assert labels == [[0.0], [20.0, 20.0, 20.0], [30.0] * 4, [70.0]]
    assert calls == [1 + 3 + 4, 1], "the cancelled request's 2 rows were not predicted"


def test_batch_closes_at_max_rows_and_keeps_the_rest_for_the_next() -> None:
    async def scenario() -> tuple[list[int], list[list[float]]]:
        model = Recorder()
        batcher = Batcher(model, BatchSettings(max_batch_size=32, max_wait_ms=50.0, max_rows=5))  # type: ignore[arg-type]
        answers = await asyncio.gather(
            *(batcher.predict(np.full((2, 2), float(i))) for i in range(5))
        )
        await batcher.close()
        return model.calls, [a.labels.tolist() for a in answers]

    calls, labels = asyncio.run(scenario())
    assert calls == [4, 4, 2]
    assert labels == [[10.0 * i] * 2 for i in range(5)]


def test_close_answers_what_is_queued_then_refuses() -> None:
    async def scenario() -> tuple[list[list[float]], str]:
        batcher = Batcher(Recorder(), BatchSettings(max_batch_size=2, max_wait_ms=50.0))  # type: ignore[arg-type]
        tasks = [
            asyncio.ensure_future(batcher.predict(np.full((1, 2), float(i)))) for i in range(5)
        ]
        await asyncio.sleep(0)
        await batcher.close()
        answers = [t.result().labels.tolist() for t in tasks]
        try:
            await batcher.predict(np.ones((1, 2)))
        except RuntimeError as exc:
            return answers, str(exc)
        return answers, ""

    answers, refusal = asyncio.run(scenario())
    assert answers == [[10.0 * i] for i in range(5)]
    assert "closed" in refusal


def test_reload_changes_batch_settings_without_losing_requests(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWATCH_ADMIN_TOKEN", "t0ken")
    config = write(
        base, "reload", "batching = true", "[models.churn]\nprimary = 1\nmax_batch_size = 4\n"
    )
    xs = [np.full((1, 20), i / 100) for i in range(300)]
    with run_server(create_app(load_config(config))) as url:
        first = send_all(url, "churn", xs)
        config.write_text(config.read_text().replace("max_batch_size = 4", "max_batch_size = 1"))
        token = {"authorization": "Bearer t0ken"}
        status = httpx.post(f"{url}/admin/reload", headers=token).status_code
        second = send_all(url, "churn", xs)
        text = httpx.get(f"{url}/metrics").text
    assert status == 200
    assert len(first) == len(second) == 300
    assert metric(text, "gatewatch_requests_total", model="churn") == 600
    assert metric(text, "gatewatch_batched_requests_total", model="churn") == 300, (
        "max_batch_size = 1 turned batching off for the second half"
    )


CONFIG_ERRORS = [
    (
        "batching-not-bool",
        {"gateway": {"batching": "yes"}},
        "gateway.batching: must be true or false",
    ),
    (
        "batch-size-zero",
        {"gateway": {"max_batch_size": 0}},
        "gateway.max_batch_size: must be at least 1",
    ),
    (
        "wait-too-long",
        {"gateway": {"max_wait_ms": 5000}},
        "gateway.max_wait_ms: must be between 0 and 1000",
    ),
    (
        "model-batch-size",
        {"models": {"churn": {"max_batch_size": -1}}},
        "models.churn.max_batch_size: must be at least 1",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), [pytest.param(d, m, id=i) for i, d, m in CONFIG_ERRORS]
)
def test_batching_config_is_validated(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(data, tmp_path)


def test_batching_defaults_and_per_model_settings(tmp_path: Path) -> None:
    config = parse_config(
        {
            "models": {
                "churn": {"max_batch_size": 8, "max_wait_ms": 0.5},
                "other": {"max_batch_size": 1},
            }
        },
        tmp_path,
    )
    assert config.batching is True
    assert (config.max_batch_size, config.max_wait_ms) == (32, 2.0)
    assert config.models["churn"].max_batch_size == 8
    assert config.models["churn"].max_wait_ms == 0.5
    assert parse_config({"gateway": {"batching": False}}, tmp_path).batching is False
