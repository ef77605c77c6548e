from __future__ import annotations

import doctest
import itertools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import sidecar.history
from gateway.manifest import numeric_stats
from sidecar.history import (
    DEFAULT_LIVE_ROWS,
    SAMPLE_EVERY,
    History,
    canary_weights,
    current_canary_weights,
)

T0 = 1_770_000_000.0  # a minute boundary


def record(i: int, ts: float, **fields: Any) -> dict[str, Any]:
    base = {
        "id": f"r{i}",
        "ts": ts,
        "model": "m",
        "version": 1,
        "role": "primary",
        "inputs": [[float(i), 1.0]],
        "prediction": [0],
        "latency_ms": 2.0,
        "status": 200,
    }
    return {**base, **fields}


def traffic(n: int, seed: int = 0, minutes: int = 5) -> list[dict[str, Any]]:
    """``n`` records over ``minutes`` minutes: primary v1, canary v2, shadow v3 and errors."""
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.uniform(0, 60 * minutes, n))
    out = []
    for i, t in enumerate(ts.tolist()):
        u = rng.random()
        version, role = (2, "canary") if u < 0.2 else (3, "shadow") if u < 0.3 else (1, "primary")
        status = 500 if rng.random() < 0.05 else 200
        latency = float(rng.lognormal(1.0, 0.5))
        out.append(record(i, t, version=version, role=role, status=status, latency_ms=latency))
    return out


def version_status(
    score: float, accuracy: float | None = 0.9, agreement: float | None = None
) -> dict[str, Any]:
    return {
        "feature_drift": {"features": {"a": {"score": score}, "b": {"score": 2 * score}}},
        "prediction_drift": {"score": score / 2},
        "accuracy": {"labels": 10, "rolling_accuracy": accuracy},
        "shadow": {"agreement": agreement, "pairs": 0 if agreement is None else 10},
    }


def status(newest_ts: float, score: float = 0.1) -> dict[str, Any]:
    return {
        "newest_ts": newest_ts,
        "models": {
            "m": {
                "versions": {
                    "1": version_status(score),
                    "3": version_status(score, accuracy=None, agreement=0.8),
                }
            }
        },
    }


def test_counts_per_minute_version_and_role() -> None:
    history = History()
    history.observe(
        [
            record(0, T0 + 1),
            record(1, T0 + 59.9, status=503),
            record(2, T0 + 60, version=2, role="canary"),
            record(3, T0 + 61, version=1, role="pinned", status=404),
            record(0, T0 + 1),  # the same record again: counted once
            record(4, T0 + 5, role="shadow", version=3),
            {"kind": "feedback", "id": "r0", "ts": T0 + 3, "label": 1},
            {"id": "bad", "ts": "yesterday", "model": "m", "version": 1, "role": "primary"},
            {"id": "bad2", "ts": T0, "model": "m", "version": "1", "role": "primary"},
            {"id": "bad3", "ts": T0, "model": "m", "version": 1, "role": "boss"},
        ]
    )
    series = history.series("m")
    assert series["t"] == [T0, T0 + 60]
    assert series["versions"] == [1, 2, 3]
    assert series["requests"]["1"] == {"primary": [2, 0], "pinned": [0, 1]}
    assert series["requests"]["2"] == {"canary": [0, 1]}
    assert series["requests"]["3"] == {"shadow": [1, 0]}
    assert series["errors"]["1"] == [1, 0]
    assert history.models() == ["m"]
    assert history.series("other")["t"] == []


def test_the_same_series_whatever_the_batch_cuts() -> None:
    records = traffic(3000, minutes=12)
    whole, cut = History(), History()
    whole.observe(records)
    rng = np.random.default_rng(1)
    bounds = np.sort(rng.choice(len(records), size=40, replace=False)).tolist()
    for a, b in zip([0, *bounds], [*bounds, len(records)], strict=True):
        cut.observe(records[a:b])
    assert whole.series("m") == cut.series("m")
    assert len(whole.series("m")["t"]) == 12


def test_latency_quantiles_from_the_histograms() -> None:
    rng = np.random.default_rng(3)
    latency = rng.lognormal(1.5, 0.8, size=5000)
    history = History()
    history.observe([record(i, T0 + i * 0.01, latency_ms=float(v)) for i, v in enumerate(latency)])
    series = history.series("m")["latency_ms"]["1"]
    p50, p95 = series["p50"][0], series["p95"][0]
    assert p50 == pytest.approx(np.percentile(latency, 50), rel=0.05)
    assert p95 == pytest.approx(np.percentile(latency, 95), rel=0.05)
    history.observe(
        [record(10**6, T0 + 120, latency_ms=None), record(10**6 + 1, T0 + 121, latency_ms="x")]
    )
    assert history.series("m")["latency_ms"]["1"]["p50"][-1] is None  # counted, not timed


def test_retention_drops_old_minutes_and_late_records() -> None:
    history = History(retention_minutes=10)
    history.observe(traffic(2000, minutes=30))
    t = history.series("m")["t"]
    assert len(t) == 10 and t[-1] == T0 + 29 * 60
    history.observe([record(99_999, T0 + 60)])  # older than the retention: not counted
    assert history.series("m")["t"] == t
    history.sample(status(T0 + 65), T0 + 65)  # a sample that old is not kept either
    assert all(v is None for v in history.series("m")["accuracy"]["1"]["values"])


def test_samples_align_with_the_time_axis_and_live_is_not_stored() -> None:
    history = History()
    history.observe([record(i, T0 + 60 * i) for i in range(4)])
    history.observe([record(9, T0 + 1, version=3, role="shadow")])
    history.sample(status(T0 + 10, score=0.1), T0 + 10, {"m": 0.2})
    history.sample(status(T0 + 130, score=0.3), T0 + 130, {})
    series = history.series("m")
    assert series["t"] == [T0, T0 + 60, T0 + 120, T0 + 180]
    assert series["feature_drift"]["1"] == {
        "a": [0.1, None, 0.3, None],
        "b": [0.2, None, 0.6, None],
    }
    assert series["prediction_drift"]["1"] == [0.05, None, 0.15, None]
    assert series["accuracy"]["1"] == {
        "metric": "rolling_accuracy",
        "values": [0.9, None, 0.9, None],
    }
    assert series["shadow_agreement"] == {"3": [0.8, None, 0.8, None]}
    assert series["canary_weight"] == [0.2, None, 0.0, None]

    live = history.series("m", live=status(T0 + 190, score=0.5), canary_weights={"m": 0.4})
    assert live["feature_drift"]["1"]["a"] == [0.1, None, 0.3, 0.5]
    assert live["canary_weight"] == [0.2, None, 0.0, 0.4]
    assert history.series("m") == series


def test_retired_versions_are_forgotten_after_the_retention() -> None:
    history = History(retention_minutes=5)
    history.observe([record(0, T0, version=1), record(1, T0 + 1, version=2)])
    history.sample(status(T0 + 1), T0 + 1)
    assert history.series("m")["versions"] == [1, 2]
    history.observe([record(i, T0 + 60 * i, version=2) for i in range(2, 10)])
    history.sample(status(T0 + 540), T0 + 540)  # v1 and v3 have had no record within 5 minutes
    series = history.series("m")
    assert series["versions"] == [2] and set(series["feature_drift"]) == {"2"}
    assert history.live_histogram("m", 1, 0, [0.0, 1.0, 2.0]) == ([0, 0], 0)
    history.observe([record(99, T0 + 3600, model="other")])
    assert history.models() == ["other"]


def test_observed_canary_share_without_a_config() -> None:
    history = History()
    history.observe(
        [
            record(
                i,
                T0 + i,
                version=2 if i % 4 == 0 else 1,
                role="canary" if i % 4 == 0 else "primary",
            )
            for i in range(40)
        ]
        + [record(100 + i, T0 + i, version=3, role="shadow") for i in range(40)]
    )
    history.sample(status(T0 + 50), T0 + 50, None)
    assert history.series("m")["canary_weight"] == [0.25]


def test_regression_versions_chart_their_rolling_mae() -> None:
    history = History()
    history.observe([record(0, T0)])
    history.sample(
        {"models": {"m": {"versions": {"1": {"accuracy": {"labels": 3, "rolling_mae": 1.25}}}}}},
        T0,
    )
    assert history.series("m")["accuracy"]["1"] == {"metric": "rolling_mae", "values": [1.25]}


def test_update_samples_once_a_minute_and_every_sample_interval() -> None:
    history = History()
    calls: list[float] = []

    def snapshot() -> dict[str, Any]:
        calls.append(newest)
        return status(newest)

    for i in range(200):
        newest = T0 + i * 1.0
        history.update([record(i, newest)], snapshot)
    # A first sample, then one every SAMPLE_EVERY seconds within a minute or a new minute.
    minutes = {int(t // 60) for t in calls}
    assert minutes == {int((T0 + i) // 60) for i in range(200)}
    for a, b in itertools.pairwise(calls):
        assert b - a >= SAMPLE_EVERY or b // 60 != a // 60
    assert len(calls) <= 200 / SAMPLE_EVERY + 4 + 1


def test_pickles_with_the_checkpoint() -> None:
    history = History()
    records = traffic(1500, minutes=6)
    history.observe(records)
    history.sample(status(T0 + 300), T0 + 300, {"m": 0.1})
    restored = pickle.loads(pickle.dumps(history))
    assert restored.series("m") == history.series("m")
    # The de-dup memory is part of the state: a record seen before the save stays counted once.
    restored.observe(records[-10:])
    assert restored.series("m") == history.series("m")
    restored.observe([record(10**6, T0 + 301)])
    assert sum(restored.series("m")["requests"]["1"]["primary"]) == (
        sum(history.series("m")["requests"]["1"]["primary"]) + 1
    )


def test_live_histogram_bins_like_the_manifest_reference() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal([0.0, 100.0], [1.0, 30.0], size=(3000, 2))
    history = History()
    history.observe([record(i, T0 + i * 0.01, inputs=[row]) for i, row in enumerate(X.tolist())])
    for column in (0, 1):
        last = X[-DEFAULT_LIVE_ROWS:, column]
        reference = numeric_stats(last)
        counts, rows = history.live_histogram("m", 1, column, reference["edges"])
        assert rows == DEFAULT_LIVE_ROWS
        assert counts == reference["counts"]
    # Values outside the reference range fall in the end bins, as in the reference.
    counts, _ = history.live_histogram("m", 1, 0, [10.0, 11.0, 12.0])
    assert counts == [DEFAULT_LIVE_ROWS, 0]
    assert history.live_histogram("m", 1, 5, [0.0, 1.0]) == ([0], 0)
    assert history.live_histogram("m", 2, 0, [0.0, 1.0]) == ([0], 0)


def test_bad_input_rows_are_left_out_of_the_live_rows() -> None:
    history = History(live_rows=4)
    history.observe(
        [
            record(0, T0, inputs=[[1.0, 2.0], [3.0, None]]),
            record(1, T0, inputs=[[1.0, "x"], [5.0]]),
            record(2, T0, inputs="not rows"),
            record(3, T0, inputs=[[7.0, 8.0]], status=400),
        ]
    )
    counts, rows = history.live_histogram("m", 1, 1, [0.0, 5.0, 10.0])
    assert (counts, rows) == ([1, 0], 1)  # 2.0; None is missing, the bad rows are out
    counts, rows = history.live_histogram("m", 1, 0, [0.0, 2.0, 10.0])
    assert (counts, rows) == ([1, 1], 2)


def test_canary_weights_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "gatewatch.toml"
    path.write_text(
        "[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 0.25 }\n"
        "[models.price]\nprimary = 3\n"
    )
    assert canary_weights(path) == {"churn": 0.25, "price": 0.0}
    assert current_canary_weights(path) == {"churn": 0.25, "price": 0.0}
    path.write_text("[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 7 }\n")
    assert current_canary_weights(path) == {"churn": 0.25, "price": 0.0}  # last good one
    path.write_text("[models.churn]\nprimary = 1\ncanary = { version = 2, weight = 0.5 }\n")
    os.utime(path, ns=(1, 10**18))
    assert current_canary_weights(path) == {"churn": 0.5}
    assert current_canary_weights(tmp_path / "missing.toml") is None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="retention_minutes"):
        History(retention_minutes=0)
    with pytest.raises(ValueError, match="live_rows"):
        History(live_rows=-1)


def test_docstring_example() -> None:
    assert doctest.testmod(sidecar.history).failed == 0
