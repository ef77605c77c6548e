"""Every answered prediction is in the log: real processes, several workers, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from gateway.config import load_config
from gateway.predlog import LogConfig, PredictionLog, decode
from tests._models import push_logreg
from tests._server import free_port, gateway_process, run_server


def read_records(directory: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(directory.glob("predlog-*.jsonl")):
        records += [decode(line) for line in path.read_bytes().splitlines() if line]
    return records


def body(i: int, x: list[float]) -> dict[str, Any]:
    return {
        "id": f"req-{i}",
        "inputs": [{"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": x}],
    }


async def send_all(url: str, xs: np.ndarray, concurrency: int = 32) -> dict[str, Any]:
    answers: dict[str, Any] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(xs)):
        queue.put_nowait(i)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            r = await client.post("/v2/models/churn/infer", json=body(i, xs[i].tolist()))
            assert r.status_code == 200, r.text
            answers[f"req-{i}"] = (r.json()["outputs"], r.headers)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return answers


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    config = tmp_path / "gatewatch.toml"
    config.write_text(
        '[gateway]\nregistry = "registry"\n\n[log]\ndir = "predlog"\nfsync = "never"\n'
    )
    return config, tmp_path / "predlog"


def test_two_workers_log_every_prediction(setup: tuple[Path, Path]) -> None:
    config, logdir = setup
    port = free_port()
    xs = np.random.default_rng(0).normal(size=(10_000, 20)).round(6)
    with gateway_process(config, port, ["--workers", "2"]) as proc:
        answers = asyncio.run(send_all(f"http://127.0.0.1:{port}", xs))
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    records = read_records(logdir)
    assert len({p.name.split("-")[2] for p in logdir.glob("predlog-*.jsonl")}) == 2, (
        "one writer per worker"
    )
    assert len(records) == 10_000
    assert len({r["id"] for r in records}) == 10_000
    for r in records:
        assert set(r) == {
            "id",
            "ts",
            "model",
            "version",
            "role",
            "inputs",
            "outputs",
            "prediction",
            "latency_ms",
            "status",
        }
        outputs, headers = answers[r["id"]]
        i = int(r["id"].split("-")[1])
        assert r["inputs"] == [xs[i].tolist()]
        assert r["outputs"] == [outputs[1]["data"]]
        assert r["prediction"] == outputs[0]["data"]
        assert (r["model"], r["version"], r["role"], r["status"]) == ("churn", 1, "primary", 200)
        assert headers["x-request-id"] == r["id"]
        assert r["latency_ms"] >= 0 and r["ts"] > 1.7e9
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gatewatch_requests_total{")
    )
    assert total == 10_000, "metrics are summed over both workers"


def test_sigterm_during_load_keeps_every_answered_record(setup: tuple[Path, Path]) -> None:
    config, logdir = setup
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    answered: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            i = 0
            while not stop.is_set() and i < 50_000:
                try:
                    r = client.post("/v2/models/churn/infer", json=body(i, [0.1] * 20))
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    answered.append(r.json()["id"])
                i += 1

    with gateway_process(config, port, ["--workers", "2"]) as proc:
        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    ids = {r["id"] for r in read_records(logdir)}
    assert len(answered) >= 1000
    missing = [i for i in answered if i not in ids]
    assert missing == []


class SlowSink:
    """A transport that takes 20 ms per batch, so a tiny queue overflows."""

    errors = spilled = replayed = 0

    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def open(self) -> None:
        pass

    def write(self, lines: list[bytes]) -> None:
        time.sleep(0.02)
        self.lines += lines

    def poll(self) -> float | None:
        return None

    def close(self) -> None:
        pass


def test_full_queue_drops_and_counts_never_fails(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    path = tmp_path / "gatewatch.toml"
    path.write_text('[gateway]\nregistry = "registry"\n[log]\nqueue_size = 4\nbatch_size = 2\n')
    app = create_app(load_config(path))
    gateway = app.state.gateway
    sink = SlowSink()
    gateway.predlog = PredictionLog(LogConfig(queue_size=4, batch_size=2), "slow", sink=sink)
    xs = np.random.default_rng(1).normal(size=(600, 20))
    with run_server(app) as url:
        answers = asyncio.run(send_all(url, xs, concurrency=16))
        dropped_metric = [
            line
            for line in httpx.get(f"{url}/metrics").text.splitlines()
            if line.startswith("gatewatch_predlog_dropped_total ")
        ]
    assert len(answers) == 600
    assert gateway.predlog.dropped > 0
    assert gateway.predlog.dropped == 600 - len(sink.lines)
    assert float(dropped_metric[0].split()[1]) <= gateway.predlog.dropped


def test_feedback_records(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    path = tmp_path / "gatewatch.toml"
    path.write_text('[gateway]\nregistry = "registry"\n[log]\ndir = "predlog"\n')
    app = create_app(load_config(path))
    with run_server(app) as url, httpx.Client(base_url=url) as client:
        for start in range(0, 1000, 100):
            items = [{"request_id": f"req-{i}", "label": i % 2} for i in range(start, start + 100)]
            r = client.post("/v1/feedback", json=items)
            assert r.status_code == 202 and r.json() == {"accepted": 100}
        assert client.post("/v1/feedback", json={"request_id": "one", "label": "yes"}).json() == {
            "accepted": 1
        }
    feedback = [r for r in read_records(tmp_path / "predlog") if r.get("kind") == "feedback"]
    assert len(feedback) == 1001
    assert {r["id"] for r in feedback} == {f"req-{i}" for i in range(1000)} | {"one"}
    assert all(set(r) == {"kind", "id", "ts", "label"} for r in feedback)


BAD_FEEDBACK = [
    ("not-json", b"{", "not valid JSON"),
    ("empty-list", b"[]", "empty list"),
    ("scalar", b"5", "must be an object"),
    ("no-id", b'{"label": 1}', "request_id"),
    ("id-number", b'{"request_id": 5, "label": 1}', "request_id"),
    ("id-empty", b'{"request_id": "", "label": 1}', "request_id"),
    ("id-huge", b'{"request_id": "' + b"x" * 300 + b'", "label": 1}', "request_id"),
    ("no-label", b'{"request_id": "a"}', "label is missing"),
    ("label-null", b'{"request_id": "a", "label": null}', "class label or a number"),
    ("label-object", b'{"request_id": "a", "label": {"x": 1}}', "class label or a number"),
    ("label-nested-list", b'{"request_id": "a", "label": [[1]]}', "class label or a number"),
    ("label-empty-list", b'{"request_id": "a", "label": []}', "1 to 10000"),
    (
        "label-huge-string",
        b'{"request_id": "a", "label": "' + b"y" * 300 + b'"}',
        "1 to 256 characters",
    ),
    ("unknown-key", b'{"request_id": "a", "label": 1, "extra": 2}', "unknown keys"),
    ("bad-item-in-list", b'[{"request_id": "a", "label": 1}, {"request_id": "b"}]', "item 1"),
]


@pytest.mark.parametrize(("raw", "text"), [pytest.param(b, t, id=i) for i, b, t in BAD_FEEDBACK])
def test_malformed_feedback(registry: Path, tmp_path: Path, raw: bytes, text: str) -> None:
    path = tmp_path / "gatewatch.toml"
    path.write_text(f'[gateway]\nregistry = "{registry}"\n[log]\ndir = "predlog"\n')
    with run_server(create_app(load_config(path))) as url:
        r = httpx.post(f"{url}/v1/feedback", content=raw)
    assert r.status_code == 400, r.text
    assert text in r.json()["error"]
    assert not [r for r in read_records(tmp_path / "predlog") if r.get("kind") == "feedback"]
