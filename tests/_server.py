"""Real servers for tests: uvicorn in a thread, or a gateway/sidecar as a subprocess."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def run_server(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1 in a thread; yields the base URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_http(url: str, timeout: float = 90.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def gateway_process(
    config: Path,
    port: int,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
    output: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m gateway` as a real process; yields it once /v2/health/ready answers.
    Its stdout and stderr go to `output` when given, else to the test's own."""
    cmd = [
        sys.executable,
        "-m",
        "gateway",
        "--config",
        str(config),
        "--listen",
        f"127.0.0.1:{port}",
        *extra,
    ]
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(output, "wb")) if output is not None else None
        proc = subprocess.Popen(
            cmd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/v2/health/ready", proc=proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
