from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.predlog import encode
from sidecar.app import Sidecar, create_app
from sidecar.config import SidecarConfig, parse_config
from sidecar.engine import Engine
from sidecar.state import STATE_FILE
from tests._server import run_server
from tests.sidecar._scenario import DRIFTING, Truth, scenario, write_registry


@pytest.fixture
def setup(tmp_path: Path) -> tuple[SidecarConfig, int, Truth]:
    """A registry, a log of the scenario with one corrupt line, and a config reading them."""
    write_registry(tmp_path / "registry")
    records, truth = scenario(3000, seed=5, drift_at=0.3)
    log_dir = tmp_path / "predlog"
    log_dir.mkdir()
    lines = [encode(r) for r in records]
    lines.insert(100, b"this is not json\n")
    (log_dir / "predlog-w1-000001.jsonl").write_bytes(b"".join(lines))
    config = parse_config(
        {"sidecar": {"checkpoint_interval": 0.05, "batch": 500}, "log": {"dir": "predlog"}},
        base_dir=tmp_path,
        environ={},
    )
    return config, len(records), truth


def wait_consumed(client: httpx.Client, count: int) -> dict[str, Any]:
    """Poll /healthz until the consumer has read ``count`` records from the log."""
    for _ in range(2000):
        health: dict[str, Any] = client.get("/healthz").json()
        if health["consumed"] >= count:
            return health
        time.sleep(0.01)
    raise AssertionError(f"the sidecar read {health['consumed']} of {count} records")


def test_endpoints(setup: tuple[SidecarConfig, int, Truth]) -> None:
    config, count, truth = setup
    with run_server(create_app(config)) as url, httpx.Client(base_url=url) as client:
        health = wait_consumed(client, count)
        assert health["state"] == "running"
        assert health["corrupt_lines"] == 1
        status = client.get("/status").json()
        assert (status["records"], status["feedback"]) == (truth.predictions, truth.feedback)
        assert status["lag_seconds"] > 0
        churn = client.get("/models/churn")
        assert churn.status_code == 200
        assert churn.headers["content-type"] == "application/json"
        assert churn.json() == status["models"]["churn"]
        assert churn.json()["versions"]["1"]["feature_drift"]["drifting"] == list(DRIFTING)
        missing = client.get("/models/nope")
        assert missing.status_code == 404
        assert "nope" in missing.json()["error"]
        assert client.get("/no/such/route").json() == {"error": "Not Found"}
        metrics = client.get("/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
    records = families["gatewatch_sidecar_records"].samples[0]
    assert records.name == "gatewatch_sidecar_records_total"
    assert records.value == truth.predictions
    assert families["gatewatch_sidecar_consumed"].samples[0].value == count
    assert families["gatewatch_sidecar_corrupt_lines"].samples[0].value == 1
    drifting = {
        (s.labels["version"], s.labels["feature"]): s.value
        for s in families["gatewatch_sidecar_feature_drifting"].samples
        if s.labels["model"] == "churn"
    }
    assert drifting[("1", "f3")] == 1.0 and drifting[("1", "f0")] == 0.0
    accuracy = families["gatewatch_sidecar_accuracy"].samples
    assert {s.labels["version"] for s in accuracy if s.labels["model"] == "churn"} == {"1", "2"}
    agreement = families["gatewatch_sidecar_shadow_agreement"].samples
    assert [s.labels["version"] for s in agreement] == ["3"]
    assert families["gatewatch_sidecar_up"].samples[0].value == 1.0


def test_restart_resumes_from_the_saved_state(setup: tuple[SidecarConfig, int, Truth]) -> None:
    config, count, _ = setup
    with run_server(create_app(config)) as url, httpx.Client(base_url=url) as client:
        wait_consumed(client, count)
        before = client.get("/status").json()
    assert (config.state_dir / STATE_FILE).is_file()
    with run_server(create_app(config)) as url, httpx.Client(base_url=url) as client:
        after = client.get("/status").json()  # restored from the state file before any read
        health = client.get("/healthz").json()
    assert health["consumed"] == 0
    before.pop("lag_seconds"), after.pop("lag_seconds")
    assert after == before


def test_a_failing_listener_does_not_stop_the_consumer(
    setup: tuple[SidecarConfig, int, Truth],
) -> None:
    config, count, truth = setup

    def broken(engine: Engine) -> None:
        raise RuntimeError("boom")

    async def consume() -> tuple[dict[str, Any], dict[str, Any]]:
        sidecar = Sidecar(config)
        sidecar.listeners.append(broken)
        await sidecar.start()
        for _ in range(2000):
            if sidecar.consumed >= count:
                break
            await asyncio.sleep(0.01)
        health = sidecar.health()
        status = await sidecar.status()
        await sidecar.stop()
        return health, status

    health, status = asyncio.run(consume())
    assert health["ok"] and health["consumed"] == count
    assert health["listener_errors"] >= 1 and "boom" in health["last_error"]
    assert status["records"] == truth.predictions
