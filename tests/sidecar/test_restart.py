"""A real sidecar process killed with SIGKILL while consuming resumes with exact figures.

The log (file segments, or a Redis stream written by the gateway's PredictionLog) holds about
100,000 records of the scenario. The sidecar is killed at five random moments picked by polling
its /status, restarted each time, and its final /status must equal what one uninterrupted pass
of the engine over the same log gives (apart from lag_seconds, the only wall-clock figure).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.predlog import LogConfig, PredictionLog, iter_records
from sidecar.config import SidecarConfig, load_config
from sidecar.engine import Engine
from tests._redis import RedisServer
from tests._server import free_port, wait_http
from tests.sidecar._scenario import Truth, scenario, write_registry

REQUESTS = 56_000  # about 100,000 records with shadows and feedback
KILLS = 5


@pytest.fixture(scope="module")
def stream() -> tuple[list[dict[str, Any]], Truth]:
    return scenario(REQUESTS, seed=11, drift_at=0.5)


def write_config(tmp_path: Path, log: str) -> Path:
    write_registry(tmp_path / "registry")
    path = tmp_path / "gatewatch.toml"
    path.write_text(
        f"""
[gateway]
registry = "registry"

[log]
{log}

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = 0.1
batch = 1000
"""
    )
    return path


async def write_log(config: LogConfig, records: list[dict[str, Any]]) -> None:
    """Log the records the way the gateway does, through one PredictionLog writer."""
    config = dataclasses.replace(config, queue_size=len(records))
    log = PredictionLog(config, writer_name="gateway-1")
    await log.start()
    for record in records:
        assert log.submit(dict(record))
    await log.close(timeout=120.0)
    assert (log.written, log.dropped) == (len(records), 0)


def uninterrupted(config: SidecarConfig) -> dict[str, Any]:
    """The status of one pass over the whole log, JSON round-tripped like /status."""
    engine = Engine(config)
    batch: list[dict[str, Any]] = []
    for record in iter_records(config.log, follow=False):
        batch.append(record)
        if len(batch) == 3000:
            engine.process(batch)
            batch = []
    engine.process(batch)
    status: dict[str, Any] = orjson.loads(orjson.dumps(engine.status()))
    status.pop("lag_seconds")
    return status


class Sidecar:
    """`python -m sidecar` as a real process, with its output kept for failure messages."""

    def __init__(self, config_path: Path, url: str) -> None:
        self.config_path = config_path
        self.url = url
        self.output = config_path.parent / "sidecar.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"{self.url}/healthz", timeout=60.0, proc=self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                # uvicorn shuts down cleanly, then re-raises the signal it caught.
                assert self.proc.wait(timeout=30) in (0, -signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-3000:]


def poll(client: httpx.Client, until: Any, what: str) -> dict[str, Any]:
    """GET /status until ``until(status)`` holds (bounded: about five minutes)."""
    for _ in range(15_000):
        status: dict[str, Any] = client.get("/status").json()
        if until(status):
            return status
        time.sleep(0.02)
    raise AssertionError(f"the sidecar never reached {what}: {status['records']} records")


def kill_and_resume(config_path: Path, truth: Truth, seed: int) -> dict[str, Any]:
    """Kill the sidecar at KILLS random record counts; return its final status."""
    config = load_config(config_path)
    url = f"http://{config.listen}"
    sidecar = Sidecar(config_path, url)
    rng = random.Random(seed)
    targets = sorted(
        rng.sample(range(truth.predictions // 20, truth.predictions * 19 // 20), KILLS)
    )
    seen: list[int] = []
    try:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            for target in targets:
                sidecar.start()
                status = poll(client, lambda s, t=target: s["records"] >= t, f"{target}")
                sidecar.kill()
                seen.append(status["records"])
            sidecar.start()
            final = poll(
                client,
                lambda s: (s["records"], s["feedback"]) == (truth.predictions, truth.feedback),
                "the end of the log",
            )
            health = client.get("/healthz").json()
            sidecar.stop()
    except BaseException:
        sidecar.stop()
        print(sidecar.tail())
        raise
    assert seen == sorted(seen) and seen[-1] < truth.predictions, seen  # killed mid-way
    assert health["state"] == "running" and health["checkpoints"] >= 1
    final.pop("lag_seconds")
    return final


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with RedisServer(tmp_path) as server:
        yield server.url


@pytest.mark.slow
def test_file_log_kill_9_restarts_give_the_uninterrupted_status(
    tmp_path: Path, stream: tuple[list[dict[str, Any]], Truth]
) -> None:
    records, truth = stream
    config_path = write_config(tmp_path, 'transport = "file"\ndir = "predlog"')
    config = load_config(config_path)
    asyncio.run(write_log(config.log, records))
    expected = uninterrupted(config)
    assert (expected["records"], expected["feedback"]) == (truth.predictions, truth.feedback)
    assert kill_and_resume(config_path, truth, seed=1) == expected


@pytest.mark.slow
def test_redis_log_kill_9_restarts_give_the_uninterrupted_status(
    tmp_path: Path, redis_url: str, stream: tuple[list[dict[str, Any]], Truth]
) -> None:
    records, truth = stream
    log = f'transport = "redis"\nurl = "{redis_url}"\ndir = "spill"'
    config_path = write_config(tmp_path, log)
    config = load_config(config_path)
    asyncio.run(write_log(config.log, records))
    expected = uninterrupted(config)
    assert (expected["records"], expected["feedback"]) == (truth.predictions, truth.feedback)
    assert kill_and_resume(config_path, truth, seed=2) == expected
