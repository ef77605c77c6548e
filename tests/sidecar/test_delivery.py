"""Delivery from the durable outbox: retries, restarts, Retry-After and the dead-letter list."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from sidecar.alerts import Event, new_event_id
from sidecar.delivery import Deliverer, parse_retry_after, webhook_test_main
from sidecar.outbox import Outbox
from sidecar.webhooks import WebhookTarget, parse_webhooks
from tests._receiver import Receiver, Reply

SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
TOKEN = "glptt-0123456789abcdefSECRET"
ENV = {"GW_SECRET": SECRET, "GW_TOKEN": TOKEN}


class Clock:
    """Wall clock the test steps by hand, starting now (signatures need a fresh timestamp)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def generic(url: str, **extra: Any) -> dict[str, WebhookTarget]:
    return parse_webhooks(
        [{"name": "hook", "kind": "generic", "url": url, "secret_env": "GW_SECRET", **extra}], ENV
    )


def hook_and_gitlab(rx: Receiver) -> dict[str, WebhookTarget]:
    """A generic hook at /h and a GitLab trigger, both served by `rx`."""
    return parse_webhooks(
        [
            {"name": "hook", "kind": "generic", "url": rx.url("/h"), "secret_env": "GW_SECRET"},
            {
                "name": "gl",
                "kind": "gitlab",
                "project": 7,
                "token_env": "GW_TOKEN",
                "api": rx.url(""),
            },
        ],
        ENV,
    )


def event(event_type: str = "model.drift_detected", webhooks: tuple[str, ...] = ("hook",)) -> Event:
    data = {"rule": "drift", "model": "churn", "version": 2, "condition": "feature_drift"}
    return Event(
        new_event_id(), event_type, "2026-11-28T07:00:00.000Z", {**data, "figures": {}}, webhooks
    )


async def drain(deliverer: Deliverer, clock: Clock, rounds: int = 20) -> None:
    """Deliver, then jump the clock to the next due time; stop when nothing is pending."""
    for _ in range(rounds):
        await deliverer.deliver_due()
        next_due = deliverer.outbox.next_due()
        if next_due is None:
            return
        clock.now = max(clock.now, next_due)
    raise AssertionError("deliveries still pending")


def test_retried_until_delivered_exactly_once(tmp_path: Path) -> None:
    clock = Clock()
    verifier = Webhook(SECRET)
    with (
        Receiver([Reply(500), Reply(500), Reply(500), Reply(204)]) as rx,
        Outbox(tmp_path) as outbox,
    ):

        async def go() -> None:
            async with Deliverer(outbox, generic(rx.url("/h")), base_delay=0.01, clock=clock) as d:
                ev = event()
                assert d.enqueue(ev) == 1
                assert d.enqueue(ev) == 0  # the same event again adds nothing
                await drain(d, clock)

        asyncio.run(go())
        [row] = outbox.deliveries()
        counters = outbox.counters()

    ids = [r.headers["webhook-id"] for r in rx.requests]
    assert [r.status for r in rx.requests] == [500, 500, 500, 204]
    assert len(set(ids)) == 1 and ids[0] == row["event_id"]
    assert Counter(r.headers["webhook-id"] for r in rx.requests if r.status < 300) == {ids[0]: 1}
    for request in rx.requests:  # every attempt is signed afresh, and verifies
        verifier.verify(request.body, request.headers)
    assert (row["state"], row["attempts"], row["last_status"]) == ("delivered", 4, 204)
    assert row["last_error"] is None  # it describes the last attempt, which succeeded
    assert counters == {"sent": 1, "failed": 3, "retried": 3, "dead_lettered": 0, "pending": 0}


def test_pending_delivery_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver([Reply(500), Reply(502)]) as rx:
        targets = generic(rx.url("/h"))
        ev = event()

        async def first_life() -> None:
            with Outbox(tmp_path) as outbox:
                async with Deliverer(outbox, targets, base_delay=0.01, clock=clock) as d:
                    d.enqueue(ev)
                    await d.deliver_due()
                    clock.now = outbox.next_due() or clock.now
                    await d.deliver_due()
                # Stopped while retrying: dropped with the delivery still pending.
                assert outbox.deliveries()[0]["state"] == "pending"

        async def second_life() -> None:
            with Outbox(tmp_path) as outbox:
                async with Deliverer(outbox, targets, base_delay=0.01, clock=clock) as d:
                    await drain(d, clock)
                [row] = outbox.deliveries()
                assert (row["state"], row["attempts"]) == ("delivered", 3)

        asyncio.run(first_life())
        asyncio.run(second_life())
    assert [r.status for r in rx.requests] == [500, 502, 204]
    assert {r.headers["webhook-id"] for r in rx.requests} == {ev.id}


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(tmp_path: Path, form: str) -> None:
    clock = Clock()
    wait = 120
    value = (
        str(wait) if form == "seconds" else email.utils.formatdate(clock.now + wait, usegmt=True)
    )
    with Receiver([Reply(503, headers={"Retry-After": value})]) as rx, Outbox(tmp_path) as outbox:

        async def go() -> None:
            async with Deliverer(outbox, generic(rx.url("/h")), base_delay=0.01, clock=clock) as d:
                d.enqueue(event())
                assert await d.deliver_due() == 1
                [row] = outbox.deliveries()
                # An HTTP date has whole seconds: allow for the fraction cut off.
                assert row["next_attempt"] >= row["last_attempt"] + wait - 1
                assert await d.deliver_due() == 0
                clock.now += wait - 2
                assert await d.deliver_due() == 0
                clock.now += 2
                assert await d.deliver_due() == 1

        asyncio.run(go())
        assert outbox.deliveries()[0]["state"] == "delivered"
    assert [r.status for r in rx.requests] == [503, 204]


@pytest.mark.parametrize(
    ("status", "state"),
    [
        pytest.param(400, "dead", id="400"),
        pytest.param(404, "dead", id="404"),
        pytest.param(410, "dead", id="410"),
        pytest.param(408, "pending", id="408"),
        pytest.param(409, "pending", id="409"),
        pytest.param(429, "pending", id="429"),
        pytest.param(503, "pending", id="503"),
        pytest.param(302, "pending", id="302"),
    ],
)
def test_client_errors_are_final_others_retried(tmp_path: Path, status: int, state: str) -> None:
    clock = Clock()
    with Receiver([Reply(status, b"nope")]) as rx, Outbox(tmp_path) as outbox:

        async def go() -> None:
            async with Deliverer(outbox, generic(rx.url("/h")), base_delay=0.01, clock=clock) as d:
                d.enqueue(event())
                await d.deliver_due()
                clock.now += 3600
                if state == "dead":
                    assert await d.deliver_due() == 0

        asyncio.run(go())
        [row] = outbox.deliveries()
        counters = outbox.counters()
    assert row["state"] == state and row["last_status"] == status
    assert row["last_error"] == f"HTTP {status}: nope"
    assert len(rx.requests) == 1
    assert counters["dead_lettered"] == (state == "dead")


def test_max_attempts_moves_to_dead_letter(tmp_path: Path) -> None:
    clock = Clock()
    with Receiver(default=Reply(500)) as rx, Outbox(tmp_path) as outbox:

        async def go() -> None:
            async with Deliverer(
                outbox, generic(rx.url("/h")), max_attempts=3, base_delay=0.01, clock=clock
            ) as d:
                d.enqueue(event())
                await drain(d, clock)

        asyncio.run(go())
        [row] = outbox.deliveries(state="dead")
        counters = outbox.counters()
        assert outbox.requeue() == 1
        assert outbox.deliveries()[0]["state"] == "pending"
    assert len(rx.requests) == 3
    assert row["attempts"] == 3 and row["last_error"] == "HTTP 500 (gave up after 3 attempts)"
    assert counters == {"sent": 0, "failed": 3, "retried": 2, "dead_lettered": 1, "pending": 0}


def test_backoff_grows_with_jitter_and_caps(tmp_path: Path) -> None:
    with Outbox(tmp_path) as outbox:

        async def go() -> list[float]:
            async with Deliverer(outbox, {}, base_delay=1.0, max_delay=30.0) as d:
                return [d.backoff(n) for n in range(1, 9)] + [d.backoff(1, retry_after=90.0)]

        delays = asyncio.run(go())
    for n, delay in enumerate(delays[:8], start=1):
        full = min(30.0, 2.0 ** (n - 1))
        assert full / 2 <= delay <= full
    assert delays[-1] == 90.0


def test_connection_refused_is_retried(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with Outbox(tmp_path) as outbox:

        async def go() -> None:
            async with Deliverer(outbox, generic(f"http://127.0.0.1:{port}/h"), timeout=2.0) as d:
                d.enqueue(event())
                await d.deliver_due()

        asyncio.run(go())
        [row] = outbox.deliveries()
    assert row["state"] == "pending" and row["last_status"] is None
    assert row["last_error"].startswith("ConnectError")


def test_unknown_target_and_event_filters(tmp_path: Path) -> None:
    with Receiver() as rx, Outbox(tmp_path) as outbox:
        targets = hook_and_gitlab(rx)

        async def go() -> None:
            async with Deliverer(outbox, targets) as d:
                # "alert.resolved" must not start a GitLab pipeline; the generic hook takes it.
                assert d.enqueue(event("alert.resolved", ("hook", "gl"))) == 1
                assert d.enqueue(event("model.drift_detected", ("gone",))) == 1
                await d.deliver_due()

        asyncio.run(go())
        rows = {row["target"]: row for row in outbox.deliveries()}
    assert set(rows) == {"hook", "gone"}
    assert rows["hook"]["state"] == "delivered"
    assert rows["gone"]["state"] == "dead"
    assert rows["gone"]["last_error"] == "no webhook named 'gone' in the config"
    assert [r.path for r in rx.requests] == ["/h"]


def test_run_loop_delivers_and_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with Receiver([Reply(500)]) as rx, Outbox(tmp_path) as outbox:
        targets = hook_and_gitlab(rx)

        async def go() -> None:
            stop = asyncio.Event()
            async with Deliverer(outbox, targets, base_delay=0.01, poll_interval=0.05) as d:
                task = asyncio.create_task(d.run(stop))
                d.enqueue(event(webhooks=("hook", "gl")))
                for _ in range(500):
                    if outbox.counters()["pending"] == 0:
                        break
                    await asyncio.sleep(0.01)
                stop.set()
                await asyncio.wait_for(task, timeout=10)

        asyncio.run(go())
        states = sorted((row["target"], row["state"]) for row in outbox.deliveries())
    assert states == [("gl", "delivered"), ("hook", "delivered")]
    assert len(rx.requests) == 3
    assert TOKEN not in caplog.text and SECRET not in caplog.text
    assert SECRET.removeprefix("whsec_") not in caplog.text


def test_deliveries_listing_and_payload_round_trip(tmp_path: Path) -> None:
    with Receiver() as rx, Outbox(tmp_path) as outbox:
        ev = event()

        async def go() -> None:
            async with Deliverer(outbox, generic(rx.url("/h"))) as d:
                d.enqueue(ev)
                [due] = outbox.due(time.time() + 1)
                assert due.event == ev.to_dict() and due.event_type == ev.type
                await d.deliver_due()

        asyncio.run(go())
        [row] = outbox.deliveries()
        assert outbox.deliveries(state="pending") == []
    assert orjson.loads(rx.requests[0].body) == ev.to_dict()
    assert set(row) == {
        "event_id",
        "type",
        "target",
        "state",
        "attempts",
        "last_status",
        "last_error",
        "last_attempt",
        "next_attempt",
        "response",
        "created",
        "updated",
    }
    assert (row["event_id"], row["type"], row["target"]) == (ev.id, ev.type, "hook")
    assert row["next_attempt"] is None and row["response"] == {}


def test_parse_retry_after() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now + 45, usegmt=True), now) == 45.0
    assert parse_retry_after(email.utils.formatdate(now - 45, usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_webhook_test_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_SECRET", SECRET)
    verifier = Webhook(SECRET)
    with Receiver([Reply(204), Reply(500, b"broken")]) as rx:
        config = tmp_path / "gatewatch.toml"
        config.write_text(
            f'[[webhooks]]\nname = "hook"\nkind = "generic"\nurl = "{rx.url("/h")}"\n'
            'secret_env = "GW_SECRET"\n'
        )
        assert webhook_test_main(str(config), "hook") == 0
        assert "webhook hook (generic): HTTP 204" in capsys.readouterr().out
        assert webhook_test_main(str(config), "hook") == 1
        assert "HTTP 500" in capsys.readouterr().out
        assert webhook_test_main(str(config), "other") == 2
        assert "no webhook named 'other' (have: hook)" in capsys.readouterr().err
    body = verifier.verify(rx.requests[0].body, rx.requests[0].headers)
    assert body["type"] == "gatewatch.test"

    monkeypatch.delenv("GW_SECRET")
    assert webhook_test_main(str(config), "hook") == 2
    assert "environment variable $GW_SECRET is not set" in capsys.readouterr().err
