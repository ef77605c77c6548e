"""Redis stopped and started again while a real gateway logs to it under load.

While Redis is away the gateway keeps answering and parks its batches in spill files; once
Redis answers again it replays them, oldest first, before anything newer. Every answered
request's record reaches the stream, and a sidecar reading the stream through the outage
counts each of them once. The writer-level version of this test, without HTTP, is
tests/gateway/test_predlog_redis.py::test_redis_restart_mid_write_loses_nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.config import load_config
from sidecar.config import load_config as load_sidecar_config
from tests._models import push_logreg
from tests._redis import RedisServer
from tests._server import free_port, gateway_process
from tests.faults._harness import (
    Load,
    failures,
    log_records,
    ok_ids,
    predlog_counters,
    process_env,
    sidecar_process,
    wait_drained,
    wait_for,
)


@pytest.mark.slow
def test_redis_restart_under_load_loses_no_answered_record(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(tmp_path / "registry", work)
    with RedisServer(tmp_path) as redis:
        config_path = tmp_path / "gatewatch.toml"
        config_path.write_text(
            f"""
[gateway]
registry = "registry"

[log]
transport = "redis"
url = "{redis.url}"
dir = "spill"

[sidecar]
listen = "127.0.0.1:{free_port()}"
state_dir = "state"
checkpoint_interval = 0.2
"""
        )
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        sidecar_url = f"http://{load_sidecar_config(config_path).listen}"
        with (
            gateway_process(config_path, port, env=process_env()),
            sidecar_process(config_path, sidecar_url) as sidecar,
            Load(url, rate=400) as load,
        ):
            load.wait_ok(400)
            redis.stop(save=True)
            wait_for(lambda: predlog_counters(url)["spilled"] >= 200, "records spilled to disk")
            load.wait_ok(200)
            redis.start()
            load.wait_ok(400)
            answers = load.stop()
            counters = wait_drained(url, len(answers))
            wait_for(
                lambda: predlog_counters(url)["replayed"] == counters["spilled"],
                "every spilled record replayed",
            )
            records = log_records(load_config(config_path).log)
            wait_for(
                lambda: sidecar.get("/status")["records"] >= len(answers),
                f"the sidecar counting {len(answers)} records",
            )
            status = sidecar.get("/status")
            health = sidecar.get("/healthz")
            final = predlog_counters(url)
    assert failures(answers) == [], "no prediction failed while Redis was away"
    ids = Counter(r["id"] for r in records)
    assert set(ids) == ok_ids(answers), "every answered request's record is in the stream"
    repeated = sum(n - 1 for n in ids.values())
    print(
        f"redis outage: {len(answers)} answered, {final['spilled']:.0f} spilled and replayed, "
        f"{repeated} written twice (a batch whose EXEC reply was lost), "
        f"{health['read_errors']} failed reads in the sidecar"
    )
    assert final["spilled"] > 0 and final["replayed"] == final["spilled"]
    assert final["dropped"] == 0
    assert status["records"] == len(answers), "the sidecar counts each record once"
    assert health["state"] == "running"
