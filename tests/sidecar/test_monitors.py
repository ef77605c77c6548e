"""Monitors through their public API: figures against scikit-learn, the status shapes the engine
serves, pickling mid-stream (the sidecar checkpoints its whole state), and the doctests."""

from __future__ import annotations

import doctest
import json
import math
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

import sidecar.drift
import sidecar.monitors
from sidecar.monitors import (
    AgreementMonitor,
    ClassificationAccuracy,
    ConceptDriftMonitor,
    FeatureDriftMonitor,
    PredictionDriftMonitor,
    RegressionAccuracy,
    TrafficMonitor,
)
from tests.sidecar.test_drift_statistics import reference_stats


@pytest.mark.parametrize("module", [sidecar.monitors, sidecar.drift], ids=lambda m: m.__name__)
def test_doctests_pass(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


def test_exports_exist() -> None:
    for module in (sidecar.monitors, sidecar.drift):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == []


# --- accuracy -------------------------------------------------------------------------------


def _noisy_labels(
    rng: np.random.Generator, classes: list[Any], n: int, flip: float
) -> tuple[list[Any], list[Any]]:
    y_true = [classes[i] for i in rng.integers(0, len(classes), n)]
    y_pred = [
        classes[int(rng.integers(0, len(classes)))] if rng.random() < flip else y for y in y_true
    ]
    return y_true, y_pred


@pytest.mark.parametrize(
    "classes",
    [
        pytest.param([0, 1], id="binary"),
        pytest.param(["ant", "bee", "cat", "dog", "eel"], id="multiclass"),
    ],
)
def test_classification_accuracy_equals_sklearn(classes: list[Any]) -> None:
    rng = np.random.default_rng(11)
    y_true, y_pred = _noisy_labels(rng, classes, 3000, flip=0.35)
    # A class that is only ever predicted and one that is only ever true: both count in macro F1.
    y_pred[5], y_true[6] = "ghost", "unseen"
    monitor = ClassificationAccuracy(window=500)
    for yt, yp in zip(y_true, y_pred, strict=True):
        monitor.update(yt, yp)
    status = monitor.status()
    assert status["labels"] == 3000
    assert status["window"] == 500
    assert abs(status["accuracy"] - skm.accuracy_score(y_true, y_pred)) < 1e-12
    assert abs(status["f1_macro"] - skm.f1_score(y_true, y_pred, average="macro")) < 1e-12
    last_t, last_p = y_true[-500:], y_pred[-500:]
    assert abs(status["rolling_accuracy"] - skm.accuracy_score(last_t, last_p)) < 1e-12
    assert abs(status["rolling_f1_macro"] - skm.f1_score(last_t, last_p, average="macro")) < 1e-12
    assert status["log_loss"] is None


def test_rolling_f1_forgets_classes_that_left_the_window() -> None:
    monitor = ClassificationAccuracy(window=4)
    pairs = [("a", "b"), ("c", "c"), ("c", "a"), ("b", "b"), ("b", "c"), ("c", "c")]
    for yt, yp in pairs:
        monitor.update(yt, yp)
    last_t, last_p = zip(*pairs[-4:], strict=True)
    expected = skm.f1_score(last_t, last_p, average="macro")
    assert abs(monitor.status()["rolling_f1_macro"] - expected) < 1e-12


def test_log_loss_equals_sklearn() -> None:
    rng = np.random.default_rng(4)
    classes = ["x", "y", "z"]
    proba = rng.dirichlet([2.0, 2.0, 2.0], size=2000)
    y_true = [classes[i] for i in rng.integers(0, 3, 2000)]
    monitor = ClassificationAccuracy()
    for yt, row in zip(y_true, proba, strict=True):
        monitor.update(
            yt, classes[int(np.argmax(row))], dict(zip(classes, row.tolist(), strict=True))
        )
    expected = skm.log_loss(y_true, proba, labels=classes)
    assert abs(monitor.status()["log_loss"] - expected) < 1e-12


def test_numpy_labels_match_python_labels() -> None:
    monitor = ClassificationAccuracy()
    monitor.update(np.int64(1), 1)
    monitor.update(1, np.int64(0))
    assert monitor.status()["accuracy"] == 0.5


def test_accuracy_before_any_label() -> None:
    assert ClassificationAccuracy(window=7).status() == {
        "labels": 0,
        "accuracy": None,
        "f1_macro": None,
        "log_loss": None,
        "rolling_accuracy": None,
        "rolling_f1_macro": None,
        "window": 7,
    }
    assert RegressionAccuracy(window=7).status() == {
        "labels": 0,
        "mae": None,
        "rmse": None,
        "r2": None,
        "rolling_mae": None,
        "window": 7,
    }


def test_regression_accuracy_equals_sklearn() -> None:
    rng = np.random.default_rng(5)
    y_true = rng.normal(100.0, 15.0, 4000)
    y_pred = y_true + rng.normal(2.0, 5.0, 4000)
    monitor = RegressionAccuracy(window=300)
    for yt, yp in zip(y_true, y_pred, strict=True):
        monitor.update(yt, yp)
    status = monitor.status()
    assert status["labels"] == 4000
    assert status["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred), rel=1e-12)
    rmse = math.sqrt(skm.mean_squared_error(y_true, y_pred))
    assert status["rmse"] == pytest.approx(rmse, rel=1e-12)
    assert status["r2"] == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-9)
    rolling = skm.mean_absolute_error(y_true[-300:], y_pred[-300:])
    assert status["rolling_mae"] == pytest.approx(rolling, rel=1e-9)


# --- agreement, traffic ----------------------------------------------------------------------


def test_agreement_of_identical_predictions_is_one() -> None:
    monitor = AgreementMonitor(task="classification")
    for label in np.random.default_rng(0).integers(0, 4, 1000):
        monitor.update(label, int(label))
    assert monitor.status() == {"agreement": 1.0, "pairs": 1000}


def test_agreement_with_a_tenth_flipped() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    monitor = AgreementMonitor(task="classification")
    flipped = rng.random(n) < 0.1
    for label, flip in zip(rng.integers(0, 2, n).tolist(), flipped.tolist(), strict=True):
        monitor.update(label, 1 - label if flip else label)
    status = monitor.status()
    assert status["pairs"] == n
    # Four standard errors of a binomial share.
    assert abs(status["agreement"] - 0.9) < 4 * math.sqrt(0.9 * 0.1 / n)
    assert status["agreement"] == 1.0 - flipped.mean()


def test_regression_agreement_and_mean_absolute_difference() -> None:
    monitor = AgreementMonitor(task="regression", rel_tol=0.01)
    monitor.update(100.0, 100.5)  # within 1 %
    monitor.update(100.0, 103.0)  # not
    monitor.update(0.0, 0.0)
    assert monitor.status() == {"agreement": 2 / 3, "pairs": 3, "mad": 3.5 / 3}
    assert AgreementMonitor(task="regression").status() == {
        "agreement": None,
        "pairs": 0,
        "mad": None,
    }


def test_traffic_counts_roles_errors_and_quantiles() -> None:
    rng = np.random.default_rng(2)
    latencies = rng.uniform(0.0, 100.0, 10_000)
    monitor = TrafficMonitor()
    roles = ["primary"] * 7000 + ["canary"] * 2000 + ["shadow"] * 1000
    for i, (latency, role) in enumerate(zip(latencies.tolist(), roles, strict=True)):
        monitor.update(latency, 500 if i % 50 == 0 else (404 if i % 7 == 0 else 200), role)
    monitor.update(None, 503, "pinned")
    status = monitor.status()
    assert status["records"] == 10_001
    assert status["roles"] == {"primary": 7000, "canary": 2000, "pinned": 1, "shadow": 1000}
    assert status["errors"] == 201
    assert status["error_rate"] == 201 / 10_001
    # P² estimates of a uniform(0, 100): within one point of the true quantile.
    for name, q in (("p50", 50.0), ("p95", 95.0), ("p99", 99.0)):
        assert abs(status["latency_ms"][name] - q) < 1.0


def test_traffic_before_any_record() -> None:
    assert TrafficMonitor().status() == {
        "records": 0,
        "roles": {"primary": 0, "canary": 0, "pinned": 0, "shadow": 0},
        "errors": 0,
        "error_rate": 0.0,
        "latency_ms": {"p50": None, "p95": None, "p99": None},
    }


# --- arguments -------------------------------------------------------------------------------

_REF = {"a": reference_stats(np.random.default_rng(0).normal(size=500))}


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: FeatureDriftMonitor([], _REF), id="no-names"),
        pytest.param(lambda: FeatureDriftMonitor(["a", "a"], _REF), id="duplicate-names"),
        pytest.param(lambda: FeatureDriftMonitor(["a"], _REF, delta=0.0), id="delta"),
        pytest.param(lambda: FeatureDriftMonitor(["a"], _REF, window=10), id="window"),
        pytest.param(lambda: FeatureDriftMonitor(["a"], _REF, psi_threshold=0), id="psi"),
        pytest.param(lambda: PredictionDriftMonitor({}, task="ranking"), id="task"),
        pytest.param(lambda: PredictionDriftMonitor({}, task="classification"), id="no-classes"),
        pytest.param(lambda: ConceptDriftMonitor(delta=1.5), id="concept-delta"),
        pytest.param(lambda: ConceptDriftMonitor(min_records=-1), id="min-records"),
        pytest.param(lambda: ClassificationAccuracy(window=0), id="accuracy-window"),
        pytest.param(lambda: RegressionAccuracy(window=0), id="regression-window"),
        pytest.param(lambda: AgreementMonitor(task="x"), id="agreement-task"),
        pytest.param(lambda: AgreementMonitor(task="regression", rel_tol=-1), id="tolerance"),
    ],
)
def test_bad_arguments_raise_value_error(build: Callable[[], Any]) -> None:
    with pytest.raises(ValueError):
        build()


def test_feature_batch_of_the_wrong_width_is_refused() -> None:
    monitor = FeatureDriftMonitor(["a"], _REF)
    with pytest.raises(ValueError, match=r"shape \[n, 1\]"):
        monitor.update(np.zeros((3, 2)), ts=0.0)
    with pytest.raises(ValueError, match="ts must be"):
        monitor.update(np.zeros((3, 1)), ts=np.zeros(2))


# --- pickling mid-stream ---------------------------------------------------------------------

K = 5
_TRAIN = np.random.default_rng(99).normal(10.0, 2.0, size=(4000, K))
_FEATURE_REF = {f"f{j}": reference_stats(_TRAIN[:, j]) for j in range(K)}


def _feed_features(monitor: Any, rng: np.random.Generator, step: int) -> None:
    X = rng.normal(10.0, 2.0, size=(700, K))
    if step >= 4:
        X[:, 1] += 1.0
        X[:, 3] *= 2.0
    X[rng.random(X.shape) < 0.01] = np.nan
    monitor.update(X, ts=np.arange(700) + 700.0 * step)


def _feed_class_predictions(monitor: Any, rng: np.random.Generator, step: int) -> None:
    share = 0.3 if step < 4 else 0.5
    monitor.update(np.where(rng.random(700) < share, 1, 0), ts=float(step))


def _feed_value_predictions(monitor: Any, rng: np.random.Generator, step: int) -> None:
    monitor.update(rng.normal(10.0 if step < 4 else 11.0, 2.0, 700), ts=float(step))


def _feed_classification(monitor: Any, rng: np.random.Generator, step: int) -> None:
    for _ in range(300):
        y = int(rng.integers(0, 3))
        p = y if rng.random() < 0.8 else int(rng.integers(0, 3))
        monitor.update(y, p, {0: 0.2, 1: 0.3, 2: 0.5} if y else None)


def _feed_regression(monitor: Any, rng: np.random.Generator, step: int) -> None:
    for _ in range(300):
        y = float(rng.normal())
        monitor.update(y, y + float(rng.normal(0.0, 0.5)))


def _feed_errors(monitor: Any, rng: np.random.Generator, step: int) -> None:
    rate = 0.1 if step < 4 else 0.3
    for error in (rng.random(500) < rate).tolist():
        monitor.update(float(error))


def _feed_pairs(monitor: Any, rng: np.random.Generator, step: int) -> None:
    for _ in range(300):
        a = float(rng.normal())
        monitor.update(a, a + float(rng.normal(0.0, 0.01)))


def _feed_traffic(monitor: Any, rng: np.random.Generator, step: int) -> None:
    for _ in range(300):
        role = ("primary", "canary", "shadow")[int(rng.integers(0, 3))]
        monitor.update(float(rng.exponential(4.0)), 500 if rng.random() < 0.02 else 200, role)


MONITORS: list[Any] = [
    pytest.param(
        lambda: FeatureDriftMonitor(list(_FEATURE_REF), _FEATURE_REF),
        _feed_features,
        id="FeatureDriftMonitor",
    ),
    pytest.param(
        lambda: PredictionDriftMonitor(
            {"prediction": {"classes": [0, 1], "counts": [2800, 1200]}}, task="classification"
        ),
        _feed_class_predictions,
        id="PredictionDriftMonitor-classification",
    ),
    pytest.param(
        lambda: PredictionDriftMonitor(
            {"prediction": reference_stats(_TRAIN[:, 0])}, task="regression", window=500
        ),
        _feed_value_predictions,
        id="PredictionDriftMonitor-regression",
    ),
    pytest.param(
        lambda: ClassificationAccuracy(window=200),
        _feed_classification,
        id="ClassificationAccuracy",
    ),
    pytest.param(lambda: RegressionAccuracy(window=200), _feed_regression, id="RegressionAccuracy"),
    pytest.param(ConceptDriftMonitor, _feed_errors, id="ConceptDriftMonitor"),
    pytest.param(lambda: AgreementMonitor(task="regression"), _feed_pairs, id="AgreementMonitor"),
    pytest.param(TrafficMonitor, _feed_traffic, id="TrafficMonitor"),
]


def test_every_monitor_is_in_the_contract_test() -> None:
    covered = {p.id.split("-")[0] for p in MONITORS}
    monitors = {name for name in sidecar.monitors.__all__ if name[0].isupper()}
    assert covered == monitors


@pytest.mark.parametrize(("build", "feed"), MONITORS)
def test_pickle_mid_stream_then_continue_matches_an_uninterrupted_run(
    build: Callable[[], Any], feed: Callable[[Any, np.random.Generator, int], None]
) -> None:
    steps = 10
    straight, rng_a = build(), np.random.default_rng(123)
    for step in range(steps):
        feed(straight, rng_a, step)
    resumed, rng_b = build(), np.random.default_rng(123)
    for step in range(steps):
        if step in (3, 6):
            # Mid-stream and mid-window; step 6 is after the change for the drifting streams.
            resumed = pickle.loads(pickle.dumps(resumed))
        feed(resumed, rng_b, step)
    assert resumed.status() == straight.status()
    assert pickle.loads(pickle.dumps(straight)).status() == straight.status()
    # The status is served as JSON as it is: plain Python numbers, nothing infinite.
    assert json.loads(json.dumps(straight.status(), allow_nan=False)) == straight.status()
