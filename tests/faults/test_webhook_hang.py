"""A webhook receiver that accepts the request and never answers.

The attempt ends at the delivery timeout (10 s, the sidecar's default) and is retried with
backoff; meanwhile the sidecar keeps consuming and answering. Killed with SIGKILL while the
receiver still hangs, the sidecar finds the delivery in its outbox at the next start and
delivers it, under the same webhook-id, once the receiver answers again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.config import load_config as load_sidecar_config
from tests._models import push_logreg
from tests._receiver import Received, Receiver, Reply
from tests._server import free_port, gateway_process
from tests.faults._harness import (
    WEBHOOK_SECRET_ENV,
    Load,
    SidecarProcess,
    failures,
    process_env,
    wait_for,
)


class HangingReceiver(Receiver):
    """Holds every request until ``release`` is set, then answers 503 to whoever still listens
    (nobody: the sender gave up); after that it answers 204 at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.arrived: list[Received] = []  # `requests` lists a request once it is answered
        super().__init__(handler=self._handle)

    def _handle(self, received: Received) -> Reply:
        self.arrived.append(received)
        if self.release.is_set():
            return Reply(204)
        self.release.wait(timeout=120)
        return Reply(503)

    def __enter__(self) -> HangingReceiver:
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release.set()
        super().__exit__(*exc)


def drift_deliveries(sidecar: SidecarProcess) -> list[dict[str, Any]]:
    deliveries = sidecar.get("/webhooks")["deliveries"]
    return [d for d in deliveries if d["type"] == "model.drift_detected"]


@pytest.mark.slow
def test_hanging_receiver_is_bounded_and_the_event_survives_a_kill(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    with HangingReceiver() as receiver:
        config_path = tmp_path / "gatewatch.toml"
        config_path.write_text(
            f"""
[gateway]
registry = "registry"

[log]
dir = "predlog"

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = 0.2

[[webhooks]]
name = "ci"
kind = "generic"
url = "{receiver.url("/hook")}"
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
        port = free_port()
        sidecar = SidecarProcess(config_path, f"http://{load_sidecar_config(config_path).listen}")
        try:
            with (
                gateway_process(config_path, port, env=process_env()),
                Load(f"http://127.0.0.1:{port}", rows=50, rate=150) as load,
            ):
                sidecar.start()
                load.wait_ok(300)
                load.shift = 1.0
                wait_for(lambda: receiver.arrived, "the first attempt reaching the receiver")
                timed_out = wait_for(
                    lambda: [d for d in drift_deliveries(sidecar) if d["attempts"] >= 1],
                    "the hanging attempt ending",
                    timeout=60,
                )
                # While the attempt hung, the consumer went on counting and /healthz answered.
                consumed = sidecar.get("/healthz")["consumed"]
                wait_for(lambda: sidecar.get("/healthz")["consumed"] > consumed, "consuming")
                sidecar.kill()
                receiver.release.set()
                sidecar.start()
                delivered = wait_for(
                    lambda: [d for d in drift_deliveries(sidecar) if d["state"] == "delivered"],
                    "the delivery after the restart",
                )
                counters = sidecar.get("/webhooks")["counters"]
                answers = load.stop()
        except BaseException:
            print(sidecar.tail())
            raise
        finally:
            sidecar.stop()
    assert failures(answers) == []
    [first] = timed_out
    assert first["state"] == "pending" and first["last_status"] is None
    assert "Timeout" in first["last_error"], first["last_error"]
    [done] = delivered
    assert done["event_id"] == first["event_id"] and done["attempts"] >= 2
    assert (counters["sent"], counters["pending"], counters["dead_lettered"]) == (1, 0, 0)
    # The receiver saw the event once per attempt, always under the same webhook-id: the
    # Standard Webhooks receiver de-duplicates on it (an attempt abandoned by the sender can
    # still reach the receiver later, as the hung one here did).
    events = [orjson.loads(r.body) for r in receiver.arrived]
    assert {e["id"] for e in events} == {first["event_id"]}, "one event, however many attempts"
    assert {r.headers["webhook-id"] for r in receiver.arrived} == {first["event_id"]}
