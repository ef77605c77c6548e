"""Statistical acceptance of the drift monitors on seeded streams.

References are built the way the registry builds them (10 quantile bins of training data, mean,
std), over 20 features of very different scales. The acceptance points: no alarm on stationary
traffic, a 0.5 sd mean shift and a doubling of variance found within 1,000 records, nothing
else flagged, and a return to "ok" once traffic is normal again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.special
import scipy.stats
from river import drift

from sidecar.drift import (
    adwin_detections,
    chi2_sf,
    kolmogorov_sf,
    ks_pvalue,
    new_adwin,
    psi,
)
from sidecar.monitors import ConceptDriftMonitor, FeatureDriftMonitor, PredictionDriftMonitor

K = 20
NAMES = [f"f{j}" for j in range(K)]
TRAIN_ROWS = 5000
BATCH = 1000


def reference_stats(values: np.ndarray) -> dict[str, Any]:
    """Reference statistics as the registry writes them (10 quantile bins, mean, std, ...)."""
    edges = np.quantile(values, np.linspace(0.0, 1.0, 11))
    counts = np.bincount(np.searchsorted(edges[1:-1], values, side="right"), minlength=10)
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def test_reference_stats_match_the_registry() -> None:
    manifest = pytest.importorskip("gateway.manifest")
    values = np.random.default_rng(0).gamma(2.0, 3.0, 999)
    assert reference_stats(values) == manifest.numeric_stats(values)


def population(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """20 features N(mu_j, sd_j), means in +-1000 and std from 0.001 to 1000, and a reference."""
    mu = rng.uniform(-1000.0, 1000.0, K)
    sd = 10.0 ** rng.uniform(-3.0, 3.0, K)
    train = rng.normal(mu, sd, size=(TRAIN_ROWS, K))
    return mu, sd, {name: reference_stats(train[:, j]) for j, name in enumerate(NAMES)}


def feed(
    monitor: FeatureDriftMonitor,
    rng: np.random.Generator,
    mu: np.ndarray,
    sd: np.ndarray,
    batches: int,
) -> None:
    for _ in range(batches):
        start = monitor.records
        monitor.update(rng.normal(mu, sd, size=(BATCH, K)), ts=np.arange(start, start + BATCH))


def flagged(monitor: FeatureDriftMonitor) -> dict[str, int]:
    """Features that were ever flagged, with the record of their last change of state."""
    features = monitor.status()["features"]
    return {n: f["changed_at_record"] for n, f in features.items() if f["changed_at_record"]}


# Detection records of the seeded streams below (f3, f11: mean shift at 50,001; f7: variance
# doubled at 51,001). They pin the method: any change to it shows here first.
EXPECTED = {
    0: (50208, 50176, 51232),
    1: (50208, 50208, 51072),
    2: (50240, 50208, 51200),
    3: (50240, 50208, 51136),
    4: (50272, 50240, 51232),
}


@pytest.mark.parametrize("seed", sorted(EXPECTED))
def test_stationary_then_mean_shift_then_variance_doubling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mu, sd, reference = population(rng)
    monitor = FeatureDriftMonitor(NAMES, reference)

    feed(monitor, rng, mu, sd, 50)
    assert monitor.status()["drifting"] == []
    assert flagged(monitor) == {}

    shifted = mu.copy()
    shifted[[3, 11]] += 0.5 * sd[[3, 11]]
    feed(monitor, rng, shifted, sd, 1)
    assert monitor.status()["drifting"] == ["f3", "f11"]
    assert all(50_000 < r <= 51_000 for r in flagged(monitor).values())

    wider = sd.copy()
    wider[7] *= np.sqrt(2.0)
    feed(monitor, rng, shifted, wider, 1)
    status = monitor.status()
    assert status["drifting"] == ["f3", "f7", "f11"]
    f = status["features"]
    assert 51_000 < f["f7"]["changed_at_record"] <= 52_000
    found = tuple(f[name]["changed_at_record"] for name in ("f3", "f11", "f7"))
    assert found == EXPECTED[seed]
    for name in ("f3", "f11", "f7"):
        # ts of each record is its position from 0, so the ts of record r is r - 1.
        assert f[name]["changed_at"] == f[name]["changed_at_record"] - 1
        assert f[name]["state"] == "drifting"
    assert set(flagged(monitor)) == {"f3", "f7", "f11"}

    # Back to normal at 52,001: ADWIN sees that change too, and the first full window after
    # it that is within thresholds (53,001-54,000) resolves the three features.
    feed(monitor, rng, mu, sd, 3)
    status = monitor.status()
    assert status["drifting"] == []
    assert flagged(monitor) == {"f3": 54_000, "f7": 54_000, "f11": 54_000}
    assert all(status["features"][n]["changed_at"] == 53_999 for n in ("f3", "f7", "f11"))


@pytest.mark.slow
def test_no_false_alarm_in_twenty_runs_of_100k_stationary_records() -> None:
    alarms = {}
    for seed in range(20):
        rng = np.random.default_rng(1000 + seed)
        mu, sd, reference = population(rng)
        monitor = FeatureDriftMonitor(NAMES, reference)
        feed(monitor, rng, mu, sd, 100)
        if flagged(monitor):
            alarms[seed] = flagged(monitor)
    assert alarms == {}


def skewed_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four each of lognormal, exponential, Student-t3, sparse Poisson and 5 % binary."""
    columns = []
    for _ in range(4):
        columns += [
            rng.lognormal(3.0, 1.0, n),
            rng.exponential(40.0, n),
            rng.standard_t(3, n),
            rng.poisson(0.2, n).astype(np.float64),
            (rng.random(n) < 0.05).astype(np.float64),
        ]
    return np.column_stack(columns)


@pytest.mark.parametrize("seed", range(3))
def test_skewed_and_discrete_features_raise_no_false_alarm(seed: int) -> None:
    # Unclipped, ADWIN on z**2 flags most heavy-tailed features within 100,000 records.
    rng = np.random.default_rng(200 + seed)
    train = skewed_features(rng, TRAIN_ROWS)
    monitor = FeatureDriftMonitor(
        NAMES, {n: reference_stats(train[:, j]) for j, n in enumerate(NAMES)}
    )
    for i in range(100):
        monitor.update(skewed_features(rng, BATCH), ts=float(i))
    assert flagged(monitor) == {}
    # Amounts 30 % larger on the first lognormal feature.
    X = skewed_features(rng, BATCH)
    X[:, 0] *= 1.3
    monitor.update(X, ts=100.0)
    assert monitor.status()["drifting"] == ["f0"]


def test_change_of_shape_is_caught_by_the_windowed_ks() -> None:
    # From N(0, 1) to +-1 with equal odds: the mean and the mean square of z do not move, so
    # only the KS over the reference bins can see it, at the end of the first changed window.
    rng = np.random.default_rng(8)
    monitor = FeatureDriftMonitor(["x"], {"x": reference_stats(rng.normal(size=TRAIN_ROWS))})
    monitor.update(rng.normal(size=(10_000, 1)), ts=0.0)
    assert monitor.status()["drifting"] == []
    monitor.update(rng.choice([-1.0, 1.0], size=(1000, 1)), ts=1.0)
    x = monitor.status()["features"]["x"]
    assert (x["state"], x["changed_at_record"], x["changed_at"]) == ("drifting", 11_000, 1.0)
    assert x["ks"] > 0.3
    assert x["score"] == max(x["ks"], x["psi"])


def test_training_data_replayed_is_exactly_its_reference() -> None:
    # Integer features put many values right on the bin edges: the monitor must bin them as
    # the registry did, or replaying the training rows would not give zero.
    rng = np.random.default_rng(6)
    train = np.column_stack(
        [rng.integers(0, 6, 2000), rng.poisson(1.0, 2000), rng.normal(size=2000)]
    ).astype(np.float64)
    names = ["dice", "counts", "noise"]
    reference = {n: reference_stats(train[:, j]) for j, n in enumerate(names)}
    monitor = FeatureDriftMonitor(names, reference, window=2000)
    monitor.update(train, ts=0.0)
    features = monitor.status()["features"]
    assert {n: (f["psi"], f["ks"]) for n, f in features.items()} == {n: (0.0, 0.0) for n in names}


def test_many_predicted_classes() -> None:
    rng = np.random.default_rng(13)
    shares = rng.dirichlet(np.full(50, 2.0))
    reference = {"classes": list(range(50)), "counts": rng.multinomial(20_000, shares).tolist()}
    monitor = PredictionDriftMonitor(reference, task="classification")
    for i in range(20):
        monitor.update(rng.choice(50, size=BATCH, p=shares), ts=float(i))
    assert monitor.status()["changed_at_record"] is None
    moved = shares.copy()
    top, rare = int(np.argmax(shares)), int(np.argmin(shares))
    moved[top], moved[rare] = shares[rare], shares[top]
    monitor.update(rng.choice(50, size=BATCH, p=moved), ts=20.0)
    status = monitor.status()
    assert status["state"] == "drifting"
    assert 20_000 < status["changed_at_record"] <= 21_000


def test_missing_values_are_skipped() -> None:
    rng = np.random.default_rng(9)
    mu, sd, reference = population(rng)
    monitor = FeatureDriftMonitor(NAMES, reference)
    for _ in range(20):
        X = rng.normal(mu, sd, size=(BATCH, K))
        X[rng.random(X.shape) < 0.05] = np.nan
        X[0, 0] = np.inf
        monitor.update(X, ts=0.0)
    status = monitor.status()
    assert status["drifting"] == []
    assert all(f["ks"] is not None and f["psi"] < 0.1 for f in status["features"].values())


def test_feature_without_reference_is_not_watched() -> None:
    rng = np.random.default_rng(10)
    empty = {"edges": [], "counts": [], "mean": None, "std": None, "min": None, "max": None}
    reference = {"a": reference_stats(rng.normal(size=1000)), "b": empty}
    monitor = FeatureDriftMonitor(["a", "b", "c"], {"features": reference})
    monitor.update(np.column_stack([rng.normal(size=3000), rng.normal(5.0, size=(3000, 2))]), 0.0)
    status = monitor.status()
    assert status["drifting"] == []
    quiet = {"state": "ok", "score": 0.0, "psi": None, "ks": None}
    assert {k: status["features"]["b"][k] for k in quiet} == quiet
    assert {k: status["features"]["c"][k] for k in quiet} == quiet
    assert status["features"]["a"]["ks"] is not None


# --- predictions -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_predicted_class_shares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    train = rng.random(4000) < 0.25
    reference = {"classes": [0, 1], "counts": [int((~train).sum()), int(train.sum())]}
    monitor = PredictionDriftMonitor({"prediction": reference}, task="classification")
    for i in range(50):
        monitor.update((rng.random(BATCH) < 0.25).astype(int), ts=float(i))
    status = monitor.status()
    assert (status["state"], status["changed_at_record"], status["ks"]) == ("ok", None, None)
    monitor.update((rng.random(BATCH) < 0.40).astype(int), ts=50.0)
    status = monitor.status()
    assert status["state"] == "drifting"
    assert 50_000 < status["changed_at_record"] <= 51_000


def test_unknown_predicted_label_is_drift() -> None:
    rng = np.random.default_rng(12)
    monitor = PredictionDriftMonitor(
        {"classes": ["a", "b"], "counts": [500, 500]}, task="classification"
    )
    monitor.update(rng.choice(["a", "b"], size=5000), ts=0.0)
    assert monitor.status()["state"] == "ok"
    monitor.update(rng.choice(["a", "b", "c"], size=1000), ts=1.0)
    status = monitor.status()
    assert (status["state"], status["changed_at"]) == ("drifting", 1.0)
    assert status["psi"] > 0.25


@pytest.mark.parametrize("seed", range(5))
def test_predicted_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    reference = reference_stats(rng.gamma(4.0, 25.0, 4000))
    monitor = PredictionDriftMonitor(reference, task="regression")
    for i in range(50):
        monitor.update(rng.gamma(4.0, 25.0, BATCH), ts=float(i))
    assert monitor.status()["changed_at_record"] is None
    monitor.update(rng.gamma(4.0, 25.0, BATCH) + 25.0, ts=50.0)  # half a std
    status = monitor.status()
    assert status["state"] == "drifting"
    assert 50_000 < status["changed_at_record"] <= 51_000
    assert set(status) == {"state", "score", "psi", "ks", "changed_at", "changed_at_record"}


# --- concept drift ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_error_rate_rise_is_found_within_1000_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    monitor = ConceptDriftMonitor()
    for error in (rng.random(5000) < 0.10).tolist():
        monitor.update(error)
    assert monitor.status()["state"] == "ok"
    for error in (rng.random(1000) < 0.25).tolist():
        monitor.update(error)
    status = monitor.status()
    assert status["state"] == "drifting"
    assert 5000 < status["changed_at_record"] <= 6000
    assert 0.15 < status["error_rate"] < 0.35


@pytest.mark.parametrize("seed", range(5))
def test_steady_error_rate_never_fires(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    monitor = ConceptDriftMonitor()
    for error in (rng.random(50_000) < 0.10).tolist():
        monitor.update(error)
    status = monitor.status()
    assert (status["state"], status["changed_at_record"]) == ("ok", None)
    assert abs(status["error_rate"] - 0.10) < 0.02


def test_error_rate_fall_is_not_drift_and_recovery_resolves() -> None:
    rng = np.random.default_rng(7)
    monitor = ConceptDriftMonitor()
    for rate in (0.10, 0.02):
        for error in (rng.random(5000) < rate).tolist():
            monitor.update(error)
    assert monitor.status()["state"] == "ok"
    for error in (rng.random(3000) < 0.25).tolist():
        monitor.update(error)
    assert monitor.status()["state"] == "drifting"
    for error in (rng.random(3000) < 0.02).tolist():
        monitor.update(error)
    status = monitor.status()
    assert status["state"] == "ok"
    assert 13_000 < status["changed_at_record"] <= 16_000


# --- the pieces ------------------------------------------------------------------------------


def test_adwin_detections_equal_the_update_then_read_loop() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [rng.normal(m, 1.0, 3000) for m in (0.0, 1.0, -0.5, 0.5, 0.5, 2.0)]
    ).tolist()
    public = drift.ADWIN(delta=1e-3)
    expected = []
    for i, x in enumerate(values):
        public.update(x)
        if public.drift_detected:
            expected.append(i)
    assert len(expected) >= 4
    assert adwin_detections(new_adwin(1e-3), values) == expected
    # Fed in pieces, with a piece ending right on a detection.
    fast = new_adwin(1e-3)
    cut = expected[1] + 1
    pieces = adwin_detections(fast, values[:cut]) + [
        cut + i for i in adwin_detections(fast, values[cut:])
    ]
    assert pieces == expected


def test_adwin_detections_without_the_compiled_helper() -> None:
    detector = drift.DummyDriftDetector(t_0=100)
    assert adwin_detections(detector, [0.0] * 350) == [99, 199, 299]


@pytest.mark.parametrize("x", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0, 1.17, 1.18, 1.5, 2.0, 3.0, 5.0])
def test_kolmogorov_sf_equals_scipy(x: float) -> None:
    assert kolmogorov_sf(x) == pytest.approx(
        float(scipy.special.kolmogorov(x)), rel=1e-9, abs=1e-15
    )


def test_ks_pvalue_uses_the_effective_sample_size() -> None:
    assert ks_pvalue(0.05, 1000, 4000) == pytest.approx(kolmogorov_sf(0.05 * np.sqrt(800.0)))
    assert ks_pvalue(0.5, 0, 10) == 1.0


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 9, 10, 25, 200])
def test_chi2_sf_equals_scipy(dof: int) -> None:
    for x in (0.0, 0.01, 0.5, 1.0, dof / 2, dof, 2.0 * dof + 10, 5.0 * dof + 60, 2000.0):
        expected = float(scipy.stats.chi2.sf(x, dof))
        assert chi2_sf(x, dof) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)


def test_psi() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == 0.0
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.25, 0.25, 0.5])
    assert psi(p * 100, q * 40) == pytest.approx(float(np.sum((p - q) * np.log(p / q))))
    # An empty bin is floored at 1e-4 of the total instead of being infinite.
    assert psi([0, 10], [5, 5]) == pytest.approx(
        (1e-4 - 0.5) * np.log(1e-4 / 0.5) + 0.5 * np.log(2.0)
    )
    with pytest.raises(ValueError):
        psi([1, 2], [1, 2, 3])
