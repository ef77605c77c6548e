"""Per-version monitors of the sidecar: drift, accuracy on labelled records, agreement, traffic.

Each monitor is a small object with ``update(...)`` and ``status() -> dict``; the dicts are the
sub-dicts of a version's entry in the sidecar status (see the status format in the docs). The
monitors take times from record timestamps, never the wall clock, use no randomness and
pickle with the sidecar's checkpoint, so a restarted sidecar continues exactly where it was.
The drift monitors that compare traffic with the manifest's reference live in
``sidecar.drift`` and are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from river import metrics, stats, utils

from sidecar.drift import FeatureDriftMonitor, PredictionDriftMonitor, new_adwin

__all__ = [
    "AgreementMonitor",
    "ClassificationAccuracy",
    "ConceptDriftMonitor",
    "FeatureDriftMonitor",
    "PredictionDriftMonitor",
    "RegressionAccuracy",
    "TrafficMonitor",
]

ROLES = ("primary", "canary", "pinned", "shadow")
_TASKS = ("classification", "regression")
# Probabilities are clipped to this distance from 0 and 1 in the log loss, as river does.
_PROBA_CLIP = 1e-15


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, so they hash and compare like the labels from JSON."""
    return value.item() if isinstance(value, np.generic) else value


def _river(factory: Any, /, **kwargs: Any) -> Any:
    """Build a river object. river's metrics carry no annotations; going through ``Any`` keeps
    strict mypy on our code instead of theirs."""
    return factory(**kwargs)


def _check_window(window: int) -> None:
    if window < 1:
        raise ValueError(f"window must be a positive number of labels, got {window}")


def _check_task(task: str) -> None:
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}")


class ClassificationAccuracy:
    """Accuracy, macro F1 and log loss of a classifier on its labelled records.

    Lifetime figures come from one river confusion matrix shared by ``metrics.Accuracy`` and
    ``metrics.MacroF1``; the rolling figures over the last ``window`` labels from
    ``utils.Rolling(metrics.Accuracy)``, whose confusion matrix a second MacroF1 reads. Macro F1
    averages over the classes seen as a label or a prediction, as scikit-learn's
    ``f1_score(average="macro")`` does. The log loss covers the labels that came with
    probabilities; a true class missing from them counts as probability 0 (clipped to 1e-15).

    Parameters
    ----------
    window
        Labels in the rolling window.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> monitor = ClassificationAccuracy(window=100)
    >>> for _ in range(1000):
    ...     y = rng.choice(["cat", "dog", "owl"])
    ...     monitor.update(y, y if rng.random() < 0.8 else "dog", {y: 0.7, "dog": 0.3})
    >>> status = monitor.status()
    >>> status["labels"], round(status["accuracy"], 3), round(status["f1_macro"], 3)
    (1000, 0.864, 0.868)
    >>> round(status["log_loss"], 3), status["rolling_accuracy"]
    (0.638, 0.9)
    """

    def __init__(self, *, window: int = 1000) -> None:
        self.window = window
        _check_window(window)
        self._reset()

    def _reset(self) -> None:
        self._cm = _river(metrics.ConfusionMatrix)
        self._accuracy = _river(metrics.Accuracy, cm=self._cm)
        self._f1 = _river(metrics.MacroF1, cm=self._cm)
        self._rolling = _river(utils.Rolling, cls=metrics.Accuracy, window_size=self.window)
        self._rolling_f1 = _river(metrics.MacroF1, cm=self._rolling.obj.cm)
        self._labels = 0
        self._loss_sum = 0.0
        self._loss_count = 0

    def update(self, y_true: Any, y_pred: Any, proba: Mapping[Any, float] | None = None) -> None:
        """Add one label and the prediction it answers (with class probabilities if known)."""
        y_true, y_pred = _plain(y_true), _plain(y_pred)
        # The shared matrices are updated once; the metrics on them only read.
        self._cm.update(y_true, y_pred)
        self._rolling.update(y_true, y_pred)
        self._labels += 1
        if proba is not None:
            p = min(max(float(proba.get(y_true, 0.0)), _PROBA_CLIP), 1.0 - _PROBA_CLIP)
            self._loss_sum -= math.log(p)
            self._loss_count += 1

    def status(self) -> dict[str, Any]:
        """``{"labels", "accuracy", "f1_macro", "log_loss", "rolling_*", "window"}``."""
        seen = self._labels > 0
        return {
            "labels": self._labels,
            "accuracy": float(self._accuracy.get()) if seen else None,
            "f1_macro": float(self._f1.get()) if seen else None,
            "log_loss": self._loss_sum / self._loss_count if self._loss_count else None,
            "rolling_accuracy": float(self._rolling.get()) if seen else None,
            "rolling_f1_macro": float(self._rolling_f1.get()) if seen else None,
            "window": self.window,
        }


class RegressionAccuracy:
    """MAE, RMSE and R² of a regressor on its labelled records, and the MAE of the last labels.

    Parameters
    ----------
    window
        Labels in the rolling window.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(2)
    >>> monitor = RegressionAccuracy(window=50)
    >>> for _ in range(500):
    ...     y = rng.gauss(10.0, 3.0)
    ...     monitor.update(y, y + rng.gauss(0.0, 1.0))
    >>> status = monitor.status()
    >>> status["labels"], round(status["mae"], 3), round(status["rmse"], 3)
    (500, 0.767, 0.967)
    >>> round(status["r2"], 3), round(status["rolling_mae"], 3)
    (0.903, 0.762)
    """

    def __init__(self, *, window: int = 1000) -> None:
        self.window = window
        _check_window(window)
        self._reset()

    def _reset(self) -> None:
        self._mae = _river(metrics.MAE)
        self._rmse = _river(metrics.RMSE)
        self._r2 = _river(metrics.R2)
        self._rolling = _river(utils.Rolling, cls=metrics.MAE, window_size=self.window)
        self._labels = 0

    def update(self, y_true: float, y_pred: float) -> None:
        """Add one label and the value predicted for it."""
        y_true, y_pred = float(y_true), float(y_pred)
        for metric in (self._mae, self._rmse, self._r2, self._rolling):
            metric.update(y_true, y_pred)
        self._labels += 1

    def status(self) -> dict[str, Any]:
        """``{"labels", "mae", "rmse", "r2", "rolling_mae", "window"}``; R² needs two labels."""
        seen = self._labels > 0
        return {
            "labels": self._labels,
            "mae": float(self._mae.get()) if seen else None,
            "rmse": float(self._rmse.get()) if seen else None,
            "r2": float(self._r2.get()) if self._labels > 1 else None,
            "rolling_mae": float(self._rolling.get()) if seen else None,
            "window": self.window,
        }


class ConceptDriftMonitor:
    """A rise of the error rate on labelled records, found by ADWIN on the per-record errors.

    ADWIN fires on rises and falls alike; the direction is read from its estimate just before
    and just after the alarm (after an alarm ADWIN keeps only the recent sub-window). A rise
    turns the state "drifting", a significant fall while drifting turns it back to "ok". Alarms
    within the first ``min_records`` records are ignored: the starting error rate of a new
    version is not a change. ``error_rate`` is the mean error over ADWIN's current window, the
    records since the last change it found.

    Parameters
    ----------
    delta
        ADWIN significance.
    min_records
        Labelled records before an alarm counts.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(42)
    >>> monitor = ConceptDriftMonitor()
    >>> for i in range(6000):
    ...     rate = 0.10 if i < 3000 else 0.25      # the error rate rises at record 3,001
    ...     monitor.update(float(rng.random() < rate))
    >>> status = monitor.status()
    >>> status["state"], status["changed_at_record"]
    ('drifting', 3168)
    """

    def __init__(self, *, delta: float = 0.002, min_records: int = 100) -> None:
        self.delta = delta
        self.min_records = min_records
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if min_records < 0:
            raise ValueError(f"min_records must not be negative, got {min_records}")
        self._reset()

    def _reset(self) -> None:
        self._adwin: Any = new_adwin(self.delta)
        self._records = 0
        self._drifting = False
        self._changed_at_record: int | None = None

    def update(self, error: float) -> None:
        """Add one labelled record's error: 0/1 for a classifier, a loss for a regressor."""
        before = self._adwin.estimation
        self._adwin.update(float(error))
        self._records += 1
        # Read the flag now: ADWIN resets itself at the next update.
        if not self._adwin.drift_detected or self._records <= self.min_records:
            return
        rose = self._adwin.estimation > before
        if rose != self._drifting:
            self._drifting = rose
            self._changed_at_record = self._records

    def status(self) -> dict[str, Any]:
        """``{"state", "error_rate", "changed_at_record"}``."""
        return {
            "state": "drifting" if self._drifting else "ok",
            "error_rate": float(self._adwin.estimation) if self._adwin.width > 0 else None,
            "changed_at_record": self._changed_at_record,
        }


class AgreementMonitor:
    """How often two versions answer the same request alike (shadow or canary vs primary).

    Classification: a pair agrees when the labels are equal. Regression: when the values are
    within ``rel_tol``/``abs_tol`` of each other (``math.isclose``); ``mad`` is the mean absolute
    difference over all pairs.

    Parameters
    ----------
    task
        "classification" or "regression".
    rel_tol
        Relative tolerance for regression pairs.
    abs_tol
        Absolute tolerance for regression pairs.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(5)
    >>> monitor = AgreementMonitor(task="classification")
    >>> for _ in range(1000):
    ...     label = rng.choice([0, 1])
    ...     monitor.update(label, label if rng.random() < 0.9 else 1 - label)
    >>> monitor.status()
    {'agreement': 0.895, 'pairs': 1000}
    """

    def __init__(self, *, task: str, rel_tol: float = 0.01, abs_tol: float = 0.0) -> None:
        self.task = task
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol
        _check_task(task)
        if rel_tol < 0 or abs_tol < 0:
            raise ValueError("rel_tol and abs_tol must not be negative")
        self._reset()

    def _reset(self) -> None:
        self._pairs = 0
        self._agreed = 0
        self._abs_diff = 0.0

    def update(self, a: Any, b: Any) -> None:
        """Add one pair: the two versions' predictions for the same request."""
        if self.task == "classification":
            same = _plain(a) == _plain(b)
        else:
            a, b = float(a), float(b)
            same = math.isclose(a, b, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
            self._abs_diff += abs(a - b)
        self._pairs += 1
        self._agreed += bool(same)

    def status(self) -> dict[str, Any]:
        """``{"agreement", "pairs"}`` plus ``"mad"`` for regression."""
        out: dict[str, Any] = {
            "agreement": self._agreed / self._pairs if self._pairs else None,
            "pairs": self._pairs,
        }
        if self.task == "regression":
            out["mad"] = self._abs_diff / self._pairs if self._pairs else None
        return out


class TrafficMonitor:
    """Records, roles, server errors (status >= 500) and latency quantiles of one version.

    The quantiles are river's P² estimates (``stats.Quantile``) over the version's lifetime:
    constant memory, no stored latencies. A record without a finite latency is counted but
    leaves the quantiles alone.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(9)
    >>> monitor = TrafficMonitor()
    >>> for i in range(2000):
    ...     monitor.update(rng.expovariate(1 / 5.0), 503 if i % 100 == 0 else 200, "primary")
    >>> status = monitor.status()
    >>> status["records"], status["errors"], status["error_rate"], status["roles"]["primary"]
    (2000, 20, 0.01, 2000)
    >>> {k: round(v, 1) for k, v in status["latency_ms"].items()}
    {'p50': 3.5, 'p95': 15.2, 'p99': 21.6}
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._records = 0
        self._errors = 0
        self._roles = dict.fromkeys(ROLES, 0)
        self._latency = {
            f"p{round(q * 100)}": _river(stats.Quantile, q=q) for q in (0.5, 0.95, 0.99)
        }

    def update(self, latency_ms: float | None, status: int, role: str) -> None:
        """Add one prediction record: its latency, HTTP status and route role."""
        self._records += 1
        self._roles[role] = self._roles.get(role, 0) + 1
        if status >= 500:
            self._errors += 1
        # Shadow answers run on a background thread the client never waits for: their latency
        # says nothing about what callers see, so only served records shape the quantiles.
        if role != "shadow" and latency_ms is not None and math.isfinite(latency_ms):
            for quantile in self._latency.values():
                quantile.update(float(latency_ms))

    def status(self) -> dict[str, Any]:
        """``{"records", "roles", "errors", "error_rate", "latency_ms": {"p50", "p95", "p99"}}``."""
        latency = {name: q.get() for name, q in self._latency.items()}
        return {
            "records": self._records,
            "roles": dict(self._roles),
            "errors": self._errors,
            "error_rate": self._errors / self._records if self._records else 0.0,
            "latency_ms": {k: None if v is None else float(v) for k, v in latency.items()},
        }
