"""A classifier that fails or hangs on marked rows, pushed as a real artifact.

The gateway runs in its own process, so the switch is in the data, not a flag the test flips:
a row whose first feature equals RAISE_AT makes ``predict_proba`` raise, one equal to HANG_AT
makes it sleep HANG_SECONDS before answering. The class lives in the tests, so the artifact is
a pickle: the gateway serving it needs ``allow_pickle = true`` and the repo on its path.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

from gateway.cli import main as gatewatch
from tests._models import make_data, write_csv

RAISE_AT = -777.0
HANG_AT = 777.0
HANG_SECONDS = 3.0


class Misbehaving(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Wraps a fitted classifier; marked rows make the whole call raise or hang."""

    def __init__(self, inner: Any = None) -> None:
        self.inner = inner

    def fit(self, X: np.ndarray, y: np.ndarray) -> Misbehaving:
        self.classes_ = self.inner.classes_
        self.n_features_in_ = self.inner.n_features_in_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        first = np.asarray(X)[:, 0]
        if np.any(first == RAISE_AT):
            raise RuntimeError("the model was asked to fail")
        if np.any(first == HANG_AT):
            time.sleep(HANG_SECONDS)
        return self.inner.predict_proba(X)  # type: ignore[no-any-return]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]  # type: ignore[no-any-return]


def push_misbehaving(registry: Path, work: Path, name: str) -> None:
    X, y = make_data()
    model = Misbehaving(LogisticRegression(max_iter=500).fit(X, y)).fit(X, y)
    artifact = work / f"{name}.joblib"
    joblib.dump(model, artifact)
    data = write_csv(work / f"{name}.csv", X, y)
    args = ["--model", str(artifact), "--train-data", str(data), "--target", "label"]
    assert gatewatch(["registry", "--registry", str(registry), "push", name, *args]) == 0
