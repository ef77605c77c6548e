"""Parts the fault tests share: steady load on a real gateway that records every answer, a
sidecar process that can be killed and started again, and readers for /metrics and the log.

Every fault test states its claim in counts: answers the load saw, records the log holds,
records the sidecar counted, events the receiver got. Times are recorded with
``time.monotonic()`` in this process only, so comparing them is an ordering, not a duration.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson
import pytest

from gateway.predlog import LogConfig, iter_records
from tests._server import metric, wait_http

ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 20
ADMIN_TOKEN = "fault-tests-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
WEBHOOK_SECRET_ENV = "GATEWATCH_FAULTS_WEBHOOK_SECRET"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"fault-tests-webhook-secret-32by").decode()
_T = TypeVar("_T")


def process_env(**extra: str) -> dict[str, str]:
    """Environment of a gateway or sidecar started by a test: the repo importable (the misbehaving
    test models unpickle from ``tests.faults``), an admin token, a webhook secret, and ``extra``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "GATEWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
        WEBHOOK_SECRET_ENV: WEBHOOK_SECRET,
        **extra,
    }


def require(condition: bool, message: str) -> None:
    """Skip when the machine cannot run the test (fail instead under GATEWATCH_REQUIRE_ALL=1),
    like ``tests._system.require_binary`` for things that are not a binary."""
    if condition:
        return
    if os.environ.get("GATEWATCH_REQUIRE_ALL") == "1":
        pytest.fail(f"{message} (GATEWATCH_REQUIRE_ALL=1)")
    pytest.skip(message)


def wait_for(check: Callable[[], _T], what: str, timeout: float = 60.0) -> _T:
    """Poll ``check`` until it returns something true; bounded, and says what never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s (last: {value!r})")
        time.sleep(0.05)


def infer_body(request_id: str, X: np.ndarray) -> bytes:
    tensor = {"name": "input-0", "shape": list(X.shape), "datatype": "FP64"}
    return orjson.dumps({"id": request_id, "inputs": [{**tensor, "data": X.ravel().tolist()}]})


@dataclass(frozen=True, slots=True)
class Answer:
    """One request as the client saw it; ``status`` 0 means no HTTP answer came."""

    id: str
    status: int
    version: str
    sent: float
    done: float
    error: str


class Load:
    """Steady traffic from ``threads`` threads until ``stop()``; every answer is kept.

    Each request carries its own id (``<prefix>-<thread>-<n>``) and ``rows`` rows of standard
    normal features; ``shift`` (changeable while running) is added to the first two features,
    which is what the drift alerts of these tests watch. ``rate`` caps requests per second over
    all threads, so the sidecar keeps up and a run's record counts stay small; ``limit`` caps
    the requests of each thread.
    """

    def __init__(
        self,
        url: str,
        *,
        threads: int = 4,
        rows: int = 1,
        rate: float | None = None,
        model: str = "churn",
        prefix: str = "req",
        limit: int = 200_000,
        seed: int = 0,
        body: Callable[[str, np.ndarray], bytes] = infer_body,
    ) -> None:
        self.url = url
        self.path = f"/v2/models/{model}/infer"
        self.rows = rows
        self.shift = 0.0
        self.prefix = prefix
        self._body = body
        self._threads = [
            threading.Thread(target=self._run, args=(i, seed + i), daemon=True)
            for i in range(threads)
        ]
        self._interval = threads / rate if rate else 0.0
        self._limit = limit
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._answers: list[Answer] = []

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> list[Answer]:
        self._stop.set()
        return self.join()

    def join(self, timeout: float = 120.0) -> list[Answer]:
        """Wait for every thread to send its ``limit`` requests (or to be stopped)."""
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            raise AssertionError(f"the load did not end within {timeout:.0f}s")
        return self.answers

    @property
    def answers(self) -> list[Answer]:
        with self._lock:
            return list(self._answers)

    @property
    def ok(self) -> int:
        with self._lock:
            return sum(1 for a in self._answers if a.status == 200)

    def wait_ok(self, n: int, timeout: float = 60.0) -> None:
        """Block until ``n`` more answers than now were 200 (counting from the call)."""
        target = self.ok + n
        wait_for(lambda: self.ok >= target, f"{n} more answered requests", timeout)

    def _run(self, index: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        headers = {"content-type": "application/json"}
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            n = 0
            next_at = time.monotonic()
            while not self._stop.is_set() and n < self._limit:
                if self._interval:
                    next_at += self._interval
                    delay = next_at - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                X = rng.normal(size=(self.rows, N_FEATURES))
                X[:, :2] += self.shift
                request_id = f"{self.prefix}-{index}-{n}"
                n += 1
                sent = time.monotonic()
                try:
                    r = client.post(self.path, content=self._body(request_id, X), headers=headers)
                    status, version = r.status_code, r.headers.get("x-model-version", "")
                    error = "" if status == 200 else r.text[:500]
                except httpx.HTTPError as exc:
                    status, version, error = 0, "", f"{type(exc).__name__}: {exc}"
                answer = Answer(request_id, status, version, sent, time.monotonic(), error)
                with self._lock:
                    self._answers.append(answer)


def ok_ids(answers: list[Answer]) -> set[str]:
    return {a.id for a in answers if a.status == 200}


def failures(answers: list[Answer]) -> list[Answer]:
    return [a for a in answers if a.status != 200]


def predlog_counters(url: str) -> dict[str, float]:
    """The gateway's prediction-log counters from /metrics (one process, all its workers)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    outcomes = ("written", "dropped", "sampled_out", "spilled", "replayed", "write_errors")
    counters = {o: metric(text, "gatewatch_predlog_records", outcome=o) for o in outcomes}
    counters["queued"] = metric(text, "gatewatch_predlog_queued")
    counters["dropped_total"] = metric(text, "gatewatch_predlog_dropped_total")
    return counters


def wait_drained(url: str, records: int, timeout: float = 60.0) -> dict[str, float]:
    """Wait until the gateway accounted for ``records`` submitted records with none queued."""

    def drained() -> dict[str, float]:
        c = predlog_counters(url)
        done = c["written"] + c["dropped"] + c["sampled_out"]
        return c if c["queued"] == 0 and done >= records else {}

    return wait_for(drained, f"the gateway's log writer accounting for {records} records", timeout)


def log_records(config: LogConfig) -> list[dict[str, Any]]:
    """Every record of the log (file segments or the Redis stream), without consuming any."""
    return list(iter_records(config, follow=False))


class SidecarProcess:
    """``python -m sidecar`` as a real process that a test can SIGKILL and start again."""

    def __init__(self, config_path: Path, url: str) -> None:
        self.config_path = config_path
        self.url = url
        self.output = config_path.parent / "sidecar.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.output, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=process_env(),
            )
        self.starts += 1
        wait_http(f"{self.url}/healthz", timeout=60.0, proc=self.proc)

    def kill(self) -> None:
        """SIGKILL: no final checkpoint, no clean close of the outbox."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=10).json()

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-4000:] if self.output.exists() else ""


@contextlib.contextmanager
def sidecar_process(config_path: Path, url: str) -> Iterator[SidecarProcess]:
    """A started sidecar, stopped at the end; its output is printed if the block fails."""
    sidecar = SidecarProcess(config_path, url)
    try:
        sidecar.start()
        yield sidecar
    except BaseException:
        print(sidecar.tail())
        raise
    finally:
        sidecar.stop()
