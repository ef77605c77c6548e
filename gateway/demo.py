"""`gatewatch demo`: the whole story on one machine, with nothing but the package.

Trains a small churn classifier on synthetic data, pushes versions into `demo/registry`,
starts the gateway as a real process, sends traffic, prints what happens, and stops by itself.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np

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


def synthetic(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Churn-like rows; `shift` moves the mean of two features, as a changing customer base would."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES)))
    X[:, 1] += shift
    X[:, 2] += shift
    y = (X @ WEIGHTS + rng.normal(0.0, 0.7, size=n) > 0).astype(int)
    return X, y


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*FEATURES, "churned"])
        for row, label in zip(X.round(6).tolist(), y.tolist(), strict=True):
            writer.writerow([*row, label])
    return path


def train_and_push(root: Path, n: int, seed: int, C: float) -> int:
    from sklearn.linear_model import LogisticRegression

    X, y = synthetic(n, seed)
    model = LogisticRegression(C=C, max_iter=500).fit(X, y)
    artifact = root / "work" / f"churn-{seed}.joblib"
    joblib.dump(model, artifact)
    data = write_csv(root / "work" / f"train-{seed}.csv", X, y)
    code = gatewatch(
        [
            "registry",
            "--registry",
            str(root / "registry"),
            "push",
            "churn",
            "--model",
            str(artifact),
            "--train-data",
            str(data),
            "--target",
            "churned",
        ]
    )
    if code != 0:
        raise SystemExit(code)
    return max(int(p.name) for p in (root / "registry" / "churn").iterdir() if p.name.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout:.0f}s")


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", flush=True)


def run_demo(root: Path = Path("demo")) -> int:
    if root.exists():
        shutil.rmtree(root)
    (root / "work").mkdir(parents=True)
    say("training two versions of a churn classifier on synthetic data")
    v1 = train_and_push(root, 3000, seed=1, C=0.05)
    v2 = train_and_push(root, 6000, seed=2, C=1.0)
    say(f"registry {root / 'registry'} holds churn v{v1} and v{v2}")
    port = free_port()
    config = root / "gatewatch.toml"
    config.write_text(
        f'[gateway]\nregistry = "registry"\nlisten = "127.0.0.1:{port}"\n\n[log]\ndir = "var/predlog"\n'
    )
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config)], env=dict(os.environ)
    )
    try:
        wait_ready(f"{url}/v2/health/ready", proc)
        say(f"gateway ready on {url}")
        with httpx.Client(base_url=url, timeout=10.0) as client:
            X, _ = synthetic(200, seed=7)
            answers: dict[str, Any] = {}
            for row in X:
                body = {
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": [1, len(FEATURES)],
                            "datatype": "FP64",
                            "data": row.tolist(),
                        }
                    ]
                }
                r = client.post("/v2/models/churn/infer", json=body)
                r.raise_for_status()
                answers[r.headers["x-model-version"]] = (
                    answers.get(r.headers["x-model-version"], 0) + 1
                )
            say(f"200 V2 requests answered, by version: {answers}")
            r = client.post("/v1/models/churn:predict", json={"instances": X[:3].tolist()})
            say(
                f"V1 predict on 3 rows -> {r.json()['predictions']} (x-model-version {r.headers['x-model-version']})"
            )
            r = client.post(
                f"/v2/models/churn/versions/{v1}/infer",
                json={
                    "inputs": [
                        {
                            "name": "input-0",
                            "shape": [1, 8],
                            "datatype": "FP64",
                            "data": X[0].tolist(),
                        }
                    ]
                },
            )
            say(
                f"pinned v{v1}: predict_proba {np.round(r.json()['outputs'][1]['data'], 3).tolist()} (x-route {r.headers['x-route']})"
            )
            r = client.post(
                "/v2/models/churn/infer",
                json={
                    "inputs": [
                        {"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}
                    ]
                },
            )
            say(f"a malformed request gets {r.status_code}: {r.json()['error']}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    # uvicorn re-raises the SIGTERM it handled, once shutdown is complete.
    clean = proc.returncode in (0, -signal.SIGTERM)
    say(
        f"gateway stopped {'cleanly' if clean else f'with {proc.returncode}'}; log in {root / 'var' / 'predlog'}"
    )
    return 0 if clean else 1
