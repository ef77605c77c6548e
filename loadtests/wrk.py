"""One wrk run, pinned to a core, with the CPU the rest of the machine used meanwhile.

wrk is closed-loop: each connection sends its next request when the answer arrives, so at
16 and 64 connections the latencies are mostly queueing in the server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Measurement", "busy_cpu_seconds", "parse_wrk", "run_wrk", "wrk_binary"]

_TICKS = os.sysconf("SC_CLK_TCK")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE_RE = re.compile(r"^\s*(50|75|90|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One run: throughput, latency, errors and who used the CPU during it."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_s: float
    wrk_cpu_s: float
    busy_cpu_s: float

    @property
    def others_cores(self) -> float:
        """Cores' worth of CPU that neither the server nor wrk used (other tenants)."""
        others = self.busy_cpu_s - self.server_cpu_s - self.wrk_cpu_s
        return max(others, 0.0) / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6 if self.requests else float("nan")


def wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise FileNotFoundError("wrk is not installed (apt-get install wrk)")
    return path


def busy_cpu_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (the `cpu` line of /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    user, nice, system, _idle, _iowait, irq, softirq, steal = (values + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / _TICKS


def parse_wrk(text: str) -> tuple[int, float, float, float, int]:
    """(requests, requests/s, p50 ms, p99 ms, errors) from wrk --latency output."""
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if total is None or rps is None:
        raise ValueError(f"not a wrk report:\n{text[-2000:]}")
    percentiles = {p: float(v) * _UNITS[u] for p, v, u in _PERCENTILE_RE.findall(text)}
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if non_2xx:
        errors += int(non_2xx.group(1))
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if sockets:
        errors += sum(int(x) for x in sockets.groups())
    nan = float("nan")
    return (
        int(total.group(1)),
        float(rps.group(1)),
        percentiles.get("50", nan),
        percentiles.get("99", nan),
        errors,
    )


def run_wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    core: int,
    server_cpu: Callable[[], float],
    timeout_s: int = 10,
) -> Measurement:
    """Drive `url` with wrk on `core` for `duration` seconds and measure the run."""
    threads = min(2, connections)
    argv = ["taskset", "-c", str(core), wrk_binary(), f"-t{threads}", f"-c{connections}"]
    argv += [f"-d{max(1, round(duration))}s", f"--timeout={timeout_s}s", "--latency"]
    argv += ["-s", str(script), url]
    server_before, busy_before, start = server_cpu(), busy_cpu_seconds(), time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    server_after, busy_after = server_cpu(), busy_cpu_seconds()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{output[-2000:]}")
    requests, rps, p50, p99, errors = parse_wrk(output)
    return Measurement(
        requests=requests,
        seconds=seconds,
        rps=rps,
        p50_ms=p50,
        p99_ms=p99,
        errors=errors,
        server_cpu_s=server_after - server_before,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        busy_cpu_s=busy_after - busy_before,
    )
