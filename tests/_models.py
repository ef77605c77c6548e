"""Small real models and registries for tests."""

from __future__ import annotations

import csv
from pathlib import Path

import joblib
import numpy as np
import skops.io as sio
from sklearn.linear_model import LinearRegression, LogisticRegression

from gateway.cli import main as gatewatch

N_FEATURES = 20
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def make_data(
    n: int = 2000, seed: int = 0, n_features: int = N_FEATURES
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 1.0, size=(n, n_features))
    w = np.linspace(-1.0, 1.0, n_features)
    y = (X @ w + rng.normal(0.0, 0.5, size=n) > 0).astype(int)
    return X, y


def write_csv(path: Path, X: np.ndarray, y: np.ndarray, features: list[str] | None = None) -> Path:
    features = features or [f"f{i}" for i in range(X.shape[1])]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*features, "label"])
        for row, label in zip(X.tolist(), y.tolist(), strict=True):
            w.writerow([*row, label])
    return path


def push(registry: Path, name: str, artifact: Path, data: Path) -> int:
    """Push one artifact with the real CLI (target column "label"); returns the new version."""
    folder = registry / name
    before = {int(p.name) for p in folder.iterdir()} if folder.exists() else set()
    args = ["registry", "--registry", str(registry), "push", name, "--model", str(artifact)]
    assert gatewatch([*args, "--train-data", str(data), "--target", "label"]) == 0
    return max({int(p.name) for p in folder.iterdir()} - before)


def push_logreg(
    registry: Path, work: Path, name: str = "churn", seed: int = 0, C: float = 1.0
) -> int:
    """Train a LogisticRegression on 20 features and push it with the real CLI; returns the version."""
    X, y = make_data(seed=seed)
    artifact = work / f"{name}-{seed}-{C}.skops"
    sio.dump(LogisticRegression(C=C, max_iter=500).fit(X, y), artifact)
    return push(registry, name, artifact, write_csv(work / f"{name}-{seed}.csv", X, y))


def push_linreg(registry: Path, work: Path, name: str = "price") -> int:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(500, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 3.0
    artifact = work / f"{name}.skops"
    sio.dump(LinearRegression().fit(X, y), artifact)
    return push(registry, name, artifact, write_csv(work / f"{name}.csv", X, y))


def push_gated(registry: Path, work: Path, mode: str, name: str = "churn") -> int:
    """Push a classifier that blocks or raises while tests._blockers.ARMED is set.

    Its class lives in the tests, so it is a pickle: the gateway needs allow_pickle = true."""
    from tests._blockers import GatedClassifier

    X, y = make_data()
    model = GatedClassifier(LogisticRegression(max_iter=500).fit(X, y), mode=mode).fit(X, y)
    artifact = work / f"gated-{mode}.joblib"
    joblib.dump(model, artifact)
    return push(registry, name, artifact, write_csv(work / "gated.csv", X, y))


def push_flaky(
    registry: Path, work: Path, *, flip: float = 0.0, fail: float = 0.0, name: str = "churn"
) -> int:
    """Push a 20-feature classifier that is wrong on a share `flip` of rows and raises on a share
    `fail` of requests while tests._blockers.ARMED is set (a pickle: needs allow_pickle)."""
    from tests._blockers import FlakyClassifier

    X, y = make_data()
    inner = LogisticRegression(max_iter=500).fit(X, y)
    artifact = work / f"flaky-{flip}-{fail}.joblib"
    joblib.dump(FlakyClassifier(inner, flip=flip, fail=fail).fit(X, y), artifact)
    return push(registry, name, artifact, write_csv(work / "flaky.csv", X, y))
