"""Alert rules and the policy that turns sidecar status snapshots into events.

Pure logic: the policy reads a status dict (the shape `Engine.status()` returns) and a clock
value passed in, and answers events. Delivery is somebody else's job (`sidecar.delivery`), so
the policy can be pickled with the sidecar's state and replayed in tests without a network.

An alert is tracked per (rule, model, version). It fires once when its condition starts to
hold, is not fired again within the rule's cooldown, and sends `alert.resolved` when the
condition ends, but only for an episode that was announced: a flap inside the cooldown stays
quiet from start to end. An episode that starts inside the cooldown and still holds when the
cooldown has passed is announced then. A condition that cannot be judged yet (too few labels,
records or pairs; no reference metric) leaves the alert as it was.
"""

from __future__ import annotations

import collections
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from sidecar.errors import ConfigError

__all__ = [
    "CONDITIONS",
    "EVENT_TYPES",
    "RESOLVED",
    "AlertPolicy",
    "AlertRule",
    "Event",
    "iso_utc",
    "new_event_id",
    "parse_alerts",
]

Condition = Literal[
    "feature_drift",
    "prediction_drift",
    "accuracy_below",
    "error_rate_above",
    "concept_drift",
    "shadow_disagreement_above",
    "log_lag_above",
]
Severity = Literal["info", "warning", "critical"]

CONDITIONS: tuple[str, ...] = get_args(Condition)
SEVERITIES: tuple[str, ...] = get_args(Severity)

EVENT_TYPES: dict[str, str] = {
    "feature_drift": "model.drift_detected",
    "prediction_drift": "model.drift_detected",
    "accuracy_below": "model.accuracy_degraded",
    "error_rate_above": "model.error_rate_high",
    "concept_drift": "model.concept_drift",
    "shadow_disagreement_above": "model.shadow_disagreement",
    "log_lag_above": "log.lag_high",
}
RESOLVED = "alert.resolved"

# Metrics where a larger value is better; the others (errors) are better small.
_HIGHER_IS_BETTER = {"accuracy": True, "f1_macro": True, "r2": True, "mae": False, "rmse": False}
_CLASSIFICATION_METRICS = {"accuracy", "f1_macro"}

DEFAULT_COOLDOWN = 3600.0
DEFAULT_MIN_LABELS = 100
DEFAULT_MIN_RECORDS = 100
DEFAULT_MIN_PAIRS = 100
DEFAULT_RECENT = 200
# Keep events small enough for every target (GitHub caps client_payload near 64 KB).
_MAX_FEATURES_IN_FIGURES = 20

_MODEL_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

_COMMON_KEYS = {"name", "model", "condition", "severity", "cooldown", "webhooks"}
_CONDITION_KEYS: dict[str, set[str]] = {
    "feature_drift": {"min_features"},
    "prediction_drift": set(),
    "accuracy_below": {"threshold", "relative_drop", "metric", "min_labels"},
    "error_rate_above": {"threshold", "min_records"},
    "concept_drift": set(),
    "shadow_disagreement_above": {"threshold", "min_pairs"},
    "log_lag_above": {"seconds"},
}


@dataclass(frozen=True)
class AlertRule:
    """One `[[alerts]]` table, validated. Fields unused by the condition keep their defaults."""

    name: str
    condition: Condition
    model: str = "*"
    severity: Severity = "warning"
    cooldown: float = DEFAULT_COOLDOWN
    webhooks: tuple[str, ...] = ()
    threshold: float | None = None
    relative_drop: float | None = None
    metric: str = "accuracy"
    min_features: int = 1
    min_labels: int = DEFAULT_MIN_LABELS
    min_records: int = DEFAULT_MIN_RECORDS
    min_pairs: int = DEFAULT_MIN_PAIRS
    seconds: float | None = None

    @property
    def event_type(self) -> str:
        return EVENT_TYPES[self.condition]


@dataclass(frozen=True)
class Event:
    """An event to deliver: `to_dict()` is the webhook body, `webhooks` the targets to notify."""

    id: str
    type: str
    timestamp: str
    data: dict[str, Any]
    webhooks: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "timestamp": self.timestamp, "data": self.data}


def new_event_id() -> str:
    """Event ids double as Standard Webhooks `webhook-id`, which must not contain a dot."""
    return f"evt_{uuid.uuid4().hex}"


def iso_utc(ts: float) -> str:
    return (
        datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


# ---------------------------------------------------------------------------------- parsing


def parse_alerts(tables: list[dict[str, Any]], webhook_names: set[str]) -> list[AlertRule]:
    """Validate the `[[alerts]]` tables of gatewatch.toml.

    Raises `ConfigError` whose message starts with the key at fault, such as
    ``alerts[0].condition: unknown condition 'foo'``, so a reload can be refused precisely.
    """
    if not isinstance(tables, list):
        raise ConfigError("alerts: must be an array of tables ([[alerts]])")
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for index, table in enumerate(tables):
        where = f"alerts[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        rule = _parse_rule(table, where, webhook_names)
        if rule.name in seen:
            raise ConfigError(f"{where}.name: duplicate alert name {rule.name!r}")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def _parse_rule(table: dict[str, Any], where: str, webhook_names: set[str]) -> AlertRule:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: required, a non-empty string")
    condition = table.get("condition")
    if condition is None:
        raise ConfigError(f"{where}.condition: required, one of {', '.join(CONDITIONS)}")
    if condition not in CONDITIONS:
        raise ConfigError(f"{where}.condition: unknown condition {condition!r}")
    allowed = _COMMON_KEYS | _CONDITION_KEYS[condition]
    for key in table:
        if key not in allowed:
            other = any(key in keys for keys in _CONDITION_KEYS.values())
            reason = f"not used by condition {condition!r}" if other else "unknown key"
            raise ConfigError(f"{where}.{key}: {reason}")

    model = table.get("model", "*")
    if not isinstance(model, str) or not (model == "*" or _MODEL_RE.match(model)):
        raise ConfigError(f"{where}.model: must be a model name or '*'")
    if condition == "log_lag_above" and model != "*":
        raise ConfigError(f"{where}.model: log_lag_above watches the whole log, use '*'")
    severity = table.get("severity", "warning")
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}.severity: must be one of {', '.join(SEVERITIES)}")
    cooldown = _duration(table.get("cooldown", DEFAULT_COOLDOWN), f"{where}.cooldown", zero=True)
    webhooks = table.get("webhooks", [])
    if not isinstance(webhooks, list) or not all(isinstance(w, str) for w in webhooks):
        raise ConfigError(f"{where}.webhooks: must be a list of webhook names")
    for hook in webhooks:
        if hook not in webhook_names:
            raise ConfigError(f"{where}.webhooks: no [[webhooks]] named {hook!r}")

    extra: dict[str, Any] = {}
    if condition == "feature_drift":
        extra["min_features"] = _count(table, "min_features", 1, where)
    elif condition == "accuracy_below":
        extra.update(_accuracy_keys(table, where))
    elif condition == "error_rate_above":
        extra["threshold"] = _fraction(table, "threshold", where)
        extra["min_records"] = _count(table, "min_records", DEFAULT_MIN_RECORDS, where)
    elif condition == "shadow_disagreement_above":
        extra["threshold"] = _fraction(table, "threshold", where)
        extra["min_pairs"] = _count(table, "min_pairs", DEFAULT_MIN_PAIRS, where)
    elif condition == "log_lag_above":
        if "seconds" not in table:
            raise ConfigError(f"{where}.seconds: required for log_lag_above")
        extra["seconds"] = _duration(table["seconds"], f"{where}.seconds", zero=False)

    return AlertRule(
        name=name,
        condition=condition,
        model=model,
        severity=severity,
        cooldown=cooldown,
        webhooks=tuple(dict.fromkeys(webhooks)),
        **extra,
    )


def _accuracy_keys(table: dict[str, Any], where: str) -> dict[str, Any]:
    metric = table.get("metric", "accuracy")
    if metric not in _HIGHER_IS_BETTER:
        raise ConfigError(f"{where}.metric: must be one of {', '.join(_HIGHER_IS_BETTER)}")
    has_threshold, has_drop = "threshold" in table, "relative_drop" in table
    if has_threshold == has_drop:
        raise ConfigError(f"{where}.threshold: give exactly one of threshold or relative_drop")
    out: dict[str, Any] = {
        "metric": metric,
        "min_labels": _count(table, "min_labels", DEFAULT_MIN_LABELS, where),
    }
    if has_threshold:
        value = table["threshold"]
        if not _is_number(value):
            raise ConfigError(f"{where}.threshold: must be a number")
        out["threshold"] = float(value)
    else:
        value = table["relative_drop"]
        if not _is_number(value) or not 0.0 < float(value) < 1.0:
            raise ConfigError(f"{where}.relative_drop: must be a number between 0 and 1")
        out["relative_drop"] = float(value)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _fraction(table: dict[str, Any], key: str, where: str) -> float:
    if key not in table:
        raise ConfigError(f"{where}.{key}: required")
    value = table[key]
    if not _is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{where}.{key}: must be a number between 0 and 1")
    return float(value)


def _count(table: dict[str, Any], key: str, default: int, where: str) -> int:
    value = table.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{where}.{key}: must be a positive integer")
    return value


def _duration(value: Any, where: str, *, zero: bool) -> float:
    """Seconds as a number, or a string with a unit ("90s", "15m", "1h", "1d")."""
    seconds: float | None = None
    if _is_number(value):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds is None or seconds < 0 or (seconds == 0 and not zero):
        kind = "a non-negative" if zero else "a positive"
        raise ConfigError(f"{where}: must be {kind} number of seconds or a duration like '1h'")
    return seconds


# ---------------------------------------------------------------------------------- conditions


def _feature_drift(rule: AlertRule, vs: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    drift = vs.get("feature_drift")
    if not isinstance(drift, Mapping):
        return None, {}
    drifting = list(drift.get("drifting") or [])
    features = drift.get("features") or {}
    details = {
        name: {k: features[name].get(k) for k in ("score", "psi", "ks", "changed_at")}
        for name in drifting
        if isinstance(features.get(name), Mapping)
    }
    top = sorted(details, key=lambda n: -(details[n].get("score") or 0.0))
    top = top[:_MAX_FEATURES_IN_FIGURES]
    figures = {
        "drifting": sorted(drifting),
        "count": len(drifting),
        "min_features": rule.min_features,
        "features": {name: details[name] for name in top},
    }
    return len(drifting) >= rule.min_features, figures


def _prediction_drift(rule: AlertRule, vs: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    drift = vs.get("prediction_drift")
    if not isinstance(drift, Mapping) or drift.get("state") is None:
        return None, {}
    figures = {k: drift.get(k) for k in ("state", "score", "psi", "ks", "changed_at")}
    return drift["state"] == "drifting", figures


def _accuracy_below(rule: AlertRule, vs: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    acc = vs.get("accuracy")
    classifier = vs.get("task", "classification") == "classification"
    if not isinstance(acc, Mapping) or classifier != (rule.metric in _CLASSIFICATION_METRICS):
        return None, {}
    # The rolling figure answers "is it bad now"; the cumulative one only if there is no window.
    value = acc.get(f"rolling_{rule.metric}")
    if value is None:
        value = acc.get(rule.metric)
    labels = int(acc.get("labels") or 0)
    figures: dict[str, Any] = {
        "metric": rule.metric,
        "value": value,
        "window": acc.get("window"),
        "labels": labels,
        "min_labels": rule.min_labels,
    }
    if value is None or labels < rule.min_labels:
        return None, figures
    higher_is_better = _HIGHER_IS_BETTER[rule.metric]
    if rule.threshold is not None:
        limit = rule.threshold
        figures["threshold"] = limit
    else:
        reference = (vs.get("manifest_metrics") or {}).get(rule.metric)
        if not isinstance(reference, int | float) or isinstance(reference, bool):
            return None, figures
        drop = rule.relative_drop or 0.0
        limit = reference * (1 - drop) if higher_is_better else reference * (1 + drop)
        figures.update(reference=reference, relative_drop=rule.relative_drop, limit=limit)
    held = value < limit if higher_is_better else value > limit
    return held, figures


def _error_rate(rule: AlertRule, vs: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    records = int(vs.get("records") or 0)
    rate = vs.get("error_rate")
    figures = {
        "error_rate": rate,
        "errors": vs.get("errors"),
        "records": records,
        "threshold": rule.threshold,
    }
    if rate is None or records < rule.min_records or rule.threshold is None:
        return None, figures
    return rate > rule.threshold, figures


def _concept_drift(rule: AlertRule, vs: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    concept = vs.get("concept_drift")
    if not isinstance(concept, Mapping) or concept.get("state") is None:
        return None, {}
    figures = {k: concept.get(k) for k in ("state", "error_rate", "changed_at_record")}
    return concept["state"] == "drifting", figures


def _shadow(rule: AlertRule, vs: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    shadow = vs.get("shadow")
    if not isinstance(shadow, Mapping):
        return None, {}
    agreement, pairs = shadow.get("agreement"), int(shadow.get("pairs") or 0)
    disagreement = None if agreement is None else 1.0 - agreement
    figures = {
        "disagreement": disagreement,
        "agreement": agreement,
        "pairs": pairs,
        "threshold": rule.threshold,
    }
    if disagreement is None or pairs < rule.min_pairs or rule.threshold is None:
        return None, figures
    return disagreement > rule.threshold, figures


_VERSION_CHECKS = {
    "feature_drift": _feature_drift,
    "prediction_drift": _prediction_drift,
    "accuracy_below": _accuracy_below,
    "error_rate_above": _error_rate,
    "concept_drift": _concept_drift,
    "shadow_disagreement_above": _shadow,
}


def _log_lag(rule: AlertRule, status: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any]]:
    lag = status.get("lag_seconds")
    figures = {"lag_seconds": lag, "threshold": rule.seconds, "newest_ts": status.get("newest_ts")}
    if lag is None or rule.seconds is None:
        return None, figures
    return lag > rule.seconds, figures


# ---------------------------------------------------------------------------------- policy

_Key = tuple[str, str, int | None]


@dataclass
class _AlertState:
    active: bool = False
    since: float | None = None
    notified: bool = False
    last_fired: float | None = None
    event_id: str | None = None
    figures: dict[str, Any] = field(default_factory=dict)


class AlertPolicy:
    """Turns status snapshots into fire and resolve events, one alert per (rule, model, version).

    Parameters
    ----------
    rules
        The validated rules (`parse_alerts`).
    registry
        Registry path as the operator wrote it; events carry ``<registry>/<model>/<version>``
        so a retraining job knows where the model under watch lives.
    sidecar_url
        Public URL of the sidecar, put in events so a human can follow the link.
    keep_recent
        How many recent events `recent()` remembers.

    The object is picklable; after loading a pickled policy with a new config, call
    `replace_rules` so alerts of rules that still exist keep their state and cooldown.
    """

    def __init__(
        self,
        rules: Iterable[AlertRule],
        *,
        registry: str = "registry",
        sidecar_url: str | None = None,
        keep_recent: int = DEFAULT_RECENT,
        seed: str | None = None,
    ) -> None:
        self.rules = list(rules)
        self.registry = registry.rstrip("/") or "."
        self.sidecar_url = sidecar_url
        self._states: dict[_Key, _AlertState] = {}
        self._seed: str | None = seed or uuid.uuid4().hex
        self._emitted = 0
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep_recent)

    def replace_rules(self, rules: Iterable[AlertRule]) -> None:
        """Swap in a reloaded rule set.

        An alert keeps its state and cooldown if its rule is still there with the same
        condition; the others are forgotten (without a "resolved": the rule that raised them
        is gone).
        """
        before = {rule.name: rule.condition for rule in self.rules}
        self.rules = list(rules)
        kept = {rule.name for rule in self.rules if before.get(rule.name) == rule.condition}
        self._states = {key: st for key, st in self._states.items() if key[0] in kept}

    def evaluate(self, status: Mapping[str, Any], now: float) -> list[Event]:
        """Compare every rule with `status` at wall-clock time `now`; answer the new events."""
        events: list[Event] = []
        for rule in self.rules:
            if rule.condition == "log_lag_above":
                held, figures = _log_lag(rule, status)
                self._step(rule, ("", None), held, figures, now, events)
                continue
            check = _VERSION_CHECKS[rule.condition]
            for model, version, vs in _versions(status, rule.model):
                held, figures = check(rule, vs)
                self._step(rule, (model, version), held, figures, now, events)
        return events

    def active(self) -> list[dict[str, Any]]:
        """Alerts whose condition holds now, announced or still waiting out a cooldown."""
        rules = {rule.name: rule for rule in self.rules}
        out = []
        for (name, model, version), st in sorted(self._states.items(), key=_sort_key):
            if not st.active or name not in rules:
                continue
            rule = rules[name]
            out.append(
                {
                    "rule": name,
                    "model": model or None,
                    "version": version,
                    "condition": rule.condition,
                    "severity": rule.severity,
                    "type": rule.event_type,
                    "since": st.since,
                    "notified": st.notified,
                    "event_id": st.event_id,
                    "figures": st.figures,
                }
            )
        return out

    def recent(self, n: int = 50) -> list[dict[str, Any]]:
        """The last `n` events, newest first."""
        if n <= 0:
            return []
        return list(reversed(self._recent))[:n]

    def _step(
        self,
        rule: AlertRule,
        target: tuple[str, int | None],
        held: bool | None,
        figures: dict[str, Any],
        now: float,
        events: list[Event],
    ) -> None:
        if held is None:
            return
        key = (rule.name, *target)
        st = self._states.get(key)
        if st is None:
            if not held:
                return
            st = self._states[key] = _AlertState()
        if held:
            if not st.active:
                st.active, st.since, st.notified, st.event_id = True, now, False, None
            st.figures = figures
            cooled = st.last_fired is None or now - st.last_fired >= rule.cooldown
            if not st.notified and cooled:
                event = self._event(rule, rule.event_type, target, figures, now)
                st.notified, st.last_fired, st.event_id = True, now, event.id
                self._emit(event, events)
        elif st.active:
            if st.notified:
                extra = {
                    "resolves": {"id": st.event_id, "type": rule.event_type},
                    "active_seconds": now - (st.since if st.since is not None else now),
                }
                self._emit(self._event(rule, RESOLVED, target, figures, now, extra), events)
            st.active, st.notified, st.since, st.figures = False, False, None, {}

    def _event(
        self,
        rule: AlertRule,
        event_type: str,
        target: tuple[str, int | None],
        figures: dict[str, Any],
        now: float,
        extra: dict[str, Any] | None = None,
    ) -> Event:
        model, version = target
        path = f"{self.registry}/{model}/{version}" if model and version is not None else None
        data: dict[str, Any] = {
            "rule": rule.name,
            "severity": rule.severity,
            "model": model or None,
            "version": version,
            "condition": rule.condition,
            "figures": figures,
            "registry_path": path,
            "sidecar_url": self.sidecar_url,
        }
        data.update(extra or {})
        key = f"{event_type}:{rule.name}:{model}:{version}"
        return Event(self._next_id(key), event_type, iso_utc(now), data, rule.webhooks)

    def _next_id(self, key: str) -> str:
        """Ids follow from the seed (the sidecar's instance id), the count of events emitted
        (checkpointed) and what the event is about: a sidecar killed after committing an event
        and replaying from its checkpoint, or from the start, emits the same id again, which
        the outbox recognises instead of delivering the alert twice."""
        seed = getattr(self, "_seed", None)
        if seed is None:
            seed = self._seed = uuid.uuid4().hex
        count = getattr(self, "_emitted", 0) + 1
        self._emitted = count
        return "evt_" + hashlib.sha256(f"{seed}:{count}:{key}".encode()).hexdigest()[:32]

    def _emit(self, event: Event, events: list[Event]) -> None:
        events.append(event)
        self._recent.append({**event.to_dict(), "webhooks": list(event.webhooks)})


def _sort_key(item: tuple[_Key, _AlertState]) -> tuple[str, str, int]:
    name, model, version = item[0]
    return name, model, -1 if version is None else version


def _versions(status: Mapping[str, Any], pattern: str) -> list[tuple[str, int, Mapping[str, Any]]]:
    models = status.get("models") or {}
    names = sorted(models) if pattern == "*" else [pattern] if pattern in models else []
    out = []
    for model in names:
        versions = (models[model] or {}).get("versions") or {}
        for key, vs in versions.items():
            if isinstance(vs, Mapping):
                out.append((model, int(vs.get("version", key)), vs))
    out.sort(key=lambda item: (item[0], item[1]))
    return out
