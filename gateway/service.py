"""The gateway's service layer: pick a version, predict, log, mirror to shadows.

Endpoints parse HTTP and render; everything here works on plain values, so the V2 and V1 APIs
share one path. The request path does the least it can: the log record goes into an in-memory
queue, shadow work into a bounded queue served by its own thread, metrics are counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import Counter

from gateway import audit
from gateway.batching import Batcher, BatchSettings
from gateway.config import GatewayConfig, load_config
from gateway.errors import GatewayError, InvalidInput, RegistryError
from gateway.loader import LoadReport, build_table
from gateway.metrics import GatewayMetrics
from gateway.models import Model, Prediction
from gateway.predlog import PredictionLog, first_of_many
from gateway.registry import list_models, list_versions, version_dir
from gateway.routing import ModelRoutes, Route, RoutingTable

__all__ = ["Gateway", "Outcome", "PredictError", "PredictTimeout"]

log = logging.getLogger("gatewatch.gateway")

_MAX_ID = 256
SHADOW_GATHER_SECONDS = 0.005


class PredictError(GatewayError):
    """The model itself failed; the caller gets a 500 that says so."""

    status_code = 500


class PredictTimeout(PredictError):
    """The model did not answer within predict_timeout; the caller gets a 504."""

    status_code = 504


@dataclass(slots=True)
class Outcome:
    model: Model
    route: Route
    prediction: Prediction
    latency_ms: float


def routing_view(routes: ModelRoutes | None) -> dict[str, Any] | None:
    if routes is None:
        return None
    return {
        "primary": routes.primary,
        "canary": {"version": routes.canary, "weight": routes.weight} if routes.canary else None,
        "shadow": list(routes.shadows),
        "sticky_header": routes.sticky_header,
        "loaded": sorted(routes.versions),
    }


def outputs_of(model: Model, prediction: Prediction) -> np.ndarray | list[Any]:
    """The record's `outputs`: class probabilities, or a regressor's values one per row.

    Arrays go into the record as they are: the log's writer thread serialises them (orjson
    writes numpy arrays natively, to the same JSON as their `tolist()`), off the event loop.
    """
    if prediction.proba is not None:
        return prediction.proba
    return prediction.labels.reshape(-1, 1) if model.task == "regression" else []


def _files(root: Path, name: str, version: int) -> tuple[tuple[str, int, int], ...] | None:
    """Name, mtime and size of each file in a version's folder (None: the folder is gone)."""
    try:
        with os.scandir(version_dir(root, name, version)) as entries:
            found = []
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                found.append((entry.name, st.st_mtime_ns, st.st_size))
        return tuple(sorted(found))
    except (OSError, RegistryError):
        return None


class Gateway:
    def __init__(self, config: GatewayConfig, *, seed: int | None = None) -> None:
        self.config = config
        self.table = RoutingTable()
        self.metrics = GatewayMetrics()
        self.predlog = PredictionLog(config.log)
        self.rng = random.Random(seed)
        self.ready = False
        self.last_reload: dict[str, Any] = {"at": None, "ok": None, "error": None}
        self._shadow_queue: asyncio.Queue[tuple[Model, np.ndarray, str]] = asyncio.Queue(
            maxsize=max(config.shadow_queue, 1)
        )
        self._shadow_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gatewatch-shadow")
        self._shadow_task: asyncio.Task[None] | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self.audit_path = audit.audit_path(config.path, config.audit_log)
        self.watch_interval = 0.5
        self._batchers: dict[tuple[str, int], Batcher] = {}
        # prometheus_client's labels() takes a lock and builds a key on every call; the
        # children of the per-request counter and histogram are looked up once per (model,
        # version, route).
        self._answered: dict[tuple[str, int, str], tuple[Any, Any]] = {}
        self._failures: dict[tuple[str, int], int] = {}
        # Versions the last load refused: the watch also follows their files, so one repaired
        # in place (a manifest fixed, an artifact replaced) is tried again without a SIGHUP.
        self._refused: dict[tuple[str, int], Any] = {}
        self._batches = Counter(
            "gatewatch_batches",
            "Batched predict calls by result (ok | error)",
            ["model", "version", "result"],
            registry=self.metrics.registry,
        )
        self._batched = Counter(
            "gatewatch_batched_requests",
            "Requests answered by batched predict calls (divide by batches for the mean size)",
            ["model", "version"],
            registry=self.metrics.registry,
        )

    async def start(self) -> None:
        table, report, self._refused = await asyncio.to_thread(self._build, self.config, None)
        for name, _version, _reason in report.refused:
            self.metrics.load_failures.labels(name).inc()
        self.table = table
        self.last_reload = {"at": time.time(), "ok": True, "error": None}
        self.metrics.mark_reload(True)
        await self.predlog.start()
        self._sync_batchers()
        self._shadow_task = asyncio.create_task(self._shadow_worker())
        self._metrics_task = asyncio.create_task(self._refresh_metrics())
        self._watch_task = asyncio.create_task(self._watch())
        with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
            # Only the main thread of a process can take signals (not a test's server thread).
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("SIGHUP", who="signal"))
            )
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        tasks = [t for t in (self._shadow_task, self._metrics_task, self._watch_task) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        batchers, self._batchers = list(self._batchers.values()), {}
        await asyncio.gather(*(b.close() for b in batchers), return_exceptions=True)
        self._shadow_pool.shutdown(wait=False, cancel_futures=True)
        await self.predlog.close()

    def choose(
        self, name: str, version: int | None, headers: Mapping[str, str]
    ) -> tuple[Model, Route]:
        """The version that answers (pinned, canary or primary) under the current table."""
        table = self.table
        routes = table.routes(name)
        sticky = headers.get(routes.sticky_header) if routes.sticky_header else None
        return table.pick(name, version, sticky, self.rng)

    def predict(self, model: Model, route: Route, X: np.ndarray, request_id: str) -> Outcome:
        """Predict inline, on the caller's thread: the unbatched path."""
        start = time.perf_counter()
        try:
            prediction = model.predict(X)
        except Exception as exc:
            raise self._failed(model, route, request_id, X, exc, start) from exc
        latency = (time.perf_counter() - start) * 1000.0
        self._log(model, route, request_id, X, prediction, latency, 200, None)
        return Outcome(model, route, prediction, latency)

    async def infer(self, model: Model, route: Route, X: np.ndarray, request_id: str) -> Outcome:
        """Predict through the version's batcher when batching is on, else inline.

        The logged latency is the request's own: its wait for the batch plus the batch's call.
        A batch that outlives `predict_timeout` fails its requests with a PredictError.
        """
        batcher = self._batchers.get((model.name, model.version))
        if batcher is None or batcher.model is not model or batcher.closing:
            return self.predict(model, route, X, request_id)
        start = time.perf_counter()
        try:
            prediction = await batcher.predict(X)
        except Exception as exc:
            raise self._failed(model, route, request_id, X, exc, start) from exc
        latency = (time.perf_counter() - start) * 1000.0
        self._log(model, route, request_id, X, prediction, latency, 200, None)
        return Outcome(model, route, prediction, latency)

    def _failed(
        self,
        model: Model,
        route: Route,
        request_id: str,
        X: np.ndarray,
        exc: Exception,
        start: float,
    ) -> PredictError:
        """Count, log and describe a prediction the model could not make."""
        name = model.name
        latency = (time.perf_counter() - start) * 1000.0
        self.metrics.predict_errors.labels(name, str(model.version)).inc()
        timeout = isinstance(exc, TimeoutError)
        status = 504 if timeout else 500
        self._log(
            model, route, request_id, X, None, latency, status, f"{type(exc).__name__}: {exc}"
        )
        key = (name, model.version)
        count = self._failures[key] = self._failures.get(key, 0) + 1
        if first_of_many(count):
            log.error(
                "%s v%d failed to predict (%d failures so far; gatewatch_predict_errors_total)",
                name,
                model.version,
                count,
                exc_info=exc,
            )
        if timeout:
            return PredictTimeout(
                f"model {name} v{model.version} did not answer in time: {exc} (predict_timeout)"
            )
        return PredictError(
            f"model {name} v{model.version} failed to predict: {type(exc).__name__}: {exc}"
        )

    def count_answer(self, model: Model, route: Route, started: float) -> None:
        """One more answered prediction in gatewatch_requests_total, and the time since
        ``started`` (``time.perf_counter()`` when the request arrived) in
        gatewatch_request_latency_seconds."""
        key = (model.name, model.version, route)
        children = self._answered.get(key)
        if children is None:
            version = str(model.version)
            children = (
                self.metrics.requests.labels(model.name, version, route, "200"),
                self.metrics.latency.labels(model.name, version),
            )
            self._answered[key] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)

    def batch_settings(self, name: str) -> BatchSettings | None:
        """How `name`'s batches close under the current config; None when batching is off."""
        config = self.config
        size = self._batch_size(name)
        if not config.batching or size <= 1:
            return None
        mc = config.models.get(name)
        wait = mc.max_wait_ms if mc and mc.max_wait_ms is not None else config.max_wait_ms
        return BatchSettings(size, wait, config.max_batch_rows, config.predict_timeout)

    def _batch_size(self, name: str) -> int:
        mc = self.config.models.get(name)
        if mc is not None and mc.max_batch_size is not None:
            return mc.max_batch_size
        return self.config.max_batch_size

    def _sync_batchers(self) -> list[Batcher]:
        """Give every loaded version of the table a batcher with its settings.

        Returns the batchers no longer wanted; the caller closes them (they first answer what
        they hold). Runs on the event loop, in the lifespan or a reload.
        """
        wanted: dict[tuple[str, int], tuple[Model, BatchSettings]] = {}
        for name, routes in self.table.models.items():
            settings = self.batch_settings(name)
            if settings is not None:
                for version, model in routes.versions.items():
                    wanted[(name, version)] = (model, settings)
        old = self._batchers
        kept: dict[tuple[str, int], Batcher] = {}
        for key, (model, settings) in wanted.items():
            batcher = old.get(key)
            if batcher is not None and batcher.model is model and batcher.settings == settings:
                kept[key] = batcher
            else:
                kept[key] = Batcher(model, settings, observer=self._observe_batch)
        self._batchers = kept
        return [b for key, b in old.items() if kept.get(key) is not b]

    def _observe_batch(
        self, model: Model, requests: int, rows: int, error: BaseException | None
    ) -> None:
        version = str(model.version)
        self._batches.labels(model.name, version, "ok" if error is None else "error").inc()
        self._batched.labels(model.name, version).inc(requests)

    def mirror(self, name: str, X: np.ndarray, request_id: str) -> None:
        """Queue the request for every shadow version; called once the answer is on its way."""
        for shadow in self.table.shadows(name):
            try:
                self._shadow_queue.put_nowait((shadow, X, request_id))
            except asyncio.QueueFull:
                self.metrics.shadow_dropped.labels(name).inc()

    def _build(
        self, config: GatewayConfig, previous: RoutingTable | None
    ) -> tuple[RoutingTable, LoadReport, dict[tuple[str, int], Any]]:
        """``build_table``, and the files of each version it refused as they were then."""
        table, report = build_table(config, previous)
        refused = {(n, v): _files(config.registry, n, v) for n, v, _ in report.refused}
        return table, report, refused

    def _repaired(self) -> bool:
        """Whether the files of a refused version changed since it was refused (or since
        the last time this said so: one reload per change, not one per poll)."""
        changed = False
        for key, files in self._refused.items():
            now = _files(self.config.registry, *key)
            if now != files:
                self._refused[key] = now
                changed = True
        return changed

    def _signature(self) -> tuple[Any, ...]:
        """What a reload depends on: the config file's identity and the registry's versions."""
        path = self.config.path
        stat = None
        if path is not None:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                stat = (st.st_mtime_ns, st.st_size, st.st_ino)
        root = self.config.registry
        versions = tuple((m, tuple(list_versions(root, m))) for m in list_models(root))
        return stat, versions

    async def _watch(self) -> None:
        """Poll the config file and the registry; reload when either changes.

        Polling rather than inotify: the config's folder usually also holds the prediction log,
        whose constant writes would flood a directory watch, and a stat twice a second is cheap.
        """
        seen = await asyncio.to_thread(self._signature)
        while True:
            await asyncio.sleep(self.watch_interval)
            try:
                now = await asyncio.to_thread(self._signature)
                repaired = bool(self._refused) and await asyncio.to_thread(self._repaired)
            except Exception:
                log.exception("reading the registry to watch it failed")
                continue
            if now != seen or repaired:
                if now[0] != seen[0]:
                    reason = "config file changed"
                else:
                    reason = "registry changed" if now != seen else "a refused version changed"
                seen = now
                try:
                    await self.reload(reason, who="watch")
                except Exception:
                    # The watch must outlive any one reload, or later changes would be missed.
                    log.exception("reload after '%s' failed", reason)

    async def reload(self, reason: str, *, who: str = "gateway") -> bool:
        """Validate and load a new table off the event loop, then swap it in; False if refused.

        Requests already running keep the model object they picked, so they finish on it; a
        version no longer referenced by the table is freed once they are done.
        """
        async with self._reload_lock:
            try:
                config = load_config(self.config.path) if self.config.path else self.config
                table, report, refused = await asyncio.to_thread(self._build, config, self.table)
            except Exception as exc:
                error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                self.last_reload = {
                    "at": time.time(),
                    "ok": False,
                    "error": error,
                    "reason": reason,
                }
                self.metrics.mark_reload(False)
                log.error(
                    "reload refused (%s): %s; the last good config keeps serving", reason, error
                )
                audit.append(
                    self.audit_path, who=who, action="reload_refused", why=f"{reason}: {error}"
                )
                return False
            old = self.table
            self.config = config
            self.table = table
            self._refused = refused
            retired = self._sync_batchers()
            self.last_reload = {"at": time.time(), "ok": True, "error": None, "reason": reason}
            self.metrics.mark_reload(True)
        # Requests that picked a retired batcher's version are answered before it stops.
        await asyncio.gather(*(b.close() for b in retired), return_exceptions=True)
        for name, version, why in report.refused:
            self.metrics.load_failures.labels(name).inc()
            audit.append(
                self.audit_path,
                who=who,
                action="version_refused",
                model=name,
                after=version,
                why=why,
            )
        for name, version in report.loaded:
            audit.append(
                self.audit_path,
                who=who,
                action="version_loaded",
                model=name,
                after=version,
                why=reason,
            )
        for name in sorted(set(old.models) | set(table.models)):
            before = routing_view(old.models.get(name))
            after = routing_view(table.models.get(name))
            if before != after:
                audit.append(
                    self.audit_path,
                    who=who,
                    action="reload",
                    model=name,
                    before=before,
                    after=after,
                    why=reason,
                )
        return True

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "config": str(self.config.path) if self.config.path else None,
            "registry": str(self.config.registry),
            "last_reload": self.last_reload,
            "models": {name: routing_view(r) for name, r in sorted(self.table.models.items())},
            "predlog": {**self.predlog_counters(), "queued": self.predlog.queued},
        }

    async def _refresh_metrics(self) -> None:
        """Publish the log writer's counters every second (each worker publishes its own)."""
        while True:
            self.metrics.observe_predlog(self.predlog_counters(), self.predlog.queued)
            await asyncio.sleep(1.0)

    async def _shadow_worker(self) -> None:
        """Predict queued shadow work in the shadow thread, one stacked call per version.

        Under load the queue holds many requests for the same shadow; stacking them (up to the
        model's max_batch_size) keeps a shadow's cost per request as low as a batched primary's.
        Nobody waits for a shadow, so this holds whether or not `gateway.batching` is on.
        """
        loop = asyncio.get_running_loop()
        queue = self._shadow_queue
        while True:
            jobs = [await queue.get()]
            # Nobody waits for a shadow: a few milliseconds let more requests join the stack.
            await asyncio.sleep(SHADOW_GATHER_SECONDS)
            while not queue.empty() and len(jobs) < 1024:
                jobs.append(queue.get_nowait())
            groups: dict[int, list[tuple[Model, np.ndarray, str]]] = {}
            for job in jobs:
                groups.setdefault(id(job[0]), []).append(job)
            for group in groups.values():
                model = group[0][0]
                size = max(self._batch_size(model.name), 1)
                for i in range(0, len(group), size):
                    await self._shadow_batch(loop, model, group[i : i + size])

    async def _shadow_batch(
        self,
        loop: asyncio.AbstractEventLoop,
        model: Model,
        jobs: list[tuple[Model, np.ndarray, str]],
    ) -> None:
        start = time.perf_counter()
        try:
            X = jobs[0][1] if len(jobs) == 1 else np.concatenate([x for _, x, _ in jobs])
            prediction = await loop.run_in_executor(self._shadow_pool, model.predict, X)
        except Exception as exc:
            latency = (time.perf_counter() - start) * 1000.0
            error = f"{type(exc).__name__}: {exc}"
            for _, x, request_id in jobs:
                self.metrics.shadow_failed.labels(model.name, str(model.version)).inc()
                self._log(model, "shadow", request_id, x, None, latency, 500, error)
            return
        latency = (time.perf_counter() - start) * 1000.0
        offset = 0
        for _, x, request_id in jobs:
            end = offset + len(x)
            part = prediction
            if len(jobs) > 1:
                proba = prediction.proba
                part = Prediction(
                    prediction.labels[offset:end], proba[offset:end] if proba is not None else None
                )
            offset = end
            self._log(model, "shadow", request_id, x, part, latency, 200, None)

    def _log(
        self,
        model: Model,
        role: str,
        request_id: str,
        X: np.ndarray,
        prediction: Prediction | None,
        latency_ms: float,
        status: int,
        error: str | None,
    ) -> None:
        record: dict[str, Any] = {
            "id": request_id,
            "ts": time.time(),
            "model": model.name,
            "version": model.version,
            "role": role,
            "inputs": X if self.config.log.inputs == "full" else None,
            "outputs": outputs_of(model, prediction) if prediction is not None else None,
            "prediction": prediction.labels if prediction is not None else None,
            "latency_ms": round(latency_ms, 3),
            "status": status,
        }
        if error is not None:
            record["error"] = error
        self.predlog.submit(record)

    def predlog_counters(self) -> dict[str, int]:
        log = self.predlog
        names = ("written", "dropped", "sampled_out", "write_errors", "spilled", "replayed")
        return {name: int(getattr(log, name)) for name in names}

    def log_refusal(
        self, model: Model, route: Route, request_id: str, status: int, error: str
    ) -> None:
        """A request refused before the model ran still leaves a record, with its status."""
        self.predlog.submit(
            {
                "id": request_id,
                "ts": time.time(),
                "model": model.name,
                "version": model.version,
                "role": route,
                "inputs": None,
                "outputs": None,
                "prediction": None,
                "latency_ms": 0.0,
                "status": status,
                "error": error,
            }
        )

    def feedback(self, items: Sequence[Any]) -> int:
        """Validate every item first, so a bad list writes nothing and names the bad item."""
        records = []
        now = time.time()
        for i, item in enumerate(items):
            where = f"item {i}" if len(items) > 1 else "feedback"
            if not isinstance(item, dict):
                raise InvalidInput(f"{where}: must be an object with request_id and label")
            unknown = set(item) - {"request_id", "label"}
            if unknown:
                raise InvalidInput(f"{where}: unknown keys {sorted(unknown)}")
            rid = item.get("request_id")
            if not isinstance(rid, str) or not rid or len(rid) > _MAX_ID:
                raise InvalidInput(
                    f"{where}: request_id must be a non-empty string of at most {_MAX_ID} characters"
                )
            if "label" not in item:
                raise InvalidInput(f"{where}: label is missing")
            label = item["label"]
            _check_label(where, label)
            records.append({"kind": "feedback", "id": rid, "ts": now, "label": label})
        for record in records:
            self.predlog.submit(record)
        self.metrics.feedback.inc(len(records))
        return len(records)


def _check_label(where: str, label: Any, nested: bool = False) -> None:
    if isinstance(label, bool):
        return
    if isinstance(label, int):
        if abs(label) > 2**53:
            raise InvalidInput(f"{where}: label {label} is too large")
        return
    if isinstance(label, float):
        if label != label or label in (float("inf"), float("-inf")):
            raise InvalidInput(f"{where}: label must be finite")
        return
    if isinstance(label, str):
        if not label or len(label) > _MAX_ID:
            raise InvalidInput(f"{where}: a string label has 1 to {_MAX_ID} characters")
        return
    if isinstance(label, list) and not nested:
        if not label or len(label) > 10_000:
            raise InvalidInput(f"{where}: a list of labels holds 1 to 10000 labels (one per row)")
        for value in label:
            _check_label(where, value, nested=True)
        return
    raise InvalidInput(
        f"{where}: label must be a class label or a number (or a list of them, one per row)"
    )
