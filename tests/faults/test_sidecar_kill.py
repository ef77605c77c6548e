"""The sidecar killed with SIGKILL and started again while a real gateway is under load.

The gateway keeps answering and logging through the kills (it never waits on the sidecar); at
the end the sidecar has counted every record of the log once, and the drift alert that fired
during the run reached the webhook receiver exactly once.

tests/sidecar/test_restart.py kills a sidecar at five points of a log written beforehand and
compares every figure with an uninterrupted pass; this module adds live traffic and alerts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import load_config
from sidecar.config import load_config as load_sidecar_config
from tests._models import push_logreg
from tests._receiver import Received, Receiver
from tests._server import free_port, gateway_process
from tests.faults._harness import (
    WEBHOOK_SECRET_ENV,
    Load,
    SidecarProcess,
    failures,
    log_records,
    ok_ids,
    process_env,
    wait_drained,
    wait_for,
)

ROWS = 50
RATE = 150.0


def write_config(tmp_path: Path, hook: str, checkpoint_interval: float) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    path = tmp_path / "gatewatch.toml"
    path.write_text(
        f"""
[gateway]
registry = "registry"

[log]
dir = "predlog"

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = {checkpoint_interval}
batch = 500

[[webhooks]]
name = "ci"
kind = "generic"
url = "{hook}"
secret_env = "{WEBHOOK_SECRET_ENV}"

[[alerts]]
name = "churn-drift"
model = "churn"
condition = "feature_drift"
min_features = 1
cooldown = "1h"
webhooks = ["ci"]
"""
    )
    return path


def drift_events(receiver: Receiver) -> list[Received]:
    return [r for r in receiver.requests if orjson.loads(r.body)["type"] == "model.drift_detected"]


def records_of(sidecar: SidecarProcess) -> int:
    return int(sidecar.get("/status")["records"])


def finish(
    load: Load, gateway_url: str, sidecar: SidecarProcess, config_path: Path
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Stop the load, let the gateway write and the sidecar read everything; return both."""
    answers = load.stop()
    wait_drained(gateway_url, len(answers))
    records = log_records(load_config(config_path).log)
    wait_for(
        lambda: records_of(sidecar) >= len(records), f"the sidecar counting {len(records)} records"
    )
    return answers, records


@pytest.mark.slow
def test_kill_9_under_load_counts_every_record_once_and_fires_the_alert_once(
    tmp_path: Path,
) -> None:
    with Receiver() as receiver:
        config_path = write_config(tmp_path, receiver.url("/hook"), checkpoint_interval=0.2)
        sidecar_url = f"http://{load_sidecar_config(config_path).listen}"
        port = free_port()
        gateway_url = f"http://127.0.0.1:{port}"
        sidecar = SidecarProcess(config_path, sidecar_url)
        kills = 0
        try:
            with (
                gateway_process(config_path, port, env=process_env()),
                Load(gateway_url, rows=ROWS, rate=RATE) as load,
            ):
                sidecar.start()
                # Killed while counting the stationary traffic.
                wait_for(lambda: records_of(sidecar) >= 300, "300 records counted")
                sidecar.kill()
                kills += 1
                load.wait_ok(100)
                sidecar.start()
                load.shift = 1.0
                wait_for(lambda: drift_events(receiver), "the drift alert reaching the receiver")
                # Killed once the checkpoint after the alert is saved: the policy must remember
                # that it already fired, and not fire again for the same episode.
                saved = sidecar.get("/healthz")["checkpoints"]
                wait_for(lambda: sidecar.get("/healthz")["checkpoints"] > saved, "a checkpoint")
                sidecar.kill()
                kills += 1
                load.wait_ok(100)
                sidecar.start()
                load.wait_ok(100)
                answers, records = finish(load, gateway_url, sidecar, config_path)
                status = sidecar.get("/status")
                alerts = sidecar.get("/alerts")
                webhooks = sidecar.get("/webhooks")
        except BaseException:
            print(sidecar.tail())
            raise
        finally:
            sidecar.stop()
    assert kills == 2 and sidecar.starts == 3
    assert failures(answers) == [], "the gateway never waits on the sidecar"
    logged = [r["id"] for r in records]
    assert len(logged) == len(set(logged)) == len(answers)
    assert set(logged) == ok_ids(answers)
    assert status["records"] == len(records), "every record of the log counted once"
    events = drift_events(receiver)
    assert len(events) == 1, [orjson.loads(e.body)["id"] for e in events]
    event = orjson.loads(events[0].body)
    assert [a["event_id"] for a in alerts["active"]] == [event["id"]]
    assert webhooks["counters"]["sent"] == len(receiver.requests) == 1
    assert webhooks["counters"]["pending"] == 0


@pytest.mark.slow
def test_alert_committed_just_before_a_kill_is_not_sent_twice(tmp_path: Path) -> None:
    """The window between the outbox commit (in the consumer's batch listener) and the next
    checkpoint: a long checkpoint interval holds it open, so the kill falls inside it."""
    with Receiver() as receiver:
        config_path = write_config(tmp_path, receiver.url("/hook"), checkpoint_interval=300)
        port = free_port()
        gateway_url = f"http://127.0.0.1:{port}"
        sidecar = SidecarProcess(config_path, f"http://{load_sidecar_config(config_path).listen}")
        try:
            with (
                gateway_process(config_path, port, env=process_env()),
                Load(gateway_url, rows=ROWS, rate=RATE) as load,
            ):
                sidecar.start()
                load.wait_ok(300)
                load.shift = 1.0
                wait_for(lambda: drift_events(receiver), "the drift alert reaching the receiver")
                sidecar.kill()
                sidecar.start()
                load.wait_ok(100)
                finish(load, gateway_url, sidecar, config_path)
                wait_for(
                    lambda: sidecar.get("/webhooks")["counters"]["pending"] == 0,
                    "no delivery pending",
                )
        except BaseException:
            print(sidecar.tail())
            raise
        finally:
            sidecar.stop()
    ids = {orjson.loads(e.body)["id"] for e in drift_events(receiver)}
    assert len(ids) == 1, f"one alert episode announced under {len(ids)} event ids: {ids}"
