"""Compute a version's manifest from the model and its data, so nothing in it is typed by hand.

The reference statistics written here are what the sidecar compares live traffic against:
10 quantile bins per feature (edges and counts), mean, std, min and max, and the same for the
predictions (class counts for a classifier).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.errors import RegistryError
from gateway.models import Model, flavor_of, load_artifact, wrap_model

__all__ = [
    "Table",
    "build_manifest",
    "check_min_metrics",
    "compute_metrics",
    "numeric_stats",
    "read_csv",
]

N_BINS = 10
# Error metrics, where a "minimum" quality means a maximum value.
LOWER_IS_BETTER = frozenset({"mae", "rmse", "log_loss"})


class Table:
    """A CSV with a header, split into numeric features and a target column."""

    def __init__(self, features: list[str], X: np.ndarray, y: np.ndarray, sha256: str) -> None:
        self.features = features
        self.X = X
        self.y = y
        self.sha256 = sha256

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])


def _parse_label(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def read_csv(path: str | Path, target: str) -> Table:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    if not rows:
        raise RegistryError(f"{path}: empty CSV")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise RegistryError(f"{path}: no target column {target!r} (columns: {', '.join(header)})")
    t = header.index(target)
    features = [h for i, h in enumerate(header) if i != t]
    body = [r for r in rows[1:] if r]
    if not body:
        raise RegistryError(f"{path}: no data rows")
    try:
        X = np.array(
            [[float(v) for i, v in enumerate(r) if i != t] for r in body], dtype=np.float64
        )
    except ValueError as exc:
        raise RegistryError(f"{path}: feature columns must be numbers ({exc})") from exc
    if X.ndim != 2 or X.shape[1] != len(features):
        raise RegistryError(f"{path}: every row needs {len(header)} columns")
    labels = [_parse_label(r[t]) for r in body]
    kinds = {type(v) for v in labels}
    y = np.array(labels, dtype=object if str in kinds else None)
    return Table(features, X, y, hashlib.sha256(raw).hexdigest())


def numeric_stats(values: np.ndarray) -> dict[str, Any]:
    """Quantile bins (edges at every 10th percentile) with counts, mean, std, min and max."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"edges": [], "counts": [], "mean": None, "std": None, "min": None, "max": None}
    edges = np.quantile(v, np.linspace(0.0, 1.0, N_BINS + 1))
    inner = np.searchsorted(edges[1:-1], v, side="right")
    counts = np.bincount(inner, minlength=N_BINS)
    return {
        "edges": [float(e) for e in edges],
        "counts": [int(c) for c in counts],
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return repr(value)


def compute_metrics(model: Model, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn import metrics

    result = model.predict(X)
    if model.task == "classification":
        out = {
            "accuracy": float(metrics.accuracy_score(y, result.labels)),
            "f1_macro": float(metrics.f1_score(y, result.labels, average="macro")),
        }
        if result.proba is not None and model.classes is not None:
            out["log_loss"] = float(metrics.log_loss(y, result.proba, labels=list(model.classes)))
        return out
    pred = np.asarray(result.labels, dtype=np.float64)
    return {
        "mae": float(metrics.mean_absolute_error(y, pred)),
        "rmse": float(math.sqrt(metrics.mean_squared_error(y, pred))),
        "r2": float(metrics.r2_score(y, pred)),
    }


def _holdout(table: Table, share: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.permutation(table.rows)[: max(1, int(round(table.rows * share)))]
    return table.X[idx], table.y[idx]


def build_manifest(
    name: str,
    model_path: str | Path,
    train: Table,
    *,
    eval_table: Table | None = None,
    code_revision: str | None = None,
    allow_nan: bool = False,
) -> dict[str, Any]:
    """Load the model, check it against the data, and compute everything the manifest holds."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise RegistryError(f"no model file {model_path}")
    obj = load_artifact(model_path, trusted=True)
    flavor = flavor_of(obj)
    names_in = getattr(obj, "feature_names_in_", None)
    if names_in is not None and list(names_in) != train.features:
        raise RegistryError(
            f"the CSV's feature columns {train.features} do not match the model's "
            f"feature_names_in_ {list(names_in)}"
        )
    n_in = getattr(obj, "n_features_in_", None)
    if n_in is not None and int(n_in) != len(train.features):
        raise RegistryError(
            f"the CSV has {len(train.features)} feature columns, the model expects {int(n_in)}"
        )
    if eval_table is not None and eval_table.features != train.features:
        raise RegistryError("--eval-data columns do not match --train-data columns")
    classes = getattr(obj, "classes_", None)
    if flavor == "river" and classes is None:
        classes = sorted(set(train.y.tolist()), key=str)
    manifest: dict[str, Any] = {
        "name": name,
        "version": 0,
        "flavor": flavor,
        "artifact": "model" + model_path.suffix,
        "sha256": "",
        "inputs": {
            "names": train.features,
            "datatype": "FP64",
            "count": len(train.features),
            "allow_nan": allow_nan,
        },
    }
    model = wrap_model(obj, manifest | {"task": "pending", "classes": None})
    task = model.task
    manifest["task"] = task
    manifest["classes"] = (
        _jsonable(list(classes)) if task == "classification" and classes is not None else None
    )
    model = wrap_model(obj, manifest)
    manifest["outputs"] = ["predict", "predict_proba"] if model.has_proba else ["predict"]
    manifest["created_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    params_fn = getattr(obj, "get_params", None) or getattr(obj, "_get_params", None)
    try:
        params = params_fn(deep=False) if flavor == "sklearn" else params_fn()  # type: ignore[misc]
    except Exception:
        params = {}
    manifest["lineage"] = {
        "data_sha256": train.sha256,
        "rows": train.rows,
        "code_revision": code_revision,
        "params": _jsonable(params),
    }
    ex, ey = (eval_table.X, eval_table.y) if eval_table is not None else _holdout(train)
    try:
        manifest["metrics"] = compute_metrics(model, ex, ey)
    except ValueError as exc:
        raise RegistryError(f"cannot score the model on the evaluation data: {exc}") from exc
    manifest["metrics_on"] = "eval-data" if eval_table is not None else "holdout-20%"
    predicted = model.predict(train.X).labels
    if task == "classification":
        values = [str(c) for c in manifest["classes"]]
        counts = {c: 0 for c in values}
        for label in predicted.tolist():
            counts[str(label)] = counts.get(str(label), 0) + 1
        prediction_ref: dict[str, Any] = {
            "classes": manifest["classes"],
            "counts": [counts[c] for c in values],
        }
    else:
        prediction_ref = numeric_stats(np.asarray(predicted, dtype=np.float64))
    manifest["reference"] = {
        "rows": train.rows,
        "features": {f: numeric_stats(train.X[:, i]) for i, f in enumerate(train.features)},
        "prediction": prediction_ref,
    }
    return manifest


def check_min_metrics(metrics: Mapping[str, float], minimums: Sequence[str]) -> None:
    """`accuracy=0.8`-style floors; a version below one is refused with the figures."""
    for spec in minimums:
        key, sep, value = spec.partition("=")
        if not sep:
            raise RegistryError(f"--min-metric {spec!r}: expected NAME=VALUE")
        if key not in metrics:
            raise RegistryError(f"--min-metric {key}: not computed (have {', '.join(metrics)})")
        try:
            floor = float(value)
        except ValueError:
            raise RegistryError(f"--min-metric {spec!r}: {value!r} is not a number") from None
        if key in LOWER_IS_BETTER and metrics[key] > floor:
            raise RegistryError(
                f"refusing to register: {key} = {metrics[key]:.4f} is above the limit {floor}"
            )
        if key not in LOWER_IS_BETTER and metrics[key] < floor:
            raise RegistryError(
                f"refusing to register: {key} = {metrics[key]:.4f} is below the minimum {floor}"
            )
