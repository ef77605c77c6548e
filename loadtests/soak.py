"""Soak: a gateway and a sidecar under steady load for a bounded time, with drift and canary
changes, then a report of memory, file descriptors, errors and record counts.

    python -m loadtests.soak [--duration 600] [--rate 250] [--json soak.json]

Traffic: ``--threads`` clients send 1 to ``--rows`` rows per request at ``--rate`` requests per
second in all, and send the true label of most answers back as feedback. Every
``--drift-every`` seconds two features shift for a quarter of that time (the sidecar's drift
alert fires, then resolves, through a local webhook receiver); every ``--canary-every``
seconds a canary of v2 is set or rolled back by editing gatewatch.toml, which both processes
follow. The resident memory and open descriptors of both processes are sampled every few
seconds. The warm-up lasts at least the first ``--warmup`` share of the run and until the
sidecar's bounded memories are full (its de-dup window of the last DEDUP_WINDOW record keys,
and the label window): they grow by design until then. "Flat" compares the median of the
first and last fifth of the samples after the warm-up: growth of at most 5 MB or 5%. A run too
short to fill the de-dup window does not judge memory. At the end the client's, the
gateway's, the log's and the sidecar's counts must agree, and no error may have occurred.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import skops.io as sio
from prometheus_client.parser import text_string_to_metric_families
from sklearn.linear_model import LogisticRegression

from gateway import rollout
from gateway.cli import main as gatewatch
from gateway.config import load_config
from gateway.predlog import is_prediction, iter_records
from sidecar.engine import DEDUP_WINDOW

__all__ = ["Settings", "main", "render", "run"]

N_FEATURES = 20
WEIGHTS = np.linspace(-1.0, 1.0, N_FEATURES)
SECRET_ENV = "GATEWATCH_SOAK_WEBHOOK_SECRET"
SECRET = "whsec_" + base64.b64encode(b"gatewatch-soak-webhook-secret-0").decode()
FLAT_MB, FLAT_SHARE = 5.0, 0.05
LABEL_TTL = 60.0
"""The sidecar's label_ttl here: predictions wait this long (record time) for their label."""


@dataclass(frozen=True, slots=True)
class Settings:
    duration: float = 600.0
    rate: float = 250.0
    threads: int = 4
    rows: int = 8
    feedback: float = 0.9
    drift_every: float = 120.0
    canary_every: float = 60.0
    sample_every: float = 5.0
    warmup: float = 0.2
    seed: int = 0


def _labels(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return (X @ WEIGHTS + rng.normal(0.0, 0.5, size=len(X)) > 0).astype(int)


def prepare(root: Path, hook_url: str, gateway_port: int, sidecar_port: int) -> Path:
    """Two versions of a 20-feature classifier in ./registry and a gatewatch.toml beside it."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, N_FEATURES))
    y = _labels(X, rng)
    table = root / "train.csv"
    header = ",".join([*(f"f{i}" for i in range(N_FEATURES)), "label"])
    np.savetxt(table, np.c_[X, y], delimiter=",", header=header, comments="", fmt="%.6g")
    for version, c in ((1, 1.0), (2, 0.1)):
        artifact = root / f"churn-{version}.skops"
        sio.dump(LogisticRegression(C=c, max_iter=500).fit(X, y), artifact)
        args = ["--model", str(artifact), "--train-data", str(table), "--target", "label"]
        with contextlib.redirect_stdout(io.StringIO()):
            code = gatewatch(
                ["registry", "--registry", str(root / "registry"), "push", "churn", *args]
            )
        if code != 0:
            raise RuntimeError(f"pushing churn v{version} failed")
    config = root / "gatewatch.toml"
    config.write_text(
        f"""[gateway]
registry = "registry"
listen = "127.0.0.1:{gateway_port}"

[log]
dir = "var/predlog"

[models.churn]
primary = 1

[sidecar]
listen = "127.0.0.1:{sidecar_port}"
state_dir = "var/sidecar"
label_ttl = {LABEL_TTL:g}

[[webhooks]]
name = "hook"
kind = "generic"
url = "{hook_url}"
secret_env = "{SECRET_ENV}"

[[alerts]]
name = "churn-drift"
model = "churn"
condition = "feature_drift"
min_features = 1
cooldown = "1m"
webhooks = ["hook"]
"""
    )
    return config


class Hooks:
    """A local webhook receiver that counts events by type."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                hooks.events[str(orjson.loads(body).get("type"))] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Hooks:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Traffic:
    """Rate-limited clients; each answer's true label goes back as feedback in small lists."""

    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.shift = 0.0
        self.answered = 0
        self.feedback = 0
        self.errors: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True)
            for i in range(settings.threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            if what == "answered":
                self.answered += n
            elif what == "feedback":
                self.feedback += n
            else:
                self.errors[what] += n

    def _run(self, index: int) -> None:
        s = self.settings
        rng = np.random.default_rng(s.seed * 1000 + index)
        interval = s.threads / s.rate
        pending: list[dict[str, Any]] = []
        n = 0
        next_at = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=30.0) as client:
            while not self._stop.is_set():
                next_at += interval
                if self._stop.wait(max(0.0, next_at - time.monotonic())):
                    break
                X = rng.normal(size=(int(rng.integers(1, s.rows + 1)), N_FEATURES))
                X[:, :2] += self.shift
                request_id = f"soak-{index}-{n}"
                n += 1
                body = {
                    "id": request_id,
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": list(X.shape),
                            "datatype": "FP64",
                            "data": X.ravel().tolist(),
                        }
                    ],
                }
                self._send(client, "/v2/models/churn/infer", body, 200, "answered")
                if rng.random() < s.feedback:
                    pending.append({"request_id": request_id, "label": _labels(X, rng).tolist()})
                if len(pending) >= 20:
                    self._send(client, "/v1/feedback", pending, 202, "feedback", len(pending))
                    pending = []
            if pending:
                self._send(client, "/v1/feedback", pending, 202, "feedback", len(pending))

    def _send(
        self, client: httpx.Client, path: str, body: Any, ok: int, what: str, n: int = 1
    ) -> None:
        try:
            status = client.post(path, content=orjson.dumps(body)).status_code
        except httpx.HTTPError as exc:
            self._count(f"{path}: {type(exc).__name__}", n)
            return
        self._count(what if status == ok else f"{path}: HTTP {status}", n)


class Service:
    """A gateway or sidecar process, stopped with SIGTERM like a service manager does."""

    def __init__(self, module: str, config: Path, ready: str, root: Path) -> None:
        env = {**os.environ, SECRET_ENV: SECRET}
        log = root / f"{module}.out"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=config.parent,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{module} exited with {self.proc.returncode}; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{module} did not become ready; see {log}")

    def sample(self) -> tuple[float, int]:
        """Resident memory (MB) and open file descriptors, from /proc."""
        pid = self.proc.pid
        rss = 0.0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
        return rss, len(os.listdir(f"/proc/{pid}/fd"))

    def cpu(self) -> float:
        """CPU seconds (user + system) the process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _growth(
    samples: list[tuple[float, float, int]], column: int, warmup: float
) -> dict[str, float]:
    """Median of the first and last fifth after the warm-up, their difference and the peak."""
    after = [s[column] for s in samples if s[0] >= warmup] or [s[column] for s in samples]
    fifth = max(1, len(after) // 5)
    start, end = statistics.median(after[:fifth]), statistics.median(after[-fifth:])
    return {"after_warmup": start, "end": end, "growth": end - start, "peak": max(after)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: Callable[[], bool], timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


Series = list[tuple[float, float, int]]
"""Samples of one process: (seconds since the start, resident MB, open descriptors)."""


@dataclass
class Observed:
    """What a run saw; `_report` turns it into figures and checks."""

    elapsed: float = 0.0
    samples: dict[str, Series] = field(default_factory=lambda: {"gateway": [], "sidecar": []})
    consumed: list[tuple[float, int]] = field(default_factory=list)
    canary_changes: int = 0
    gateway: dict[str, float] = field(default_factory=dict)
    log: dict[str, int] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    webhooks: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    codes: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)


def _sample(seen: Observed, elapsed: float, services: dict[str, Service], sidecar: str) -> None:
    for name, service in services.items():
        seen.samples[name].append((elapsed, *service.sample()))
    with contextlib.suppress(httpx.HTTPError):
        seen.consumed.append((elapsed, httpx.get(f"{sidecar}/healthz").json()["consumed"]))


def _drive(
    settings: Settings,
    config: Path,
    traffic: Traffic,
    services: dict[str, Service],
    sidecar: str,
    seen: Observed,
) -> None:
    """Run the traffic for the duration, with drift and canary changes; sample both processes."""
    canary = False
    started = time.monotonic()
    next_sample, next_canary = started, started + settings.canary_every
    traffic.start()
    try:
        while (elapsed := time.monotonic() - started) < settings.duration:
            phase = elapsed % settings.drift_every / settings.drift_every
            traffic.shift = 1.0 if 0.5 <= phase < 0.75 else 0.0
            now = time.monotonic()
            if now >= next_canary:
                change = rollout.rollback() if canary else rollout.set_canary(2, 0.2)
                rollout.edit_routing(config, "churn", change)
                canary = not canary
                seen.canary_changes += 1
                next_canary += settings.canary_every
            if now >= next_sample:
                _sample(seen, elapsed, services, sidecar)
                next_sample += settings.sample_every
            time.sleep(0.05)
    finally:
        traffic.stop()
        seen.elapsed = time.monotonic() - started


def run(settings: Settings, root: Path) -> dict[str, Any]:
    """Run the soak in ``root`` (an empty folder) and answer the report."""
    gateway_port, sidecar_port = _free_port(), _free_port()
    gw, sc = f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{sidecar_port}"
    seen = Observed()
    with Hooks() as hooks:
        config = prepare(root, hooks.url, gateway_port, sidecar_port)
        services = {"gateway": Service("gateway", config, f"{gw}/v2/health/ready", root)}
        try:
            services["sidecar"] = Service("sidecar", config, f"{sc}/healthz", root)
            traffic = Traffic(gw, settings)
            _drive(settings, config, traffic, services, sc, seen)
            submitted = traffic.answered + traffic.feedback

            def drained() -> bool:
                c = _gateway_figures(gw)
                return c["queued"] == 0 and c["written"] + c["dropped"] >= submitted

            _wait(drained)
            seen.log = dict(
                Counter(
                    "predictions" if is_prediction(r) else str(r.get("kind"))
                    for r in iter_records(load_config(config).log, follow=False)
                )
            )
            predictions = seen.log.get("predictions", 0)
            _wait(lambda: httpx.get(f"{sc}/status").json()["records"] >= predictions)
            time.sleep(2.0)  # deliveries of the last alerts
            _sample(seen, seen.elapsed, services, sc)
            seen.cpu = {name: service.cpu() for name, service in services.items()}
            seen.gateway = _gateway_figures(gw)
            seen.status = httpx.get(f"{sc}/status").json()
            seen.health = httpx.get(f"{sc}/healthz").json()
            seen.webhooks = httpx.get(f"{sc}/webhooks").json()["counters"]
        finally:
            seen.codes = {name: service.stop() for name, service in services.items()}
        seen.events = dict(hooks.events)
    return _report(settings, traffic, seen)


def _gateway_figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    outcomes = ("written", "dropped", "sampled_out", "write_errors")
    figures = {o: _metric(text, "gatewatch_predlog_records", outcome=o) for o in outcomes}
    figures["queued"] = _metric(text, "gatewatch_predlog_queued")
    figures["answered"] = _metric(text, "gatewatch_requests_total")
    figures["predict_errors"] = _metric(text, "gatewatch_predict_errors_total")
    figures["reloads_ok"] = _metric(text, "gatewatch_reloads_total", result="ok")
    figures["reloads_refused"] = _metric(text, "gatewatch_reloads_total", result="refused")
    return figures


def _warmup(settings: Settings, seen: Observed) -> tuple[float, bool]:
    """When the steady state starts: after the configured share of the run, the label window
    (LABEL_TTL) and the filling of the sidecar's de-dup window (DEDUP_WINDOW record keys), the
    bounded memories that grow by design until full. False if the window never filled."""
    floor = max(settings.warmup * settings.duration, LABEL_TTL)
    filled = next((t for t, n in seen.consumed if n >= DEDUP_WINDOW), None)
    return (floor, False) if filled is None else (max(floor, filled), True)


def _errors(traffic: Traffic, seen: Observed) -> dict[str, float]:
    g, h = seen.gateway, seen.health
    errors: dict[str, float] = {f"client {k}": v for k, v in traffic.errors.items()}
    errors |= {
        "gateway dropped records": g["dropped"],
        "gateway write errors": g["write_errors"],
        "gateway predict errors": g["predict_errors"],
        "gateway reloads refused": g["reloads_refused"],
        "sidecar invalid records": seen.status["invalid"],
        "webhooks dead-lettered": seen.webhooks.get("dead_lettered", 0),
        "webhooks pending": seen.webhooks.get("pending", 0),
    }
    for key in ("checkpoint_errors", "read_errors", "listener_errors", "corrupt_lines"):
        errors[f"sidecar {key}"] = h[key]
    for name, code in seen.codes.items():
        errors[f"{name} exit code {code}"] = float(code not in (0, -signal.SIGTERM))
    return {k: v for k, v in errors.items() if v}


def _report(settings: Settings, traffic: Traffic, seen: Observed) -> dict[str, Any]:
    warmup, steady = _warmup(settings, seen)
    memory = {n: _growth(s, 1, warmup) for n, s in seen.samples.items()}
    fds = {n: _growth(s, 2, warmup) for n, s in seen.samples.items()}
    c = {
        "answered": traffic.answered,
        "feedback accepted": traffic.feedback,
        "gateway answered": int(seen.gateway["answered"]),
        "gateway written": int(seen.gateway["written"]),
        "log predictions": seen.log.get("predictions", 0),
        "log feedback": seen.log.get("feedback", 0),
        "sidecar records": seen.status["records"],
        "sidecar feedback": seen.status["feedback"],
        "sidecar duplicates": seen.status["duplicates"],
    }
    predictions = {c["answered"], c["gateway answered"], c["log predictions"], c["sidecar records"]}
    feedback = {c["feedback accepted"], c["log feedback"], c["sidecar feedback"]}
    errors = _errors(traffic, seen)
    flat = all(m["growth"] <= max(FLAT_MB, FLAT_SHARE * m["after_warmup"]) for m in memory.values())
    checks: dict[str, bool | None] = {
        "records add up": len(predictions) == 1
        and len(feedback) == 1
        and c["gateway written"] == c["answered"] + c["feedback accepted"],
        "no errors": not errors,
        "memory flat": flat if steady else None,
        "descriptors flat": all(f["growth"] <= 4 for f in fds.values()),
    }
    return {
        "settings": asdict(settings),
        "elapsed_s": round(seen.elapsed, 1),
        "warmup_s": round(warmup, 1),
        "steady_state": steady,
        "counts": c,
        "errors": errors,
        "alerts": {
            "fired": seen.events.get("model.drift_detected", 0),
            "resolved": seen.events.get("alert.resolved", 0),
            "webhooks sent": seen.webhooks.get("sent", 0),
        },
        "canary changes": seen.canary_changes,
        "reloads": int(seen.gateway["reloads_ok"]),
        "memory_mb": memory,
        "cpu_s": seen.cpu,
        "descriptors": fds,
        "checks": checks,
        "samples": seen.samples,
        "sidecar_consumed": seen.consumed,
    }


def render(report: dict[str, Any]) -> str:
    """The report as Markdown, for loadtests/RESULTS.md."""
    s, c, a = report["settings"], report["counts"], report["alerts"]
    lines = [
        "## Soak",
        "",
        f"{time.strftime('%Y-%m-%d')}, {report['elapsed_s']:.0f} s at {s['rate']:g} requests/s "
        f"({s['threads']} clients, 1-{s['rows']} rows, feedback for {s['feedback']:.0%}), drift "
        f"every {s['drift_every']:g} s, canary changed every {s['canary_every']:g} s. "
        + (
            f"Warm-up: the first {report['warmup_s']:.0f} s, until the sidecar's de-dup window "
            f"({DEDUP_WINDOW:,} record keys) and label window ({LABEL_TTL:g} s) were full."
            if report["steady_state"]
            else f"The sidecar's de-dup window ({DEDUP_WINDOW:,} record keys) did not fill: "
            "no steady state, memory not judged."
        )
        + f" Python {sys.version.split()[0]}, {os.cpu_count()} CPUs.",
        "",
        "| process | RSS after warm-up | RSS at end | growth | peak | open fds | CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in report["memory_mb"].items():
        f = report["descriptors"][name]
        lines.append(
            f"| {name} | {m['after_warmup']:.1f} MB | {m['end']:.1f} MB | {m['growth']:+.1f} MB "
            f"| {m['peak']:.1f} MB | {f['after_warmup']:.0f} → {f['end']:.0f} "
            f"| {report['cpu_s'][name] / report['elapsed_s']:.0%} of a core |"
        )
    verdict = {True: "yes", False: "NO", None: "not judged (no steady state reached)"}
    lines += [
        "",
        f"Records: {c['answered']} predictions answered (gateway counted {c['gateway answered']}), "
        f"{c['feedback accepted']} feedback labels; the log holds {c['log predictions']} "
        f"predictions and {c['log feedback']} feedback records ({c['gateway written']} written); "
        f"the sidecar counted {c['sidecar records']} and {c['sidecar feedback']} "
        f"({c['sidecar duplicates']} duplicates ignored).",
        f"Drift alerts fired {a['fired']}, resolved {a['resolved']} ({a['webhooks sent']} "
        f"webhooks delivered); {report['canary changes']} canary changes, "
        f"{report['reloads']} gateway reloads.",
        "Errors: " + (", ".join(f"{k} {v:g}" for k, v in report["errors"].items()) or "none") + ".",
        "Checks: " + ", ".join(f"{k} {verdict[ok]}" for k, ok in report["checks"].items()) + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.soak", description=__doc__)
    d = Settings()
    for name, value in asdict(d).items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=type(value), default=value, help=f"default {value}")
    parser.add_argument("--dir", help="working folder (default: a new temporary folder)")
    parser.add_argument("--json", help="also write the whole report, samples included, here")
    args = parser.parse_args(argv)
    settings = Settings(**{k: getattr(args, k) for k in asdict(d)})
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="gatewatch-soak-"))
    root.mkdir(parents=True, exist_ok=True)
    report = run(settings, root)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(render(report), end="")
    return 1 if False in report["checks"].values() else 0


if __name__ == "__main__":
    sys.exit(main())
