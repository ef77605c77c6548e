"""The monitors of one (model, version), built from its manifest when the engine first sees it.

``VersionMonitors`` gathers a batch's rows in a ``Buffer`` and feeds the numpy monitors once per
batch (``flush``); joined labels update accuracy and concept drift one by one (``score``).
A version without a manifest, or whose monitors are switched off, still reports every key of
the status format, with a ``skipped`` reason instead of figures.

Concept drift watches a 0/1 error stream. For a classifier an error is a wrong label. For a
regressor it is an absolute error above the standard deviation of the predictions on the
training data (the manifest's ``reference.prediction.std``): a scale the model's own output
defines, so one detector setting fits every unit; without that figure concept drift is skipped.
A label is a scalar for a one-row request or a list with one label per row (``null`` for a row
without a label); a label whose length does not match the prediction counts as unscored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np

from sidecar.config import MonitorSettings
from sidecar.monitors import (
    AgreementMonitor,
    ClassificationAccuracy,
    ConceptDriftMonitor,
    FeatureDriftMonitor,
    PredictionDriftMonitor,
    RegressionAccuracy,
    TrafficMonitor,
)

__all__ = ["Buffer", "VersionMonitors", "is_number"]


class Buffer:
    """Rows of one version gathered during one ``process`` call, fed to numpy monitors at once."""

    __slots__ = ("rows", "row_ts", "preds", "pred_ts")

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.row_ts: list[float] = []
        self.preds: list[Any] = []
        self.pred_ts: list[float] = []


class VersionMonitors:
    """Monitors of one (model, version), built from its manifest when first seen."""

    def __init__(
        self, model: str, version: int, manifest: Mapping[str, Any] | None, error: str | None,
        task: str, settings: MonitorSettings,
    ) -> None:  # fmt: skip
        self.model = model
        self.version = version
        self.task = task
        self.manifest_error = error
        manifest = manifest or {}
        reference = manifest.get("reference") or {}
        self.metrics = dict(manifest.get("metrics") or {})
        self.features = list((manifest.get("inputs") or {}).get("names") or [])
        classes = manifest.get("classes")
        self.classes = list(classes) if isinstance(classes, list) else None
        prediction_ref = reference.get("prediction") or {}
        std = prediction_ref.get("std") if task == "regression" else None
        self.error_scale = float(std) if isinstance(std, int | float) and std > 0 else None
        self.traffic = TrafficMonitor()
        self.unscored_labels = 0
        self.bad_rows = 0
        self.skipped: dict[str, str] = {}
        self.feature_drift: FeatureDriftMonitor | None = None
        self.prediction_drift: PredictionDriftMonitor | None = None
        self.accuracy: ClassificationAccuracy | RegressionAccuracy | None = None
        self.concept: ConceptDriftMonitor | None = None
        self.agreement: AgreementMonitor | None = None
        self._build_drift(reference, settings)
        if settings.accuracy:
            window = settings.accuracy_window
            self.accuracy = (
                ClassificationAccuracy(window=window)
                if task == "classification"
                else RegressionAccuracy(window=window)
            )
        else:
            self.skipped["accuracy"] = "disabled by monitors.accuracy.enabled"
        if not settings.concept:
            self.skipped["concept_drift"] = "disabled by monitors.concept.enabled"
        elif task == "regression" and self.error_scale is None:
            self.skipped["concept_drift"] = "no reference std of predictions in the manifest"
        else:
            self.concept = ConceptDriftMonitor(delta=settings.concept_delta)
        if settings.shadow:
            self.agreement = AgreementMonitor(task=task)

    def _build_drift(self, reference: Mapping[str, Any], settings: MonitorSettings) -> None:
        if not settings.drift:
            reason = "disabled by monitors.drift.enabled"
        elif self.manifest_error is not None:
            reason = f"no manifest: {self.manifest_error}"
        elif not reference.get("features") or not self.features:
            reason = "the manifest has no reference statistics"
        else:
            try:
                self.feature_drift = FeatureDriftMonitor(
                    self.features,
                    reference["features"],
                    delta=settings.delta,
                    var_delta=settings.var_delta,
                    window=settings.window,
                    ks_alpha=settings.ks_alpha,
                    psi_threshold=settings.psi_threshold,
                )
            except ValueError as exc:
                self.skipped["feature_drift"] = f"unusable reference statistics: {exc}"
            try:
                self.prediction_drift = PredictionDriftMonitor(
                    reference.get("prediction") or {},
                    task=self.task,
                    delta=settings.delta,
                    var_delta=settings.var_delta,
                    window=settings.window,
                    alpha=settings.ks_alpha,
                    psi_threshold=settings.psi_threshold,
                )
            except ValueError as exc:
                self.skipped["prediction_drift"] = f"unusable reference predictions: {exc}"
            return
        self.skipped["feature_drift"] = self.skipped["prediction_drift"] = reason

    def flush(self, buffer: Buffer) -> None:
        """Feed the rows gathered in one batch to the numpy monitors."""
        if buffer.rows and self.feature_drift is not None:
            X, ts = self._matrix(buffer.rows, buffer.row_ts)
            if len(X):
                self.feature_drift.update(X, ts)
        if buffer.preds and self.prediction_drift is not None:
            preds: Any = buffer.preds
            if self.task == "regression":
                preds = np.asarray([_to_float(p) for p in preds], dtype=np.float64)
            self.prediction_drift.update(preds, np.asarray(buffer.pred_ts, dtype=np.float64))

    def _matrix(self, rows: list[Any], row_ts: list[float]) -> tuple[np.ndarray, np.ndarray]:
        """Rows as a float matrix; rows of the wrong length or with non-numbers are counted
        and left out (null becomes NaN, which the monitor skips value by value)."""
        k = len(self.features)
        ts = np.asarray(row_ts, dtype=np.float64)
        try:
            X = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            X = np.empty(0)
        if X.ndim != 2 or X.shape[1] != k:
            good = [i for i, row in enumerate(rows) if _numeric_row(row, k)]
            X = np.asarray([rows[i] for i in good], dtype=np.float64).reshape(len(good), k)
            ts = ts[good]
            self.bad_rows += len(rows) - len(good)
        return X, ts

    def score(self, prediction: Sequence[Any], outputs: Any, label: Any) -> None:
        """Update accuracy and concept drift with a joined (prediction, label) pair."""
        labels = label if isinstance(label, list | tuple) else (label,)
        if len(labels) != len(prediction) or self.accuracy is None:
            self.unscored_labels += len(labels)
            return
        for i, y in enumerate(labels):
            if y is None:
                continue
            p = prediction[i]
            if isinstance(self.accuracy, ClassificationAccuracy):
                self.accuracy.update(y, p, self._proba(outputs, i))
                if self.concept is not None:
                    self.concept.update(0.0 if y == p else 1.0)
                continue
            y_value, p_value = _to_float(y), _to_float(p)
            if not (np.isfinite(y_value) and np.isfinite(p_value)):
                self.unscored_labels += 1
                continue
            self.accuracy.update(y_value, p_value)
            if self.concept is not None and self.error_scale is not None:
                self.concept.update(1.0 if abs(y_value - p_value) > self.error_scale else 0.0)

    def _proba(self, outputs: Any, i: int) -> dict[Any, float] | None:
        classes = self.classes
        if not classes or not isinstance(outputs, list | tuple) or i >= len(outputs):
            return None
        row = outputs[i]
        if not isinstance(row, list | tuple) or len(row) != len(classes):
            return None
        return dict(zip(classes, row, strict=True))

    def status(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "task": self.task,
            **self.traffic.status(),
            "feature_drift": (
                self.feature_drift.status()
                if self.feature_drift is not None
                else {"drifting": [], "features": {}, "skipped": self.skipped["feature_drift"]}
            ),
            "prediction_drift": (
                self.prediction_drift.status()
                if self.prediction_drift is not None
                else _idle_drift(self.skipped["prediction_drift"])
            ),
            "accuracy": (
                {**self.accuracy.status(), "unscored_labels": self.unscored_labels}
                if self.accuracy is not None
                else {"labels": 0, "skipped": self.skipped["accuracy"]}
            ),
            "concept_drift": (
                self.concept.status()
                if self.concept is not None
                else {
                    "state": "ok",
                    "error_rate": None,
                    "changed_at_record": None,
                    "skipped": self.skipped["concept_drift"],
                }
            ),  # fmt: skip
            "shadow": (
                self.agreement.status()
                if self.agreement is not None
                else {"agreement": None, "pairs": 0, "skipped": "disabled by monitors.shadow"}
            ),
            "manifest_metrics": self.metrics,
            "manifest_error": self.manifest_error,
            "bad_rows": self.bad_rows,
        }


def _idle_drift(reason: str) -> dict[str, Any]:
    return {
        "state": "ok",
        "score": 0.0,
        "psi": None,
        "ks": None,
        "changed_at": None,
        "changed_at_record": None,
        "skipped": reason,
    }


def is_number(value: Any) -> TypeGuard[float]:
    """A JSON number (bool excluded), by exact type: this runs for every record."""
    return type(value) is float or type(value) is int


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _numeric_row(row: Any, k: int) -> bool:
    if not isinstance(row, list) or len(row) != k:
        return False
    return all(isinstance(x, int | float) or x is None for x in row)
