"""The sidecar engine: turns prediction-log records into per-model, per-version monitor state.

``Engine.process`` takes records in log order and is the only writer; ``Engine.status`` renders
the JSON status every other part reads (alerts, dashboard, /metrics). Everything here is a pure
function of the record sequence: no wall clock (times are record ``ts``), no randomness, and the
result does not depend on how the sequence is cut into batches. That is what lets a restart from
a checkpoint reproduce exactly the figures of an uninterrupted run.

Bounded memory, all measured in records, never in wall-clock time:

* De-duplication remembers hashes of ``(id, role, version)`` of the last ``DEDUP_WINDOW`` records
  plus every record processed since the previous checkpoint (a reader redelivers at most those;
  see ``mark_checkpoint``), capped at ``sidecar._stores.MAX_UNCHECKPOINTED``.
* The label join keeps a prediction waiting for its label (and a label waiting for its
  prediction) for ``label_ttl`` seconds of record time, and while fewer than ``MAX_PENDING``
  later entries were added to the same store.
* Shadow pairing keeps served predictions of models that have shadows, and shadow predictions
  that arrived before their request's answer, for ``SHADOW_TTL`` seconds / ``MAX_SHADOW``
  entries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.errors import RegistryError
from gateway.registry import read_manifest
from sidecar._stores import Dedup, Store, frozen, record_key
from sidecar._versions import Buffer, VersionMonitors, is_number
from sidecar.config import SidecarConfig

__all__ = [
    "CANARY_IDLE_SECONDS",
    "DEDUP_WINDOW",
    "MAX_PENDING",
    "MAX_SHADOW",
    "SHADOW_TTL",
    "Engine",
]

DEDUP_WINDOW = 100_000
MAX_PENDING = 200_000
SHADOW_TTL = 300.0
MAX_SHADOW = 100_000
CANARY_IDLE_SECONDS = 600.0
"""A canary with no record in this many seconds of record time is no longer reported."""

_SERVED_ROLES = ("primary", "canary", "pinned")
_ROLES = frozenset((*_SERVED_ROLES, "shadow"))


class _Model:
    """Which versions of a model serve which role, by record order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.versions: dict[int, VersionMonitors] = {}
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


def _key(record: Mapping[str, Any]) -> bytes | None:
    """The de-dup key of a well-formed record; None for a malformed one (counted invalid)."""
    kind, rid, ts = record.get("kind"), record.get("id"), record.get("ts")
    if type(rid) is not str or not is_number(ts):
        return None
    if kind == "feedback":
        return None if record.get("label") is None else record_key(rid, "feedback", 0)
    if kind is not None and kind != "prediction":
        return None
    name, number, role = record.get("model"), record.get("version"), record.get("role")
    if (
        type(name) is not str
        or type(number) is not int
        or role not in _ROLES
        or type(record.get("status", 200)) is not int
    ):
        return None
    return record_key(rid, role, number)


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
        self._dedup = Dedup(DEDUP_WINDOW)
        self._predictions = Store(config.label_ttl, MAX_PENDING)
        self._labels = Store(config.label_ttl, MAX_PENDING)
        self._served = Store(SHADOW_TTL, MAX_SHADOW)
        self._shadows = Store(SHADOW_TTL, MAX_SHADOW)
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
        records = records if isinstance(records, list) else list(records)
        keys = [_key(record) for record in records]
        buffers: dict[VersionMonitors, Buffer] = {}
        for record, key, new in zip(records, keys, self._dedup.admit(keys), strict=True):
            if key is None:
                self._invalid += 1
            elif not new:
                self._seen_again(key)
            elif record.get("kind") == "feedback":
                self._on_feedback(record)
            else:
                self._on_prediction(record, buffers)
        for version, buffer in buffers.items():
            version.flush(buffer)

    def _seen_again(self, key: bytes) -> None:
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

    def _put(self, store: Store, rid: str, ts: float, value: Any) -> None:
        self._next_expiry = min(self._next_expiry, store.put(rid, ts, value))

    def _on_prediction(
        self, record: Mapping[str, Any], buffers: dict[VersionMonitors, Buffer]
    ) -> None:
        rid, ts = record["id"], record["ts"]
        name, number, role = record["model"], record["version"], record["role"]
        status = record.get("status", 200)
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
        version.traffic.update(float(latency) if is_number(latency) else None, status, role)
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
                buffer = buffers[version] = Buffer()
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
                outputs = frozen(record.get("outputs")) if version.classes else None
                pending = (name, number, frozen(prediction), outputs)
                self._put(self._predictions, rid, ts, pending)
        waiting = self._shadows.pop(rid) if len(self._shadows) else None
        if waiting is not None:
            for shadow, shadow_prediction in waiting:
                self._pair(model.versions[shadow], shadow_prediction, role, prediction)
        if model.shadows:
            self._put(self._served, rid, ts, (name, role, frozen(prediction)))

    def _on_shadow(
        self, model: _Model, version: VersionMonitors, rid: str, ts: float, prediction: list[Any]
    ) -> None:
        if version.agreement is None:
            return
        served = self._served.get(rid)
        if served is not None and served[0] == model.name:
            self._pair(version, prediction, served[1], served[2])
            return
        waiting = self._shadows.get(rid) or ()
        entry = ((version.version, frozen(prediction)),)
        if waiting:
            self._shadows.replace(rid, waiting + entry)  # several shadow versions, one request
        else:
            self._put(self._shadows, rid, ts, entry)

    def _pair(
        self, shadow: VersionMonitors, prediction: Sequence[Any], role: str, served: Sequence[Any]
    ) -> None:
        """Compare a shadow's answer with the primary's, row by row; other roles do not pair."""
        if role != "primary" or len(prediction) != len(served) or shadow.agreement is None:
            self._unpaired_shadows += 1
            return
        for a, b in zip(prediction, served, strict=True):
            shadow.agreement.update(a, b)

    def _on_feedback(self, record: Mapping[str, Any]) -> None:
        rid, ts, label = record["id"], record["ts"], record["label"]
        self._feedback += 1
        ts = float(ts)
        self._advance(ts)
        pending = self._predictions.pop(rid)
        if pending is not None:
            name, number, prediction, outputs = pending
            self._models[name].versions[number].score(prediction, outputs, label)
        else:
            self._put(self._labels, rid, ts, frozen(label))

    def _new_version(self, name: str, number: int, record: Mapping[str, Any]) -> VersionMonitors:
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
        return VersionMonitors(name, number, manifest, error, task, self._settings)

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
