"""The sidecar's HTTP app and the consumer loop its lifespan runs.

``Sidecar`` owns the engine, the log reader and the checkpoints. Reading, processing and saving
run in worker threads, one step after another, so the event loop stays free to answer HTTP
while a batch is being processed; a lock keeps status readers out of a half-processed batch.
Route handlers only parse the request, await a ``Sidecar`` method and render JSON.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from gateway.predlog import LogReader, open_reader
from sidecar.actions import Actions, ActionsCollector, actions_routes
from sidecar.config import SidecarConfig
from sidecar.dashboard import dashboard_routes
from sidecar.engine import Engine
from sidecar.history import HISTORY_KEY, History
from sidecar.responses import ORJSONResponse
from sidecar.state import Checkpoint, encode_checkpoint, load_checkpoint, write_checkpoint

__all__ = ["ORJSONResponse", "Sidecar", "SidecarCollector", "create_app", "routes"]

log = logging.getLogger("gatewatch.sidecar")

READ_TIMEOUT = 0.5
"""Longest a read waits for new records; also bounds how long a stop request waits."""
STOP_TIMEOUT = 10.0
CHECKPOINT_SHARE = 10.0
"""Checkpoints wait at least this many times as long as the last one took to save."""
RETRY_DELAY = 1.0

State = Literal["starting", "running", "stopped", "failed"]


class _ManualGC:
    """The cyclic garbage collector, run by the consumer rather than by allocation counts.

    Every batch allocates tens of thousands of containers (decoded records) that reference
    counting frees; the automatic collector still walks them, promotes them, and so keeps
    triggering full collections of the whole engine state: a third of the consumer's time in
    the benchmark. While the consumer runs, automatic collection is off, one full collection
    runs per ``interval`` (about 50 ms with 200,000 labels pending), and what exists at start
    (modules, the restored state) is frozen out of collections. ``stop`` undoes all of it.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._was_enabled = False
        self._next = 0.0

    def start(self) -> None:
        gc.freeze()
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._next = time.monotonic() + self.interval

    def tick(self) -> None:
        if time.monotonic() >= self._next:
            gc.collect()
            self._next = time.monotonic() + self.interval

    def stop(self) -> None:
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()


class Sidecar:
    """The consumer: reads the log, feeds the engine, saves checkpoints, answers status.

    ``extra`` holds other parts' picklable state (e.g. the alert policy) under their names: it
    is saved with every checkpoint and restored by ``start``. ``listeners`` are called with the
    engine after every processed batch, in the consumer's thread, while status readers wait.
    """

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.engine = Engine(config)
        self.extra: dict[str, Any] = {}
        self.history = History()
        self.listeners: list[Callable[[Engine], None]] = []
        self.state: State = "starting"
        self.last_error: str | None = None
        self.consumed = 0
        self.checkpoints = 0
        self.checkpoint_errors = 0
        self.read_errors = 0
        self.listener_errors = 0
        self._lock = threading.Lock()
        self._reader: LogReader | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._dirty = False
        self._gc = _ManualGC(config.checkpoint_interval)

    async def start(self) -> None:
        """Load the last checkpoint, open the reader at its position, start consuming."""
        checkpoint = await asyncio.to_thread(load_checkpoint, self.config.state_dir)
        position = None
        if checkpoint is not None:
            self.engine = Engine.from_snapshot(self.config, checkpoint.engine)
            self.extra.update(checkpoint.extra)
            position = checkpoint.position
        self.history = self.extra.setdefault(HISTORY_KEY, self.history)
        self._reader = await asyncio.to_thread(open_reader, self.config.log, position)
        self.state = "running"
        self._task = asyncio.create_task(self._run(), name="gatewatch-sidecar-consumer")

    async def stop(self) -> None:
        """Stop consuming and save a final checkpoint; in two steps, a bounded wait then a
        cancel (a cancelled step may still be running in its thread, so no save then)."""
        self._stop.set()
        clean = True
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT)
            except TimeoutError:
                self._task.cancel()
                clean = False
                log.warning("sidecar: consumer did not stop in %.0fs; no final save", STOP_TIMEOUT)
        if clean and self._dirty and self.state != "failed":
            await asyncio.to_thread(self._checkpoint)
        if self._reader is not None:
            await asyncio.to_thread(self._reader.close)
        if self.state != "failed":
            self.state = "stopped"

    async def _run(self) -> None:
        interval = self.config.checkpoint_interval
        next_save = time.monotonic() + interval
        self._gc.start()
        try:
            while not self._stop.is_set():
                records = await self._read()
                if records:
                    await asyncio.to_thread(self._process, records)
                self._gc.tick()
                if self._dirty and time.monotonic() >= next_save:
                    started = time.monotonic()
                    await asyncio.to_thread(self._checkpoint)
                    # A big state takes a while to save: keep saving under a tenth of the time.
                    spent = time.monotonic() - started
                    next_save = time.monotonic() + max(interval, CHECKPOINT_SHARE * spent)
        except Exception as exc:
            # A bug in processing: stop here without saving, so a restart resumes from the
            # last good checkpoint instead of persisting a half-processed batch.
            self.state = "failed"
            self.last_error = f"consumer stopped: {exc!r}"
            log.exception("sidecar: consumer failed")
        finally:
            self._gc.stop()

    async def _read(self) -> list[dict[str, Any]]:
        assert self._reader is not None
        try:
            return await asyncio.to_thread(self._reader.read, self.config.batch, READ_TIMEOUT)
        except Exception as exc:
            # The log may be briefly unavailable (Redis restarting): retry after a pause.
            self.read_errors += 1
            self.last_error = f"reading the log: {exc!r}"
            log.warning("sidecar: reading the log failed: %r", exc)
            try:
                await asyncio.wait_for(self._stop.wait(), RETRY_DELAY)
            except TimeoutError:
                pass
            return []

    def _process(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            self.engine.process(records)
            self.history.update(records, self.engine.status, self.config.path)
            self.consumed += len(records)
            self._dirty = True
            for listener in self.listeners:
                try:
                    listener(self.engine)
                except Exception as exc:
                    # The engine's state is whole: a failing listener must not stop consuming.
                    self.listener_errors += 1
                    self.last_error = f"listener {listener!r}: {exc!r}"
                    log.exception("sidecar: a batch listener failed")

    def _checkpoint(self) -> None:
        """Save state + position atomically, then acknowledge the reader; a failed save is
        counted and retried at the next interval (the reader is not acknowledged)."""
        assert self._reader is not None
        try:
            with self._lock:
                blob = encode_checkpoint(
                    Checkpoint(self.engine.snapshot(), self._reader.position(), dict(self.extra))
                )
                self._dirty = False
            write_checkpoint(self.config.state_dir, blob)
            ack_errors = getattr(self._reader, "ack_errors", 0)
            self._reader.ack()
        except Exception as exc:
            self._dirty = True
            self.checkpoint_errors += 1
            self.last_error = f"saving a checkpoint: {exc!r}"
            log.warning("sidecar: checkpoint failed: %r", exc)
            return
        self.checkpoints += 1
        if getattr(self._reader, "ack_errors", 0) != ack_errors:
            # Saved but not acknowledged (the reader retries next time): the records since the
            # previous acknowledgement may still come back, so their keys stay remembered.
            return
        with self._lock:
            self.engine.mark_checkpoint()

    def status_now(self) -> dict[str, Any]:
        with self._lock:
            return self.engine.status()

    async def status(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.status_now)

    async def model_status(self, name: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            with self._lock:
                return self.engine.model_status(name)

        return await asyncio.to_thread(read)

    def health(self) -> dict[str, Any]:
        """The consumer's own figures; ``ok`` is False once the consumer has failed."""
        return {
            "ok": self.state in ("starting", "running"),
            "state": self.state,
            "records": self.engine.records,
            "consumed": self.consumed,
            "redelivered": self.engine.redelivered,
            "checkpoints": self.checkpoints,
            "checkpoint_errors": self.checkpoint_errors,
            "read_errors": self.read_errors,
            "listener_errors": self.listener_errors,
            "corrupt_lines": self.corrupt_lines,
            "last_error": self.last_error,
        }

    @property
    def corrupt_lines(self) -> int:
        return int(getattr(self._reader, "corrupt", 0))


class SidecarCollector:
    """Prometheus metrics rendered from one status snapshot per scrape."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar

    def collect(self) -> Iterator[Metric]:
        sidecar = self._sidecar
        status = sidecar.status_now()
        counters = {
            "records": ("Prediction records counted (after de-dup)", status["records"]),
            "feedback": ("Feedback records counted", status["feedback"]),
            "consumed": ("Records read from the log, duplicates included", sidecar.consumed),
            "duplicates": ("Records seen again and ignored", status["duplicates"]),
            "redelivered": ("Records redelivered after a restart", sidecar.engine.redelivered),
            "invalid_records": ("Records without the fields a record needs", status["invalid"]),
            "corrupt_lines": ("Log lines that were not JSON records", sidecar.corrupt_lines),
            "checkpoints": ("Checkpoints saved", sidecar.checkpoints),
            "checkpoint_errors": ("Checkpoints that failed to save", sidecar.checkpoint_errors),
            "read_errors": ("Failed reads of the log", sidecar.read_errors),
            "listener_errors": ("Batch listeners that raised", sidecar.listener_errors),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(f"gatewatch_sidecar_{name}", doc, value=value)
        lag = GaugeMetricFamily("gatewatch_sidecar_lag_seconds", "Wall clock minus newest ts")
        if status["lag_seconds"] is not None:
            lag.add_metric([], status["lag_seconds"])
        yield lag
        yield GaugeMetricFamily(
            "gatewatch_sidecar_up", "1 while the consumer runs", value=float(sidecar.health()["ok"])
        )
        yield from _version_metrics(status["models"])


def _version_metrics(models: dict[str, Any]) -> Iterator[Metric]:
    labels = ["model", "version"]
    gauges = {
        name: GaugeMetricFamily(f"gatewatch_sidecar_{name}", doc, labels=labels)
        for name, doc in (
            ("error_rate", "Share of records with status >= 500"),
            ("prediction_drift_score", "Prediction drift score (larger is more drift)"),
            ("prediction_drifting", "1 while predictions drift"),
            ("accuracy", "Accuracy on joined labels (classification)"),
            ("f1_macro", "Macro F1 on joined labels (classification)"),
            ("mae", "Mean absolute error on joined labels (regression)"),
            ("concept_drifting", "1 while the error rate has risen"),
            ("shadow_agreement", "Share of shadow answers equal to the primary's"),
        )
    }
    records = CounterMetricFamily("gatewatch_sidecar_version_records", "Records", labels=labels)
    labelled = CounterMetricFamily("gatewatch_sidecar_labels", "Joined labels", labels=labels)
    latency = GaugeMetricFamily(
        "gatewatch_sidecar_latency_ms", "Latency quantiles", labels=[*labels, "quantile"]
    )
    score = GaugeMetricFamily(
        "gatewatch_sidecar_feature_drift_score", "Feature drift score", labels=[*labels, "feature"]
    )
    drifting = GaugeMetricFamily(
        "gatewatch_sidecar_feature_drifting",
        "1 while a feature drifts",
        labels=[*labels, "feature"],
    )
    for model, entry in models.items():
        for version, v in entry["versions"].items():
            key = [model, version]
            records.add_metric(key, v["records"])
            labelled.add_metric(key, v["accuracy"].get("labels") or 0)
            for q, value in v["latency_ms"].items():
                if value is not None:
                    latency.add_metric([*key, q], value)
            for feature, f in v["feature_drift"]["features"].items():
                score.add_metric([*key, feature], f["score"])
                drifting.add_metric([*key, feature], float(f["state"] == "drifting"))
            values = {
                "error_rate": v["error_rate"],
                "prediction_drift_score": v["prediction_drift"]["score"],
                "prediction_drifting": float(v["prediction_drift"]["state"] == "drifting"),
                "accuracy": v["accuracy"].get("accuracy"),
                "f1_macro": v["accuracy"].get("f1_macro"),
                "mae": v["accuracy"].get("mae"),
                "concept_drifting": float(v["concept_drift"]["state"] == "drifting"),
                "shadow_agreement": v["shadow"]["agreement"],
            }
            for name, value in values.items():
                if value is not None:
                    gauges[name].add_metric(key, value)
    yield from (records, labelled, latency, score, drifting, *gauges.values())


def _sidecar(request: Request) -> Sidecar:
    sidecar: Sidecar = request.state.sidecar
    return sidecar


async def status_endpoint(request: Request) -> Response:
    return ORJSONResponse(await _sidecar(request).status())


async def model_endpoint(request: Request) -> Response:
    name = request.path_params["model"]
    body = await _sidecar(request).model_status(name)
    if body is None:
        return ORJSONResponse({"error": f"unknown model {name!r}: no record of it yet"}, 404)
    return ORJSONResponse(body)


async def health_endpoint(request: Request) -> Response:
    health = _sidecar(request).health()
    return ORJSONResponse(health, 200 if health["ok"] else 503)


async def metrics_endpoint(request: Request) -> Response:
    registry: CollectorRegistry = request.state.metrics
    body = await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    """The sidecar's own routes; the app factory appends others' (alerts, dashboard, ...)."""
    return [
        Route("/status", status_endpoint, methods=["GET"]),
        Route("/models/{model}", model_endpoint, methods=["GET"]),
        Route("/healthz", health_endpoint, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return ORJSONResponse({"error": detail}, status)


def create_app(config: SidecarConfig, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The sidecar app; its lifespan runs the consumer and exposes ``request.state.sidecar``
    and ``request.state.metrics`` (a CollectorRegistry others may register collectors on)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        sidecar = Sidecar(config)
        actions = Actions(config, sidecar.extra)
        sidecar.listeners.append(actions.on_batch)
        await sidecar.start()
        # After the checkpoint is restored into sidecar.extra, before the consumer's first batch.
        await actions.start()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SidecarCollector(sidecar))
        registry.register(ActionsCollector(actions))
        try:
            yield {"sidecar": sidecar, "metrics": registry, "actions": actions}
        finally:
            # The consumer stops (and saves) first, so every event it committed is delivered
            # or stays in the outbox for the next start.
            await sidecar.stop()
            await actions.stop()

    return Starlette(
        routes=[*routes(), *actions_routes(), *dashboard_routes(), *extra_routes],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _http_error},
    )
