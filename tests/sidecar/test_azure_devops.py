"""Azure DevOps pipeline runs, against a local server that checks the documented Runs API call."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from sidecar.alerts import AlertPolicy, parse_alerts
from sidecar.delivery import Deliverer
from sidecar.outbox import Outbox
from sidecar.webhooks import AZURE_SCOPE_HINT, parse_webhooks, template_parameters
from tests._receiver import Received, Receiver, Reply

TOKEN = "azdopat0123456789abcdefghijklmnopqrstuvwxyzSECRET"
ENV = {"AZDO_TOKEN": TOKEN}
RUN_URL = "https://dev.azure.com/acme/Machine%20Learning/_build/results?buildId=881"
PARAMETERS = {"event", "eventId", "model", "version", "rule", "severity", "registryPath", "figures"}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def azure_api(request: Received) -> Reply:
    """The documented call: POST {org}/{project}/_apis/pipelines/{id}/runs?api-version=7.1."""
    expected_auth = "Basic " + base64.b64encode(f":{TOKEN}".encode()).decode()
    if request.headers.get("authorization") != expected_auth:
        return Reply(401, b"")
    body = orjson.loads(request.body)
    params = body.get("templateParameters", {})
    ok = (
        request.method == "POST"
        and request.path == "/acme/Machine%20Learning/_apis/pipelines/17/runs"
        and request.query == {"api-version": ["7.1"]}
        and request.headers.get("content-type") == "application/json"
        and body.get("resources") == {"repositories": {"self": {"refName": "refs/heads/main"}}}
        and set(params) == PARAMETERS
        and all(isinstance(v, str) for v in params.values())
    )
    if not ok:
        return Reply(400, b'{"message": "Unexpected parameter"}')
    run = {
        "id": 881,
        "name": "20261128.1",
        "state": "inProgress",
        "url": "https://dev.azure.com/acme/_apis/pipelines/17/runs/881",
        "_links": {"web": {"href": RUN_URL}},
        "templateParameters": params,
    }
    return Reply(200, orjson.dumps(run), {"content-type": "application/json"})


def targets(rx: Receiver, token_env: str = "AZDO_TOKEN") -> dict[str, Any]:
    table = {
        "name": "azdo",
        "kind": "azure_devops",
        "organization": "acme",
        "project": "Machine Learning",
        "pipeline_id": 17,
        "token_env": token_env,
        "api": rx.url(""),
    }
    return parse_webhooks([table], {**ENV, "WRONG_TOKEN": "not-the-token"})


def accuracy_event() -> dict[str, Any]:
    vs = {
        "version": 5,
        "task": "classification",
        "accuracy": {"labels": 800, "accuracy": 0.88, "rolling_accuracy": 0.71, "window": 500},
        "manifest_metrics": {"accuracy": 0.9},
    }
    status = {"models": {"churn": {"versions": {"5": vs}}}}
    table = {
        "name": "acc",
        "condition": "accuracy_below",
        "relative_drop": 0.1,
        "webhooks": ["azdo"],
    }
    policy = AlertPolicy(parse_alerts([table], {"azdo"}), registry="registry")
    [event] = policy.evaluate(status, time.time())
    return event.to_dict()


def deliver(
    tmp_path: Path, rx: Receiver, *, token_env: str = "AZDO_TOKEN", rounds: int = 1
) -> Outbox:
    clock = Clock()
    outbox = Outbox(tmp_path)

    async def go() -> None:
        async with Deliverer(outbox, targets(rx, token_env), base_delay=0.01, clock=clock) as d:
            d.enqueue(accuracy_event(), ["azdo"])
            for _ in range(rounds):
                await d.deliver_due()
                clock.now = outbox.next_due() or clock.now

    asyncio.run(go())
    return outbox


def test_run_started_and_run_id_and_url_kept(tmp_path: Path) -> None:
    with Receiver(handler=azure_api) as rx, deliver(tmp_path, rx) as outbox:
        [row] = outbox.deliveries()
    [request] = rx.requests
    assert request.status == 200
    assert (row["state"], row["last_status"], row["attempts"]) == ("delivered", 200, 1)
    assert row["response"] == {"run_id": 881, "run_url": RUN_URL}
    params = orjson.loads(request.body)["templateParameters"]
    assert params["model"] == "churn" and params["version"] == "5"
    assert params["event"] == "model.accuracy_degraded" and params["rule"] == "acc"
    assert params["registryPath"] == "registry/churn/5"
    figures = orjson.loads(params["figures"])
    assert figures["condition"] == "accuracy_below" and figures["value"] == 0.71
    assert request.headers["x-tfs-fedauthredirect"] == "Suppress"


def test_run_url_falls_back_to_url_field(tmp_path: Path) -> None:
    run = {"id": 9, "url": "https://dev.azure.com/acme/_apis/pipelines/17/runs/9"}
    with Receiver([Reply(200, orjson.dumps(run))]) as rx, deliver(tmp_path, rx) as outbox:
        [row] = outbox.deliveries()
    assert row["response"] == {"run_id": 9, "run_url": run["url"]}


@pytest.mark.parametrize(
    ("token_env", "script"),
    [
        pytest.param("WRONG_TOKEN", None, id="401-wrong-token"),
        pytest.param("AZDO_TOKEN", [Reply(403, b'{"message": "TF400813"}')], id="403"),
        pytest.param("AZDO_TOKEN", [Reply(203, b"<html>Sign in</html>")], id="203-sign-in-page"),
    ],
)
def test_refused_token_is_dead_lettered_with_scope_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, token_env: str, script: list[Reply] | None
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver = Receiver(handler=azure_api) if script is None else Receiver(script)
    with receiver as rx, deliver(tmp_path, rx, token_env=token_env, rounds=3) as outbox:
        [row] = outbox.deliveries()
        counters = outbox.counters()
    assert len(rx.requests) == 1  # no retry
    assert row["state"] == "dead" and row["attempts"] == 1
    assert AZURE_SCOPE_HINT in row["last_error"]
    assert "Build (read and execute)" in row["last_error"]
    assert counters["dead_lettered"] == 1 and counters["retried"] == 0
    assert TOKEN not in orjson.dumps(row).decode() and TOKEN not in caplog.text


def test_unavailable_is_retried_then_delivered_once(tmp_path: Path) -> None:
    script = iter([Reply(503, b"Service Unavailable"), Reply(503, b"Service Unavailable")])

    def flaky(request: Received) -> Reply:
        return next(script, None) or azure_api(request)

    with Receiver(handler=flaky) as rx, deliver(tmp_path, rx, rounds=5) as outbox:
        [row] = outbox.deliveries()
        counters = outbox.counters()
    assert [r.status for r in rx.requests] == [503, 503, 200]
    assert (row["state"], row["attempts"]) == ("delivered", 3)
    assert row["response"]["run_id"] == 881
    assert counters["sent"] == 1 and counters["retried"] == 2
    assert len({r.body for r in rx.requests}) == 1  # the same run request each time


def test_target_repr_and_describe_hide_the_token() -> None:
    with Receiver() as rx:
        [target] = targets(rx).values()
    request = target.build(accuracy_event(), now=time.time())
    basic = base64.b64encode(f":{TOKEN}".encode()).decode()
    for shown in (repr(target), repr(request), str(target.describe())):
        assert TOKEN not in shown and basic not in shown
    assert target.describe()["token_env"] == "AZDO_TOKEN"


def test_example_pipeline_declares_exactly_the_parameters_sent() -> None:
    """Azure refuses a run with an undeclared parameter: the example must stay in step."""
    text = (Path(__file__).parents[2] / "examples/ci/azure-pipelines.yml").read_text()
    block = text.split("\nparameters:\n", 1)[1].split("\n\n", 1)[0]
    declared = set(re.findall(r"^  - name: (\w+)$", block, flags=re.MULTILINE))
    sent = template_parameters(accuracy_event())
    assert declared == set(sent) == PARAMETERS
    assert "none" not in sent.values() and all(sent.values())
    log_lag = {"id": "evt_1", "type": "log.lag_high", "data": {"model": None, "version": None}}
    assert template_parameters(log_lag)["model"] == "none"  # never an empty string
