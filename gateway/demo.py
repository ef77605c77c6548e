"""`gatewatch demo`: the whole loop on one machine, with nothing but the package.

A churn model serves; labelled traffic flows; the customers change (a drift); the sidecar's
alert reaches a local "CI" through a signed webhook; CI retrains on recent labelled data with
examples/retrain.py and pushes a new version; the new version runs as a shadow, then as a
canary, and is promoted on its measured accuracy. A timeline is printed as it happens.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import skops.io

from gateway.cli import main as gatewatch

__all__ = ["run_demo"]

FEATURES = [
    "tenure",
    "monthly_spend",
    "support_calls",
    "logins",
    "discount",
    "age",
    "plan",
    "late_payments",
]
WEIGHTS = np.array([-1.2, 0.8, 1.1, -0.9, -0.4, 0.1, 0.3, 1.0])
SECRET = "whsec_" + base64.b64encode(b"gatewatch-demo-signing-key-32byt").decode()
DEADLINE = 170.0
START = time.monotonic()


def say(text: str) -> None:
    print(f"[demo {time.monotonic() - START:6.1f}s] {text}", flush=True)


def synthetic(n: int, seed: int, drifted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Churn-like rows. After the drift, spend and support calls are higher and mean something
    else: price-sensitive customers now stay when they spend more."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    weights = WEIGHTS.copy()
    if drifted:
        X[:, 1] += 1.5
        X[:, 2] += 1.5
        weights[1], weights[3] = -weights[1], -weights[3]
    y = (
        X - (1.5 * np.isin(np.arange(len(FEATURES)), [1, 2]) if drifted else 0)
    ) @ weights + rng.normal(0, 0.5, n) > 0
    return X.round(5), y.astype(int)


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "churned"])
        writer.writerows([*row, label] for row, label in zip(X.tolist(), y.tolist(), strict=True))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"a demo process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def verify(secret: str, headers: Any, body: bytes) -> bool:
    """Standard Webhooks: HMAC-SHA256 over `id.timestamp.body` with the base64 secret."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(part.split(",", 1)[1], expected)
        for part in headers.get("webhook-signature", "").split()
        if part.startswith("v1,")
    )


class LocalCI:
    """The demo's stand-in for GitHub Actions: a signed webhook starts a retraining job."""

    def __init__(self, root: Path, recent: list[tuple[list[float], int]]) -> None:
        self.root = root
        self.recent = recent
        self.events: list[dict[str, Any]] = []
        self.pushed: int | None = None
        self._job: threading.Thread | None = None
        ci = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                ok = verify(SECRET, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(204 if ok else 401)
                self.end_headers()
                if ok:
                    ci.receive(json.loads(body))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/retrain"

    def receive(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        data = event.get("data", {})
        if event["type"] == "model.drift_detected":
            figures = data.get("figures", {}).get("features", {})
            say(
                f"CI: signed webhook {event['type']} for {data.get('model')} v{data.get('version')} "
                f"(drifting: {', '.join(sorted(figures)) or '?'}), signature verified"
            )
            if self._job is None:
                self._job = threading.Thread(target=self.retrain, daemon=True)
                self._job.start()

    def retrain(self) -> None:
        # A retraining job collects recent labelled data first: wait for a thousand rows.
        deadline = time.monotonic() + 60
        while len(self.recent) < 1000 and time.monotonic() < deadline:
            time.sleep(0.2)
        rows = list(self.recent[-3000:])
        X = np.array([r[0] for r in rows])
        y = np.array([r[1] for r in rows])
        data = write_csv(self.root / "work" / "recent.csv", X, y)
        model = self.root / "work" / "retrained.skops"
        holdout = self.root / "work" / "holdout.csv"
        script = Path("examples/retrain.py")
        say(f"CI: retraining on the {len(rows)} most recent labelled rows with {script}")
        result = subprocess.run(
            [
                sys.executable,
                str(script),
                "--data",
                str(data),
                "--target",
                "churned",
                "--out",
                str(model),
                "--holdout-out",
                str(holdout),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            say(f"CI: retraining failed: {result.stderr.strip()[-300:]}")
            return
        code = gatewatch(
            [
                "registry",
                "--registry",
                str(self.root / "registry"),
                "push",
                "churn",
                "--model",
                str(model),
                "--train-data",
                str(data),
                "--target",
                "churned",
                "--eval-data",
                str(holdout),
            ]
        )
        if code == 0:
            self.pushed = max(
                int(p.name)
                for p in (self.root / "registry" / "churn").iterdir()
                if p.name.isdigit()
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def send(url: str, X: np.ndarray, y: np.ndarray, seen: dict[str, int]) -> int:
    """Send rows one request each, then their labels; count answers by version."""
    labels = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            body = {
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": [1, len(FEATURES)],
                        "datatype": "FP64",
                        "data": X[i].tolist(),
                    }
                ]
            }
            async with sem:
                r = await client.post("/v2/models/churn/infer", json=body)
            if r.status_code == 200:
                key = f"v{r.headers['x-model-version']} {r.headers['x-route']}"
                seen[key] = seen.get(key, 0) + 1
                labels.append({"request_id": r.headers["x-request-id"], "label": int(y[i])})

        await asyncio.gather(*(one(i) for i in range(len(X))))
        await client.post("/v1/feedback", json=labels)
    return len(labels)


def config_text(root: Path, gw_port: int, sc_port: int, ci_url: str) -> str:
    return f"""# gatewatch demo: one model, drift alerts to a local CI, quality-gated automatic rollout
[gateway]
registry = "registry"
listen = "127.0.0.1:{gw_port}"

[log]
dir = "var/predlog"
fsync = "never"

[sidecar]
listen = "127.0.0.1:{sc_port}"
state_dir = "var/sidecar"
checkpoint_interval = 1.0

[[webhooks]]
name = "ci"
kind = "generic"
url = "{ci_url}"
secret_env = "GATEWATCH_DEMO_SECRET"

[[alerts]]
name = "churn-drift"
model = "churn"
condition = "feature_drift"
min_features = 1
severity = "critical"
cooldown = "10m"
webhooks = ["ci"]

[models.churn]
primary = 1

[models.churn.rollout]
auto = true
steps = [0.25, 0.5, 1.0]
min_records = 250
min_labels = 120
shadow_records = 250
min_shadow_agreement = 0.3  # a retrained model is meant to disagree with a stale primary
"""


def run_demo(root: Path = Path("demo")) -> int:
    if root.exists():
        shutil.rmtree(root)
    (root / "work").mkdir(parents=True)
    from sklearn.linear_model import LogisticRegression

    X, y = synthetic(4000, seed=1)
    skops.io.dump(LogisticRegression(max_iter=500).fit(X, y), root / "work" / "churn-v1.skops")
    write_csv(root / "work" / "train-v1.csv", X, y)
    gatewatch(
        [
            "registry",
            "--registry",
            str(root / "registry"),
            "push",
            "churn",
            "--model",
            str(root / "work" / "churn-v1.skops"),
            "--train-data",
            str(root / "work" / "train-v1.csv"),
            "--target",
            "churned",
        ]
    )
    recent: list[tuple[list[float], int]] = []
    ci = LocalCI(root, recent)
    gw_port, sc_port = free_port(), free_port()
    config = root / "gatewatch.toml"
    config.write_text(config_text(root, gw_port, sc_port, ci.url))
    env = {**os.environ, "GATEWATCH_DEMO_SECRET": SECRET}
    gw = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(config)], env=env)
    sc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(config), "--log-level", "warning"],
        env=env,
    )
    gw_url, sc_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{sc_port}"
    promoted = False
    try:
        wait_ready(f"{gw_url}/v2/health/ready", gw)
        wait_ready(f"{sc_url}/healthz", sc)
        say(f"gateway {gw_url} serves churn v1; sidecar {sc_url}; dashboard {sc_url}/")
        seen: dict[str, int] = {}
        for i in range(3):
            Xb, yb = synthetic(500, seed=10 + i)
            asyncio.run(send(gw_url, Xb, yb, seen))
        time.sleep(1.5)
        status = httpx.get(f"{sc_url}/models/churn").json()
        acc = status["versions"]["1"]["accuracy"].get("accuracy")
        say(f"1,500 labelled requests: {seen}; sidecar accuracy of v1 = {acc:.3f}")
        say("the customers change: spend and support calls rise and mean something else (drift)")
        printed: set[str] = set()
        batch = 0
        while time.monotonic() - START < DEADLINE and not promoted:
            Xb, yb = synthetic(250, seed=1000 + batch, drifted=True)
            recent.extend(zip(Xb.tolist(), yb.tolist(), strict=True))
            seen = {}
            asyncio.run(send(gw_url, Xb, yb, seen))
            batch += 1
            if ci.pushed and f"pushed{ci.pushed}" not in printed:
                printed.add(f"pushed{ci.pushed}")
                say(f"CI: pushed churn v{ci.pushed} to the registry")
            rollouts = httpx.get(f"{sc_url}/rollouts").json()["models"].get("churn", {})
            for d in reversed(rollouts.get("decisions", [])):
                key = f"{d['ts']}{d['decision']}"
                if key in printed or d["decision"] == "hold":
                    continue
                printed.add(key)
                gates = {
                    g["gate"]: g.get("interval", {}).get("estimate", g.get("result"))
                    for g in d["evidence"].get("gates", [])
                }
                acc_gate = (
                    gates.get("accuracy") if isinstance(gates.get("accuracy"), float) else None
                )
                extra = (
                    f" (accuracy canary - primary = {acc_gate:+.3f})"
                    if acc_gate is not None
                    else ""
                )
                say(
                    f"sidecar: {d['decision']} v{d['version']} -> weight {d['to_weight']}: {d['reason']}{extra}"
                )
                if d["decision"] == "promote" and d["to_weight"] == 1.0:
                    promoted = True
            if batch % 4 == 0:
                say(f"traffic last batch: {seen}")
        time.sleep(1.0)
        answer = httpx.post(
            f"{gw_url}/v1/models/churn:predict",
            json={"instances": synthetic(1, 5, True)[0].tolist()},
        )
        say(
            f"the gateway now answers from v{answer.headers['x-model-version']} ({answer.headers['x-route']})"
        )
        alerts = httpx.get(f"{sc_url}/webhooks").json()["counters"]
        say(f"webhook deliveries: {alerts}; audit trail: {root / 'audit.jsonl'}")
    finally:
        for proc in (sc, gw):
            proc.send_signal(signal.SIGTERM)
        for proc in (sc, gw):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        ci.close()
    if not promoted:
        say("the loop did not complete in time")
        return 1
    say(
        f"done: drift -> webhook -> retrain -> shadow -> canary -> promote, in {time.monotonic() - START:.0f}s"
    )
    return 0
