"""The files a benchmark run serves: one model, a registry, configs and request bodies.

Every server in a run answers the same 20-feature LogisticRegression, trained here on seeded
synthetic data, so the figures compare HTTP stacks and batching, not models. The registry holds
three versions of it (primary, canary, shadow) so the routing variants predict the same way.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import orjson
from sklearn.linear_model import LogisticRegression

__all__ = ["N_FEATURES", "Workspace", "infer_body", "prepare"]

N_FEATURES = 20
MODEL = "churn"
ROW_COUNTS = (1, 32)

# gatewatch.toml per variant; {log} is the prediction-log folder of the variant.
GATEWAY_CONFIGS: dict[str, str] = {
    "plain": (
        "[gateway]\nregistry = 'registry'\nbatching = false\n"
        "[log]\ndir = '{log}'\nsample = 0.0\n[models.churn]\nprimary = 1\n"
    ),
    "logging": (
        "[gateway]\nregistry = 'registry'\nbatching = false\n"
        "[log]\ndir = '{log}'\nfsync = 'interval'\n[models.churn]\nprimary = 1\n"
    ),
    "canary-shadow": (
        "[gateway]\nregistry = 'registry'\nbatching = false\n"
        "[log]\ndir = '{log}'\n[models.churn]\nprimary = 1\n"
        "canary = { version = 2, weight = 0.1 }\nshadow = [3]\n"
    ),
    "batching": (
        "[gateway]\nregistry = 'registry'\nbatching = true\n"
        "[log]\ndir = '{log}'\n[models.churn]\nprimary = 1\n"
    ),
}


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path

    @property
    def model(self) -> Path:
        """The joblib file the floor and MLServer load (the registry holds it as skops)."""
        return self.root / "model.joblib"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    def config(self, variant: str) -> Path:
        return self.root / f"gatewatch-{variant}.toml"

    def body(self, rows: int) -> Path:
        return self.root / f"body-{rows}.json"

    def script(self, rows: int) -> Path:
        return self.root / f"post-{rows}.lua"

    @property
    def mlserver_dir(self) -> Path:
        return self.root / "mlserver"


def _train(seed: int = 0, n: int = 2000) -> tuple[np.ndarray, np.ndarray, LogisticRegression]:
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, size=(n, N_FEATURES))
    w = np.linspace(-1.0, 1.0, N_FEATURES)
    y = (X @ w + rng.normal(0.0, 0.5, size=n) > 0).astype(int)
    return X, y, LogisticRegression(max_iter=500).fit(X, y)


def _push(ws: Workspace, model: LogisticRegression, X: np.ndarray, y: np.ndarray) -> None:
    """Three versions of the model in skops, the format the gateway loads without trusting."""
    import skops.io as sio

    from gateway.cli import main as gatewatch

    artifact = ws.root / "model.skops"
    sio.dump(model, artifact)
    data = ws.root / "train.csv"
    with open(data, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow([*(f"f{i}" for i in range(N_FEATURES)), "label"])
        out.writerows([*row, label] for row, label in zip(X.tolist(), y.tolist(), strict=True))
    for _ in range(3):
        args = ["registry", "--registry", str(ws.registry), "push", MODEL]
        args += ["--model", str(artifact), "--train-data", str(data), "--target", "label"]
        if gatewatch(args) != 0:
            raise RuntimeError("pushing the benchmark model failed")


def infer_body(rows: int, seed: int = 1) -> bytes:
    """An Open Inference Protocol body of `rows` rows, the one every server is sent."""
    x = np.random.default_rng(seed).normal(size=(rows, N_FEATURES)).round(6)
    tensor = {"name": "input-0", "shape": [rows, N_FEATURES], "datatype": "FP64"}
    return orjson.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]})


def _lua(body: bytes) -> str:
    text = json.dumps(body.decode())
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = {text}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
    )


def _mlserver_files(ws: Workspace) -> None:
    folder = ws.mlserver_dir
    folder.mkdir(exist_ok=True)
    (folder / "settings.json").write_text(
        json.dumps({"debug": False, "parallel_workers": 0, "metrics_endpoint": None})
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": MODEL,
                "implementation": "mlserver_sklearn.SKLearnModel",
                "max_batch_size": 32,
                "max_batch_time": 0.002,
                "parameters": {
                    "uri": str(ws.model),
                    "extra": {"predict_fn": "predict_proba"},
                },
            }
        )
    )


def prepare(root: Path) -> Workspace:
    """Write everything a run needs into `root` (idempotent: an existing registry is kept)."""
    ws = Workspace(root)
    root.mkdir(parents=True, exist_ok=True)
    if not (ws.registry / MODEL).is_dir():
        X, y, model = _train()
        joblib.dump(model, ws.model)
        _push(ws, model, X, y)
    for variant, text in GATEWAY_CONFIGS.items():
        ws.config(variant).write_text(text.replace("{log}", str(root / f"predlog-{variant}")))
    for rows in ROW_COUNTS:
        body = infer_body(rows)
        ws.body(rows).write_bytes(body)
        ws.script(rows).write_text(_lua(body))
    _mlserver_files(ws)
    return ws
