"""Prometheus metrics of the gateway, in a registry of its own (one per app, so tests don't share).

With several workers, PROMETHEUS_MULTIPROC_DIR makes every worker write its samples to that
folder and /metrics sums them (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["GatewayMetrics"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gatewatch_requests",
            "Predictions answered",
            ["model", "version", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "gatewatch_request_latency_seconds",
            "Time to answer a prediction",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "gatewatch_in_flight",
            "Requests being answered",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.load_failures = Counter(
            "gatewatch_model_load_failures", "Versions refused at load", ["model"], registry=r
        )
        self.client_errors = Counter(
            "gatewatch_client_errors",
            "Requests refused as the client's fault",
            ["status"],
            registry=r,
        )
        self.predict_errors = Counter(
            "gatewatch_predict_errors",
            "Predictions that failed in the model",
            ["model", "version"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "gatewatch_shadow_dropped",
            "Shadow predictions dropped (queue full)",
            ["model"],
            registry=r,
        )
        self.shadow_failed = Counter(
            "gatewatch_shadow_failed",
            "Shadow predictions that raised",
            ["model", "version"],
            registry=r,
        )
        self.reloads = Counter("gatewatch_reloads", "Reloads attempted", ["result"], registry=r)
        self.last_reload = Gauge(
            "gatewatch_last_reload_success_timestamp_seconds",
            "Time of the last successful reload",
            registry=r,
            multiprocess_mode="max",
        )
        self.feedback = Counter("gatewatch_feedback", "Feedback labels accepted", registry=r)
        self.shed = Counter(
            "gatewatch_shed", "Requests refused with 503 (max_in_flight)", registry=r
        )
        self._predlog_sources: list[Callable[[], dict[str, int]]] = []
        self.predlog = Gauge(
            "gatewatch_predlog_records",
            "Prediction-log records by outcome (written, dropped, sampled_out, write_errors, ...)",
            ["outcome"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.predlog_dropped = Gauge(
            "gatewatch_predlog_dropped_total",
            "Prediction-log records dropped (queue full or write failure)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.predlog_queued = Gauge(
            "gatewatch_predlog_queued",
            "Records waiting to be written",
            registry=r,
            multiprocess_mode="livesum",
        )

    def observe_predlog(self, counters: dict[str, int], queued: int) -> None:
        for outcome, value in counters.items():
            self.predlog.labels(outcome).set(value)
        self.predlog_dropped.set(counters.get("dropped", 0))
        self.predlog_queued.set(queued)

    def render(self) -> bytes:
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)

    def mark_reload(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "refused").inc()
        if ok:
            self.last_reload.set(time.time())
