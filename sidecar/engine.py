"""The sidecar engine: turns prediction-log records into per-model, per-version monitor state.

``Engine.process`` takes records in log order and is the only writer; ``Engine.status`` renders
the JSON status every other part reads (alerts, dashboard, /metrics). Everything here is a pure
function of the record sequence: no wall clock (times are record ``ts``), no randomness, and the
result does not depend on how the sequence is cut into batches. That is what lets a restart from
a checkpoint reproduce exactly the figures of an uninterrupted run.

Bounded memory, all measured in records, never in wall-clock time:

* De-duplication remembers the keys ``(id, role, version)`` of the last ``DEDUP_WINDOW`` records
  plus every record processed since the previous checkpoint (a reader redelivers at most those;
  see ``mark_checkpoint``), capped at ``MAX_UNCHECKPOINTED``.
* The label join keeps a prediction waiting for its label (and a label waiting for its
  prediction) for ``label_ttl`` seconds of record time, and while fewer than ``MAX_PENDING``
  later entries were added to the same store.
* Shadow pairing keeps served predictions of models that have shadows, and shadow predictions
  that arrived before their request's answer, for ``SHADOW_TTL`` seconds / ``MAX_SHADOW``
  entries.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeGuard

import numpy as np
import orjson

from gateway.errors import RegistryError
from gateway.registry import read_manifest
from sidecar.config import MonitorSettings, SidecarConfig
from sidecar.monitors import (
    AgreementMonitor,
    ClassificationAccuracy,
    ConceptDriftMonitor,
    FeatureDriftMonitor,
    PredictionDriftMonitor,
    RegressionAccuracy,
    TrafficMonitor,
)

__all__ = [
    "CANARY_IDLE_SECONDS",
    "DEDUP_WINDOW",
    "MAX_PENDING",
    "MAX_SHADOW",
    "SHADOW_TTL",
    "Engine",
]

DEDUP_WINDOW = 100_000
MAX_UNCHECKPOINTED = 1_000_000
MAX_PENDING = 200_000
SHADOW_TTL = 300.0
MAX_SHADOW = 100_000
CANARY_IDLE_SECONDS = 600.0
"""A canary with no record in this many seconds of record time is no longer reported."""

_SERVED_ROLES = ("primary", "canary", "pinned")
_ROLES = frozenset((*_SERVED_ROLES, "shadow"))
_MISSING = object()


class _Dedup:
    """Keys of recent records, forgotten oldest first; never those since the last checkpoint.

    After a restart, the keys saved since the checkpoint before last are the records a reader
    may legitimately redeliver (saved, but not yet acknowledged when the process died). Until
    the next checkpoint, seeing one of them again is a redelivery (a record that was already
    a duplicate the first time comes back twice); anything else seen again is a duplicate.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._keys: set[tuple[str, str, int]] = set()
        self._order: deque[tuple[str, str, int]] = deque()
        self._since_checkpoint = 0
        self._redeliverable: set[tuple[str, str, int]] = set()

    def add(self, key: tuple[str, str, int]) -> bool:
        """Remember ``key``; False when it was already seen (a duplicate)."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        self._since_checkpoint += 1
        limit = self.window + min(self._since_checkpoint, MAX_UNCHECKPOINTED)
        while len(self._order) > limit:
            self._keys.discard(self._order.popleft())
        return True

    def checkpointed(self) -> None:
        self._since_checkpoint = 0
        self._redeliverable = set()

    def __getstate__(self) -> dict[str, Any]:
        # One orjson blob: pickling 100,000s of small tuples one by one costs ten times more.
        keys = orjson.dumps(list(self._order))
        return {"window": self.window, "keys": keys, "since": self._since_checkpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.window = state["window"]
        self._order = deque(tuple(key) for key in orjson.loads(state["keys"]))
        self._keys = set(self._order)
        self._since_checkpoint = state["since"]
        self._redeliverable = set()

    def restored(self) -> None:
        count = min(self._since_checkpoint, len(self._order))
        self._redeliverable = set(itertools.islice(reversed(self._order), count))

    def redelivered(self, key: tuple[str, str, int]) -> bool:
        """Whether a key seen again may be the redelivery of an unacknowledged record."""
        return key in self._redeliverable


class _Store:
    """Values by request id, forgotten past a ts-based TTL or after ``size`` later insertions.

    Both bounds count insertions, not live entries, so memory stays bounded even when most
    entries are taken out early (joined) and the order queue keeps their stale keys. Values
    must be JSON values: the store is saved as orjson, for speed. Callers store tuples, not
    lists (see ``_frozen``), and get tuples back after a restore.
    """

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self.expired = 0
        self._items: dict[str, Any] = {}
        self._order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, ts: float, value: Any) -> float:
        """Add an entry; returns when the oldest entry expires (for ``Engine._advance``)."""
        self._items[key] = value
        order = self._order
        order.append((ts, key))
        while len(order) > self.size:
            self._forget(order.popleft()[1])
        return order[0][0] + self.ttl

    def get(self, key: str) -> Any:
        return self._items.get(key)

    def pop(self, key: str) -> Any:
        return self._items.pop(key, None)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "size": self.size,
            "expired": self.expired,
            "items": orjson.dumps(self._items),
            "order": orjson.dumps(list(self._order)),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.ttl, self.size, self.expired = state["ttl"], state["size"], state["expired"]
        self._items = {key: _frozen(value) for key, value in orjson.loads(state["items"]).items()}
        self._order = deque((ts, key) for ts, key in orjson.loads(state["order"]))

    def trim(self, newest_ts: float) -> float:
        """Forget entries older than the TTL, from the oldest inserted on; returns when the
        oldest remaining entry expires."""
        cutoff = newest_ts - self.ttl
        order = self._order
        while order and order[0][0] < cutoff:
            self._forget(order.popleft()[1])
        return order[0][0] + self.ttl if order else math.inf

    def _forget(self, key: str) -> None:
        if self._items.pop(key, _MISSING) is not _MISSING:
            self.expired += 1


class _Buffer:
    """Rows of one version gathered during one ``process`` call, fed to numpy monitors at once."""

    __slots__ = ("rows", "row_ts", "preds", "pred_ts")

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.row_ts: list[float] = []
        self.preds: list[Any] = []
        self.pred_ts: list[float] = []


class _Version:
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

    def flush(self, buffer: _Buffer) -> None:
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


class _Model:
    """Which versions of a model serve which role, by record order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, _Version] = {}
        self.primary: int | None = None
        self.canary: int | None = None
        self.canary_ts = float("-inf")
        self.shadows: set[int] = set()

    def saw(self, role: str, version: int, ts: float) -> None:
        if role == "primary":
            self.primary = version
        elif role == "canary":
            if version != self.canary:
                self.canary, self.canary_ts = version, ts
            self.canary_ts = max(self.canary_ts, ts)
        elif role == "shadow":
            self.shadows.add(version)

    def status(self, newest_ts: float | None) -> dict[str, Any]:
        canary = self.canary
        if canary == self.primary or newest_ts is None:
            canary = None
        elif newest_ts - self.canary_ts > CANARY_IDLE_SECONDS:
            canary = None
        return {
            "primary": self.primary,
            "canary": canary,
            "shadows": sorted(self.shadows),
            "versions": {str(v): self.versions[v].status() for v in sorted(self.versions)},
        }


_STATE_FIELDS = (
    "_records",
    "_feedback",
    "_duplicates",
    "_invalid",
    "_unpaired_shadows",
    "_newest_ts",
    "_models",
    "_dedup",
    "_predictions",
    "_labels",
    "_served",
    "_shadows",
)


class Engine:
    """Per-model, per-version monitors fed from prediction-log records; see the module doc."""

    def __init__(self, config: SidecarConfig) -> None:
        self._config = config
        self._settings = config.monitors
        self._records = 0
        self._feedback = 0
        self._duplicates = 0
        self._invalid = 0
        self._unpaired_shadows = 0
        self._newest_ts: float | None = None
        self._models: dict[str, _Model] = {}
        self._dedup = _Dedup(DEDUP_WINDOW)
        self._predictions = _Store(config.label_ttl, MAX_PENDING)
        self._labels = _Store(config.label_ttl, MAX_PENDING)
        self._served = _Store(SHADOW_TTL, MAX_SHADOW)
        self._shadows = _Store(SHADOW_TTL, MAX_SHADOW)
        self.redelivered = 0
        """Records redelivered by the reader after a restart and ignored (not state)."""
        self._next_expiry = -math.inf  # not state: the first record after a restore trims

    @property
    def records(self) -> int:
        return self._records

    def snapshot(self) -> dict[str, Any]:
        """The engine's state as a picklable dict; it shares objects with the engine, so pickle
        it before the next ``process`` call."""
        return {name: getattr(self, name) for name in _STATE_FIELDS}

    @classmethod
    def from_snapshot(cls, config: SidecarConfig, snapshot: Mapping[str, Any]) -> Engine:
        """Rebuild an engine saved by ``snapshot``; ``config`` supplies what is not state."""
        engine = cls(config)
        for name in _STATE_FIELDS:
            setattr(engine, name, snapshot[name])
        engine._dedup.restored()
        return engine

    def mark_checkpoint(self) -> None:
        """Call once the state is durably saved and acknowledged to the log: records before it
        will not be redelivered, so their keys may leave the de-dup memory."""
        self._dedup.checkpointed()

    def process(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Count and monitor records in log order; malformed ones are counted as invalid."""
        buffers: dict[_Version, _Buffer] = {}
        for record in records:
            kind = record.get("kind")
            if kind is None or kind == "prediction":
                self._on_prediction(record, buffers)
            elif kind == "feedback":
                self._on_feedback(record)
            else:
                self._invalid += 1
        for version, buffer in buffers.items():
            version.flush(buffer)

    def _seen_again(self, key: tuple[str, str, int]) -> None:
        # Redeliveries after a restart are not in the status: an uninterrupted run has none.
        if self._dedup.redelivered(key):
            self.redelivered += 1
        else:
            self._duplicates += 1

    def _advance(self, ts: float) -> None:
        """Move the record clock; the stores are trimmed only once their oldest entry expired
        (one comparison per record instead of four trims)."""
        newest = self._newest_ts
        if newest is None or ts > newest:
            self._newest_ts = newest = ts
        if newest > self._next_expiry:
            self._next_expiry = min(
                self._predictions.trim(newest),
                self._labels.trim(newest),
                self._served.trim(newest),
                self._shadows.trim(newest),
            )

    def _put(self, store: _Store, rid: str, ts: float, value: Any) -> None:
        self._next_expiry = min(self._next_expiry, store.put(rid, ts, value))

    def _on_prediction(self, record: Mapping[str, Any], buffers: dict[_Version, _Buffer]) -> None:
        rid, ts = record.get("id"), record.get("ts")
        name, number, role = record.get("model"), record.get("version"), record.get("role")
        status = record.get("status", 200)
        if (
            type(rid) is not str
            or not _is_number(ts)
            or type(name) is not str
            or type(number) is not int
            or role not in _ROLES
            or type(status) is not int
        ):
            self._invalid += 1
            return
        if not self._dedup.add((rid, role, number)):
            self._seen_again((rid, role, number))
            return
        self._records += 1
        ts = float(ts)
        self._advance(ts)
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(name)
        version = model.versions.get(number)
        if version is None:
            version = model.versions[number] = self._new_version(name, number, record)
        latency = record.get("latency_ms")
        version.traffic.update(float(latency) if _is_number(latency) else None, status, role)
        model.saw(role, number, ts)
        if status >= 400:
            return
        prediction = record.get("prediction")
        if not isinstance(prediction, list):
            prediction = None
        inputs = record.get("inputs")
        if (version.feature_drift is not None and isinstance(inputs, list) and inputs) or (
            version.prediction_drift is not None and prediction
        ):
            buffer = buffers.get(version)
            if buffer is None:
                buffer = buffers[version] = _Buffer()
            if version.feature_drift is not None and isinstance(inputs, list):
                buffer.rows.extend(inputs)
                buffer.row_ts.extend([ts] * len(inputs))
            if version.prediction_drift is not None and prediction:
                buffer.preds.extend(prediction)
                buffer.pred_ts.extend([ts] * len(prediction))
        if prediction is None:
            return
        if role == "shadow":
            self._on_shadow(model, version, rid, ts, prediction)
            return
        if version.accuracy is not None:
            label = self._labels.pop(rid)
            if label is not None:
                version.score(prediction, record.get("outputs"), label)
            else:
                # Class probabilities only serve the log loss: kept when there are classes.
                outputs = _frozen(record.get("outputs")) if version.classes else None
                pending = (name, number, _frozen(prediction), outputs)
                self._put(self._predictions, rid, ts, pending)
        waiting = self._shadows.pop(rid) if len(self._shadows) else None
        if waiting is not None:
            for shadow, shadow_prediction in waiting:
                self._pair(model.versions[shadow], shadow_prediction, role, prediction)
        if model.shadows:
            self._put(self._served, rid, ts, (name, role, _frozen(prediction)))

    def _on_shadow(
        self, model: _Model, version: _Version, rid: str, ts: float, prediction: list[Any]
    ) -> None:
        if version.agreement is None:
            return
        served = self._served.get(rid)
        if served is not None and served[0] == model.name:
            self._pair(version, prediction, served[1], served[2])
            return
        waiting = self._shadows.get(rid)
        if waiting is None:
            self._put(self._shadows, rid, ts, [(version.version, prediction)])
        else:
            waiting.append((version.version, prediction))

    def _pair(
        self, shadow: _Version, prediction: Sequence[Any], role: str, served: Sequence[Any]
    ) -> None:
        """Compare a shadow's answer with the primary's, row by row; other roles do not pair."""
        if role != "primary" or len(prediction) != len(served) or shadow.agreement is None:
            self._unpaired_shadows += 1
            return
        for a, b in zip(prediction, served, strict=True):
            shadow.agreement.update(a, b)

    def _on_feedback(self, record: Mapping[str, Any]) -> None:
        rid, ts, label = record.get("id"), record.get("ts"), record.get("label")
        if type(rid) is not str or not _is_number(ts) or label is None:
            self._invalid += 1
            return
        if not self._dedup.add((rid, "feedback", 0)):
            self._seen_again((rid, "feedback", 0))
            return
        self._feedback += 1
        ts = float(ts)
        self._advance(ts)
        pending = self._predictions.pop(rid)
        if pending is not None:
            name, number, prediction, outputs = pending
            self._models[name].versions[number].score(prediction, outputs, label)
        else:
            self._put(self._labels, rid, ts, _frozen(label))

    def _new_version(self, name: str, number: int, record: Mapping[str, Any]) -> _Version:
        """Build a version's monitors from its manifest; without one, count traffic and guess
        the task from the record (a classifier logs one probability per class)."""
        manifest: dict[str, Any] | None = None
        error: str | None = None
        try:
            manifest = read_manifest(self._config.registry, name, number)
        except RegistryError as exc:
            error = str(exc)
        task = manifest.get("task") if manifest is not None else None
        if task not in ("classification", "regression"):
            outputs = record.get("outputs")
            first = outputs[0] if isinstance(outputs, list) and outputs else None
            task = "classification" if isinstance(first, list) and len(first) > 1 else "regression"
        return _Version(name, number, manifest, error, task, self._settings)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """The status dict of the status contract; ``now`` (default: the wall clock) only
        feeds ``lag_seconds``."""
        newest = self._newest_ts
        now = time.time() if now is None else now
        return {
            "records": self._records,
            "feedback": self._feedback,
            "duplicates": self._duplicates,
            "invalid": self._invalid,
            "newest_ts": newest,
            "lag_seconds": None if newest is None else max(0.0, now - newest),
            "join": {
                "pending_predictions": len(self._predictions),
                "pending_labels": len(self._labels),
                "expired_predictions": self._predictions.expired,
                "expired_labels": self._labels.expired,
                "unpaired_shadows": self._unpaired_shadows + self._shadows.expired,
            },
            "models": {name: self._models[name].status(newest) for name in sorted(self._models)},
        }

    def model_status(self, name: str) -> dict[str, Any] | None:
        """One model's entry of ``status()["models"]``, or None if no record named it."""
        model = self._models.get(name)
        return None if model is None else model.status(self._newest_ts)


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


def _frozen(value: Any) -> Any:
    """Lists as tuples. The garbage collector stops tracking a tuple of numbers after one look,
    so the many predictions waiting for labels cost nothing in later full collections, which
    would otherwise take a third of the consumer's time."""
    if type(value) is not list:
        return value
    return tuple([_frozen(item) if type(item) is list else item for item in value])


def _is_number(value: Any) -> TypeGuard[float]:
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
