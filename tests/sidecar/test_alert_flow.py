"""Drift in live traffic through a real gateway and sidecar reaches a signed webhook, once."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from gateway.app import create_app as create_gateway
from gateway.config import load_config as load_gateway_config
from sidecar.app import create_app as create_sidecar
from sidecar.config import load_config as load_sidecar_config
from tests._models import push_logreg
from tests._receiver import Receiver
from tests._server import free_port, run_server


def of_type(requests: list[Any], kind: str) -> list[Any]:
    return [r for r in requests if orjson.loads(r.body)["type"] == kind]


SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def wait_for(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def send_rows(url: str, rng: np.random.Generator, n_requests: int, shift: float = 0.0) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n_requests):
            X = rng.normal(size=(50, 20))
            X[:, :2] += shift
            body = {
                "inputs": [
                    {"name": "input-0", "shape": [50, 20], "datatype": "FP64", "data": X.tolist()}
                ]
            }
            assert client.post("/v2/models/churn/infer", json=body).status_code == 200


def test_drift_fires_one_signed_event_then_resolves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_WEBHOOK_SECRET", SECRET)
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    with Receiver() as receiver:
        config = tmp_path / "gatewatch.toml"
        config.write_text(
            f"""
[gateway]
registry = "registry"

[log]
dir = "predlog"
fsync = "never"

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = 0.5

[[webhooks]]
name = "ci"
kind = "generic"
url = "{receiver.url("/hook")}"
secret_env = "GW_WEBHOOK_SECRET"

[[alerts]]
name = "features-drift"
model = "churn"
condition = "feature_drift"
min_features = 1
severity = "critical"
cooldown = "1h"
webhooks = ["ci"]
"""
        )
        rng = np.random.default_rng(11)
        with (
            run_server(create_gateway(load_gateway_config(config))) as gw,
            run_server(create_sidecar(load_sidecar_config(config))) as sc,
        ):
            send_rows(gw, rng, 80)
            wait_for(lambda: httpx.get(f"{sc}/status").json()["records"] >= 80)
            assert receiver.requests == []
            send_rows(gw, rng, 80, shift=1.0)
            fired = wait_for(
                lambda: [r for r in receiver.requests if b"model.drift_detected" in r.body]
            )
            for _ in range(10):
                send_rows(gw, rng, 8, shift=1.0)
            send_rows(gw, rng, 400)
            resolved = wait_for(
                lambda: [r for r in receiver.requests if b"alert.resolved" in r.body], 120
            )
            alerts = httpx.get(f"{sc}/alerts").json()
            hooks = httpx.get(f"{sc}/webhooks").text
            metrics = httpx.get(f"{sc}/metrics").text
    drift_events = of_type(receiver.requests, "model.drift_detected")
    assert len(drift_events) == 1 == len(fired), "one event per rule within its cooldown"
    assert len(resolved) == 1
    verifier = Webhook(SECRET)
    for request in receiver.requests:
        payload = verifier.verify(request.body, request.headers)
        assert payload["type"] in ("model.drift_detected", "alert.resolved")
    event = orjson.loads(drift_events[0].body)
    data = event["data"]
    assert (data["model"], data["version"], data["rule"]) == ("churn", 1, "features-drift")
    assert {"f0", "f1"} <= set(data["figures"]["features"])
    assert data["registry_path"].endswith("churn/1")
    assert alerts["active"] == [] and len(alerts["recent"]) >= 2
    assert SECRET not in hooks and SECRET.split("_")[1] not in hooks
    assert 'gatewatch_webhook_deliveries_total{outcome="sent"} 2.0' in metrics
