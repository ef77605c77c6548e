"""The delivery worker: sends what the outbox holds, retries, and dead-letters.

One long-lived `httpx.AsyncClient` (explicit timeout and pool limits, injectable transport)
serves every target. A failed attempt is retried with exponential backoff and jitter, or after
the receiver's ``Retry-After`` when that is later; a refusal that retrying cannot change (most
4xx, an Azure DevOps token without the right scope) goes to the dead-letter list at once, and
so does a delivery after `max_attempts`. Every attempt of one event carries the same
``webhook-id`` and a fresh ``webhook-timestamp``, as the Standard Webhooks spec asks.

The schedule is kept in the outbox in wall-clock seconds, so it survives a restart.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from sidecar.alerts import Event, iso_utc, new_event_id
from sidecar.errors import ConfigError
from sidecar.outbox import Attempt, Due, Outbox
from sidecar.webhooks import (
    TEST_EVENT,
    Outcome,
    OutgoingRequest,
    WebhookTarget,
    parse_webhooks,
    redact,
)

__all__ = ["Deliverer", "make_test_event", "parse_retry_after", "send_test", "webhook_test_main"]

logger = logging.getLogger("sidecar.delivery")

DEFAULT_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=30)
DEFAULT_CONCURRENCY = 8
DEFAULT_BATCH = 100
DEFAULT_POLL_INTERVAL = 1.0
# Never wait longer than this for a Retry-After, whatever a receiver asks.
MAX_RETRY_AFTER = 86400.0
# Answers are read up to this size: enough for a run's JSON, bounded against a huge page.
MAX_RESPONSE_BYTES = 64 * 1024


class Deliverer:
    """Sends due deliveries from `outbox` to `targets` (name -> target).

    Parameters
    ----------
    outbox, targets
        Where the deliveries are stored; the configured targets by name (`parse_webhooks`).
    client
        An `httpx.AsyncClient` to use; by default one is made (and closed by `aclose`).
    max_attempts
        Attempts in all, the first included, before a delivery is dead-lettered.
    base_delay, max_delay
        The backoff: ``base_delay * 2**(attempt-1)`` capped at ``max_delay``, then jittered to
        between half and all of it.
    timeout
        Seconds per request (connect, read, write and pool wait each).
    transport
        For the client made here: tests put a transport in, production leaves the default.
    clock, rng
        Wall-clock source and random generator, so tests can step time and fix the jitter.
    """

    def __init__(
        self,
        outbox: Outbox,
        targets: Mapping[str, WebhookTarget],
        client: httpx.AsyncClient | None = None,
        *,
        max_attempts: int = 8,
        base_delay: float = 1.0,
        max_delay: float = 300.0,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if base_delay < 0 or max_delay < base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay")
        if timeout <= 0 or concurrency < 1 or poll_interval <= 0:
            raise ValueError("timeout, concurrency and poll_interval must be positive")
        self.outbox = outbox
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.timeout = httpx.Timeout(timeout)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self._targets = dict(targets)
        self._clock = clock
        self._rng = rng or random.Random()
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=self.timeout,
            limits=DEFAULT_LIMITS,
            transport=transport,
            follow_redirects=False,
        )
        self._wake = asyncio.Event()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Deliverer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def targets(self) -> dict[str, WebhookTarget]:
        return dict(self._targets)

    def wake(self) -> None:
        """Have the worker look at the outbox now (call it on the loop's thread)."""
        self._wake.set()

    def set_targets(self, targets: Mapping[str, WebhookTarget]) -> None:
        """Swap in a reloaded `[[webhooks]]` set; pending deliveries follow the target's name."""
        self._targets = dict(targets)

    # -------------------------------------------------------------------------- enqueue

    def enqueue(
        self,
        event: Event | Mapping[str, Any],
        targets: Iterable[str] | None = None,
        *,
        now: float | None = None,
    ) -> int:
        """Commit `event` to the outbox for its targets and wake the worker.

        Targets default to the event's own (`Event.webhooks`). A target whose `events` filter
        does not take this event type is skipped; a name with no target is kept, and gets
        dead-lettered with a message saying so, rather than lost silently.
        """
        if isinstance(event, Event):
            payload = event.to_dict()
            names = event.webhooks if targets is None else tuple(targets)
        else:
            payload = dict(event)
            names = () if targets is None else tuple(targets)
        wanted = [
            name
            for name in names
            if (target := self._targets.get(name)) is None or target.accepts(str(payload["type"]))
        ]
        if not wanted:
            return 0
        added = self.outbox.enqueue(payload, wanted, now=self._clock() if now is None else now)
        self._wake.set()
        return added

    # -------------------------------------------------------------------------- delivery

    async def deliver_due(self) -> int:
        """Try every delivery due now, a few at a time; answer how many were attempted."""
        due = self.outbox.due(self._clock(), DEFAULT_BATCH)
        if not due:
            return 0
        gate = asyncio.Semaphore(self.concurrency)

        async def attempt(item: Due) -> Attempt:
            async with gate:
                return await self._attempt(item)

        results = await asyncio.gather(*(attempt(item) for item in due))
        # One transaction for the round. A crash before it resends the round: same webhook-ids.
        self.outbox.record(results, now=self._clock())
        return len(due)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; sleeps until the next due time or a new event."""
        while not stop.is_set():
            try:
                await self.deliver_due()
                next_due = self.outbox.next_due()
            except Exception:
                logger.exception("webhook delivery round failed; trying again shortly")
                next_due = None
            wait = self.poll_interval
            if next_due is not None:
                wait = min(wait, max(0.0, next_due - self._clock()))
            await self._sleep(stop, wait)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        self._wake.clear()

    async def _attempt(self, item: Due) -> Attempt:
        """Send one due delivery and say what became of it (the caller stores it)."""
        now = self._clock()
        key = (item.event_id, item.target)
        target = self._targets.get(item.target)
        if target is None:
            error = f"no webhook named {item.target!r} in the config"
            logger.warning("webhook %s: %s dead-lettered: %s", item.target, item.event_id, error)
            return Attempt(*key, "dead", error=error)
        status, retry_after, outcome = await self._send(target, item.event, now)
        number = item.attempts + 1
        what = f"webhook {target.name}: {item.event_type} {item.event_id}"
        if outcome.state == "delivered":
            logger.info("%s delivered (HTTP %s, attempt %d)", what, status, number)
            return Attempt(*key, "delivered", status=status, info=outcome.info)
        error = outcome.error or "failed"
        if outcome.state == "dead" or number >= self.max_attempts:
            if outcome.state != "dead":
                error = f"{error} (gave up after {number} attempts)"
            logger.warning("%s dead-lettered: %s", what, error)
            return Attempt(*key, "dead", status=status, error=error)
        delay = self.backoff(number, retry_after)
        logger.warning("%s attempt %d failed (%s); next try in %.2fs", what, number, error, delay)
        return Attempt(*key, "pending", status=status, error=error, next_attempt=now + delay)

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 60))
        delay *= 0.5 + 0.5 * self._rng.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay

    async def _send(
        self, target: WebhookTarget, event: Mapping[str, Any], now: float
    ) -> tuple[int | None, float | None, Outcome]:
        """One attempt: (status or None, Retry-After seconds or None, what it means)."""
        secrets = target.secrets()
        try:
            request = target.build(event, now=now)
        except (ValueError, KeyError, TypeError) as exc:
            error = redact(f"cannot build the request: {exc}", secrets)
            return None, None, Outcome("dead", error)
        try:
            status, headers, body = await _exchange(self._client, request, self.timeout)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            error = redact(f"{type(exc).__name__}: {exc}".rstrip(": "), secrets)
            return None, None, Outcome("retry", error)
        retry_after = parse_retry_after(headers.get("retry-after"), now)
        return status, retry_after, target.outcome(status, body)

    async def send_test(self, target: WebhookTarget | str) -> tuple[int, str]:
        """Send one "gatewatch.test" event to a target now, outside the outbox (`send_test`)."""
        if isinstance(target, str):
            if target not in self._targets:
                raise KeyError(f"no webhook named {target!r}")
            target = self._targets[target]
        return await send_test(self._client, target, timeout=self.timeout, now=self._clock())


async def send_test(
    client: httpx.AsyncClient,
    target: WebhookTarget,
    *,
    timeout: httpx.Timeout | None = None,
    now: float | None = None,
) -> tuple[int, str]:
    """Send one "gatewatch.test" event; answer (status, body with secrets masked).

    Status 0 means no answer came (the body then says why). Used by
    ``gatewatch webhook test NAME`` and the sidecar's test endpoint.
    """
    now = time.time() if now is None else now
    secrets = target.secrets()
    try:
        request = target.build(make_test_event(now), now=now)
        status, _, body = await _exchange(client, request, timeout or httpx.Timeout(10.0))
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as exc:
        return 0, redact(f"{type(exc).__name__}: {exc}", secrets)
    return status, redact(body.decode("utf-8", errors="replace"), secrets)


async def _exchange(
    client: httpx.AsyncClient, request: OutgoingRequest, timeout: httpx.Timeout
) -> tuple[int, httpx.Headers, bytes]:
    """Send `request`; answer status, headers and at most MAX_RESPONSE_BYTES of the body."""
    async with client.stream(
        request.method,
        request.url,
        headers=request.headers,
        content=request.content,
        timeout=timeout,
    ) as response:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= MAX_RESPONSE_BYTES:
                break
    return response.status_code, response.headers, b"".join(chunks)[:MAX_RESPONSE_BYTES]


def make_test_event(now: float) -> dict[str, Any]:
    """The event `send_test` sends: the shape of a real one, marked as a test."""
    return {
        "id": new_event_id(),
        "type": TEST_EVENT,
        "timestamp": iso_utc(now),
        "data": {
            "rule": "webhook-test",
            "severity": "info",
            "model": None,
            "version": None,
            "condition": None,
            "figures": {"message": "test event sent by `gatewatch webhook test`"},
            "registry_path": None,
            "sidecar_url": None,
        },
    }


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def webhook_test_main(config_path: str, name: str) -> int:
    """``gatewatch webhook test NAME``: send a test event to one `[[webhooks]]` target.

    Prints the answer; exit status 0 when the target took it, 1 when it refused, 2 when the
    config or the name is wrong.
    """
    try:
        with open(config_path, "rb") as file:
            config = tomllib.load(file)
        targets = parse_webhooks(config.get("webhooks", []))
    except (OSError, tomllib.TOMLDecodeError, ConfigError) as exc:
        print(f"gatewatch webhook test: {config_path}: {exc}", file=sys.stderr)
        return 2
    target = targets.get(name)
    if target is None:
        known = ", ".join(sorted(targets)) or "none"
        print(f"gatewatch webhook test: no webhook named {name!r} (have: {known})", file=sys.stderr)
        return 2
    status, body = asyncio.run(_send_once(target))
    print(f"webhook {name} ({target.kind}): " + (f"HTTP {status}" if status else "no answer"))
    if body.strip():
        print(body.strip())
    if not status:
        return 1
    return 0 if target.outcome(status, body.encode()).state == "delivered" else 1


async def _send_once(target: WebhookTarget) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0), limits=DEFAULT_LIMITS) as client:
        return await send_test(client, target)
