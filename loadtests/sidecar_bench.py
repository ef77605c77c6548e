"""Throughput of the sidecar consumer: file reader + engine with every monitor on.

    python -m loadtests.sidecar_bench [--records N] [--runs 3] [--profile]

Writes a log of N records (20-feature predictions of a primary and a canary version, plus
feedback for 30% of them, some before their prediction) and a registry with reference
statistics, then consumes it the way the sidecar does: ``reader.read(batch)`` and
``engine.process`` until the end. Each run is a fresh process, so the peak RSS is that run's
own. Prints records/s (reading and JSON parsing included) by the wall clock and per second of
the process's CPU time (the figure that holds on a busy machine), and the medians over the
runs; ``--profile`` adds a cProfile summary of one more run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from gateway.manifest import numeric_stats
from gateway.predlog import encode, open_reader
from sidecar.config import SidecarConfig, parse_config
from sidecar.engine import Engine
from sidecar.state import Checkpoint, encode_checkpoint

N_FEATURES = 20
NAMES = [f"f{j}" for j in range(N_FEATURES)]
FEEDBACK_SHARE = 0.3
BATCH = 5000


def prepare(folder: Path, records: int, seed: int = 0) -> None:
    """Registry (churn v1, v2) and one log segment of ``records`` records."""
    rng = np.random.default_rng(seed)
    mu, sd = np.linspace(-5.0, 5.0, N_FEATURES), np.geomspace(0.1, 10.0, N_FEATURES)
    weights = np.linspace(-1.0, 1.0, N_FEATURES)
    train = rng.normal(mu, sd, size=(5000, N_FEATURES))
    train_pred = ((train - mu) / sd @ weights > 0).astype(int)
    for version in (1, 2):
        manifest = {
            "name": "churn", "version": version, "flavor": "sklearn",
            "artifact": "model.joblib", "sha256": "0" * 64, "task": "classification",
            "inputs": {"names": NAMES, "datatype": "FP64", "count": N_FEATURES},
            "outputs": ["predict", "predict_proba"], "classes": [0, 1],
            "metrics": {"accuracy": 0.9},
            "reference": {
                "rows": len(train),
                "features": {n: numeric_stats(train[:, j]) for j, n in enumerate(NAMES)},
                "prediction": {"classes": [0, 1], "counts": np.bincount(train_pred).tolist()},
            },
        }  # fmt: skip
        target = folder / "registry" / "churn" / str(version)
        target.mkdir(parents=True, exist_ok=True)
        (target / "manifest.json").write_text(json.dumps(manifest))
    requests = round(records / (1 + FEEDBACK_SHARE))
    X = rng.normal(mu, sd, size=(requests, N_FEATURES))
    p1 = 1.0 / (1.0 + np.exp(-((X - mu) / sd @ weights)))
    predicted = (p1 > 0.5).astype(int)
    labelled = rng.random(requests) < FEEDBACK_SHARE
    flipped = rng.random(requests) < 0.1
    canary = rng.random(requests) < 0.1
    slots: list[tuple[float, bytes]] = []
    for start in range(0, requests, 10_000):  # row lists chunk by chunk: they are bulky
        chunk = range(start, min(requests, start + 10_000))
        rows, probas = X[chunk.start : chunk.stop].tolist(), p1[chunk.start : chunk.stop].tolist()
        for i, row, p in zip(chunk, rows, probas, strict=True):
            pred, version = int(predicted[i]), 2 if canary[i] else 1
            slots.append((i, _compact({
                "id": f"r{i}", "ts": 1.77e9 + i * 0.001, "model": "churn", "version": version,
                "role": "canary" if version == 2 else "primary", "inputs": [row],
                "outputs": [[1.0 - p, p]], "prediction": [pred], "latency_ms": 2.5,
                "status": 200,
            })))  # fmt: skip
            if labelled[i]:
                label = 1 - pred if flipped[i] else pred
                line = _compact({"kind": "feedback", "id": f"r{i}", "ts": 1.77e9 + i * 0.001,
                               "label": label})  # fmt: skip
                slots.append((i + (50.5 if i % 5 else -20.5), line))
    slots.sort(key=lambda slot: slot[0])
    log_dir = folder / "predlog"
    log_dir.mkdir(exist_ok=True)
    with open(log_dir / "predlog-bench-000001.jsonl", "wb") as out:
        out.writelines(line for _, line in slots[:records])


def _compact(record: dict[str, Any]) -> bytes:
    """An encoded line in a bytes object of its own size: orjson's results keep a buffer of
    about 4 KB each, which for 200,000 kept lines would be most of this process's memory."""
    return bytes(memoryview(encode(record)))


def bench_config(folder: Path) -> SidecarConfig:
    return parse_config({"log": {"dir": "predlog"}}, base_dir=folder, environ={})


def consume(folder: Path) -> dict[str, Any]:
    """One pass over the log; the figures of this process."""
    config = bench_config(folder)
    engine = Engine(config)
    reader = open_reader(config.log)
    # The sidecar consumer's garbage-collection policy (see sidecar.app): automatic collection
    # off, startup objects frozen, one full collection per checkpoint interval.
    gc.freeze()
    gc.disable()
    started, cpu_started = time.perf_counter(), time.process_time()
    next_collect = started + config.checkpoint_interval
    consumed = 0
    while records := reader.read(BATCH):
        engine.process(records)
        consumed += len(records)
        if time.perf_counter() >= next_collect:
            gc.collect()
            next_collect = time.perf_counter() + config.checkpoint_interval
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    gc.enable()
    saved = time.perf_counter()
    blob = encode_checkpoint(Checkpoint(engine.snapshot(), reader.position()))
    checkpoint_seconds = time.perf_counter() - saved
    reader.close()
    status = engine.status()
    return {
        "records": consumed,
        "seconds": elapsed,
        "per_second": consumed / elapsed,
        "per_cpu_second": consumed / cpu,
        "peak_rss_mb": peak_rss_mb(),
        "checkpoint_mb": len(blob) / 1e6,
        "checkpoint_seconds": checkpoint_seconds,
        "labels": status["models"]["churn"]["versions"]["1"]["accuracy"]["labels"],
    }


def peak_rss_mb() -> float:
    """This process's peak RSS. getrusage's ru_maxrss survives execve, so a child started by
    a big parent would report the parent's peak; Linux's VmHWM is the new program's own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile(folder: Path, top: int = 25) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    consume(folder)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.sidecar_bench")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="add a cProfile summary")
    parser.add_argument("--consume", type=Path, help=argparse.SUPPRESS)  # one run, as a child
    args = parser.parse_args(argv)
    if args.consume is not None:
        print(json.dumps(consume(args.consume)))
        return 0
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        folder = Path(tmp)
        prepare(folder, args.records)
        print(f"sidecar bench: {args.records:,} records, {N_FEATURES} features, batch {BATCH}")
        runs = []
        for run in range(1, args.runs + 1):
            child = subprocess.run(
                [sys.executable, "-m", "loadtests.sidecar_bench", "--consume", str(folder)],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(child.stdout)
            runs.append(result)
            print(
                f"run {run}: {result['seconds']:.2f} s, {result['per_second']:,.0f} records/s "
                f"({result['per_cpu_second']:,.0f} per CPU second), "
                f"peak RSS {result['peak_rss_mb']:.0f} MB, checkpoint "
                f"{result['checkpoint_mb']:.1f} MB in {result['checkpoint_seconds']:.3f} s"
            )
        median = statistics.median(r["per_second"] for r in runs)
        cpu_median = statistics.median(r["per_cpu_second"] for r in runs)
        peak = max(r["peak_rss_mb"] for r in runs)
        print(
            f"median: {median:,.0f} records/s ({cpu_median:,.0f} per CPU second), "
            f"peak RSS {peak:.0f} MB"
        )
        if args.profile:
            print(profile(folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
