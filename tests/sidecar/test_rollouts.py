"""The rollout controller's decisions on simulated traffic, seeded: promote, hold, roll back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from sidecar.errors import ConfigError
from sidecar.rollouts import RolloutController, RolloutPolicy, parse_rollout
from sidecar.sequential import boundary, proportion_difference


@dataclass
class Arm:
    error_rate: float = 0.0
    accuracy: float = 0.85
    p95: float = 2.0
    served: int = 0
    errors: int = 0
    labels: int = 0
    correct: int = 0
    shadow_pairs: int = 0
    shadow_agree: int = 0

    def status(self, task: str = "classification") -> dict[str, Any]:
        return {
            "task": task,
            "roles": {"primary": self.served},
            "errors": self.errors,
            "latency_ms": {"p50": 1.0, "p95": self.p95, "p99": 3.0},
            "accuracy": {
                "labels": self.labels,
                "accuracy": self.correct / self.labels if self.labels else None,
            },
            "prediction_drift": {"state": "ok"},
            "shadow": {
                "pairs": self.shadow_pairs,
                "agreement": self.shadow_agree / self.shadow_pairs if self.shadow_pairs else None,
            },
        }


@dataclass
class World:
    """Traffic split by the live weight; labels for a share of answered requests."""

    canary: Arm
    primary: Arm = field(default_factory=Arm)
    label_share: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def run(self, weight: float, n: int) -> None:
        n_c = int(self.rng.binomial(n, weight))
        for arm, k in ((self.canary, n_c), (self.primary, n - n_c)):
            arm.served += k
            errors = int(self.rng.binomial(k, arm.error_rate))
            arm.errors += errors
            labelled = int(self.rng.binomial(k - errors, self.label_share))
            arm.labels += labelled
            arm.correct += int(self.rng.binomial(labelled, arm.accuracy))

    def status(self) -> dict[str, Any]:
        return {
            "models": {"m": {"versions": {"1": self.primary.status(), "2": self.canary.status()}}}
        }


def drive(
    world: World, policy: RolloutPolicy, rounds: int = 400, batch: int = 200
) -> tuple[list[dict[str, Any]], list[float]]:
    """Run the controller like the sidecar does, applying its decisions to the routing."""
    controller = RolloutController()
    routing = {"primary": 1, "canary": {"version": 2, "weight": policy.steps[0]}, "shadow": []}
    weights = [policy.steps[0]]
    decisions: list[dict[str, Any]] = []
    for i in range(rounds):
        if routing["canary"] is None:
            break
        world.run(routing["canary"]["weight"], batch)
        for d in controller.evaluate(world.status(), {"m": routing}, {"m": policy}, now=float(i)):
            controller.record(d)
            decisions.append(d.as_dict())
            if d.decision == "promote" and d.to_weight == 1.0:
                routing = {"primary": 2, "canary": None, "shadow": []}
            elif d.decision == "promote":
                routing = {**routing, "canary": {"version": 2, "weight": d.to_weight}}
                weights.append(d.to_weight)
            elif d.decision == "rollback":
                routing = {**routing, "canary": None}
    return decisions, weights


POLICY = RolloutPolicy(min_records=300, min_labels=150)


def test_better_canary_is_promoted_step_by_step() -> None:
    decisions, weights = drive(World(Arm(accuracy=0.90), Arm(accuracy=0.85), seed=1), POLICY)
    final = [d for d in decisions if d["decision"] != "hold"]
    assert [d["decision"] for d in final] == ["promote"] * 3
    assert weights == [0.05, 0.25, 0.5]
    assert final[-1]["to_weight"] == 1.0
    for d in final:
        results = {g["gate"]: g["result"] for g in d["evidence"]["gates"]}
        assert results["accuracy"] == results["error_rate"] == "pass"


@pytest.mark.parametrize(
    "canary",
    [
        pytest.param(Arm(accuracy=0.75), id="10-points-worse"),
        pytest.param(Arm(error_rate=0.05), id="5pct-server-errors"),
        pytest.param(Arm(p95=30.0), id="slow"),
    ],
)
@pytest.mark.parametrize("seed", range(5))
def test_bad_canary_is_rolled_back_before_weight_exceeds_a_quarter(canary: Arm, seed: int) -> None:
    decisions, weights = drive(World(canary, seed=seed), POLICY)
    final = [d for d in decisions if d["decision"] != "hold"]
    assert final and final[-1]["decision"] == "rollback", final
    assert max(weights) <= 0.25
    assert final[-1]["reason"].startswith("gates failed")


def test_no_labels_holds_until_min_records_then_non_label_gates_decide() -> None:
    world = World(Arm(), label_share=0.0, seed=3)
    decisions, _ = drive(world, POLICY, batch=100)
    assert decisions[0]["decision"] == "hold" and "records" in decisions[0]["reason"]
    first_promote = next(d for d in decisions if d["decision"] == "promote")
    assert first_promote["evidence"]["canary"]["served"] >= POLICY.min_records
    gates = {g["gate"]: g["result"] for g in first_promote["evidence"]["gates"]}
    assert gates["accuracy"] == "n/a"
    assert gates["error_rate"] == gates["latency_p95_ratio"] == "pass"


@pytest.mark.parametrize("seed", range(20))
def test_aa_canary_is_never_rolled_back(seed: int) -> None:
    world = World(
        Arm(error_rate=0.01, accuracy=0.85), Arm(error_rate=0.01, accuracy=0.85), seed=seed
    )
    decisions, _ = drive(world, POLICY, rounds=300)
    assert not [d for d in decisions if d["decision"] == "rollback"]


def test_paused_model_only_holds() -> None:
    policy = RolloutPolicy(paused=True)
    controller = RolloutController()
    world = World(Arm(accuracy=0.99), seed=0)
    world.run(0.5, 5000)
    routing = {"m": {"primary": 1, "canary": {"version": 2, "weight": 0.05}}}
    first = controller.evaluate(world.status(), routing, {"m": policy})
    again = controller.evaluate(world.status(), routing, {"m": policy})
    assert [d.decision for d in first] == ["hold"] and again == []
    assert "paused" in first[0].reason


def test_auto_new_version_goes_shadow_then_canary() -> None:
    policy = RolloutPolicy(auto=True, shadow_records=500)
    controller = RolloutController()
    routing: dict[str, Any] = {"primary": 1, "canary": None, "shadow": []}
    decisions = controller.evaluate({"models": {}}, {"m": routing}, {"m": policy}, {"m": [1, 2]})
    assert [(d.decision, d.version) for d in decisions] == [("shadow", 2)]
    routing["shadow"] = [2]
    shadow = Arm()
    shadow.shadow_pairs, shadow.shadow_agree = 400, 390
    status = {"models": {"m": {"versions": {"1": Arm().status(), "2": shadow.status()}}}}
    assert [
        d.decision
        for d in controller.evaluate(status, {"m": routing}, {"m": policy}, {"m": [1, 2]})
    ] == ["hold"]
    shadow.shadow_pairs, shadow.shadow_agree = 600, 580
    status = {"models": {"m": {"versions": {"1": Arm().status(), "2": shadow.status()}}}}
    decisions = controller.evaluate(status, {"m": routing}, {"m": policy}, {"m": [1, 2]})
    assert [(d.decision, d.to_weight) for d in decisions] == [("canary", 0.05)]


def test_rolled_back_version_is_not_shadowed_again() -> None:
    policy = RolloutPolicy(auto=True, min_records=100, min_labels=50)
    controller = RolloutController()
    world = World(Arm(error_rate=0.2), seed=1)
    routing: dict[str, Any] = {"primary": 1, "canary": {"version": 2, "weight": 0.05}, "shadow": []}
    seen = []
    for i in range(60):
        world.run(routing["canary"]["weight"] if routing["canary"] else 0.0, 200)
        for d in controller.evaluate(
            world.status(), {"m": routing}, {"m": policy}, {"m": [1, 2]}, now=i
        ):
            seen.append(d.decision)
            if d.decision == "rollback":
                routing = {**routing, "canary": None}
    assert "rollback" in seen and "shadow" not in seen


def test_parse_rollout_names_the_key() -> None:
    assert parse_rollout("m", {"steps": [0.1, 1.0], "min_records": 50}).steps == (0.1, 1.0)
    with pytest.raises(ConfigError, match="models.m.rollout.steps"):
        parse_rollout("m", {"steps": [0.5, 0.1]})
    with pytest.raises(ConfigError, match="models.m.rollout.speed: unknown key"):
        parse_rollout("m", {"speed": 3})


def test_confidence_sequence_narrows_and_covers() -> None:
    assert boundary(100) > boundary(1000) > boundary(10000)
    rng = np.random.default_rng(0)
    misses = 0
    for _ in range(200):
        a = rng.random(3000) < 0.3
        b = rng.random(3000) < 0.3
        # Checked after every 100 observations: a miss at any check counts.
        for n in range(100, 3001, 100):
            iv = proportion_difference(a[:n].sum(), n, b[:n].sum(), n)
            if not iv.lower <= 0.0 <= iv.upper:
                misses += 1
                break
    assert misses <= 10, "time-uniform coverage at alpha 0.05 over 200 repeated experiments"
