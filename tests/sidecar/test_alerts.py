"""Alert rules: parsing with precise errors, and the fire / cooldown / resolve cycle."""

from __future__ import annotations

import copy
import pickle
import re
from typing import Any

import orjson
import pytest

from sidecar.alerts import RESOLVED, AlertPolicy, AlertRule, parse_alerts
from sidecar.errors import ConfigError

HOOKS = {"ci", "ops"}


def version(v: int = 1, **overrides: Any) -> dict[str, Any]:
    """A healthy version entry of the sidecar's status; tests override what they need."""
    vs: dict[str, Any] = {
        "version": v,
        "task": "classification",
        "records": 5000,
        "roles": {"primary": 5000, "canary": 0, "pinned": 0, "shadow": 0},
        "errors": 0,
        "error_rate": 0.0,
        "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
        "feature_drift": {
            "drifting": [],
            "features": {
                f"f{i}": {"state": "ok", "score": 0.01, "psi": 0.01, "ks": 0.01, "changed_at": None}
                for i in range(4)
            },
        },
        "prediction_drift": {"state": "ok", "score": 0.01, "psi": 0.0, "ks": 0.0},
        "accuracy": {
            "labels": 1000,
            "accuracy": 0.9,
            "f1_macro": 0.89,
            "log_loss": 0.3,
            "rolling_accuracy": 0.9,
            "rolling_f1_macro": 0.89,
            "window": 500,
        },
        "concept_drift": {"state": "ok", "error_rate": 0.1, "changed_at_record": None},
        "shadow": {"agreement": None, "pairs": 0},
        "manifest_metrics": {"accuracy": 0.9, "f1_macro": 0.88, "log_loss": 0.3},
    }
    vs.update(overrides)
    return vs


def drifting(vs: dict[str, Any], *names: str) -> dict[str, Any]:
    vs = copy.deepcopy(vs)
    vs["feature_drift"]["drifting"] = list(names)
    for i, name in enumerate(names):
        vs["feature_drift"]["features"][name].update(
            state="drifting", score=0.5 + i, psi=0.4, ks=0.2, changed_at=100.0
        )
    return vs


def status(*versions: dict[str, Any], model: str = "churn", lag: float | None = 1.0) -> dict:
    return {
        "records": 5000,
        "feedback": 1000,
        "duplicates": 0,
        "newest_ts": 1000.0,
        "lag_seconds": lag,
        "models": {
            model: {
                "primary": versions[0]["version"] if versions else None,
                "canary": None,
                "shadows": [],
                "versions": {str(vs["version"]): vs for vs in versions},
            }
        },
    }


def rule(**table: Any) -> AlertRule:
    table.setdefault("name", "r")
    return parse_alerts([table], HOOKS)[0]


# ---------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        pytest.param(
            [{"name": "a", "condition": "foo"}],
            "alerts[0].condition: unknown condition 'foo'",
            id="unknown-condition",
        ),
        pytest.param([{"condition": "concept_drift"}], "alerts[0].name: ", id="no-name"),
        pytest.param([{"name": "a"}], "alerts[0].condition: required", id="no-condition"),
        pytest.param(
            [{"name": "a", "condition": "concept_drift", "bogus": 1}],
            "alerts[0].bogus: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            [{"name": "a", "condition": "feature_drift", "threshold": 0.5}],
            "alerts[0].threshold: not used by condition 'feature_drift'",
            id="key-of-other-condition",
        ),
        pytest.param(
            [{"name": "a", "condition": "accuracy_below"}],
            "alerts[0].threshold: give exactly one of threshold or relative_drop",
            id="accuracy-no-limit",
        ),
        pytest.param(
            [{"name": "a", "condition": "accuracy_below", "threshold": 0.8, "relative_drop": 0.1}],
            "alerts[0].threshold: give exactly one of threshold or relative_drop",
            id="accuracy-two-limits",
        ),
        pytest.param(
            [{"name": "a", "condition": "accuracy_below", "relative_drop": 1.5}],
            "alerts[0].relative_drop: must be a number between 0 and 1",
            id="relative-drop-range",
        ),
        pytest.param(
            [{"name": "a", "condition": "accuracy_below", "threshold": 0.8, "metric": "auc"}],
            "alerts[0].metric: must be one of",
            id="metric",
        ),
        pytest.param(
            [{"name": "a", "condition": "error_rate_above", "threshold": 2}],
            "alerts[0].threshold: must be a number between 0 and 1",
            id="error-rate-range",
        ),
        pytest.param(
            [{"name": "a", "condition": "error_rate_above"}],
            "alerts[0].threshold: required",
            id="error-rate-threshold",
        ),
        pytest.param(
            [
                {
                    "name": "a",
                    "condition": "shadow_disagreement_above",
                    "threshold": 0.1,
                    "min_pairs": 0,
                }
            ],
            "alerts[0].min_pairs: must be a positive integer",
            id="min-pairs",
        ),
        pytest.param(
            [{"name": "a", "condition": "log_lag_above"}],
            "alerts[0].seconds: required for log_lag_above",
            id="lag-seconds",
        ),
        pytest.param(
            [{"name": "a", "condition": "log_lag_above", "seconds": 60, "model": "churn"}],
            "alerts[0].model: log_lag_above watches the whole log",
            id="lag-model",
        ),
        pytest.param(
            [{"name": "a", "condition": "concept_drift", "webhooks": ["nope"]}],
            "alerts[0].webhooks: no [[webhooks]] named 'nope'",
            id="webhook-name",
        ),
        pytest.param(
            [{"name": "a", "condition": "concept_drift", "severity": "fatal"}],
            "alerts[0].severity: must be one of info, warning, critical",
            id="severity",
        ),
        pytest.param(
            [{"name": "a", "condition": "concept_drift", "cooldown": "soon"}],
            "alerts[0].cooldown: must be",
            id="cooldown",
        ),
        pytest.param(
            [{"name": "a", "condition": "concept_drift", "model": "Bad Model"}],
            "alerts[0].model: must be a model name or '*'",
            id="model-name",
        ),
        pytest.param(
            [
                {"name": "a", "condition": "concept_drift"},
                {"name": "a", "condition": "prediction_drift"},
            ],
            "alerts[1].name: duplicate alert name 'a'",
            id="duplicate",
        ),
    ],
)
def test_parse_errors_name_the_key(tables: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_alerts(tables, HOOKS)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)


def test_parse_reads_durations_defaults_and_webhooks() -> None:
    rules = parse_alerts(
        [
            {
                "name": "drift",
                "model": "churn",
                "condition": "feature_drift",
                "min_features": 2,
                "severity": "critical",
                "cooldown": "15m",
                "webhooks": ["ci", "ops", "ci"],
            },
            {"name": "lag", "condition": "log_lag_above", "seconds": "2m"},
            {"name": "acc", "condition": "accuracy_below", "relative_drop": 0.1},
        ],
        HOOKS,
    )
    drift, lag, acc = rules
    assert (drift.model, drift.min_features, drift.severity) == ("churn", 2, "critical")
    assert drift.cooldown == 900.0
    assert drift.webhooks == ("ci", "ops")
    assert drift.event_type == "model.drift_detected"
    assert (lag.model, lag.seconds, lag.cooldown, lag.webhooks) == ("*", 120.0, 3600.0, ())
    assert (acc.metric, acc.relative_drop, acc.threshold, acc.min_labels) == (
        "accuracy",
        0.1,
        None,
        100,
    )


# ---------------------------------------------------------------------------------- lifecycle


def test_fires_once_is_quiet_within_cooldown_and_resolves() -> None:
    policy = AlertPolicy(
        [rule(condition="feature_drift", cooldown=600, webhooks=["ci"])],
        registry="models/registry",
        sidecar_url="http://sidecar:8001",
    )
    healthy = status(version(2))
    bad = status(drifting(version(2), "f1", "f3"))

    assert policy.evaluate(healthy, 0.0) == []
    [fired] = policy.evaluate(bad, 10.0)
    assert fired.type == "model.drift_detected"
    assert re.fullmatch(r"evt_[0-9a-f]{32}", fired.id)
    assert fired.timestamp == "1970-01-01T00:00:10.000Z"
    assert fired.webhooks == ("ci",)
    assert fired.data["rule"] == "r"
    assert fired.data["model"] == "churn" and fired.data["version"] == 2
    assert fired.data["registry_path"] == "models/registry/churn/2"
    assert fired.data["sidecar_url"] == "http://sidecar:8001"
    assert fired.data["figures"]["drifting"] == ["f1", "f3"]
    assert fired.data["figures"]["features"]["f3"]["score"] == 1.5
    assert policy.active()[0]["notified"] is True

    # Still drifting: no repeat.
    assert policy.evaluate(bad, 20.0) == []
    # Back to normal: one resolved event pointing at the alert it ends.
    [resolved] = policy.evaluate(healthy, 30.0)
    assert resolved.type == RESOLVED
    assert resolved.data["resolves"] == {"id": fired.id, "type": "model.drift_detected"}
    assert resolved.data["active_seconds"] == 20.0
    assert policy.active() == []

    # A flap within the cooldown stays quiet from start to end, but shows as active.
    assert policy.evaluate(bad, 40.0) == []
    [waiting] = policy.active()
    assert waiting["notified"] is False and waiting["since"] == 40.0
    assert waiting["event_id"] is None
    assert policy.evaluate(healthy, 50.0) == []

    # After the cooldown it fires again.
    [again] = policy.evaluate(bad, 700.0)
    assert again.type == "model.drift_detected" and again.id != fired.id
    assert [e["type"] for e in policy.recent(10)] == [
        "model.drift_detected",
        RESOLVED,
        "model.drift_detected",
    ]


def test_condition_starting_in_cooldown_fires_once_cooldown_ends() -> None:
    policy = AlertPolicy([rule(condition="concept_drift", cooldown=100)])
    ok = status(version(1))
    bad = status(version(1, concept_drift={"state": "drifting", "error_rate": 0.3}))
    [first] = policy.evaluate(bad, 0.0)
    [_] = policy.evaluate(ok, 10.0)
    assert policy.evaluate(bad, 20.0) == []
    assert policy.evaluate(bad, 99.0) == []
    [second] = policy.evaluate(bad, 100.0)
    assert second.type == first.type == "model.concept_drift"
    assert policy.evaluate(bad, 150.0) == []


def test_each_version_and_model_filter() -> None:
    policy = AlertPolicy([rule(condition="prediction_drift", model="churn", cooldown=0)])
    bad = {"state": "drifting", "score": 0.9, "psi": 0.5, "ks": 0.3, "changed_at": 5.0}
    snapshot = status(version(1, prediction_drift=bad), version(3, prediction_drift=bad))
    other = status(version(1, prediction_drift=bad), model="fraud")
    snapshot["models"].update(other["models"])
    events = policy.evaluate(snapshot, 1.0)
    assert [(e.data["model"], e.data["version"]) for e in events] == [("churn", 1), ("churn", 3)]
    assert events[0].data["figures"] == {
        "state": "drifting",
        "score": 0.9,
        "psi": 0.5,
        "ks": 0.3,
        "changed_at": 5.0,
    }
    assert len(policy.active()) == 2


def test_unjudgeable_status_leaves_the_alert_as_it_was() -> None:
    policy = AlertPolicy([rule(condition="shadow_disagreement_above", threshold=0.05)])
    bad = status(version(4, shadow={"agreement": 0.8, "pairs": 500}))
    [fired] = policy.evaluate(bad, 1.0)
    # The version vanishes from the status, or has too few pairs: no verdict, no "resolved".
    assert policy.evaluate(status(), 2.0) == []
    assert policy.evaluate(status(version(4, shadow={"agreement": 1.0, "pairs": 5})), 3.0) == []
    assert [a["event_id"] for a in policy.active()] == [fired.id]


# ---------------------------------------------------------------------------------- conditions

CASES = [
    pytest.param(
        {"condition": "feature_drift", "min_features": 2},
        drifting(version(1), "f0"),
        drifting(version(1), "f0", "f2"),
        "model.drift_detected",
        {"drifting": ["f0", "f2"], "count": 2, "min_features": 2},
        id="feature_drift",
    ),
    pytest.param(
        {"condition": "prediction_drift"},
        version(1),
        version(1, prediction_drift={"state": "drifting", "score": 0.7, "psi": 0.3, "ks": 0.2}),
        "model.drift_detected",
        {"state": "drifting", "score": 0.7},
        id="prediction_drift",
    ),
    pytest.param(
        {"condition": "accuracy_below", "threshold": 0.8, "min_labels": 50},
        version(
            1, accuracy={"labels": 60, "accuracy": 0.9, "rolling_accuracy": 0.85, "window": 500}
        ),
        version(
            1, accuracy={"labels": 60, "accuracy": 0.85, "rolling_accuracy": 0.7, "window": 500}
        ),
        "model.accuracy_degraded",
        {"metric": "accuracy", "value": 0.7, "window": 500, "labels": 60, "threshold": 0.8},
        id="accuracy_below-threshold",
    ),
    pytest.param(
        {"condition": "accuracy_below", "relative_drop": 0.1},
        version(
            1, accuracy={"labels": 500, "accuracy": 0.9, "rolling_accuracy": 0.85, "window": 500}
        ),
        version(
            1, accuracy={"labels": 500, "accuracy": 0.9, "rolling_accuracy": 0.80, "window": 500}
        ),
        "model.accuracy_degraded",
        {"value": 0.80, "reference": 0.9, "relative_drop": 0.1, "limit": pytest.approx(0.81)},
        id="accuracy_below-relative",
    ),
    pytest.param(
        {"condition": "accuracy_below", "relative_drop": 0.1, "metric": "mae"},
        version(
            1,
            task="regression",
            accuracy={"labels": 500, "mae": 1.0, "rolling_mae": 1.05, "window": 500},
            manifest_metrics={"mae": 1.0, "rmse": 1.4, "r2": 0.8},
        ),
        version(
            1,
            task="regression",
            accuracy={"labels": 500, "mae": 1.0, "rolling_mae": 1.2, "window": 500},
            manifest_metrics={"mae": 1.0, "rmse": 1.4, "r2": 0.8},
        ),
        "model.accuracy_degraded",
        {"metric": "mae", "value": 1.2, "limit": pytest.approx(1.1)},
        id="accuracy_below-regression-mae",
    ),
    pytest.param(
        {"condition": "error_rate_above", "threshold": 0.05, "min_records": 100},
        version(1, records=1000, errors=20, error_rate=0.02),
        version(1, records=1000, errors=80, error_rate=0.08),
        "model.error_rate_high",
        {"error_rate": 0.08, "errors": 80, "records": 1000, "threshold": 0.05},
        id="error_rate_above",
    ),
    pytest.param(
        {"condition": "concept_drift"},
        version(1),
        version(1, concept_drift={"state": "drifting", "error_rate": 0.25, "changed_at_record": 9}),
        "model.concept_drift",
        {"state": "drifting", "error_rate": 0.25, "changed_at_record": 9},
        id="concept_drift",
    ),
    pytest.param(
        {"condition": "shadow_disagreement_above", "threshold": 0.05, "min_pairs": 100},
        version(2, shadow={"agreement": 0.97, "pairs": 1000}),
        version(2, shadow={"agreement": 0.9, "pairs": 1000}),
        "model.shadow_disagreement",
        {"disagreement": pytest.approx(0.1), "agreement": 0.9, "pairs": 1000},
        id="shadow_disagreement_above",
    ),
]


@pytest.mark.parametrize(("table", "ok", "bad", "event_type", "figures"), CASES)
def test_every_condition_fires_and_resolves(
    table: dict[str, Any],
    ok: dict[str, Any],
    bad: dict[str, Any],
    event_type: str,
    figures: dict[str, Any],
) -> None:
    policy = AlertPolicy([rule(**table, cooldown=0)])
    assert policy.evaluate(status(ok), 0.0) == []
    [fired] = policy.evaluate(status(bad), 1.0)
    assert fired.type == event_type
    assert fired.data["condition"] == table["condition"]
    assert {k: fired.data["figures"][k] for k in figures} == figures
    orjson.dumps(fired.to_dict())  # the body must serialise as JSON
    assert policy.evaluate(status(bad), 2.0) == []
    [resolved] = policy.evaluate(status(ok), 3.0)
    assert resolved.type == RESOLVED and resolved.data["resolves"]["id"] == fired.id


@pytest.mark.parametrize(
    ("table", "vs"),
    [
        pytest.param(
            {"condition": "accuracy_below", "threshold": 0.8, "min_labels": 50},
            version(1, accuracy={"labels": 49, "rolling_accuracy": 0.1, "window": 500}),
            id="min_labels",
        ),
        pytest.param(
            {"condition": "error_rate_above", "threshold": 0.05, "min_records": 100},
            version(1, records=99, errors=99, error_rate=1.0),
            id="min_records",
        ),
        pytest.param(
            {"condition": "shadow_disagreement_above", "threshold": 0.05, "min_pairs": 100},
            version(1, shadow={"agreement": 0.0, "pairs": 99}),
            id="min_pairs",
        ),
        pytest.param(
            {"condition": "accuracy_below", "threshold": 0.8},
            version(1, task="regression", accuracy={"labels": 500, "mae": 9.0, "window": 500}),
            id="classification-metric-on-regressor",
        ),
    ],
)
def test_too_little_evidence_does_not_fire(table: dict[str, Any], vs: dict[str, Any]) -> None:
    policy = AlertPolicy([rule(**table)])
    assert policy.evaluate(status(vs), 1.0) == []
    assert policy.active() == []


def test_accuracy_rule_without_reference_metric_waits() -> None:
    policy = AlertPolicy([rule(condition="accuracy_below", relative_drop=0.1)])
    low = {"labels": 500, "accuracy": 0.5, "rolling_accuracy": 0.5, "window": 500}
    assert policy.evaluate(status(version(1, accuracy=low, manifest_metrics={})), 1.0) == []
    assert policy.active() == []


def test_log_lag() -> None:
    policy = AlertPolicy([rule(condition="log_lag_above", seconds=60, cooldown=0)])
    assert policy.evaluate(status(lag=None), 0.0) == []
    assert policy.evaluate(status(lag=10.0), 1.0) == []
    [fired] = policy.evaluate(status(lag=120.0), 2.0)
    assert fired.type == "log.lag_high"
    assert fired.data["model"] is None and fired.data["registry_path"] is None
    assert fired.data["figures"] == {"lag_seconds": 120.0, "threshold": 60.0, "newest_ts": 1000.0}
    [resolved] = policy.evaluate(status(lag=5.0), 3.0)
    assert resolved.type == RESOLVED


# ---------------------------------------------------------------------------------- state


def test_state_survives_pickle_and_rule_reload() -> None:
    rules = [
        rule(condition="concept_drift", cooldown=1000),
        rule(name="other", condition="prediction_drift"),
    ]
    policy = AlertPolicy(rules)
    bad = status(version(1, concept_drift={"state": "drifting", "error_rate": 0.3}))
    [fired] = policy.evaluate(bad, 0.0)

    restored: AlertPolicy = pickle.loads(pickle.dumps(policy))
    assert restored.active() == policy.active()
    assert restored.recent(5) == policy.recent(5)
    # A reloaded config that keeps the rule keeps its alert and cooldown.
    restored.replace_rules(
        parse_alerts([{"name": "r", "condition": "concept_drift", "cooldown": 1000}], HOOKS)
    )
    [resolved] = restored.evaluate(status(version(1)), 10.0)
    assert resolved.data["resolves"]["id"] == fired.id
    assert restored.evaluate(bad, 20.0) == []  # still within the cooldown

    # Same name, another condition: a new rule, its old alert is forgotten.
    restored.evaluate(bad, 3000.0)
    assert restored.active() != []
    restored.replace_rules(parse_alerts([{"name": "r", "condition": "prediction_drift"}], HOOKS))
    assert restored.active() == []

    restored.replace_rules([])
    assert restored.active() == [] and restored.evaluate(bad, 5000.0) == []


def test_recent_is_newest_first_and_bounded() -> None:
    policy = AlertPolicy([rule(condition="log_lag_above", seconds=1, cooldown=0)], keep_recent=3)
    for step in range(4):
        policy.evaluate(status(lag=10.0), step * 2.0)
        policy.evaluate(status(lag=0.0), step * 2.0 + 1)
    recent = policy.recent(10)
    assert len(recent) == 3
    assert [e["timestamp"][-7:] for e in recent] == ["07.000Z", "06.000Z", "05.000Z"]
    assert policy.recent(0) == []
