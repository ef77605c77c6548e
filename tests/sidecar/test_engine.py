from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error

from sidecar.config import SidecarConfig, parse_config
from sidecar.engine import CANARY_IDLE_SECONDS, Engine
from tests.sidecar._scenario import DRIFTING, MU, NAMES, SD, Truth, scenario, write_registry

Records = list[dict[str, Any]]


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> SidecarConfig:
    root = write_registry(tmp_path_factory.mktemp("registry"))
    return parse_config({"gateway": {"registry": str(root)}}, base_dir=root, environ={})


@pytest.fixture(scope="module")
def stream() -> tuple[Records, Truth]:
    return scenario(12_000, seed=3)


@pytest.fixture(scope="module")
def baseline(config: SidecarConfig, stream: tuple[Records, Truth]) -> dict[str, Any]:
    """The status after the whole stream, in batches of 2,500."""
    return run(config, stream[0]).status()


def run(config: SidecarConfig, records: Records, batch: int = 2500) -> Engine:
    engine = Engine(config)
    for start in range(0, len(records), batch):
        engine.process(records[start : start + batch])
    return engine


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k != "lag_seconds"}


def test_counts_each_record_once(baseline: dict[str, Any], stream: tuple[Records, Truth]) -> None:
    _, truth = stream
    status = baseline
    assert status["records"] == truth.predictions
    assert status["feedback"] == truth.feedback
    assert status["duplicates"] == truth.duplicates
    assert status["invalid"] == 0
    versions = status["models"]["churn"]["versions"]
    assert sum(v["records"] for m in status["models"].values() for v in m["versions"].values()) == (
        truth.predictions
    )
    assert versions["1"]["roles"]["primary"] == versions["1"]["records"]
    assert versions["3"]["roles"]["shadow"] == versions["3"]["records"]


def test_accuracy_equals_sklearn_on_the_joined_pairs(
    baseline: dict[str, Any], stream: tuple[Records, Truth]
) -> None:
    _, truth = stream
    status = baseline
    assert status["join"]["pending_labels"] == 0  # labels logged before their prediction joined
    for (model, version), (y_true, y_pred) in truth.pairs.items():
        accuracy = status["models"][model]["versions"][str(version)]["accuracy"]
        assert accuracy["labels"] == len(y_true)
        if model == "churn":
            assert accuracy["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
            expected_f1 = f1_score(y_true, y_pred, average="macro")
            assert accuracy["f1_macro"] == pytest.approx(expected_f1, abs=1e-12)
            assert 0.85 < accuracy["accuracy"] < 0.95
        else:
            expected_mae = mean_absolute_error(y_true, y_pred)
            assert accuracy["mae"] == pytest.approx(expected_mae, abs=1e-12)


def test_shadow_agreement_against_primary(
    baseline: dict[str, Any], stream: tuple[Records, Truth]
) -> None:
    _, truth = stream
    status = baseline
    shadow, primary = truth.shadow_pairs[("churn", 3)]
    expected = float(np.mean(np.asarray(shadow) == np.asarray(primary)))
    got = status["models"]["churn"]["versions"]["3"]["shadow"]
    assert got["pairs"] == len(shadow)
    assert got["agreement"] == pytest.approx(expected, abs=1e-12)
    assert got["agreement"] == pytest.approx(0.9, abs=0.02)  # 10% of shadow answers flipped
    assert status["models"]["churn"]["shadows"] == [3]


def test_identical_shadow_agrees_fully(config: SidecarConfig) -> None:
    records: Records = []
    for i in range(200):
        label = i % 3 % 2
        primary = prediction(f"r{i}", 1000.0 + i, version=1, role="primary", pred=[label])
        shadow = prediction(f"r{i}", 1000.0 + i, version=3, role="shadow", pred=[label])
        # Either order: the log is merged from several writers. (Pairing starts with the
        # model's first shadow record, so this stream opens with a shadow.)
        records += [shadow, primary] if i % 2 == 0 else [primary, shadow]
    status = run(config, records, batch=37).status()
    assert status["models"]["churn"]["versions"]["3"]["shadow"] == {"agreement": 1.0, "pairs": 200}


def test_several_shadows_waiting_for_their_primary_survive_a_restart(
    config: SidecarConfig,
) -> None:
    records: Records = []
    for i in range(50):
        label = i % 2
        records += [
            prediction(f"s{i}", 10.0 + i, version=3, role="shadow", pred=[label]),
            prediction(f"s{i}", 10.0 + i, version=2, role="shadow", pred=[1 - label]),
            prediction(f"s{i}", 10.0 + i, version=1, role="primary", pred=[label]),
        ]
    expected = comparable(run(config, records).status())
    engine = Engine(config)
    for start in range(0, len(records), 1):  # a restart between every two records
        engine.process(records[start : start + 1])
        engine.mark_checkpoint()
        engine = Engine.from_snapshot(config, pickle.loads(pickle.dumps(engine.snapshot())))
    assert comparable(engine.status()) == expected
    versions = expected["models"]["churn"]["versions"]
    assert versions["3"]["shadow"] == {"agreement": 1.0, "pairs": 50}
    assert versions["2"]["shadow"] == {"agreement": 0.0, "pairs": 50}


def test_feature_drift_flags_the_shifted_features_only(
    baseline: dict[str, Any], stream: tuple[Records, Truth]
) -> None:
    status = baseline
    for version in ("1", "3"):
        drift = status["models"]["churn"]["versions"][version]["feature_drift"]
        assert drift["drifting"] == list(DRIFTING)
        states = {name: drift["features"][name]["state"] for name in NAMES}
        assert {n for n, s in states.items() if s == "drifting"} == set(DRIFTING)
    price = status["models"]["price"]["versions"]["1"]
    assert price["feature_drift"]["drifting"] == []
    assert price["prediction_drift"]["state"] == "ok"


def test_results_do_not_depend_on_batching_or_restarts(
    config: SidecarConfig, stream: tuple[Records, Truth], baseline: dict[str, Any]
) -> None:
    records, _ = stream
    expected = comparable(baseline)
    rng = random.Random(1)
    engine = Engine(config)
    start = 0
    while start < len(records):
        stop = start + rng.randint(1, 3000)
        engine.process(records[start:stop])
        if rng.random() < 0.3:  # a restart from a checkpoint taken here
            engine.mark_checkpoint()
            blob = pickle.dumps(engine.snapshot())
            engine = Engine.from_snapshot(config, pickle.loads(blob))
        start = stop
    assert comparable(engine.status()) == expected


def test_redelivered_records_after_a_restart_are_not_counted(
    config: SidecarConfig, stream: tuple[Records, Truth], baseline: dict[str, Any]
) -> None:
    records, _ = stream
    head, tail = records[:5000], records[5000:]
    expected = comparable(baseline)
    engine = run(config, records[:2000])
    engine.mark_checkpoint()
    engine.process(head[2000:])
    # Saved here, then the process died before the reader was acknowledged: the reader hands
    # back everything since the previous acknowledgement.
    restarted = Engine.from_snapshot(config, pickle.loads(pickle.dumps(engine.snapshot())))
    restarted.process(head[2000:])
    restarted.process(tail)
    assert comparable(restarted.status()) == expected
    assert restarted.redelivered == 3000


def test_versions_without_manifest_count_traffic(config: SidecarConfig) -> None:
    records = [
        prediction(f"g{i}", 50.0 + i, model="ghost", version=7, pred=[0.5], outputs=[[0.5]])
        for i in range(10)
    ]
    records[3]["status"] = 503
    status = run(config, records).status()
    ghost = status["models"]["ghost"]["versions"]["7"]
    assert (ghost["records"], ghost["errors"], ghost["error_rate"]) == (10, 1, 0.1)
    assert ghost["task"] == "regression"
    assert "no manifest" in ghost["feature_drift"]["skipped"]
    assert "no such version" in ghost["manifest_error"]
    assert ghost["manifest_metrics"] == {}


def test_failed_requests_count_in_traffic_only(config: SidecarConfig) -> None:
    records = [prediction("a", 1.0, pred=[1]), prediction("b", 2.0, pred=[1], status=500)]
    records += [prediction("c", 3.0, pred=[1], status=422)]
    records += [feedback(rid, 4.0, 1) for rid in ("a", "b", "c")]
    status = run(config, records).status()
    v1 = status["models"]["churn"]["versions"]["1"]
    assert (v1["records"], v1["errors"]) == (3, 1)
    assert v1["accuracy"]["labels"] == 1
    assert status["join"]["pending_labels"] == 2


def test_labels_join_in_either_order_and_per_row(config: SidecarConfig) -> None:
    records = [
        feedback("early", 10.0, [1, 0]),
        prediction("early", 9.0, pred=[1, 1], rows=2),
        prediction("late", 11.0, pred=[0]),
        feedback("late", 12.0, 0),
        prediction("bad", 13.0, pred=[0, 1], rows=2),
        feedback("bad", 14.0, [0, 1, 1]),
        feedback("partial", 15.0, [None, 1]),
        prediction("partial", 16.0, pred=[0, 1], rows=2),
    ]
    status = run(config, records, batch=1).status()
    accuracy = status["models"]["churn"]["versions"]["1"]["accuracy"]
    assert accuracy["labels"] == 4  # early: 2 rows, late: 1, partial: 1 (a null is skipped)
    assert accuracy["accuracy"] == pytest.approx(3 / 4)
    assert accuracy["unscored_labels"] == 3  # three labels for a two-row request
    assert status["join"] == {
        "pending_predictions": 0,
        "pending_labels": 0,
        "expired_predictions": 0,
        "expired_labels": 0,
        "unpaired_shadows": 0,
    }


def test_labels_older_than_the_ttl_do_not_join(tmp_path: Path, config: SidecarConfig) -> None:
    short = parse_config(
        {"gateway": {"registry": str(config.registry)}, "sidecar": {"label_ttl": 100}},
        base_dir=tmp_path,
        environ={},
    )
    records = [
        feedback("x", 0.0, 1),
        prediction("y", 1.0, pred=[1]),
        prediction("z", 150.0, pred=[1]),  # more than 100 s of record time later
        prediction("x", 151.0, pred=[1]),
        feedback("y", 152.0, 1),
    ]
    status = run(config=short, records=records).status()
    assert status["models"]["churn"]["versions"]["1"]["accuracy"]["labels"] == 0
    assert status["join"]["expired_labels"] == 1
    assert status["join"]["expired_predictions"] == 1


def test_roles_primary_and_canary(config: SidecarConfig) -> None:
    records = [
        prediction("a", 100.0, version=1, role="primary", pred=[1]),
        prediction("b", 101.0, version=2, role="canary", pred=[1]),
        prediction("c", 102.0, version=1, role="primary", pred=[1]),
    ]
    engine = run(config, records)
    model = engine.model_status("churn")
    assert model is not None
    assert (model["primary"], model["canary"], model["shadows"]) == (1, 2, [])
    assert set(model["versions"]) == {"1", "2"}
    engine.process([prediction("d", 103.0 + CANARY_IDLE_SECONDS, pred=[0])])
    model = engine.model_status("churn")
    assert model is not None and model["canary"] is None
    engine.process([prediction("e", 104.0 + CANARY_IDLE_SECONDS, version=2, pred=[0])])
    model = engine.model_status("churn")
    assert model is not None and (model["primary"], model["canary"]) == (2, None)  # promoted
    assert engine.model_status("nope") is None


def test_without_inputs_only_predictions_are_watched(config: SidecarConfig) -> None:
    records = [prediction(f"n{i}", float(i), pred=[i % 2]) for i in range(3000)]
    for record in records:
        del record["inputs"]
    v1 = run(config, records).status()["models"]["churn"]["versions"]["1"]
    assert all(f["psi"] is None for f in v1["feature_drift"]["features"].values())
    assert v1["prediction_drift"]["psi"] is not None


def test_malformed_records_are_counted_not_fatal(config: SidecarConfig) -> None:
    good = prediction("ok", 1.0, pred=[1])
    records: Records = [
        {},
        {"kind": "feedback", "id": "x"},
        {**good, "id": 5},
        {**good, "version": "1"},
        {**good, "role": "boss"},
        {**good, "ts": "yesterday"},
        {**good, "kind": "other"},
        {**good, "id": "rows", "inputs": [[1.0, "a"], [2.0]], "prediction": [1, 0]},
        {**good, "id": "nan", "inputs": [[None] * len(NAMES)], "latency_ms": "slow"},
        {**good, "id": "noprediction", "prediction": None},
        good,
    ]
    status = run(config, records).status()
    assert status["invalid"] == 7
    assert status["records"] == 4
    v1 = status["models"]["churn"]["versions"]["1"]
    assert v1["bad_rows"] == 2
    assert v1["latency_ms"]["p50"] is not None


def prediction(
    rid: str, ts: float, *, model: str = "churn", version: int = 1, role: str = "primary",
    pred: list[Any], rows: int = 1, status: int = 200, outputs: list[Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A record as the gateway logs it, with inputs drawn from the reference distribution."""
    seed = sum(map(ord, rid)) + int(ts)
    x = np.random.default_rng(seed).normal(0.0, 1.0, size=(rows, len(NAMES)))
    return {
        "id": rid,
        "ts": ts,
        "model": model,
        "version": version,
        "role": role,
        "inputs": (MU + SD * x).tolist(),
        "outputs": outputs if outputs is not None else [[0.5, 0.5]] * rows,
        "prediction": pred,
        "latency_ms": 2.0,
        "status": status,
    }


def feedback(rid: str, ts: float, label: Any) -> dict[str, Any]:
    return {"kind": "feedback", "id": rid, "ts": ts, "label": label}
