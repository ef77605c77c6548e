"""`gatewatch serve --workers 2` with batching, canary and shadow: what the plain 2-worker
log test (test_predlog_server.py) does not cover.

Every answer, V2 and V1, has exactly one record of the version that answered and one shadow
record; both workers batch; the counters of /metrics are summed over the workers.
"""

from __future__ import annotations

import http.client
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from tests._models import push_logreg
from tests._server import free_port, gateway_process, metric
from tests.gateway.test_batching import records

N = 1500
WIDTH = 48


def request(i: int, x: np.ndarray) -> tuple[str, bytes]:
    """Every third request uses the V1 API; V2 bodies hold 1 to 3 rows."""
    if i % 3 == 2:
        return "/v1/models/churn:predict", orjson.dumps({"instances": x.tolist()})
    tensor = {"name": "input-0", "shape": list(x.shape), "datatype": "FP64"}
    return "/v2/models/churn/infer", orjson.dumps(
        {"id": f"req-{i}", "inputs": [{**tensor, "data": x.ravel().tolist()}]}
    )


def send_waves(port: int, xs: list[np.ndarray]) -> dict[str, tuple[int, Any, dict[str, str]]]:
    """Waves of WIDTH requests written before any answer is read; answers by request id.

    Each wave opens new connections, so the workers' accepts share them out over the run.
    """
    answers = {}
    connections: list[http.client.HTTPConnection] = []
    try:
        for start in range(0, len(xs), WIDTH):
            for conn in connections:
                conn.close()
            connections = [
                http.client.HTTPConnection("127.0.0.1", port, timeout=30) for _ in range(WIDTH)
            ]
            wave = list(range(start, min(start + WIDTH, len(xs))))
            for conn, i in zip(connections, wave, strict=False):
                path, body = request(i, xs[i])
                headers = {"content-type": "application/json", "x-request-id": f"req-{i}"}
                conn.request("POST", path, body, headers)
            for conn, i in zip(connections, wave, strict=False):
                answer = conn.getresponse()
                data = answer.read()
                assert answer.status == 200, data
                headers = {k.lower(): v for k, v in answer.getheaders()}
                assert headers["x-request-id"] == f"req-{i}"
                answers[f"req-{i}"] = (i, orjson.loads(data), headers)
    finally:
        for conn in connections:
            conn.close()
    return answers


def test_two_workers_batch_route_mirror_and_log_every_request(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for seed in (0, 1, 2):
        push_logreg(tmp_path / "registry", work, seed=seed, C=1.0 / (seed + 1))
    config = tmp_path / "gatewatch.toml"
    config.write_text(
        '[gateway]\nregistry = "registry"\nbatching = true\nmax_batch_size = 16\n'
        '[log]\ndir = "predlog"\nfsync = "never"\n'
        "[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 0.3 }\nshadow = [3]\n"
    )
    logdir = tmp_path / "predlog"
    rng = np.random.default_rng(5)
    xs = [rng.normal(size=(1 + i % 3, 20)).round(6) for i in range(N)]
    port = free_port()
    with gateway_process(config, port, ["--workers", "2"]) as proc:
        answers = send_waves(port, xs)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            shadows = [r for r in records(logdir) if r["role"] == "shadow"]
            if len(shadows) >= N:
                break
            time.sleep(0.2)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)

    logged = records(logdir)
    assert len({p.name.split("-")[2] for p in logdir.glob("predlog-*.jsonl")}) == 2, (
        "both workers answered and logged"
    )
    answered = [r for r in logged if r["role"] != "shadow"]
    shadows = [r for r in logged if r["role"] == "shadow"]
    assert sorted(r["id"] for r in answered) == sorted(answers), "one record per answer"
    assert sorted(r["id"] for r in shadows) == sorted(answers), "one shadow record per answer"
    for r in answered:
        i, data, headers = answers[r["id"]]
        assert r["inputs"] == xs[i].tolist()
        assert (r["status"], str(r["version"]), r["role"]) == (
            200,
            headers["x-model-version"],
            headers["x-route"],
        )
        if "predictions" in data:
            assert r["prediction"] == data["predictions"]
        else:
            assert r["prediction"] == data["outputs"][0]["data"]
            assert np.asarray(r["outputs"]).ravel().tolist() == data["outputs"][1]["data"]
    assert {r["version"] for r in answered} == {1, 2}
    assert all(r["version"] == 3 and r["status"] == 200 for r in shadows)

    assert metric(text, "gatewatch_requests_total") == N, "summed over both workers"
    assert metric(text, "gatewatch_request_latency_seconds_count") == N
    assert metric(text, "gatewatch_batched_requests_total") == N, "every answer was batched"
    batches = metric(text, "gatewatch_batches_total", result="ok")
    assert 0 < batches < 0.8 * N, "requests were stacked into shared predict calls"
    assert metric(text, "gatewatch_predict_errors_total") == 0
    assert metric(text, "gatewatch_shadow_dropped_total") == 0
