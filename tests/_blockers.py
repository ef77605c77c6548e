"""Models that misbehave on purpose, pushed into registries as real artifacts.

They live in an importable module so the in-process server can unpickle them; their switches
are module globals that the test flips.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

ARMED = threading.Event()
ENTERED = threading.Event()
RELEASE = threading.Event()


class GatedClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Wraps a fitted classifier; while ARMED, predict blocks until RELEASE or raises."""

    def __init__(self, inner: Any = None, mode: str = "block") -> None:
        self.inner = inner
        self.mode = mode

    def fit(self, X: np.ndarray, y: np.ndarray) -> GatedClassifier:
        self.classes_ = self.inner.classes_
        self.n_features_in_ = self.inner.n_features_in_
        return self

    def _gate(self) -> None:
        if not ARMED.is_set():
            return
        ENTERED.set()
        if self.mode == "raise":
            raise RuntimeError("shadow model exploded on purpose")
        RELEASE.wait(timeout=30)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._gate()
        return self.inner.predict_proba(X)  # type: ignore[no-any-return]

    def predict(self, X: np.ndarray) -> np.ndarray:
        self._gate()
        return self.inner.predict(X)  # type: ignore[no-any-return]


def reset() -> None:
    ARMED.clear()
    ENTERED.clear()
    RELEASE.clear()


def _row_hash(X: np.ndarray) -> np.ndarray:
    """A stable number in [0, 1) per row, so a model's mistakes are the same every run."""
    keys = np.abs(
        np.round(X[:, 0] * 1e6).astype(np.int64) * 2654435761
        + np.round(X[:, 1] * 1e6).astype(np.int64)
    )
    return (keys % 10_000) / 10_000.0


class FlakyClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Wraps a fitted binary classifier: answers wrong on a share `flip` of rows, and raises
    for a share `fail` of requests (a row-hash decides, so runs are repeatable)."""

    def __init__(self, inner: Any = None, flip: float = 0.0, fail: float = 0.0) -> None:
        self.inner = inner
        self.flip = flip
        self.fail = fail

    def fit(self, X: np.ndarray, y: np.ndarray) -> FlakyClassifier:
        self.classes_ = self.inner.classes_
        self.n_features_in_ = self.inner.n_features_in_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        h = _row_hash(X)
        if ARMED.is_set() and self.fail and h[0] >= 1 - self.fail:
            raise RuntimeError("flaky model failed on purpose")
        proba = np.asarray(self.inner.predict_proba(X))
        flipped = h < self.flip
        proba[flipped] = proba[flipped][:, ::-1]
        return proba

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(axis=1)]  # type: ignore[no-any-return]
