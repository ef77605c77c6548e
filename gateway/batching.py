"""Adaptive batching: concurrent requests to one model version share one `predict` call.

A scikit-learn `predict_proba` costs about the same for 1 row as for 32 (the per-call
validation dominates), so stacking the rows of requests that arrive together makes prediction
nearly free under load. Each request puts its rows and a future in the batcher's queue and
waits on the future; one task per batcher takes what is queued, closes the batch and predicts.

When a batch closes:

* at `max_batch_size` requests (or `max_rows` rows, so one batch never exceeds what a single
  request may send);
* when yielding once to the event loop brought no new request: nobody else is waiting, so a
  lone request is answered at once instead of sitting out a window (this adds one loop
  iteration, tens of microseconds, not `max_wait_ms`);
* at the latest `max_wait_ms` after its first request was taken.

Each batch is predicted in the batcher's own thread, one batch at a time (models need not be
thread-safe). For a cheap model one request at a time, a thread hop costs a quarter of the
throughput (loadtests/RESULTS.md), which is why the unbatched path predicts inline; for a batch
the hop is paid once for up to `max_batch_size` requests, and it keeps the event loop free while
a slow or stuck model runs: health probes and load shedding still answer, the next batch
gathers meanwhile, and a batch that outlives `timeout_s` fails its requests instead of hanging
them. A request whose caller went away (its future is cancelled) is left out of the batch. A
batch that raises is predicted again request by request, so only the request whose rows the
model refuses gets the error (a model that raises for everything fails each request once more).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from gateway.models import Model, Prediction

__all__ = ["BatchSettings", "Batcher", "DEFAULT_BATCH_SETTINGS"]

log = logging.getLogger("gatewatch.gateway")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """How a model version's batches close: requests, rows, and the longest wait."""

    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    max_rows: int = 10_000
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if not 0.0 <= self.max_wait_ms <= 1000.0:
            raise ValueError(f"max_wait_ms must be within 0..1000, got {self.max_wait_ms}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {self.max_rows}")


DEFAULT_BATCH_SETTINGS = BatchSettings()

# Called once per batch with (model, requests, rows, error or None), for metrics.
BatchObserver = Callable[[Model, int, int, BaseException | None], None]


@dataclass(slots=True)
class _Pending:
    X: np.ndarray
    future: asyncio.Future[Prediction]


class Batcher:
    """Stacks concurrent `predict` calls to one model into one call and splits the answers.

    Create it inside the running loop (the gateway does so in its lifespan): the queue and the
    worker task belong to that loop.

    >>> import asyncio, numpy as np
    >>> from gateway.models import Prediction
    >>> class Doubler:
    ...     name, version = "double", 1
    ...     def predict(self, X):
    ...         return Prediction(X[:, 0] * 2, None)
    >>> async def demo():
    ...     batcher = Batcher(Doubler(), BatchSettings(max_batch_size=8))
    ...     rows = [np.array([[float(i)]]) for i in range(3)]
    ...     answers = await asyncio.gather(*(batcher.predict(x) for x in rows))
    ...     await batcher.close()
    ...     return [a.labels.tolist() for a in answers]
    >>> asyncio.run(demo())
    [[0.0], [2.0], [4.0]]
    """

    def __init__(
        self,
        model: Model,
        settings: BatchSettings = DEFAULT_BATCH_SETTINGS,
        *,
        observer: BatchObserver | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self._observer = observer
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._max_wait = settings.max_wait_ms / 1000.0
        self._closing = False
        # The batch being gathered (or the request left over from the last one) and the one
        # being predicted: close() must answer or cancel them, never drop them.
        self._forming: list[_Pending] = []
        self._predicting: list[_Pending] = []
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"gatewatch-batch-{model.name}-v{model.version}"
        )
        self._task = self._loop.create_task(
            self._run(), name=f"batcher-{model.name}-v{model.version}"
        )

    async def predict(self, X: np.ndarray) -> Prediction:
        """The model's answer for the rows of `X`, predicted together with concurrent requests.

        Raises whatever the model raised for the batch this request was part of.
        """
        if self._closing:
            raise RuntimeError(f"the batcher of {self.model.name} v{self.model.version} is closed")
        future: asyncio.Future[Prediction] = self._loop.create_future()
        self._queue.put_nowait(_Pending(X, future))
        return await future

    @property
    def closing(self) -> bool:
        """True once close() was called: new requests must predict some other way."""
        return self._closing

    async def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop; after `timeout` the rest fail as cancelled."""
        self._closing = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            self._forming or self._predicting or not self._queue.empty()
        ):
            await asyncio.sleep(0.005)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        leftover = self._forming + self._predicting
        while not self._queue.empty():
            leftover.append(self._queue.get_nowait())
        for pending in leftover:
            pending.future.cancel()
        self._forming, self._predicting = [], []
        # A model stuck past the timeout keeps its thread; do not wait for it.
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            self._predicting = live
            try:
                await self._predict(live)
            except Exception as exc:
                # A bug here must not leave callers waiting forever on futures nobody sets.
                log.exception("batcher of %s v%d failed", self.model.name, self.model.version)
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(RuntimeError(f"the batcher failed: {exc!r}"))
            self._predicting = []

    async def _collect(self) -> list[_Pending]:
        """Wait for a request, then take others until the batch closes (module docstring)."""
        queue = self._queue
        settings = self.settings
        # A request that did not fit the last batch opens this one.
        batch = self._forming
        if not batch:
            batch.append(await queue.get())
        rows = sum(len(p.X) for p in batch)
        deadline = time.monotonic() + self._max_wait
        while True:
            while not queue.empty() and len(batch) < settings.max_batch_size:
                nxt = queue.get_nowait()
                if rows + len(nxt.X) > settings.max_rows:
                    self._forming = [nxt]
                    return batch
                batch.append(nxt)
                rows += len(nxt.X)
            if len(batch) >= settings.max_batch_size or time.monotonic() >= deadline:
                break
            # One turn of the loop lets requests already read from their sockets join.
            await asyncio.sleep(0)
            if queue.empty():
                break
        self._forming = []
        return batch

    async def _predict(self, live: list[_Pending]) -> None:
        rows = sum(len(p.X) for p in live)
        work = self._loop.run_in_executor(self._executor, _stack_and_predict, self.model, live)
        try:
            prediction = await asyncio.wait_for(work, self.settings.timeout_s)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                exc = TimeoutError(f"no answer within {self.settings.timeout_s:g} s")
            elif len(live) > 1:
                # One request's rows may be what made the model raise: answer each request
                # on its own, so only the one at fault gets the error.
                self._observe(len(live), rows, exc)
                for p in live:
                    await self._predict([p])
                return
            self._observe(len(live), rows, exc)
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        self._observe(len(live), rows, None)
        if len(live) == 1:
            if not live[0].future.done():
                live[0].future.set_result(prediction)
            return
        labels, proba = prediction.labels, prediction.proba
        offset = 0
        for p in live:
            end = offset + len(p.X)
            part = Prediction(labels[offset:end], proba[offset:end] if proba is not None else None)
            offset = end
            # A caller cancelled while the model ran: its answer has nowhere to go.
            if not p.future.done():
                p.future.set_result(part)

    def _observe(self, requests: int, rows: int, error: BaseException | None) -> None:
        if self._observer is not None:
            with contextlib.suppress(Exception):
                self._observer(self.model, requests, rows, error)


def _stack_and_predict(model: Model, live: list[_Pending]) -> Prediction:
    """One call for the whole batch (runs in the batcher's thread)."""
    if len(live) == 1:
        return model.predict(live[0].X)
    X = np.concatenate([p.X for p in live])
    prediction = model.predict(X)
    # Splitting a short answer would hand requests each other's rows: refuse it instead.
    if len(prediction.labels) != len(X) or (
        prediction.proba is not None and len(prediction.proba) != len(X)
    ):
        raise ValueError(f"the model answered {len(prediction.labels)} rows for {len(X)}")
    return prediction
