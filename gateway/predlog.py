"""The prediction log: record format, the gateway's writer and the sidecar's readers.

The gateway hands each record to :class:`PredictionLog.submit`, which only appends to an
in-memory queue; a background task writes batches to the transport. A full queue or a failing
disk drops records and counts them, it never slows or fails a prediction.

Transports:

* ``file``: each writer (one per gateway process) appends whole lines to its own segment files
  ``predlog-<writer>-<seq>.jsonl`` in ``LogConfig.dir``, so several uvicorn workers can share
  the folder without interleaving. Segments rotate by size; retention deletes old closed ones.
* ``redis``: one XADD per record into a Redis stream, one MULTI/EXEC per batch (see
  ``gateway/_predlog_redis.py``). While Redis is unreachable, batches spill to segment files
  under ``<dir>/spill/`` and are replayed, in order, before anything newer.

Readers (:func:`open_reader`) give the sidecar at-least-once delivery from a checkpoint.
The file reader visits writers in name order, round-robin, and each writer's segments in
sequence order; for a given directory content, checkpoint and sequence of ``read`` calls
it always returns the same records in the same order.

This module imports nothing from the web stack: the sidecar imports it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import socket
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Protocol, TextIO, TypeVar

import orjson

__all__ = [
    "FileReader",
    "FileSink",
    "LogConfig",
    "LogConfigError",
    "LogReader",
    "PredictionLog",
    "Sink",
    "decode",
    "encode",
    "first_of_many",
    "open_reader",
    "stats",
    "tail",
]

logger = logging.getLogger(__name__)

Transport = Literal["file", "redis"]
FsyncPolicy = Literal["interval", "always", "never"]
InputsPolicy = Literal["full", "none"]

SEGMENT_RE = re.compile(r"^predlog-(?P<writer>[A-Za-z0-9._-]+)-(?P<seq>\d{6,})\.jsonl$")
_WRITER_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_CHOICES: dict[str, tuple[str, ...]] = {
    "transport": ("file", "redis"),
    "fsync": ("interval", "always", "never"),
    "inputs": ("full", "none"),
}
_POSITIVE_INTS = ("maxlen", "queue_size", "batch_size", "segment_bytes")
_FLOAT_FIELDS = ("fsync_interval", "retention_seconds", "sample")
_RETENTION_CHECK_SECONDS = 60.0
_READ_CHUNK = 1 << 20
_READ_POLL_SECONDS = 0.05
_T = TypeVar("_T")


class LogConfigError(ValueError):
    """A ``[log]`` setting is wrong; ``key`` is the dotted TOML key, e.g. ``log.sample``."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Settings of the prediction log, the ``[log]`` table of gatewatch.toml.

    Parameters
    ----------
    transport
        ``"file"`` (segments in ``dir``, nothing to install) or ``"redis"`` (a stream at ``url``;
        ``dir/spill`` then holds what could not be sent yet).
    maxlen
        Approximate length cap of the stream (XADD MAXLEN ~): the oldest entries go first.
    queue_size, batch_size
        Records waiting in memory before new ones are dropped; records per write.
    fsync, fsync_interval
        ``"interval"`` syncs at most every ``fsync_interval`` seconds, ``"always"`` after every
        batch, ``"never"`` leaves it to the OS.
    segment_bytes, retention_seconds, retention_bytes
        Rotate segments at this size; delete this writer's closed segments older than
        ``retention_seconds`` or beyond ``retention_bytes`` in total (None: keep).
    inputs, sample
        ``"none"`` leaves the feature values out of the log; ``sample`` is the share of
        prediction records kept (feedback is always kept).

    >>> LogConfig.from_table({"transport": "file", "sample": 0.5}).sample
    0.5
    """

    transport: Transport = "file"
    dir: str = "var/predlog"
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "gatewatch:predictions"
    maxlen: int = 1_000_000
    queue_size: int = 100_000
    batch_size: int = 512
    fsync: FsyncPolicy = "interval"
    fsync_interval: float = 1.0
    segment_bytes: int = 64 * 1024 * 1024
    retention_seconds: float | None = None
    retention_bytes: int | None = None
    inputs: InputsPolicy = "full"
    sample: float = 1.0

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> LogConfig:
        """Build from the parsed ``[log]`` table; TOML integers are accepted for float keys."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in known:
                raise LogConfigError(f"log.{key}", "unknown key")
            if key in _FLOAT_FIELDS and _is_int(value):
                value = float(value)
            values[key] = value
        return cls(**values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _validate(config: LogConfig) -> None:
    """Check every field in one place, so hand-built configs are as safe as parsed ones."""

    def fail(key: str, reason: str) -> LogConfigError:
        return LogConfigError(f"log.{key}", reason)

    for key, choices in _CHOICES.items():
        value = getattr(config, key)
        if value not in choices:
            allowed = ", ".join(repr(c) for c in choices)
            raise fail(key, f"must be one of {allowed}, got {value!r}")
    for key in ("dir", "url", "stream"):
        value = getattr(config, key)
        if not isinstance(value, str) or not value:
            raise fail(key, f"must be a non-empty string, got {value!r}")
    if not config.url.startswith(("redis://", "rediss://", "unix://")):
        raise fail("url", f"must start with redis://, rediss:// or unix://, got {config.url!r}")
    for key in _POSITIVE_INTS:
        value = getattr(config, key)
        if not _is_int(value) or value < 1:
            raise fail(key, f"must be a positive integer, got {value!r}")
    interval = config.fsync_interval
    if not _is_number(interval) or not math.isfinite(interval) or interval <= 0:
        raise fail("fsync_interval", f"must be a positive number of seconds, got {interval!r}")
    seconds = config.retention_seconds
    if seconds is not None and (not _is_number(seconds) or not seconds > 0):
        raise fail("retention_seconds", f"must be a positive number, got {seconds!r}")
    size = config.retention_bytes
    if size is not None and (not _is_int(size) or size < 1):
        raise fail("retention_bytes", f"must be a positive integer, got {size!r}")
    sample = config.sample
    if not _is_number(sample) or not 0.0 <= sample <= 1.0:
        raise fail("sample", f"must be between 0 and 1, got {sample!r}")


def _default(obj: Any) -> Any:
    """Fallback for values orjson cannot serialise natively (e.g. non-contiguous arrays)."""
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} in a prediction record")


def encode(record: Mapping[str, Any]) -> bytes:
    """One record as a JSON line ending in ``\\n``; numpy arrays and scalars are accepted."""
    return orjson.dumps(
        record, default=_default, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    )


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line; raises ValueError unless it holds a JSON object."""
    value = orjson.loads(line)
    if not isinstance(value, dict):
        raise ValueError(f"a log record must be a JSON object, got {type(value).__name__}")
    return value


def is_prediction(record: Mapping[str, Any]) -> bool:
    """Prediction records carry no ``kind`` (the writer saves the bytes) or ``"prediction"``."""
    return bool(record.get("kind", "prediction") == "prediction")


def default_writer_name() -> str:
    """``<host>-<pid>``: unique per gateway process on a machine, stable for its lifetime."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def segment_name(writer: str, seq: int) -> str:
    return f"predlog-{writer}-{seq:06d}.jsonl"


def list_segments(directory: Path) -> dict[str, list[tuple[int, str]]]:
    """Segment files of a folder (not its subfolders) by writer, each list in sequence order."""
    by_writer: dict[str, list[tuple[int, str]]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return by_writer
    for name in names:
        match = SEGMENT_RE.match(name)
        if match is not None:
            by_writer.setdefault(match["writer"], []).append((int(match["seq"]), name))
    for segments in by_writer.values():
        segments.sort()
    return by_writer


def first_of_many(counter: int) -> bool:
    """True for the 1st, 2nd, 4th, 8th... event: keeps a failing disk or model from flooding
    the logs, while the counters keep the exact figure."""
    return counter & (counter - 1) == 0


class Sink(Protocol):
    """Where the writer's batches go. Methods run in a worker thread, never two at once.

    ``write`` is all or nothing: it either stores every line or raises and stores none.
    ``poll`` does periodic work that is due (fsync, retention, reconnects) and returns the
    ``time.monotonic()`` at which it wants to be called again, or None.
    ``errors`` counts failures that lost no record (fsync, retention), ``spilled`` and
    ``replayed`` the records a Redis sink parked on disk and later delivered.
    """

    @property
    def spilled(self) -> int: ...
    @property
    def replayed(self) -> int: ...
    @property
    def errors(self) -> int: ...

    def open(self) -> None: ...
    def write(self, lines: list[bytes]) -> None: ...
    def poll(self) -> float | None: ...
    def close(self) -> None: ...


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("write returned no progress")
        view = view[written:]


class FileSink:
    """Append-only segment files of one writer in one folder.

    Parameters
    ----------
    config
        Segment size, fsync policy and retention come from here.
    writer_name
        Names this writer's files; no other process may use the same name concurrently.
    directory
        Defaults to ``config.dir``; the Redis transport points it at its spill folder.
    """

    def __init__(self, config: LogConfig, writer_name: str, directory: Path | None = None) -> None:
        self.config = config
        self.writer_name = writer_name
        self.directory = Path(config.dir) if directory is None else directory
        self.spilled = 0
        self.replayed = 0
        self.errors = 0
        self._fd: int | None = None
        self._seq = 0
        self._size = 0
        self._dirty = False
        self._last_sync = time.monotonic()
        self._next_retention = time.monotonic() + _RETENTION_CHECK_SECONDS

    @property
    def active_path(self) -> Path | None:
        """The segment currently open for appending, if any."""
        return (
            None if self._fd is None else self.directory / segment_name(self.writer_name, self._seq)
        )

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # A restarted writer with the same name starts a fresh segment: the old one may end in
        # a torn line, which readers skip once a later segment exists.
        own = list_segments(self.directory).get(self.writer_name, [])
        self._seq = own[-1][0] if own else 0
        self._apply_retention()

    def write(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        if self._fd is not None and self._size > 0:
            if self._size + len(data) > self.config.segment_bytes:
                self.roll()
        fd = self._fd if self._fd is not None else self._open_next()
        try:
            _write_all(fd, data)
        except OSError:
            self._undo_partial_write(fd)
            raise
        self._size += len(data)
        self._dirty = True
        policy = self.config.fsync
        if policy == "always" or (
            policy == "interval"
            and time.monotonic() - self._last_sync >= self.config.fsync_interval
        ):
            self._sync_quietly()
        if self._size >= self.config.segment_bytes:
            self.roll()

    def poll(self) -> float | None:
        now = time.monotonic()
        deadlines: list[float] = []
        if self._dirty and self.config.fsync == "interval":
            due = self._last_sync + self.config.fsync_interval
            if now >= due:
                self._sync_quietly()
            else:
                deadlines.append(due)
        if self.config.retention_seconds is not None:
            if now >= self._next_retention:
                self._apply_retention()
            deadlines.append(self._next_retention)
        return min(deadlines) if deadlines else None

    def roll(self) -> None:
        """Close the active segment (fsynced unless fsync="never"); the next write opens another."""
        fd = self._fd
        if fd is None:
            return
        if self.config.fsync != "never" and self._dirty:
            self._sync_quietly()
        self._fd = None
        self._size = 0
        self._dirty = False
        os.close(fd)
        self._apply_retention()

    def close(self) -> None:
        self.roll()

    def _open_next(self) -> int:
        self._seq += 1
        path = self.directory / segment_name(self.writer_name, self._seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        if self.config.fsync != "never":
            self._sync_directory()
        return fd

    def _sync_directory(self) -> None:
        """Make the new file's name durable too, not only its content."""
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.errors += 1
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            self.errors += 1
        finally:
            os.close(dir_fd)

    def _undo_partial_write(self, fd: int) -> None:
        """Cut a half-written batch off, or give up the segment so readers skip its torn tail."""
        try:
            os.ftruncate(fd, self._size)
        except OSError:
            self.errors += 1
            self._fd = None
            self._size = 0
            self._dirty = False
            with contextlib.suppress(OSError):
                os.close(fd)

    def _sync_quietly(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.errors += 1
            if first_of_many(self.errors):
                logger.warning("prediction log: fsync failed (%d so far): %s", self.errors, exc)
        self._dirty = False
        self._last_sync = time.monotonic()

    def _apply_retention(self) -> None:
        """Delete this writer's closed segments beyond the age or size limit, oldest first."""
        self._next_retention = time.monotonic() + _RETENTION_CHECK_SECONDS
        max_age, max_bytes = self.config.retention_seconds, self.config.retention_bytes
        if max_age is None and max_bytes is None:
            return
        closed: list[tuple[Path, os.stat_result]] = []
        for seq, name in list_segments(self.directory).get(self.writer_name, []):
            if self._fd is not None and seq == self._seq:
                continue
            path = self.directory / name
            with contextlib.suppress(FileNotFoundError):
                closed.append((path, path.stat()))
        total = sum(st.st_size for _, st in closed)
        cutoff = time.time() - max_age if max_age is not None else -math.inf
        for path, st in closed:
            too_old = st.st_mtime < cutoff
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError:
                self.errors += 1
                continue
            total -= st.st_size


class PredictionLog:
    """The gateway's writer: never blocks or fails the request path.

    Counters (plain ints, for /metrics): ``written`` records handed to the transport (for
    Redis this includes records spilled to disk), ``dropped`` records lost (queue full, disk
    error, unencodable, or still queued when ``close`` timed out), ``sampled_out`` prediction
    records skipped by ``sample``, ``write_errors`` failed writes and fsyncs, ``spilled`` and
    ``replayed`` records that went through the Redis spill folder. At rest,
    ``written + dropped + sampled_out`` equals the number of ``submit`` calls.

    ``config.sample`` keeps a prediction record when a hash of its ``id`` falls in the kept
    share, so a request's primary and shadow records are kept or skipped together (and its
    feedback, always kept, finds them). ``submit`` belongs on the event loop's thread; from
    another thread it still works, at the price of a thread-safe wake-up.

    Parameters
    ----------
    config
        The ``[log]`` settings.
    writer_name
        Names this process's segment files; defaults to ``<host>-<pid>``.
    sink
        Replaces the transport chosen by ``config.transport`` (tests, other backends).
    """

    def __init__(
        self, config: LogConfig, writer_name: str | None = None, *, sink: Sink | None = None
    ) -> None:
        name = default_writer_name() if writer_name is None else writer_name
        if not _WRITER_RE.match(name):
            raise ValueError(f"writer_name must match {_WRITER_RE.pattern}, got {name!r}")
        self.config = config
        self.writer_name = name
        self.written = 0
        self.dropped = 0
        self.sampled_out = 0
        self._write_errors = 0
        self._sink = sink if sink is not None else _make_sink(config, name)
        self._executor: ThreadPoolExecutor | None = None
        self._buffer: deque[dict[str, Any]] = deque()
        self._in_flight = 0
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._sample = config.sample
        self._strip_inputs = config.inputs == "none"
        self._queue_size = config.queue_size
        self._batch_size = config.batch_size

    @property
    def queued(self) -> int:
        """Records accepted but not yet written, including the batch being written."""
        return len(self._buffer) + self._in_flight

    @property
    def write_errors(self) -> int:
        return self._write_errors + self._sink.errors

    @property
    def spilled(self) -> int:
        return self._sink.spilled

    @property
    def replayed(self) -> int:
        return self._sink.replayed

    async def start(self) -> None:
        """Open the transport and start draining on the running loop."""
        if self._task is not None:
            raise RuntimeError("PredictionLog.start() was already called")
        # One dedicated thread keeps sink calls in order, and unlike asyncio.to_thread a write
        # stuck on a dead disk does not hold up the event loop's shutdown.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"predlog-{self.writer_name}")
        try:
            await self._in_thread(self._sink.open)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._drain(), name=f"predlog-drain-{self.writer_name}")

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue a record; False means it was dropped (and counted). Never raises or waits.

        The record is owned by the log from here on: do not mutate it afterwards.
        """
        try:
            if self._closing:
                self.dropped += 1
                return False
            if is_prediction(record):
                if self._sample < 1.0 and not self._sampled_in(record):
                    self.sampled_out += 1
                    return True
                if self._strip_inputs and "inputs" in record:
                    record = {k: v for k, v in record.items() if k != "inputs"}
            if len(self._buffer) >= self._queue_size:
                self.dropped += 1
                return False
            self._buffer.append(record)
            if self._loop is None or threading.get_ident() == self._loop_thread:
                self._wakeup.set()
            else:
                # asyncio.Event is not thread-safe; a sync endpoint's worker thread lands here.
                self._loop.call_soon_threadsafe(self._wakeup.set)
            return True
        except Exception:
            self.dropped += 1
            return False

    def _sampled_in(self, record: dict[str, Any]) -> bool:
        """Decide by request id, so a request's primary, shadow and feedback stay together."""
        request_id = record.get("id")
        if isinstance(request_id, str):
            return zlib.crc32(request_id.encode()) < self._sample * 2**32
        return self._random.random() < self._sample

    async def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, fsync and close; what is not written within timeout is dropped."""
        self._closing = True
        self._wakeup.set()
        task = self._task
        if task is None or task.done():
            self.dropped += len(self._buffer)
            self._buffer.clear()
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
            return
        except TimeoutError:
            pass
        except Exception as exc:
            logger.error("prediction log: the writer task failed: %s", exc)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        self.dropped += len(self._buffer) + self._in_flight
        self._buffer.clear()
        self._in_flight = 0
        # The cancelled batch may still be inside the sink: close it once that write returns.
        if self._executor is not None:
            self._executor.submit(self._close_sink)
            self._executor.shutdown(wait=False)

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        assert self._executor is not None, "start() creates the executor"
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def _drain(self) -> None:
        next_poll: float | None = None
        while True:
            if not self._buffer:
                if self._closing:
                    break
                self._wakeup.clear()
                delay = None if next_poll is None else next_poll - time.monotonic()
                if delay is None or delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), delay)
                if not self._buffer:
                    next_poll = await self._in_thread(self._poll_sink)
                    continue
            count = min(self._batch_size, len(self._buffer))
            batch = [self._buffer.popleft() for _ in range(count)]
            self._in_flight = count
            written, next_poll = await self._in_thread(self._write_batch, batch)
            self._in_flight = 0
            self.written += written
            self.dropped += count - written
        await self._in_thread(self._close_sink)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def _write_batch(self, batch: list[dict[str, Any]]) -> tuple[int, float | None]:
        """Encode and store one batch (worker thread); returns records stored and next poll."""
        lines: list[bytes] = []
        for record in batch:
            try:
                lines.append(encode(record))
            except (TypeError, ValueError) as exc:
                self._write_errors += 1
                if first_of_many(self._write_errors):
                    logger.warning("prediction log: unencodable record dropped: %s", exc)
        try:
            if lines:
                self._sink.write(lines)
            next_poll = self._sink.poll()
        except Exception as exc:
            self._write_errors += 1
            if first_of_many(self._write_errors):
                logger.warning(
                    "prediction log: batch of %d records dropped (%d write errors so far): %s",
                    len(batch),
                    self._write_errors,
                    exc,
                )
            return 0, time.monotonic() + 1.0
        return len(lines), next_poll

    def _poll_sink(self) -> float | None:
        try:
            return self._sink.poll()
        except Exception as exc:
            self._write_errors += 1
            logger.warning("prediction log: periodic work failed: %s", exc)
            return time.monotonic() + 1.0

    def _close_sink(self) -> None:
        try:
            self._sink.close()
        except Exception as exc:
            self._write_errors += 1
            logger.warning("prediction log: closing the transport failed: %s", exc)


def _make_sink(config: LogConfig, writer_name: str) -> Sink:
    if config.transport == "redis":
        from gateway._predlog_redis import RedisSink

        return RedisSink(config, writer_name)
    return FileSink(config, writer_name)


class LogReader(Protocol):
    """What the sidecar consumes: records after a checkpoint, at least once."""

    corrupt: int

    def read(self, max_records: int = 10_000, timeout: float = 0.0) -> list[dict[str, Any]]:
        """Next records after the current position, waiting up to timeout when there are none."""
        ...

    def position(self) -> dict[str, Any]:
        """JSON-serialisable checkpoint of everything returned so far."""
        ...

    def ack(self) -> None:
        """The caller has durably saved its state up to position()."""
        ...

    def close(self) -> None: ...


class FileReader:
    """Follows every writer's segments in a folder; see the module docstring for the order.

    The checkpoint ``{"files": {segment: offset}}`` holds one entry per writer: the segment
    being read and the byte offset after the last returned line. Earlier segments of that
    writer count as read. A partial last line is left for later unless a later segment of
    the same writer exists (the writer rotated or crashed mid-line), in which case it is
    skipped and counted in ``corrupt``, like any line that is not a JSON object.
    """

    def __init__(self, config: LogConfig, checkpoint: Mapping[str, Any] | None = None) -> None:
        self.directory = Path(config.dir)
        self.corrupt = 0
        self._cursor: dict[str, tuple[int, int]] = {}
        files = (checkpoint or {}).get("files", {})
        if not isinstance(files, Mapping):
            raise ValueError("checkpoint['files'] must map segment names to byte offsets")
        for name, offset in files.items():
            match = SEGMENT_RE.match(name)
            if match is None or not _is_int(offset) or offset < 0:
                raise ValueError(f"bad checkpoint entry {name!r}: {offset!r}")
            writer, seq = match["writer"], int(match["seq"])
            if writer not in self._cursor or seq > self._cursor[writer][0]:
                self._cursor[writer] = (seq, offset)

    def read(self, max_records: int = 10_000, timeout: float = 0.0) -> list[dict[str, Any]]:
        if max_records < 1:
            raise ValueError(f"max_records must be positive, got {max_records}")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            records = self._read_once(max_records)
            remaining = deadline - time.monotonic()
            if records or remaining <= 0:
                return records
            time.sleep(min(_READ_POLL_SECONDS, remaining))

    def position(self) -> dict[str, Any]:
        files = {segment_name(w, seq): offset for w, (seq, offset) in self._cursor.items()}
        return {"files": dict(sorted(files.items()))}

    def ack(self) -> None:
        """Nothing to do: the checkpoint the caller saved is the whole state."""

    def close(self) -> None:
        """Nothing to release: files are opened per read."""

    def _read_once(self, max_records: int) -> list[dict[str, Any]]:
        segments = list_segments(self.directory)
        out: list[dict[str, Any]] = []
        active = sorted(segments)
        # Round-robin with an equal share per writer, so one writer's backlog cannot starve
        # the others; a writer that fills its share gets another turn.
        while active and len(out) < max_records:
            share = max(1, (max_records - len(out)) // len(active))
            still_full: list[str] = []
            for writer in active:
                limit = min(share, max_records - len(out))
                if limit <= 0:
                    break
                got = self._read_writer(writer, segments[writer], limit)
                out.extend(got)
                if len(got) == limit:
                    still_full.append(writer)
            active = still_full
        return out

    def _read_writer(
        self, writer: str, segments: list[tuple[int, str]], limit: int
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        seq, offset = self._cursor.get(writer, (segments[0][0], 0))
        for index, (seg_seq, name) in enumerate(segments):
            if seg_seq < seq:
                continue
            if seg_seq > seq:
                # Either the next segment, or the checkpointed one was deleted by retention.
                seq, offset = seg_seq, 0
            has_next = index + 1 < len(segments)
            offset, done = self._read_segment(
                self.directory / name, offset, limit, has_next, records
            )
            self._cursor[writer] = (seq, offset)
            if not done or len(records) >= limit:
                break
            if has_next:
                seq, offset = segments[index + 1][0], 0
                self._cursor[writer] = (seq, offset)
        return records

    def _read_segment(
        self, path: Path, offset: int, limit: int, has_next: bool, out: list[dict[str, Any]]
    ) -> tuple[int, bool]:
        """Append up to limit records; returns the new offset and whether the segment is done."""
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return offset, True
        with handle:
            handle.seek(offset)
            chunk_size = min(_READ_CHUNK, max(64 * 1024, (limit - len(out)) * 512))
            pending = b""
            while len(out) < limit:
                chunk = handle.read(chunk_size)
                if not chunk:
                    break
                pending += chunk
                start = 0
                while len(out) < limit:
                    end = pending.find(b"\n", start)
                    if end < 0:
                        break
                    self._keep(pending[start:end], out)
                    offset += end + 1 - start
                    start = end + 1
                pending = pending[start:]
            if len(out) >= limit:
                return offset, False
        if pending and has_next:
            self.corrupt += 1
            return offset + len(pending), True
        return offset, not pending

    def _keep(self, line: bytes, out: list[dict[str, Any]]) -> None:
        if not line.strip():
            return
        try:
            out.append(decode(line))
        except ValueError:
            self.corrupt += 1


def open_reader(
    config: LogConfig,
    checkpoint: Mapping[str, Any] | None = None,
    *,
    group: str = "gatewatch-sidecar",
    consumer: str = "sidecar-1",
    min_idle_ms: int = 30_000,
) -> LogReader:
    """A reader for ``config.transport`` resuming at ``checkpoint``.

    For Redis the consumer group's pending list is the checkpoint: entries returned but not
    acknowledged come back after a restart, and entries idle longer than ``min_idle_ms`` in a
    dead consumer are claimed by this one.
    """
    if config.transport == "redis":
        from gateway._predlog_redis import RedisReader

        return RedisReader(config, group=group, consumer=consumer, min_idle_ms=min_idle_ms)
    return FileReader(config, checkpoint)


def iter_records(config: LogConfig, *, follow: bool) -> Iterator[dict[str, Any]]:
    """Every record in the log from the start, without touching any consumer group."""
    if config.transport == "redis":
        from gateway._predlog_redis import iter_stream

        yield from iter_stream(config, follow=follow)
        return
    reader = FileReader(config)
    while True:
        records = reader.read(10_000, timeout=1.0 if follow else 0.0)
        if not records and not follow:
            return
        yield from records


def tail(config: LogConfig, *, follow: bool, model: str | None, out: TextIO) -> None:
    """Print records as JSON lines, from the oldest kept; with follow, keep printing new ones.

    With ``model`` only that model's prediction records are printed (feedback has no model).
    Following ends when the caller interrupts it (KeyboardInterrupt).
    """
    for record in iter_records(config, follow=follow):
        if model is not None and record.get("model") != model:
            continue
        out.write(encode(record).decode())
        if follow:
            out.flush()


def stats(config: LogConfig) -> dict[str, Any]:
    """Counts of the log's records, e.g. for ``gatewatch log stats``.

    Returns ``{"records", "feedback", "first_ts", "last_ts", "predictions": [{"model",
    "version", "role", "count", "errors"}, ...]}``; ``errors`` counts status >= 400.
    """
    groups: dict[tuple[str, Any, str], list[int]] = {}
    records = feedback = 0
    first_ts: float | None = None
    last_ts: float | None = None
    for record in iter_records(config, follow=False):
        records += 1
        ts = record.get("ts")
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            first_ts = ts if first_ts is None else min(first_ts, ts)
            last_ts = ts if last_ts is None else max(last_ts, ts)
        if not is_prediction(record):
            if record.get("kind") == "feedback":
                feedback += 1
            continue
        key = (str(record.get("model")), record.get("version"), str(record.get("role")))
        counts = groups.setdefault(key, [0, 0])
        counts[0] += 1
        status = record.get("status", 200)
        if _is_int(status) and status >= 400:
            counts[1] += 1
    predictions = [
        {"model": m, "version": v, "role": r, "count": c[0], "errors": c[1]}
        for (m, v, r), c in sorted(groups.items(), key=lambda item: _group_order(item[0]))
    ]
    return {
        "records": records,
        "feedback": feedback,
        "first_ts": first_ts,
        "last_ts": last_ts,
        "predictions": predictions,
    }


def _group_order(key: tuple[str, Any, str]) -> tuple[str, tuple[int, str], str]:
    """Numeric version order, robust to a malformed version in someone else's record."""
    model, version, role = key
    rank = (0, f"{version:020d}") if _is_int(version) and version >= 0 else (1, str(version))
    return model, rank, role
