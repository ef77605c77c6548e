"""Bounded per-minute time series of the sidecar, the data behind the dashboard's charts.

Two kinds of series, both keyed by the minute of *record* time (``ts // 60``), never the wall
clock, so replaying a log gives the same counts whatever the speed or the batch cuts:

* ``observe(records)`` counts requests per (model, version, role) and errors, and adds each
  latency to a fixed log-spaced histogram of its minute (p50/p95 are read from it at display
  time); it also keeps the last ``live_rows`` input rows of each version, for the reference vs
  live histogram of a feature.
* ``sample(status, minute_ts, canary_weights)`` stores a snapshot of figures the engine
  computes (rolling accuracy, drift scores, shadow agreement) and the canary weight. The last
  sample of a minute wins; ``series(..., live=status)`` shows the current status as the newest
  point, so a chart never lags the figures the page prints next to it.

Rows are kept for ``retention_minutes`` before the newest minute seen. A History pickles with
the sidecar's checkpoint (``Sidecar.extra[HISTORY_KEY]``): saved together with the log
position, a restart neither loses nor double-counts the records since the previous save. Its
own lock makes it safe to read from the HTTP thread while the consumer thread writes.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import orjson

from gateway.config import load_config as load_gateway_config

__all__ = [
    "DEFAULT_LIVE_ROWS",
    "DEFAULT_RETENTION_MINUTES",
    "HISTORY_KEY",
    "LATENCY_EDGES_MS",
    "SAMPLE_EVERY",
    "History",
    "canary_weights",
    "current_canary_weights",
]

HISTORY_KEY = "history"
"""The name a History is saved under in the sidecar's checkpoint ``extra``."""
DEFAULT_RETENTION_MINUTES = 1440
DEFAULT_LIVE_ROWS = 1000
SAMPLE_EVERY = 15.0
"""``update`` samples the status at most this often (seconds of record time) within a minute."""
DEDUP_KEYS = 20_000
"""Keys of recent records remembered so a record logged twice is counted once (as the engine)."""
LATENCY_EDGES_MS = np.geomspace(0.01, 100_000.0, 8 * 7 + 1)
"""8 bins a decade from 10 µs to 100 s: a quantile read from them is within ~15 %."""

ROLES = ("primary", "canary", "pinned", "shadow")
_ROLE_INDEX = {role: i for i, role in enumerate(ROLES)}
_ERRORS = len(ROLES)
_LATENCY_BINS = len(LATENCY_EDGES_MS) - 1
_INNER_EDGES = LATENCY_EDGES_MS[1:-1]
_FIXED_GAUGES = ("accuracy", "shadow_agreement", "prediction_drift")
_DECIMALS = 4


class _Rows:
    """Per-minute rows sorted by minute; only minutes that had data take memory."""

    __slots__ = ("minutes", "values")

    def __init__(self, width: int, dtype: Any) -> None:
        self.minutes = np.empty(0, dtype=np.int64)
        self.values = np.zeros((0, width), dtype=dtype)

    def index(self, minutes: np.ndarray, fill: float = 0) -> np.ndarray:
        """Row indices of ``minutes`` (sorted, unique), adding rows filled with ``fill``."""
        missing = np.setdiff1d(minutes, self.minutes, assume_unique=True)
        if missing.size:
            merged = np.concatenate([self.minutes, missing])
            order = np.argsort(merged, kind="stable")
            blank = np.full((missing.size, self.values.shape[1]), fill, dtype=self.values.dtype)
            self.minutes = merged[order]
            self.values = np.concatenate([self.values, blank])[order]
        result: np.ndarray = np.searchsorted(self.minutes, minutes)
        return result

    def __getstate__(self) -> dict[str, Any]:
        # Latency histograms are mostly zeros: save the non-zero cells (3-5x smaller).
        if self.values.dtype.kind != "i":
            return {"minutes": self.minutes, "values": self.values}
        cells = np.flatnonzero(self.values)
        return {
            "minutes": self.minutes,
            "shape": self.values.shape,
            "dtype": self.values.dtype.str,
            "cells": cells.astype(np.int32),
            "counts": self.values.flat[cells],
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.minutes = state["minutes"]
        if "values" in state:
            self.values = state["values"]
            return
        self.values = np.zeros(state["shape"], dtype=state["dtype"])
        self.values.flat[state["cells"]] = state["counts"]

    def widen(self, width: int, fill: float) -> None:
        extra = width - self.values.shape[1]
        if extra > 0:
            pad = np.full((len(self.minutes), extra), fill, dtype=self.values.dtype)
            self.values = np.concatenate([self.values, pad], axis=1)

    def trim(self, oldest: int) -> None:
        start = int(np.searchsorted(self.minutes, oldest))
        if start:
            self.minutes, self.values = self.minutes[start:], self.values[start:]

    def at(self, axis: np.ndarray, fill: float) -> np.ndarray:
        """Values on ``axis`` (sorted minutes, a superset of ours); ``fill`` where absent."""
        out = np.full((len(axis), self.values.shape[1]), fill, dtype=np.float64)
        out[np.searchsorted(axis, self.minutes)] = self.values
        return out


class _Version:
    """What is kept per (model, version): traffic, latency, gauges and the last input rows."""

    def __init__(self, live_rows: int) -> None:
        self.counts = _Rows(len(ROLES) + 1, np.int64)
        self.latency = _Rows(_LATENCY_BINS, np.int32)
        self.gauges = _Rows(len(_FIXED_GAUGES), np.float32)
        self.features: list[str] = []
        self.metric = "rolling_accuracy"
        self.live = np.zeros((live_rows, 0), dtype=np.float32)
        self.live_next = 0
        self.live_filled = 0

    def add_rows(self, X: np.ndarray) -> None:
        """Keep the last rows of a version in a ring; a row of another width restarts it."""
        size = len(self.live)
        if size == 0 or X.shape[0] == 0:
            return
        if X.shape[1] != self.live.shape[1]:
            self.live = np.zeros((size, X.shape[1]), dtype=np.float32)
            self.live_next = self.live_filled = 0
        X = X[-size:]
        positions = (self.live_next + np.arange(len(X))) % size
        self.live[positions] = X
        self.live_next = int((self.live_next + len(X)) % size)
        self.live_filled = min(size, self.live_filled + len(X))

    def live_column(self, column: int) -> np.ndarray:
        if column >= self.live.shape[1]:
            return np.empty(0, dtype=np.float64)
        values = self.live[: self.live_filled, column].astype(np.float64)
        kept: np.ndarray = values[np.isfinite(values)]
        return kept

    def trim(self, oldest: int) -> None:
        self.counts.trim(oldest)
        self.latency.trim(oldest)
        self.gauges.trim(oldest)


class _Batch:
    """The fields of one version's records in one ``observe`` call, turned to arrays at once."""

    __slots__ = ("ts", "roles", "latency", "status", "inputs")

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.roles: list[int] = []
        self.latency: list[Any] = []
        self.status: list[int] = []
        self.inputs: list[list[Any]] = []

    def last_rows(self, n: int) -> list[Any]:
        """The last ``n`` input rows, taken from the end (a batch may hold many more)."""
        if n <= 0:
            return []
        chunks: list[list[Any]] = []
        count = 0
        for inputs in reversed(self.inputs):
            if count >= n:
                break
            chunks.append(inputs)
            count += len(inputs)
        return [row for chunk in reversed(chunks) for row in chunk][-n:]


class History:
    """Per-minute series of every model for the dashboard; see the module docstring.

    Parameters
    ----------
    retention_minutes
        Minutes kept before the newest minute seen (default 24 hours).
    live_rows
        Input rows kept per version for the live side of a feature histogram.

    Examples
    --------
    >>> history = History(retention_minutes=60)
    >>> history.observe([
    ...     {"id": "a", "ts": 120.5, "model": "m", "version": 1, "role": "primary",
    ...      "latency_ms": 2.0, "status": 200, "inputs": [[1.0]]},
    ...     {"id": "b", "ts": 130.0, "model": "m", "version": 2, "role": "canary",
    ...      "latency_ms": 3.0, "status": 200, "inputs": [[2.0]]},
    ... ])
    >>> series = history.series("m")
    >>> series["t"], series["requests"]["1"]["primary"], series["requests"]["2"]["canary"]
    ([120], [1], [1])
    """

    def __init__(
        self,
        retention_minutes: int = DEFAULT_RETENTION_MINUTES,
        live_rows: int = DEFAULT_LIVE_ROWS,
    ) -> None:
        if retention_minutes < 1:
            raise ValueError(f"retention_minutes must be at least 1, got {retention_minutes}")
        if live_rows < 0:
            raise ValueError(f"live_rows must not be negative, got {live_rows}")
        self.retention_minutes = retention_minutes
        self.live_rows = live_rows
        self._versions: dict[tuple[str, int], _Version] = {}
        self._canary: dict[str, _Rows] = {}
        self._newest_minute: int | None = None
        self._newest_ts: float | None = None
        self._sampled_ts: float | None = None
        self._keys: set[tuple[str, str, int]] = set()
        self._order: deque[tuple[str, str, int]] = deque()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_keys")}
            # One orjson blob instead of thousands of small pickled tuples.
            state["_order"] = orjson.dumps(list(self._order))
            return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._order = deque(tuple(key) for key in orjson.loads(state["_order"]))
        self._keys = set(self._order)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------------ writing

    def observe(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Count prediction records (feedback and malformed records are skipped) in the minute
        of their ``ts``; a record seen again (same id, role and version) is not counted."""
        batches: dict[tuple[str, int], _Batch] = {}
        roles, keys, order = _ROLE_INDEX, self._keys, self._order
        # One pass of plain Python per record (it runs for every record); numpy per batch.
        with self._lock:
            for record in records:
                if "kind" in record and record["kind"] != "prediction":
                    continue
                rid, ts = record.get("id"), record.get("ts")
                model, version = record.get("model"), record.get("version")
                role, status = record.get("role"), record.get("status", 200)
                if (
                    type(rid) is not str
                    or type(model) is not str
                    or type(version) is not int
                    or role not in roles
                    or (type(ts) is not float and type(ts) is not int)
                    or type(status) is not int
                ):
                    continue
                key = (rid, role, version)
                if key in keys:
                    continue
                keys.add(key)
                order.append(key)
                batch = batches.get((model, version))
                if batch is None:
                    batch = batches[(model, version)] = _Batch()
                batch.ts.append(ts)
                batch.roles.append(roles[role])
                batch.latency.append(record.get("latency_ms"))
                batch.status.append(status)
                inputs = record.get("inputs")
                if status < 400 and type(inputs) is list:
                    batch.inputs.append(inputs)
            while len(order) > DEDUP_KEYS:
                keys.discard(order.popleft())
            if not batches:
                return
            newest = max(max(batch.ts) for batch in batches.values())
            if self._newest_ts is None or newest > self._newest_ts:
                self._newest_ts = float(newest)
            self._advance(int(self._newest_ts // 60))
            for target, batch in batches.items():
                self._add(target, batch)

    def sample(
        self,
        status: Mapping[str, Any],
        minute_ts: float,
        canary_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Store the status's per-version figures as the values of the minute of ``minute_ts``,
        for the versions ``observe`` saw records of within the retention.

        ``canary_weights`` (model -> configured weight; a model not in it has no canary) comes
        from the config; None means "no config": the weight is then the canary's observed
        share of the model's served requests in that minute.
        """
        with self._lock:
            minute = int(minute_ts // 60)
            self._advance(minute)
            if minute < self._oldest():
                return
            self._sampled_ts = float(minute_ts)
            for model, entry in status.get("models", {}).items():
                # Only versions with traffic within the retention: the engine reports every
                # version it ever saw, and a retired one's figures no longer change.
                kept = [
                    (version, vs)
                    for number, vs in entry.get("versions", {}).items()
                    if (version := self._versions.get((model, int(number)))) is not None
                ]
                for version, vs in kept:
                    self._sample_version(version, minute, vs)
                if not kept:
                    continue
                weight = (
                    canary_weights.get(model, 0.0)
                    if canary_weights is not None
                    else self._observed_share(model, minute)
                )
                rows = self._canary.get(model)
                if rows is None:
                    rows = self._canary[model] = _Rows(1, np.float64)
                row = rows.index(np.array([minute]), math.nan)[0]
                rows.values[row, 0] = math.nan if weight is None else float(weight)

    def update(
        self,
        records: Sequence[Mapping[str, Any]],
        status: Callable[[], Mapping[str, Any]],
        config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        """The consumer's one call per processed batch: ``observe`` the records, then, when a
        new minute starts or ``SAMPLE_EVERY`` seconds of record time have passed since the last
        sample, ``sample`` the engine's status (``status`` is called only then) with the
        canary weights of the config file at ``config_path`` (None: observed shares)."""
        self.observe(records)
        newest = self._newest_ts
        last = self._sampled_ts
        if newest is None:
            return
        if last is not None and newest // 60 == last // 60 and newest - last < SAMPLE_EVERY:
            return
        weights = None if config_path is None else current_canary_weights(Path(config_path))
        # The minute of the newest prediction (the status's newest may be a later label).
        self.sample(status(), newest, weights)

    def _oldest(self) -> int:
        newest = self._newest_minute
        return -(2**62) if newest is None else newest - self.retention_minutes + 1

    def _advance(self, minute: int) -> None:
        if self._newest_minute is not None and minute <= self._newest_minute:
            return
        self._newest_minute = minute
        oldest = self._oldest()
        # A version without a row left (retired more than the retention ago) is forgotten,
        # its live rows with it, so a registry that gains a version a day stays bounded.
        for key, version in list(self._versions.items()):
            version.trim(oldest)
            if not (version.counts.minutes.size or version.gauges.minutes.size):
                del self._versions[key]
        for model, rows in list(self._canary.items()):
            rows.trim(oldest)
            if not rows.minutes.size:
                del self._canary[model]

    def _version(self, key: tuple[str, int]) -> _Version:
        version = self._versions.get(key)
        if version is None:
            version = self._versions[key] = _Version(self.live_rows)
        return version

    def _add(self, key: tuple[str, int], batch: _Batch) -> None:
        version = self._version(key)
        minutes = np.floor_divide(np.asarray(batch.ts, dtype=np.float64), 60).astype(np.int64)
        keep = minutes >= self._oldest()
        minutes = minutes[keep]
        unique, inverse = np.unique(minutes, return_inverse=True)
        if unique.size:
            rows = version.counts.index(unique)[inverse]
            np.add.at(version.counts.values, (rows, np.asarray(batch.roles)[keep]), 1)
            errors = np.asarray(batch.status)[keep] >= 500
            version.counts.values[:, _ERRORS] += np.bincount(
                rows[errors], minlength=len(version.counts.minutes)
            )
            latency = np.array(
                [v if type(v) is float or type(v) is int else math.nan for v in batch.latency],
                dtype=np.float64,
            )[keep]
            timed = np.isfinite(latency)
            if timed.any():
                unique, inverse = np.unique(minutes[timed], return_inverse=True)
                rows = version.latency.index(unique)[inverse]
                bins = np.searchsorted(_INNER_EDGES, latency[timed], side="right")
                np.add.at(version.latency.values, (rows, bins), 1)
        if batch.inputs and self.live_rows:
            version.add_rows(_matrix(batch.last_rows(self.live_rows)))

    def _sample_version(self, version: _Version, minute: int, vs: Mapping[str, Any]) -> None:
        names = list((vs.get("feature_drift") or {}).get("features") or {})
        for name in names:
            if name not in version.features:
                version.features.append(name)
        version.gauges.widen(len(_FIXED_GAUGES) + len(version.features), math.nan)
        metric, values = _gauges(vs, version.features)
        if metric is not None:
            version.metric = metric
        row = version.gauges.index(np.array([minute]), math.nan)[0]
        version.gauges.values[row] = values

    def _observed_share(self, model: str, minute: int) -> float | None:
        canary = served = 0
        for (name, _), version in self._versions.items():
            rows = version.counts
            if name != model or not rows.minutes.size:
                continue
            i = int(np.searchsorted(rows.minutes, minute))
            if i < rows.minutes.size and rows.minutes[i] == minute:
                counts = rows.values[i]
                canary += int(counts[_ROLE_INDEX["canary"]])
                served += int(counts[: _ROLE_INDEX["shadow"]].sum())
        return canary / served if served else None

    # ------------------------------------------------------------------------------ reading

    def models(self) -> list[str]:
        with self._lock:
            return sorted({model for model, _ in self._versions} | set(self._canary))

    def series(
        self,
        model: str,
        *,
        live: Mapping[str, Any] | None = None,
        canary_weights: Mapping[str, float] | None = None,
        minutes: int | None = None,
    ) -> dict[str, Any]:
        """The model's series as JSON for the charts: one time axis ``t`` (minute starts, epoch
        seconds) and, per version, arrays aligned with it (null where nothing is known).

        ``live`` is the current status: its figures become the values of its newest minute, as
        if sampled now (nothing is stored). ``canary_weights`` as for ``sample``. ``minutes``
        keeps only the last minutes of the axis (default: all that are kept).
        """
        with self._lock:
            versions = {
                number: version
                for (name, number), version in self._versions.items()
                if name == model
            }
            canary = self._canary.get(model)
            live_minute, live_versions, live_weight = self._live(model, live, canary_weights)
            parts = [v.counts.minutes for v in versions.values()]
            parts += [v.gauges.minutes for v in versions.values()]
            if canary is not None:
                parts.append(canary.minutes)
            if live_minute is not None:
                parts.append(np.array([live_minute], dtype=np.int64))
            axis = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
            if minutes is not None and axis.size:
                axis = axis[axis > axis[-1] - minutes]
            out: dict[str, Any] = {
                "model": model,
                "t": (axis * 60).tolist(),
                "versions": sorted(versions),
                "requests": {},
                "errors": {},
                "latency_ms": {},
                "accuracy": {},
                "prediction_drift": {},
                "shadow_agreement": {},
                "feature_drift": {},
            }
            live_row = None if live_minute is None else int(np.searchsorted(axis, live_minute))
            for number in sorted(versions):
                vs = live_versions.get(number)
                self._version_series(out, axis, number, versions[number], vs, live_row)
            weights = (
                canary.at(axis, math.nan)[:, 0]
                if canary is not None
                else np.full(len(axis), math.nan)
            )
            if live_minute is not None and live_weight is not None:
                weights[live_row] = live_weight
            out["canary_weight"] = _json(weights)
            return out

    def _live(
        self,
        model: str,
        live: Mapping[str, Any] | None,
        weights: Mapping[str, float] | None,
    ) -> tuple[int | None, dict[int, Mapping[str, Any]], float | None]:
        if live is None or not _is_number(live.get("newest_ts")):
            return None, {}, None
        entry = (live.get("models") or {}).get(model)
        if entry is None:
            return None, {}, None
        minute = int(float(live["newest_ts"]) // 60)
        versions = {int(k): v for k, v in (entry.get("versions") or {}).items()}
        weight = (
            weights.get(model, 0.0) if weights is not None else self._observed_share(model, minute)
        )
        return minute, versions, weight

    def _version_series(
        self,
        out: dict[str, Any],
        axis: np.ndarray,
        number: int,
        version: _Version,
        vs: Mapping[str, Any] | None,
        live_row: int | None,
    ) -> None:
        key = str(number)
        counts = version.counts.at(axis, 0).astype(np.int64)
        out["requests"][key] = {
            role: counts[:, i].tolist() for i, role in enumerate(ROLES) if counts[:, i].any()
        }
        out["errors"][key] = counts[:, _ERRORS].tolist()
        hist = version.latency.at(axis, 0)
        out["latency_ms"][key] = {
            "p50": _json(_quantile(hist, 0.5)),
            "p95": _json(_quantile(hist, 0.95)),
        }
        gauges = version.gauges.at(axis, math.nan)
        features = list(version.features)
        metric = version.metric
        if vs is not None and live_row is not None:
            for name in (vs.get("feature_drift") or {}).get("features") or {}:
                if name not in features:
                    features.append(name)
            live_metric, row = _gauges(vs, features)
            metric = live_metric or metric
            width = len(_FIXED_GAUGES) + len(features)
            if gauges.shape[1] < width:
                gauges = np.pad(
                    gauges, ((0, 0), (0, width - gauges.shape[1])), constant_values=math.nan
                )
            gauges[live_row] = row
        out["accuracy"][key] = {"metric": metric, "values": _json(gauges[:, 0])}
        if np.isfinite(gauges[:, 1]).any():
            out["shadow_agreement"][key] = _json(gauges[:, 1])
        out["prediction_drift"][key] = _json(gauges[:, 2])
        out["feature_drift"][key] = {
            name: _json(gauges[:, len(_FIXED_GAUGES) + j]) for j, name in enumerate(features)
        }

    def live_histogram(
        self, model: str, version: int, column: int, edges: Sequence[float]
    ) -> tuple[list[int], int]:
        """Counts of the version's last input rows in ``column`` over the reference ``edges``,
        binned like the manifest's reference (outside values in the end bins), and the number
        of rows they come from."""
        with self._lock:
            kept = self._versions.get((model, version))
            values = kept.live_column(column) if kept is not None else np.empty(0)
        bins = max(len(edges) - 1, 0)
        if bins == 0:
            return [], 0
        inner = np.asarray(edges, dtype=np.float64)[1:-1]
        counts = np.bincount(np.searchsorted(inner, values, side="right"), minlength=bins)
        return [int(c) for c in counts], int(values.size)


def canary_weights(config_path: str | os.PathLike[str]) -> dict[str, float]:
    """Each configured model's canary weight (0.0 without a canary) from gatewatch.toml; raises
    the gateway's ConfigError for a file that does not validate."""
    config = load_gateway_config(Path(config_path))
    return {
        name: (model.canary.weight if model.canary is not None else 0.0)
        for name, model in config.models.items()
    }


_WEIGHTS_CACHE: dict[Path, tuple[tuple[int, int], dict[str, float]]] = {}


def current_canary_weights(path: Path) -> dict[str, float] | None:
    """``canary_weights`` read again only when the file changed; a file that cannot be read or
    does not validate keeps the last good answer (as the gateway keeps its last good config)."""
    cached = _WEIGHTS_CACHE.get(path)
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        weights = canary_weights(path)
    except Exception:
        return cached[1] if cached is not None else None
    _WEIGHTS_CACHE[path] = (stamp, weights)
    return weights


def _gauges(vs: Mapping[str, Any], features: Sequence[str]) -> tuple[str | None, np.ndarray]:
    """One gauge row of a version's status: accuracy metric, agreement, drift scores."""
    accuracy = vs.get("accuracy") or {}
    metric = next((m for m in ("rolling_accuracy", "rolling_mae") if m in accuracy), None)
    drift = (vs.get("feature_drift") or {}).get("features") or {}
    values = [
        accuracy.get(metric) if metric else None,
        (vs.get("shadow") or {}).get("agreement"),
        (vs.get("prediction_drift") or {}).get("score"),
        *((drift.get(name) or {}).get("score") for name in features),
    ]
    row = np.array([v if _is_number(v) else math.nan for v in values], dtype=np.float64)
    return metric, row


def _quantile(hist: np.ndarray, q: float) -> np.ndarray:
    """Per-row quantile of latency histograms, interpolated geometrically inside the bin."""
    totals = hist.sum(axis=1)
    out = np.full(len(hist), math.nan)
    rows = totals > 0
    if not rows.any():
        return out
    h = hist[rows]
    cumulative = np.cumsum(h, axis=1)
    target = q * totals[rows]
    bins = np.minimum((cumulative < target[:, None]).sum(axis=1), _LATENCY_BINS - 1)
    taken = np.take_along_axis(h, bins[:, None], axis=1)[:, 0]
    before = np.take_along_axis(cumulative, bins[:, None], axis=1)[:, 0] - taken
    fraction = np.clip((target - before) / np.maximum(taken, 1), 0.0, 1.0)
    low, high = LATENCY_EDGES_MS[bins], LATENCY_EDGES_MS[bins + 1]
    out[rows] = low * (high / low) ** fraction
    return out


def _matrix(rows: list[Any]) -> np.ndarray:
    """Input rows as a float matrix (null as NaN); rows of another width than most, or with
    values that are not numbers, are left out."""
    widths = Counter(len(row) for row in rows if isinstance(row, list))
    if not widths:
        return np.zeros((0, 0), dtype=np.float32)
    width = widths.most_common(1)[0][0]
    X: np.ndarray
    try:
        X = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError):
        X = np.empty(0)
    if X.ndim == 2 and X.shape[1] == width:
        return X
    good = [
        [math.nan if x is None else x for x in r]
        for r in rows
        if isinstance(r, list) and len(r) == width and _numbers(r)
    ]
    return np.asarray(good, dtype=np.float32).reshape(len(good), width)


def _numbers(row: list[Any]) -> bool:
    return all(_is_number(x) or x is None for x in row)


def _json(values: np.ndarray) -> list[float | None]:
    return [round(float(v), _DECIMALS) if math.isfinite(v) else None for v in values.tolist()]


def _is_number(value: Any) -> TypeGuard[float]:
    return type(value) is float or type(value) is int
