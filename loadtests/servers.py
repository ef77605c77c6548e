"""The servers a benchmark run compares, started pinned to one core and stopped by pid.

Each server is a process started under `taskset -c CORE`, so it and every thread or child it
starts stay on that core; wrk runs on the other. A server is ready when its infer route's
readiness URL answers 200.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtests.workspace import Workspace

__all__ = [
    "EXTRA_SERVERS",
    "GATEWAY_VARIANTS",
    "MLSERVER_VENV",
    "SERVERS",
    "Running",
    "ServerSpec",
    "mlserver_bin",
    "process_tree_cpu",
    "server_spec",
    "start_server",
]

GATEWAY_VARIANTS = ("plain", "logging", "canary-shadow", "batching")
# Default order of a round; the runner reverses it every other round.
SERVERS = ("floor", *(f"gatewatch-{v}" for v in GATEWAY_VARIANTS), "mlserver")
EXTRA_SERVERS = ("floor-thread",)
MLSERVER_VENV = Path(__file__).resolve().parent / "venvs" / "mlserver"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    argv: list[str]
    ready_path: str
    cwd: Path


def mlserver_bin() -> Path | None:
    """The `mlserver` command of loadtests/venvs/mlserver, if it was installed."""
    path = MLSERVER_VENV / "bin" / "mlserver"
    return path if path.is_file() else None


def _mlserver_settings(ws: Workspace, port: int) -> None:
    settings = {
        "debug": False,
        "parallel_workers": 0,
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": port + 1,
        "metrics_port": port + 2,
    }
    (ws.mlserver_dir / "settings.json").write_text(json.dumps(settings))


def server_spec(name: str, ws: Workspace, port: int) -> ServerSpec:
    """How to start the server called `name` on 127.0.0.1:`port`."""
    python = sys.executable
    if name in ("floor", "floor-thread"):
        argv = [python, "-m", "loadtests.floor", "--model", str(ws.model), "--port", str(port)]
        if name == "floor-thread":
            argv.append("--thread")
        return ServerSpec(name, argv, "/v2/health/ready", Path(__file__).resolve().parents[1])
    if name.startswith("gatewatch-"):
        variant = name.removeprefix("gatewatch-")
        if variant not in GATEWAY_VARIANTS:
            raise ValueError(f"unknown gatewatch variant {variant!r}")
        config = ws.config(variant)
        argv = [python, "-m", "gateway", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
        return ServerSpec(name, argv, "/v2/health/ready", ws.root)
    if name == "mlserver":
        binary = mlserver_bin()
        if binary is None:
            raise FileNotFoundError("MLServer is not installed in loadtests/venvs/mlserver")
        _mlserver_settings(ws, port)
        return ServerSpec(
            name, [str(binary), "start", str(ws.mlserver_dir)], "/v2/models/churn/ready", ws.root
        )
    raise ValueError(f"unknown server {name!r}")


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for parent in found:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{parent}/task/{task}/children").read_text()
                    found.extend(int(c) for c in text.split())
        if len(found) > 256:
            break
    return found


def process_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants."""
    total = 0
    for p in _descendants(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


@dataclass(slots=True)
class Running:
    spec: ServerSpec
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return process_tree_cpu(self.proc.pid)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode} before it was ready")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1.0) as answer:
                if answer.status == 200:
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {timeout:g} s")


@contextlib.contextmanager
def start_server(
    spec: ServerSpec, port: int, core: int, log: Path, timeout: float = 90.0
) -> Iterator[Running]:
    """Run `spec` pinned to `core`; stop it (SIGTERM, then SIGKILL) on exit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(core), *spec.argv],
            cwd=spec.cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}{spec.ready_path}", proc, timeout)
        yield Running(spec, port, proc)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # The server's own process group: it was started in a new session, so this reaches
        # its workers and nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
