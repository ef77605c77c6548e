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
