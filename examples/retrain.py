"""Retrain a scikit-learn model on recent labelled data: the job a gatewatch alert starts in CI.

    python examples/retrain.py --data recent.csv --target label --out model.joblib \
        [--base-model registry/churn/3] [--holdout-out holdout.csv] [--seed 0]

The CSV has a header, numeric feature columns and the target column (the format
`gatewatch registry push` reads). With ``--base-model`` (an artifact, or a registry version
folder) the new model keeps the old one's estimator and hyperparameters and is refitted from
scratch; without it a scaled logistic regression (classes) or ridge regression (numbers) is used.
A stratified 20% holdout is kept out of training; its metrics are printed as one JSON line, and
``--holdout-out`` writes those rows so ``gatewatch registry push --eval-data`` scores the new
version on data it has not seen.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn import metrics
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gateway.errors import RegistryError
from gateway.manifest import read_csv
from gateway.models import load_artifact

# An integer target with at most this many distinct values is taken for class labels.
MAX_CLASSES = 20


def default_estimator(y: np.ndarray) -> BaseEstimator:
    labels = y.dtype == object or (
        np.issubdtype(y.dtype, np.integer) and np.unique(y).size <= MAX_CLASSES
    )
    if labels:
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def base_estimator(path: Path) -> BaseEstimator:
    """The estimator of a previous version, unfitted. A folder is read as a registry version."""
    if path.is_dir():
        manifest = json.loads((path / "manifest.json").read_text())
        path = path / manifest["artifact"]
    # The registry is the operator's own: pickle/joblib artifacts are trusted here.
    model = load_artifact(path, trusted=True)
    if not isinstance(model, BaseEstimator):
        raise RegistryError(f"{path.name}: not a scikit-learn estimator ({type(model).__name__})")
    return clone(model)


def evaluate(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The metrics the registry records, under the same names."""
    pred = model.predict(X)
    if is_classifier(model):
        out = {
            "accuracy": float(metrics.accuracy_score(y, pred)),
            "f1_macro": float(metrics.f1_score(y, pred, average="macro")),
        }
        if hasattr(model, "predict_proba"):
            proba = model.predict_proba(X)
            out["log_loss"] = float(metrics.log_loss(y, proba, labels=model.classes_))
        return out
    return {
        "mae": float(metrics.mean_absolute_error(y, pred)),
        "rmse": float(math.sqrt(metrics.mean_squared_error(y, pred))),
        "r2": float(metrics.r2_score(y, pred)),
    }


def write_rows(source: Path, rows: np.ndarray, out: Path) -> None:
    """Copy the header and the chosen data rows of `source` to `out`, untouched."""
    with source.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = next(reader)
        body = [row for row in reader if row]
    with out.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(body[i] for i in rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="CSV of recent labelled rows")
    parser.add_argument("--target", required=True, help="name of the target column")
    parser.add_argument(
        "--out", required=True, type=Path, help="where to write the model: .skops (safe) or .joblib"
    )
    parser.add_argument("--base-model", type=Path, help="previous artifact or registry version")
    parser.add_argument("--holdout-out", type=Path, help="write the holdout rows to this CSV")
    parser.add_argument("--holdout", type=float, default=0.2, help="share kept out (default 0.2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        table = read_csv(args.data, args.target)
        estimator = base_estimator(args.base_model) if args.base_model else None
    except (RegistryError, OSError, KeyError, ValueError) as exc:
        print(f"retrain: {exc}", file=sys.stderr)
        return 2
    estimator = estimator if estimator is not None else default_estimator(table.y)
    rows = np.arange(table.rows)
    _, counts = np.unique(table.y.astype(str), return_counts=True)
    stratify = table.y if is_classifier(estimator) and counts.min() >= 2 else None
    train, holdout = train_test_split(
        rows, test_size=args.holdout, random_state=args.seed, stratify=stratify
    )
    model = estimator.fit(table.X[train], table.y[train])
    scores = evaluate(model, table.X[holdout], table.y[holdout])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".skops":
        # The safe format: the gateway loads it without running pickled code.
        import skops.io

        skops.io.dump(model, args.out)
    else:
        joblib.dump(model, args.out)
    if args.holdout_out:
        write_rows(args.data, holdout, args.holdout_out)
    report = {
        "model": str(args.out),
        "estimator": type(model[-1] if hasattr(model, "steps") else model).__name__,
        "rows": table.rows,
        "train_rows": int(train.size),
        "holdout_rows": int(holdout.size),
        "data_sha256": table.sha256,
        "metrics": scores,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
