"""Synthetic registries and prediction logs for the sidecar tests, with their ground truth.

The scenario has a classifier "churn" (primary v1, canary v2, shadow v3), a regressor "price"
(v1) and a model "ghost" whose manifest is missing. Feedback arrives for most successful
requests, some of it before the prediction it labels; a few records are written twice; after
``drift_at`` of the requests two churn features move by half a standard deviation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gateway.manifest import numeric_stats

N_FEATURES = 20
NAMES = [f"f{j}" for j in range(N_FEATURES)]
MU = np.linspace(-50.0, 50.0, N_FEATURES)
SD = np.geomspace(0.01, 100.0, N_FEATURES)
WEIGHTS = np.linspace(-1.0, 1.0, N_FEATURES) + 0.05
DRIFTING = ("f3", "f11")
PRICE_NAMES = NAMES[:3]
PRICE_STD = 2.0


def classify(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted classes and probabilities of a fixed linear model on z-scored inputs."""
    score = ((X - MU) / SD) @ WEIGHTS
    p1 = 1.0 / (1.0 + np.exp(-score))
    return (p1 > 0.5).astype(int), np.column_stack([1.0 - p1, p1])


def regress(X: np.ndarray) -> np.ndarray:
    z = (X[:, :3] - MU[:3]) / SD[:3]
    return np.asarray(10.0 + PRICE_STD * (z @ np.array([0.6, -0.6, 0.5])))


def write_manifest(root: Path, model: str, version: int, task: str, rows: int = 4000) -> Path:
    """A manifest as the registry writes it, with reference statistics of the training data."""
    rng = np.random.default_rng(1000 + version)
    names = NAMES if task == "classification" else PRICE_NAMES
    X = rng.normal(MU, SD, size=(rows, N_FEATURES))[:, : len(names)]
    if task == "classification":
        predicted, _ = classify(X)
        prediction: dict[str, Any] = {
            "classes": [0, 1],
            "counts": np.bincount(predicted, minlength=2).tolist(),
        }
        metrics = {"accuracy": 0.9, "f1_macro": 0.9, "log_loss": 0.3}
    else:
        prediction = numeric_stats(regress(np.pad(X, ((0, 0), (0, N_FEATURES - 3)))))
        metrics = {"mae": 1.0, "rmse": 1.3, "r2": 0.7}
    manifest = {
        "name": model,
        "version": version,
        "flavor": "sklearn",
        "artifact": "model.joblib",
        "sha256": "0" * 64,
        "task": task,
        "inputs": {"names": names, "datatype": "FP64", "count": len(names), "allow_nan": False},
        "outputs": ["predict", "predict_proba"] if task == "classification" else ["predict"],
        "classes": [0, 1] if task == "classification" else None,
        "created_at": "2026-01-01T00:00:00Z",
        "lineage": {"data_sha256": "0" * 64, "rows": rows, "code_revision": None, "params": {}},
        "metrics": metrics,
        "reference": {
            "rows": rows,
            "features": {name: numeric_stats(X[:, j]) for j, name in enumerate(names)},
            "prediction": prediction,
        },
    }
    folder = root / model / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def write_registry(root: Path) -> Path:
    for version in (1, 2, 3):
        write_manifest(root, "churn", version, "classification")
    write_manifest(root, "price", 1, "regression")
    return root


@dataclass
class Truth:
    """What the engine must find: joined pairs per (model, version), shadow pairs, counts."""

    pairs: dict[tuple[str, int], tuple[list[Any], list[Any]]] = field(default_factory=dict)
    shadow_pairs: dict[tuple[str, int], tuple[list[Any], list[Any]]] = field(default_factory=dict)
    predictions: int = 0
    feedback: int = 0
    duplicates: int = 0

    def add(self, table: dict[Any, Any], key: tuple[str, int], a: Any, b: Any) -> None:
        left, right = table.setdefault(key, ([], []))
        left.append(a)
        right.append(b)


def scenario(
    requests: int, *, seed: int = 0, drift_at: float = 0.6, t0: float = 1.77e9
) -> tuple[list[dict[str, Any]], Truth]:
    """Records in log order and their ground truth (random draws are vectorised up front)."""
    rng = np.random.default_rng(seed)
    truth = Truth()
    slots: list[tuple[float, int, dict[str, Any]]] = []  # (order key, tiebreak, record)
    width = rng.choice([1, 1, 1, 1, 1, 1, 1, 1, 2, 3], size=requests)
    starts = np.r_[0, np.cumsum(width)]
    X = rng.normal(MU, SD, size=(int(starts[-1]), N_FEATURES))
    for name in DRIFTING:
        j = NAMES.index(name)
        X[starts[int(requests * drift_at)] :, j] += 0.5 * SD[j]
    served, proba = classify(X)
    canary_pred = np.where(rng.random(len(X)) < 0.05, 1 - served, served)
    shadow_pred = np.where(rng.random(len(X)) < 0.1, 1 - served, served)
    values = regress(X)
    U = rng.random((requests, 8))
    ts_all = t0 + np.arange(requests) * 0.01 + rng.uniform(0.0, 0.05, size=requests)
    offsets = np.where(U[:, 7] < 0.2, -rng.integers(1, 50, size=requests) - 0.5,
                       rng.integers(1, 400, size=requests))  # fmt: skip
    for i in range(requests):
        a, b = int(starts[i]), int(starts[i + 1])
        rid, ts = f"req-{seed}-{i:07d}", float(ts_all[i])
        kind, u_status, u_canary, u_dup, u_shadow, u_early, u_label, _ = U[i].tolist()
        status = 500 if u_status < 0.01 else 400 if u_status > 0.995 else 200
        # The first request is a churn one whose shadow is logged first: from then on the
        # engine keeps primary answers for pairing, so every shadow pair below is found.
        first = i == 0
        if first:
            kind, status, u_canary, u_shadow, u_early = 0.5, 200, 1.0, 0.0, 0.0
        when = float(offsets[i])
        if kind < 0.02:
            record = _record(rid, ts, "ghost", 1, "primary", X[a:b, :3], None, values[a:b])
            slots.append((i, 0, {**record, "status": status}))
        elif kind < 0.22:
            record = _record(rid, ts, "price", 1, "primary", X[a:b, :3], None, values[a:b])
            slots.append((i, 0, {**record, "status": status}))
            if status < 400 and u_label < 0.5:
                labels = (values[a:b] + rng.normal(0.0, 1.5, size=b - a)).tolist()
                _feedback(slots, truth, i, when, rid, ts, labels, ("price", 1), values[a:b])
        else:
            version, role = (2, "canary") if u_canary < 0.15 else (1, "primary")
            predicted = (canary_pred if version == 2 else served)[a:b]
            record = _record(rid, ts, "churn", version, role, X[a:b], proba[a:b], predicted)
            slots.append((i, 0, {**record, "status": status}))
            if u_dup < 0.002:
                slots.append((i + 3, 1, {**record, "status": status}))
                truth.duplicates += 1
            if u_shadow < 0.3:
                shadow = shadow_pred[a:b]
                order = i - 1.5 if u_early < 0.3 else i + 1.5
                slots.append((order, 2, _record(rid, ts + 0.002, "churn", 3, "shadow", X[a:b],
                                                proba[a:b], shadow)))  # fmt: skip
                if role == "primary" and status < 400:
                    for pair in zip(shadow.tolist(), predicted.tolist(), strict=True):
                        truth.add(truth.shadow_pairs, ("churn", 3), *pair)
            if status < 400 and u_label < 0.6:
                flips = rng.random(b - a) < 0.1
                labels = np.where(flips, 1 - predicted, predicted).tolist()
                _feedback(slots, truth, i, when, rid, ts, labels, ("churn", version), predicted)
    slots.sort(key=lambda s: (s[0], s[1]))
    records = [s[2] for s in slots]
    truth.predictions = sum(1 for r in records if "kind" not in r) - truth.duplicates
    truth.feedback = sum(1 for r in records if r.get("kind") == "feedback")
    return records, truth


def _record(
    rid: str, ts: float, model: str, version: int, role: str, x: np.ndarray,
    proba: np.ndarray | None, prediction: np.ndarray,
) -> dict[str, Any]:  # fmt: skip
    outputs = proba.tolist() if proba is not None else [[float(v)] for v in prediction]
    return {
        "id": rid,
        "ts": round(ts, 6),
        "model": model,
        "version": version,
        "role": role,
        "inputs": x.tolist(),
        "outputs": outputs,
        "prediction": prediction.tolist(),
        "latency_ms": round(1.0 + math.fmod(ts * 7919.0, 5.0), 3),
    }


def _feedback(
    slots: list[tuple[float, int, dict[str, Any]]], truth: Truth, i: int, when: float,
    rid: str, ts: float, labels: list[Any], key: tuple[str, int], predicted: np.ndarray,
) -> None:  # fmt: skip
    """A label ``when`` requests after its prediction, or before it when ``when`` < 0."""
    label: Any = labels[0] if len(labels) == 1 else labels
    record = {"kind": "feedback", "id": rid, "ts": round(ts + abs(when) * 0.01, 6), "label": label}
    slots.append((i + when, 3, record))
    for y, p in zip(labels, predicted.tolist(), strict=True):
        truth.add(truth.pairs, key, y, p)
