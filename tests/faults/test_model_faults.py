"""A model whose predict raises or hangs, served by a real gateway process under load.

The request that made it fail gets a 500 (raised) or a 504 (past ``gateway.predict_timeout``)
with a JSON message, every other request is answered as usual, and the failure is counted in
``gatewatch_predict_errors_total``.
"""

from __future__ import annotations

import http.client
import re
import threading
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from tests._server import free_port, gateway_process
from tests.faults._harness import Load, failures, infer_body, metric, process_env
from tests.faults._misbehave import HANG_AT, RAISE_AT, push_misbehaving

WAVE = 16


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    push_misbehaving(tmp_path / "registry", work, "churn")
    push_misbehaving(tmp_path / "registry", work, "slow")
    return tmp_path / "registry"


def config(tmp_path: Path, registry: Path, gateway: str = "") -> Path:
    path = tmp_path / "gatewatch.toml"
    path.write_text(
        f'[gateway]\nregistry = "{registry}"\nallow_pickle = true\n{gateway}\n'
        '[log]\ndir = "predlog"\nfsync = "never"\n'
    )
    return path


def marked(value: float) -> np.ndarray:
    X = np.zeros((1, 20))
    X[0, 0] = value
    return X


def test_a_raising_request_gets_a_500_and_the_others_are_answered(
    tmp_path: Path, registry: Path
) -> None:
    """Unbatched: each request is its own model call."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = config(tmp_path, registry, "batching = false")
    output = tmp_path / "gateway.out"
    with (
        gateway_process(path, port, env=process_env(), output=output),
        Load(url, threads=4) as load,
    ):
        load.wait_ok(50)
        with httpx.Client(base_url=url, timeout=30) as client:
            bad = [
                client.post(
                    "/v2/models/churn/infer", content=infer_body(f"bad-{i}", marked(RAISE_AT))
                )
                for i in range(20)
            ]
        load.wait_ok(50)
        answers = load.stop()
        text = httpx.get(f"{url}/metrics").text
    assert [r.status_code for r in bad] == [500] * 20
    assert all(
        "churn v1 failed to predict: RuntimeError: the model was asked to fail" in r.json()["error"]
        for r in bad
    )
    assert failures(answers) == []
    assert metric(text, "gatewatch_predict_errors_total", model="churn") == 20
    # Tracebacks of the 1st, 2nd, 4th, 8th and 16th failure only: a broken model must not
    # flood the log at the request rate (the counter has the exact figure).
    logged = output.read_text()
    assert logged.count("Traceback") == 5
    assert "churn v1 failed to predict (16 failures so far" in logged


def send_wave(port: int, bodies: list[bytes]) -> list[int]:
    """Write every request on its own connection before reading any answer, so the gateway
    holds them all at once and batches them together."""
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in bodies]
    try:
        for conn, body in zip(connections, bodies, strict=True):
            conn.request(
                "POST", "/v2/models/churn/infer", body, {"content-type": "application/json"}
            )
        statuses = []
        for conn in connections:
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
        return statuses
    finally:
        for conn in connections:
            conn.close()


def test_batched_with_a_raising_request_the_others_are_answered(
    tmp_path: Path, registry: Path
) -> None:
    port = free_port()
    rng = np.random.default_rng(3)
    with gateway_process(config(tmp_path, registry), port, env=process_env()):
        waves = []
        for w in range(10):
            bodies = [infer_body(f"w{w}-{i}", rng.normal(size=(1, 20))) for i in range(WAVE)]
            bodies[WAVE // 2] = infer_body(f"w{w}-bad", marked(RAISE_AT))
            waves.append(send_wave(port, bodies))
    for statuses in waves:
        assert statuses[WAVE // 2] == 500
        others = statuses[: WAVE // 2] + statuses[WAVE // 2 + 1 :]
        assert others == [200] * (WAVE - 1), statuses


def test_a_hanging_request_gets_a_504_and_the_others_are_answered(
    tmp_path: Path, registry: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = config(tmp_path, registry, "predict_timeout = 0.5")
    hung: list[httpx.Response] = []

    def hang() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            hung.append(
                client.post("/v2/models/slow/infer", content=infer_body("hang", marked(HANG_AT)))
            )

    with gateway_process(path, port, env=process_env()), Load(url, threads=2) as load:
        load.wait_ok(50)
        thread = threading.Thread(target=hang)
        before = load.ok
        thread.start()
        thread.join(timeout=60)
        during = load.ok - before
        load.wait_ok(50)
        answers = load.stop()
        text = httpx.get(f"{url}/metrics").text
    [answer] = hung
    assert answer.status_code == 504, answer.text
    assert re.search(r"time(d)? ?out", orjson.loads(answer.content)["error"], re.IGNORECASE)
    assert during >= 5, "requests to other models were answered while it hung"
    assert failures(answers) == []
    assert metric(text, "gatewatch_predict_errors_total", model="slow") == 1
