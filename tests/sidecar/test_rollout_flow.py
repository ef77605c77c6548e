"""Quality-gated rollout on a real gateway and sidecar: labels flow back, the sidecar decides,
edits gatewatch.toml, and the gateway follows."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway import audit
from gateway.app import create_app as create_gateway
from gateway.config import load_config as load_gateway_config
from sidecar.app import create_app as create_sidecar
from sidecar.config import load_config as load_sidecar_config
from tests import _blockers
from tests._models import make_data, push_flaky
from tests._receiver import Receiver
from tests._server import free_port, run_server


async def traffic(url: str, X: np.ndarray, y: np.ndarray, labels: bool) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        sem = asyncio.Semaphore(16)
        ids: list[tuple[str, int]] = []

        async def one(i: int) -> None:
            body = {
                "inputs": [
                    {"name": "input-0", "shape": [1, 20], "datatype": "FP64", "data": X[i].tolist()}
                ]
            }
            async with sem:
                r = await client.post("/v2/models/churn/infer", json=body)
            if r.status_code == 200:
                ids.append((r.headers["x-request-id"], int(y[i])))

        await asyncio.gather(*(one(i) for i in range(len(X))))
        if labels:
            items = [{"request_id": rid, "label": label} for rid, label in ids]
            assert (await client.post("/v1/feedback", json=items)).status_code == 202


def run_rollout(
    tmp_path: Path,
    *,
    primary_flip: float,
    canary_flip: float,
    canary_fail: float = 0.0,
    labels: bool = True,
) -> tuple[list[dict[str, Any]], list[float], Any, Receiver]:
    work = tmp_path / "work"
    work.mkdir()
    registry = tmp_path / "registry"
    push_flaky(registry, work, flip=primary_flip)
    push_flaky(registry, work, flip=canary_flip, fail=canary_fail)
    receiver = Receiver()
    config = tmp_path / "gatewatch.toml"
    config.write_text(
        f"""# rollout scenario
[gateway]
registry = "registry"
allow_pickle = true  # the flaky test models are pickles

[log]
dir = "predlog"
fsync = "never"

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = 0.5

[[webhooks]]
name = "ops"
kind = "generic"
url = "{receiver.url("/hook")}"
secret_env = "GW_ROLLOUT_SECRET"

[models.churn]
primary = 1
canary = {{ version = 2, weight = 0.2 }}

[models.churn.rollout]
steps = [0.2, 0.5, 1.0]
min_records = 200
min_labels = 100
"""
    )
    weights = [0.2]
    _blockers.reset()
    _blockers.ARMED.set()
    try:
        with (
            receiver,
            run_server(create_gateway(load_gateway_config(config))) as gw,
            run_server(create_sidecar(load_sidecar_config(config))) as sc,
        ):
            sent = 0
            for round_ in range(60):
                X, y = make_data(200, seed=100 + round_)
                asyncio.run(traffic(gw, X, y, labels))
                sent += 200
                # Wait until the sidecar has counted this round (it decides after each batch),
                # then give the gateway's config watch time to follow any edit.
                deadline = time.monotonic() + 60
                while (
                    httpx.get(f"{sc}/status").json()["records"] < sent
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.05)
                time.sleep(0.6)
                canary = load_gateway_config(config).models["churn"].canary
                if canary is None:
                    break
                if canary.weight != weights[-1]:
                    weights.append(canary.weight)
            time.sleep(1.0)
            rollouts = httpx.get(f"{sc}/rollouts").json()["models"]["churn"]
            deliveries = httpx.get(f"{sc}/webhooks").json()["deliveries"]
    finally:
        _blockers.reset()
    final = load_gateway_config(config).models["churn"]
    return list(reversed(rollouts["decisions"])), weights, (final, deliveries, config), receiver


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_ROLLOUT_SECRET", "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")


def acted(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in decisions if d["decision"] != "hold"]


def test_better_canary_is_promoted_to_primary(tmp_path: Path) -> None:
    decisions, weights, (final, deliveries, config), receiver = run_rollout(
        tmp_path, primary_flip=0.06, canary_flip=0.0
    )
    assert [d["decision"] for d in acted(decisions)] == ["promote", "promote"]
    assert weights == [0.2, 0.5]
    assert final.primary == 2 and final.canary is None
    for d in acted(decisions):
        gates = {g["gate"]: g for g in d["evidence"]["gates"]}
        assert (
            gates["accuracy"]["result"] == "pass" and gates["accuracy"]["interval"]["estimate"] > 0
        )
    sent = [e for e in deliveries if e["type"] == "rollout.promoted"]
    assert len(sent) == 2 and all(e["state"] == "delivered" for e in sent)
    edits = [e for e in audit.read(config.parent / "audit.jsonl") if e["who"] == "sidecar:rollout"]
    assert [e["after"]["primary"] for e in edits] == [1, 2]


@pytest.mark.parametrize(
    ("canary_flip", "canary_fail"),
    [
        pytest.param(0.11, 0.0, id="10-points-worse"),
        pytest.param(0.0, 0.05, id="5pct-server-errors"),
    ],
)
def test_worse_canary_is_rolled_back_early(
    tmp_path: Path, canary_flip: float, canary_fail: float
) -> None:
    decisions, weights, (final, deliveries, _), _ = run_rollout(
        tmp_path, primary_flip=0.0, canary_flip=canary_flip, canary_fail=canary_fail
    )
    assert [d["decision"] for d in acted(decisions)] == ["rollback"]
    assert max(weights) <= 0.25
    assert final.primary == 1 and final.canary is None
    failed = [g["gate"] for g in acted(decisions)[0]["evidence"]["gates"] if g["result"] == "fail"]
    assert failed == (["accuracy"] if canary_flip else ["error_rate"])
    assert [e["type"] for e in deliveries] == ["rollout.rolled_back"]


def test_without_labels_holds_for_records_then_non_label_gates_decide(tmp_path: Path) -> None:
    decisions, weights, (final, _, _), _ = run_rollout(
        tmp_path, primary_flip=0.0, canary_flip=0.0, labels=False
    )
    assert decisions[0]["decision"] == "hold" and "records" in decisions[0]["reason"]
    promotes = acted(decisions)
    assert [d["decision"] for d in promotes] == ["promote", "promote"]
    for d in promotes:
        assert d["evidence"]["canary"]["served"] >= 200
        gates = {g["gate"]: g["result"] for g in d["evidence"]["gates"]}
        assert gates["accuracy"] == "n/a" and gates["error_rate"] == "pass"
    assert final.primary == 2
