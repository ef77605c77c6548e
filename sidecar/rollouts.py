"""Quality-gated progressive delivery: promote or roll back a canary on its measured quality.

Pure decision logic: `RolloutController.evaluate` reads the sidecar's status and the current
routing and returns decisions; the sidecar carries them out by editing gatewatch.toml the way
`gatewatch rollout` does. Every gate compares the canary with the primary over the same period
(counters are taken at the start of each step and differenced) through a confidence sequence,
so checking after every batch is safe: too little evidence means "hold", never a wrong call.

Gates: error rate (server errors), latency p95 ratio, accuracy or MAE when labels exist,
prediction drift against the manifest, and shadow agreement when the version ran as a shadow.
A gate fails when its interval lies wholly on the bad side of its tolerance, passes when it lies
wholly on the good side, and waits otherwise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sidecar.errors import ConfigError
from sidecar.sequential import Interval, mean_difference, proportion_difference, proportion_interval

__all__ = ["Decision", "RolloutController", "RolloutPolicy", "parse_rollout"]

_SERVED = ("primary", "canary", "pinned")


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    auto: bool = False
    paused: bool = False
    steps: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0)
    min_records: int = 500
    min_labels: int = 200
    shadow_records: int = 1000
    alpha: float = 0.05
    max_error_rate_increase: float = 0.01
    max_latency_p95_ratio: float = 1.5
    latency_slack_ms: float = 25.0
    max_accuracy_drop: float = 0.02
    max_mae_increase_ratio: float = 0.05
    min_shadow_agreement: float = 0.9


def parse_rollout(model: str, table: Mapping[str, Any]) -> RolloutPolicy:
    """`[models.NAME.rollout]`; errors name the key."""
    prefix = f"models.{model}.rollout"
    known = {f.name: f for f in fields(RolloutPolicy)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        default = getattr(RolloutPolicy(), key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{prefix}.{key}", "must be true or false")
        elif key == "steps":
            if (
                not isinstance(value, list)
                or not value
                or any(isinstance(w, bool) or not isinstance(w, int | float) for w in value)
                or any(not 0 < w <= 1 for w in value)
                or list(value) != sorted(value)
            ):
                raise ConfigError(f"{prefix}.steps", "must be increasing weights in (0, 1]")
            value = tuple(float(w) for w in value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{prefix}.{key}", "must be a positive integer")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value:
            raise ConfigError(f"{prefix}.{key}", "must be a positive number")
        values[key] = value
    if "alpha" in values and not values["alpha"] < 1:
        raise ConfigError(f"{prefix}.alpha", "must be below 1")
    return RolloutPolicy(**values)


@dataclass(slots=True)
class Decision:
    model: str
    decision: str  # promote | hold | rollback | shadow | canary | reject
    version: int | None
    from_weight: float | None
    to_weight: float | None
    reason: str
    evidence: dict[str, Any]
    ts: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "model": self.model,
            "decision": self.decision,
            "version": self.version,
            "from_weight": self.from_weight,
            "to_weight": self.to_weight,
            "reason": self.reason,
            "evidence": self.evidence,
        }


def _counters(version_status: Mapping[str, Any] | None) -> dict[str, float]:
    """What is differenced between the start of a step and now."""
    if not version_status:
        return {
            "served": 0,
            "errors": 0,
            "labels": 0,
            "correct": 0,
            "abs_err": 0,
            "sq_err": 0,
            "pairs": 0,
            "agree": 0,
        }
    roles = version_status.get("roles", {})
    acc = version_status.get("accuracy") or {}
    labels = float(acc.get("labels") or 0)
    out = {
        "served": float(sum(roles.get(r, 0) for r in _SERVED)),
        "errors": float(version_status.get("errors") or 0),
        "labels": labels,
        "correct": labels * float(acc.get("accuracy") or 0.0),
        "abs_err": labels * float(acc.get("mae") or 0.0),
        "sq_err": labels * float(acc.get("rmse") or 0.0) ** 2,
    }
    shadow = version_status.get("shadow") or {}
    pairs = float(shadow.get("pairs") or 0)
    out["pairs"] = pairs
    out["agree"] = pairs * float(shadow.get("agreement") or 0.0)
    return out


def _delta(now: Mapping[str, float], base: Mapping[str, float]) -> dict[str, float]:
    return {k: max(now[k] - base.get(k, 0.0), 0.0) for k in now}


def _gate(name: str, result: str, interval: Interval | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"gate": name, "result": result, **extra}
    if interval is not None:
        out["interval"] = interval.as_dict()
    return out


@dataclass
class _ModelState:
    canary: int | None = None
    step: int = 0
    base: dict[str, dict[str, float]] = field(default_factory=dict)
    last_reason: str | None = None
    shadow_candidate: int | None = None
    shadow_base: dict[str, float] = field(default_factory=dict)
    # Versions rolled back or rejected: never tried again automatically (a person still can).
    retired: set[int] = field(default_factory=set)


class RolloutController:
    """Decides, per model with a `[models.NAME.rollout]` table; state is picklable."""

    def __init__(self, keep: int = 200) -> None:
        self.keep = keep
        self._state: dict[str, _ModelState] = {}
        self._decisions: dict[str, list[dict[str, Any]]] = {}

    def decisions(self, model: str | None = None) -> dict[str, list[dict[str, Any]]]:
        if model is not None:
            return {model: list(self._decisions.get(model, []))}
        return {m: list(d) for m, d in self._decisions.items()}

    def record(self, decision: Decision) -> None:
        entries = self._decisions.setdefault(decision.model, [])
        entries.append(decision.as_dict())
        del entries[: -self.keep]

    def view(
        self, policies: Mapping[str, RolloutPolicy], routing: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        """For GET /rollouts: each model's state, step, weight and recent decisions with evidence."""
        out = {}
        for model in sorted(set(policies) | set(self._decisions)):
            policy = policies.get(model)
            route = routing.get(model) or {}
            state = self._state.get(model, _ModelState())
            canary = route.get("canary")
            if policy is None:
                phase = "off"
            elif policy.paused:
                phase = "paused"
            elif canary:
                phase = "canary"
            elif state.shadow_candidate is not None:
                phase = "shadow"
            else:
                phase = "idle"
            out[model] = {
                "state": phase,
                "primary": route.get("primary"),
                "canary": canary["version"] if canary else None,
                "weight": canary["weight"] if canary else None,
                "step": state.step if canary else None,
                "steps": list(policy.steps) if policy else None,
                "decisions": list(reversed(self._decisions.get(model, [])))[:50],
            }
        return out

    def evaluate(
        self,
        status: Mapping[str, Any],
        routing: Mapping[str, Mapping[str, Any]],
        policies: Mapping[str, RolloutPolicy],
        registry_versions: Mapping[str, Sequence[int]] | None = None,
        now: float | None = None,
    ) -> list[Decision]:
        """Decisions for this round. `routing` is each model's live routing from gatewatch.toml."""
        now = time.time() if now is None else now
        out = []
        for model, policy in policies.items():
            route = routing.get(model)
            if route is None:
                continue
            versions = (status.get("models") or {}).get(model, {}).get("versions", {})
            state = self._state.setdefault(model, _ModelState())
            if policy.paused:
                decision = self._hold(model, state, "rollout paused by a person", {}, route, now)
                if decision:
                    out.append(decision)
                continue
            if route.get("canary"):
                decision = self._canary_round(model, policy, route, versions, state, now)
            elif policy.auto:
                decision = self._auto_round(
                    model, policy, route, versions, state, registry_versions or {}, now
                )
            else:
                state.canary = None
                decision = None
            if decision is not None:
                out.append(decision)
        return out

    def _hold(
        self,
        model: str,
        state: _ModelState,
        reason: str,
        evidence: dict[str, Any],
        route: Mapping[str, Any],
        now: float,
    ) -> Decision | None:
        """A hold is recorded when its reason changes, not at every check."""
        if state.last_reason == reason:
            return None
        state.last_reason = reason
        canary = route.get("canary") or {}
        weight = canary.get("weight")
        return Decision(model, "hold", canary.get("version"), weight, weight, reason, evidence, now)

    def _start_step(
        self, state: _ModelState, step: int, versions: Mapping[str, Any], canary: int, primary: int
    ) -> None:
        state.step = step
        state.base = {
            "canary": _counters(versions.get(str(canary))),
            "primary": _counters(versions.get(str(primary))),
        }
        state.last_reason = None

    def _canary_round(
        self,
        model: str,
        policy: RolloutPolicy,
        route: Mapping[str, Any],
        versions: Mapping[str, Any],
        state: _ModelState,
        now: float,
    ) -> Decision | None:
        canary, weight, primary = (
            int(route["canary"]["version"]),
            float(route["canary"]["weight"]),
            int(route["primary"]),
        )
        expected = policy.steps[state.step] if state.step < len(policy.steps) else None
        if state.canary != canary or expected is None or not math.isclose(expected, weight):
            # A new canary, or a person changed its weight: start (again) at the step it is on.
            step = next(
                (i for i, w in enumerate(policy.steps) if w >= weight - 1e-9), len(policy.steps) - 1
            )
            state.canary = canary
            self._start_step(state, step, versions, canary, primary)
        c_status, p_status = versions.get(str(canary)), versions.get(str(primary))
        c = _delta(_counters(c_status), state.base.get("canary", {}))
        p = _delta(_counters(p_status), state.base.get("primary", {}))
        gates = self._gates(policy, c, p, c_status or {}, p_status or {})
        evidence = {
            "step": state.step,
            "weight": weight,
            "canary": {"version": canary, **{k: c[k] for k in ("served", "errors", "labels")}},
            "primary": {"version": primary, **{k: p[k] for k in ("served", "errors", "labels")}},
            "gates": gates,
        }
        failed = [g["gate"] for g in gates if g["result"] == "fail"]
        if failed:
            state.retired.add(canary)
            state.canary = None
            state.last_reason = None
            return Decision(
                model,
                "rollback",
                canary,
                weight,
                0.0,
                f"gates failed: {', '.join(failed)}",
                evidence,
                now,
            )
        if c["served"] < policy.min_records:
            return self._hold(
                model,
                state,
                f"waiting for {policy.min_records} canary records this step",
                evidence,
                route,
                now,
            )
        waiting = [g["gate"] for g in gates if g["result"] == "wait"]
        if waiting:
            return self._hold(
                model, state, f"not enough evidence yet: {', '.join(waiting)}", evidence, route, now
            )
        nxt = state.step + 1
        if nxt >= len(policy.steps) or policy.steps[nxt] >= 1.0:
            state.canary = None
            state.last_reason = None
            return Decision(
                model,
                "promote",
                canary,
                weight,
                1.0,
                "every gate passed at the last step: canary becomes primary",
                evidence,
                now,
            )
        self._start_step(state, nxt, versions, canary, primary)
        return Decision(
            model,
            "promote",
            canary,
            weight,
            policy.steps[nxt],
            f"every gate passed at weight {weight:g}",
            evidence,
            now,
        )

    def _gates(
        self,
        policy: RolloutPolicy,
        c: Mapping[str, float],
        p: Mapping[str, float],
        c_status: Mapping[str, Any],
        p_status: Mapping[str, Any],
    ) -> list[dict[str, Any]]:
        alpha, n_opt = policy.alpha, max(policy.min_records, 50)
        gates = []
        err = proportion_difference(
            c["errors"], c["served"], p["errors"], p["served"], alpha, n_opt
        )
        tol = policy.max_error_rate_increase
        gates.append(
            _gate(
                "error_rate",
                "fail" if err.lower > tol else "pass" if err.upper < tol else "wait",
                err,
                tolerance=tol,
            )
        )
        c95 = (c_status.get("latency_ms") or {}).get("p95")
        p95 = (p_status.get("latency_ms") or {}).get("p95")
        if c95 is None or p95 is None or c["served"] < policy.min_records:
            gates.append(_gate("latency_p95_ratio", "wait"))
        else:
            # Both a ratio and an absolute slack: at a millisecond, scheduling noise alone can
            # double a p95, and nobody rolls back a model for a few milliseconds.
            ratio = c95 / max(p95, 1e-6)
            slower = ratio > policy.max_latency_p95_ratio and c95 - p95 > policy.latency_slack_ms
            gates.append(
                _gate(
                    "latency_p95_ratio",
                    "fail" if slower else "pass",
                    ratio=round(ratio, 4),
                    limit=policy.max_latency_p95_ratio,
                    slack_ms=policy.latency_slack_ms,
                )
            )
        task = c_status.get("task") or p_status.get("task")
        if c["labels"] == 0 and p["labels"] == 0:
            gates.append(_gate("accuracy", "n/a", reason="no labels"))
        elif c["labels"] < policy.min_labels or p["labels"] < 2:
            gates.append(
                _gate("accuracy", "wait", labels=c["labels"], min_labels=policy.min_labels)
            )
        elif task == "regression":
            mean_c, mean_p = c["abs_err"] / c["labels"], p["abs_err"] / p["labels"]
            var_c = c["sq_err"] / c["labels"] - mean_c**2
            var_p = p["sq_err"] / p["labels"] - mean_p**2
            diff = mean_difference(
                mean_c, var_c, c["labels"], mean_p, var_p, p["labels"], alpha, policy.min_labels
            )
            limit = policy.max_mae_increase_ratio * max(mean_p, 1e-12)
            result = "fail" if diff.lower > limit else "pass" if diff.upper < limit else "wait"
            gates.append(_gate("mae", result, diff, tolerance=limit))
        else:
            diff = proportion_difference(
                c["correct"], c["labels"], p["correct"], p["labels"], alpha, policy.min_labels
            )
            drop = -policy.max_accuracy_drop
            result = "fail" if diff.upper < drop else "pass" if diff.lower > drop else "wait"
            gates.append(_gate("accuracy", result, diff, tolerance=policy.max_accuracy_drop))
        drift = (c_status.get("prediction_drift") or {}).get("state")
        gates.append(
            _gate("prediction_drift", "fail" if drift == "drifting" else "pass", state=drift)
        )
        if c["pairs"] > 0 or (c_status.get("shadow") or {}).get("pairs"):
            pairs = float((c_status.get("shadow") or {}).get("pairs") or 0)
            agree = pairs * float((c_status.get("shadow") or {}).get("agreement") or 0.0)
            iv = proportion_interval(agree, pairs, alpha, policy.shadow_records)
            limit = policy.min_shadow_agreement
            result = (
                "fail"
                if iv.upper < limit
                else "pass"
                if iv.lower >= limit or pairs >= policy.shadow_records
                else "wait"
            )
            gates.append(_gate("shadow_agreement", result, iv, minimum=limit))
        return gates

    def _auto_round(
        self,
        model: str,
        policy: RolloutPolicy,
        route: Mapping[str, Any],
        versions: Mapping[str, Any],
        state: _ModelState,
        registry_versions: Mapping[str, Sequence[int]],
        now: float,
    ) -> Decision | None:
        """A new registry version goes shadow first, then canary if it agrees and does not drift."""
        primary = route.get("primary")
        shadows = [int(v) for v in route.get("shadow") or []]
        candidate = state.shadow_candidate
        if candidate is None or candidate not in shadows:
            newer = [
                v
                for v in registry_versions.get(model, [])
                if primary is not None and v > primary and v not in state.retired
            ]
            if not newer:
                return None
            version = max(newer)
            if version in shadows:
                state.shadow_candidate = version
                state.shadow_base = _counters(versions.get(str(version)))
                return None
            state.shadow_candidate = version
            state.shadow_base = _counters(None)
            state.last_reason = None
            return Decision(
                model,
                "shadow",
                version,
                None,
                None,
                f"new version {version} in the registry starts as a shadow",
                {},
                now,
            )
        status = versions.get(str(candidate)) or {}
        delta = _delta(_counters(status), state.shadow_base)
        pairs = delta["pairs"]
        iv = proportion_interval(delta["agree"], pairs, policy.alpha, policy.shadow_records)
        drift = (status.get("prediction_drift") or {}).get("state")
        evidence = {
            "gates": [
                _gate(
                    "shadow_agreement",
                    "pass" if iv.lower >= policy.min_shadow_agreement else "wait",
                    iv,
                    minimum=policy.min_shadow_agreement,
                ),
                _gate("prediction_drift", "fail" if drift == "drifting" else "pass", state=drift),
            ],
            "pairs": pairs,
        }
        if pairs < policy.shadow_records:
            return self._hold(
                model,
                state,
                f"shadowing: waiting for {policy.shadow_records} compared records",
                evidence,
                route,
                now,
            )
        state.shadow_candidate = None
        state.last_reason = None
        if drift == "drifting" or iv.estimate < policy.min_shadow_agreement:
            state.retired.add(candidate)
            return Decision(
                model,
                "reject",
                candidate,
                None,
                None,
                "shadow agreement or prediction drift failed",
                evidence,
                now,
            )
        return Decision(
            model,
            "canary",
            candidate,
            0.0,
            policy.steps[0],
            "shadow agreed with the primary",
            evidence,
            now,
        )
