"""What the sidecar does about what it sees: alerts become webhook deliveries, rollout decisions
become edits of gatewatch.toml.

`Actions` hooks into the consumer: after every processed batch (in the consumer's thread, before
the next checkpoint) it evaluates the alert rules and commits new events to the durable outbox,
and about once a second it runs the rollout controller and carries out its decisions the same
way `gatewatch rollout` does. The alert policy and the rollout controller are pickled with the
checkpoint, so a restart neither repeats nor forgets an alert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway import audit, rollout
from gateway.config import load_config as load_gateway_config
from gateway.errors import ConfigError as GatewayConfigError
from gateway.registry import list_versions
from sidecar.alerts import AlertPolicy, Event, iso_utc, new_event_id, parse_alerts
from sidecar.config import SidecarConfig
from sidecar.delivery import Deliverer
from sidecar.engine import Engine
from sidecar.errors import ConfigError
from sidecar.outbox import DEFAULT_FILENAME as OUTBOX_FILE
from sidecar.outbox import Outbox
from sidecar.responses import ORJSONResponse
from sidecar.rollouts import Decision, RolloutController, RolloutPolicy, parse_rollout
from sidecar.webhooks import parse_webhooks

__all__ = ["Actions", "actions_routes"]

log = logging.getLogger("gatewatch.sidecar")

ROLLOUT_INTERVAL = 1.0
EVENT_TYPES = {
    "promote": "rollout.promoted",
    "rollback": "rollout.rolled_back",
    "shadow": "rollout.shadow_started",
    "canary": "rollout.canary_started",
    "reject": "rollout.rejected",
}


class Actions:
    def __init__(self, config: SidecarConfig, extra: dict[str, Any]) -> None:
        """Validate [[webhooks]] and [[alerts]] now, so a bad config fails the start."""
        self.config = config
        raw = config.raw
        self.targets = parse_webhooks(list(raw.get("webhooks", [])))
        self.rules = parse_alerts(list(raw.get("alerts", [])), set(self.targets))
        self.extra = extra
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.instance_id = _instance_id(config.state_dir)
        self.outbox = Outbox(config.state_dir / OUTBOX_FILE)
        self.deliverer = Deliverer(self.outbox, self.targets)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.decisions_total: dict[tuple[str, str], int] = {}
        self.rollout_errors = 0
        self._next_rollout = 0.0
        self._audit_log: str | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def public_url(self) -> str:
        return self.config.public_url or f"http://{self.config.listen}"

    @property
    def policy(self) -> AlertPolicy:
        policy = self.extra.get("alerts")
        if not isinstance(policy, AlertPolicy):
            policy = AlertPolicy(
                self.rules,
                registry=str(self.config.registry),
                sidecar_url=self.public_url,
                seed=self.instance_id,
            )
            self.extra["alerts"] = policy
        return policy

    @property
    def controller(self) -> RolloutController:
        controller = self.extra.get("rollouts")
        if not isinstance(controller, RolloutController):
            controller = RolloutController()
            self.extra["rollouts"] = controller
        return controller

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.policy.replace_rules(self.rules)
        self._task = asyncio.create_task(
            self.deliverer.run(self._stop), name="gatewatch-deliveries"
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 10.0)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        await self.deliverer.aclose()
        self.outbox.close()

    def _enqueue(self, event: Event) -> None:
        self.deliverer.enqueue(event)
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.deliverer.wake)

    def on_batch(self, engine: Engine) -> None:
        """Listener of the consumer: runs in its thread after each batch, before any save."""
        now = time.time()
        status = engine.status(now)
        for event in self.policy.evaluate(status, now):
            self._enqueue(event)
        if now >= self._next_rollout:
            self._next_rollout = now + ROLLOUT_INTERVAL
            try:
                self.rollout_round(status, now)
            except Exception:
                self.rollout_errors += 1
                log.exception("sidecar: the rollout round failed")

    def routing(self) -> tuple[dict[str, RolloutPolicy], dict[str, dict[str, Any]], Any]:
        """Rollout policies and live routing, read from gatewatch.toml as the gateway reads it."""
        if self.config.path is None:
            return {}, {}, None
        try:
            gateway_config = load_gateway_config(self.config.path)
        except GatewayConfigError as exc:
            log.warning("sidecar: gatewatch.toml does not validate, no rollout decisions: %s", exc)
            return {}, {}, None
        policies = {}
        for name, mc in gateway_config.models.items():
            if mc.rollout:
                try:
                    policies[name] = parse_rollout(name, mc.rollout)
                except ConfigError as exc:
                    log.warning("sidecar: %s", exc)
        routing = {name: rollout.routing_of(mc) for name, mc in gateway_config.models.items()}
        self._audit_log = gateway_config.audit_log
        return policies, routing, gateway_config

    def rollout_round(self, status: Mapping[str, Any], now: float) -> None:
        policies, routing, gateway_config = self.routing()
        if not policies or gateway_config is None:
            return
        versions = {name: list_versions(gateway_config.registry, name) for name in policies}
        for decision in self.controller.evaluate(status, routing, policies, versions, now):
            self.carry_out(decision)

    def carry_out(self, decision: Decision) -> None:
        """Edit gatewatch.toml for the decision, audit it, record it, and announce it."""
        change = {
            "promote": lambda d: (
                rollout.promote() if d.to_weight == 1.0 else rollout.set_weight(d.to_weight)
            ),
            "rollback": lambda d: rollout.rollback(),
            "shadow": lambda d: rollout.add_shadow(d.version),
            "reject": lambda d: rollout.remove_shadow(d.version),
            "canary": lambda d: _both(
                rollout.remove_shadow(d.version), rollout.set_canary(d.version, d.to_weight)
            ),
        }.get(decision.decision)
        if change is not None and self.config.path is not None:
            try:
                before, after = rollout.edit_routing(
                    self.config.path, decision.model, change(decision)
                )
            except (GatewayConfigError, OSError) as exc:
                self.rollout_errors += 1
                decision.evidence["error"] = str(exc)
                decision.reason = f"{decision.reason} (not carried out: {exc})"
                self.controller.record(decision)
                return
            audit.append(
                audit.audit_path(self.config.path, self._audit_log),
                who="sidecar:rollout",
                action="edit",
                model=decision.model,
                before=before,
                after=after,
                why=f"{decision.decision}: {decision.reason}",
            )
        self.controller.record(decision)
        key = (decision.model, decision.decision)
        self.decisions_total[key] = self.decisions_total.get(key, 0) + 1
        log.info(
            "rollout %s %s v%s: %s",
            decision.model,
            decision.decision,
            decision.version,
            decision.reason,
        )
        event_type = EVENT_TYPES.get(decision.decision)
        if event_type is not None:
            data = {**decision.as_dict(), "sidecar_url": self.public_url}
            self._enqueue(
                Event(new_event_id(), event_type, iso_utc(decision.ts), data, tuple(self.targets))
            )

    def alerts_view(self) -> dict[str, Any]:
        return {
            "active": self.policy.active(),
            "recent": self.policy.recent(),
            "counters": self.outbox.counters(),
        }

    def webhooks_view(self) -> dict[str, Any]:
        return {
            "targets": [dict(t.describe(), name=name) for name, t in self.targets.items()],
            "deliveries": self.outbox.deliveries(100),
            "counters": self.outbox.counters(),
        }

    def rollouts_view(self) -> dict[str, Any]:
        policies, routing, _ = self.routing()
        return {"models": self.controller.view(policies, routing)}


def _instance_id(state_dir: Path) -> str:
    """A random id made once per state folder: a restart from no checkpoint (or an old one)
    replays events with the ids it gave them before."""
    path = state_dir / "instance-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = uuid.uuid4().hex
        path.write_text(value + "\n")
        return value


def _both(first: rollout.Change, second: rollout.Change) -> rollout.Change:
    def change(table: Any) -> None:
        first(table)
        second(table)

    return change


class ActionsCollector:
    """Delivery, alert and rollout figures for /metrics."""

    def __init__(self, actions: Actions) -> None:
        self._actions = actions

    def collect(self) -> Iterator[Metric]:
        counters = self._actions.outbox.counters()
        deliveries = CounterMetricFamily(
            "gatewatch_webhook_deliveries", "Webhook delivery outcomes", labels=["outcome"]
        )
        for outcome in ("sent", "failed", "retried", "dead_lettered"):
            deliveries.add_metric([outcome], counters.get(outcome, 0))
        yield deliveries
        yield GaugeMetricFamily(
            "gatewatch_webhook_pending", "Deliveries waiting", value=counters.get("pending", 0)
        )
        yield GaugeMetricFamily(
            "gatewatch_alerts_active", "Alerts firing now", value=len(self._actions.policy.active())
        )
        decisions = CounterMetricFamily(
            "gatewatch_rollout_decisions",
            "Rollout decisions carried out",
            labels=["model", "decision"],
        )
        for (model, decision), n in sorted(self._actions.decisions_total.items()):
            decisions.add_metric([model, decision], n)
        yield decisions
        yield CounterMetricFamily(
            "gatewatch_rollout_errors",
            "Rollout rounds or edits that failed",
            value=self._actions.rollout_errors,
        )


def _actions(request: Request) -> Actions:
    actions: Actions = request.state.actions
    return actions


async def _view(request: Request, name: str) -> Response:
    return ORJSONResponse(await asyncio.to_thread(getattr(_actions(request), name)))


async def alerts_endpoint(request: Request) -> Response:
    return await _view(request, "alerts_view")


async def webhooks_endpoint(request: Request) -> Response:
    return await _view(request, "webhooks_view")


async def rollouts_endpoint(request: Request) -> Response:
    return await _view(request, "rollouts_view")


def actions_routes() -> list[BaseRoute]:
    return [
        Route("/alerts", alerts_endpoint, methods=["GET"]),
        Route("/webhooks", webhooks_endpoint, methods=["GET"]),
        Route("/rollouts", rollouts_endpoint, methods=["GET"]),
    ]
