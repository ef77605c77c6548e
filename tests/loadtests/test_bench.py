"""The benchmark runner works: a tiny real run writes a table. Benchmarks are not tests, so
nothing here checks a figure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.bench import resolve_servers
from loadtests.report import NOTES_MARKER
from loadtests.wrk import parse_wrk
from tests._system import require_binary

ROOT = Path(__file__).resolve().parents[2]

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/v2/models/churn/infer
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.02ms    3.10ms  45.01ms   90.12%
    Req/Sec     2.29k   150.00     2.60k    70.00%
  Latency Distribution
     50%   13.50ms
     75%   14.80ms
     90%   16.20ms
     99%  812.00us
  9154 requests in 2.00s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   4571.33
Transfer/sec:      1.55MB
"""


def test_parse_wrk() -> None:
    assert parse_wrk(WRK_OUTPUT) == (9154, 4571.33, 13.5, 0.812, 7)
    with pytest.raises(ValueError, match="not a wrk report"):
        parse_wrk("wrk: connection refused")


def test_server_selection() -> None:
    assert resolve_servers("gatewatch,floor") == [
        "floor",
        "gatewatch-plain",
        "gatewatch-logging",
        "gatewatch-canary-shadow",
        "gatewatch-batching",
    ]
    assert resolve_servers(None)[0] == "floor" and resolve_servers(None)[-1] == "mlserver"
    with pytest.raises(SystemExit, match="unknown server 'nginx'"):
        resolve_servers("nginx")


def test_tiny_run_writes_a_table_and_keeps_the_notes(tmp_path: Path) -> None:
    require_binary("wrk")
    require_binary("taskset")
    out = tmp_path / "RESULTS.md"
    out.write_text(f"old figures\n{NOTES_MARKER}\n## Notes\nkept by hand\n")
    argv = [sys.executable, "-m", "loadtests.bench", "--rounds", "1", "--duration", "1"]
    argv += ["--warmup", "0", "--server-warmup", "1", "--connections", "4", "--rows", "1"]
    argv += [
        "--only",
        "floor,gatewatch-batching",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "w"),
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    text = out.read_text()
    assert "old figures" not in text
    assert text.endswith("## Notes\nkept by hand\n")
    rows = [line for line in text.splitlines() if line.startswith("| ") and " | 4 | 1 | " in line]
    assert [line.split(" | ")[0] for line in rows] == ["| floor", "| gatewatch-batching"]
    assert "gatewatch, batching on ≥ 1.2 × floor req/s:" in text
    assert "MLServer" in text and "not measured in this run" in text
    assert (tmp_path / "w" / "results.json").is_file()
