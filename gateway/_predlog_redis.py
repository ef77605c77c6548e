"""Redis Streams transport of the prediction log.

The writer side (:class:`RedisSink`) XADDs one entry ``{"r": <record json>}`` per record, one
MULTI/EXEC per batch, so a batch lands whole or not at all. When Redis does not answer, the
batch goes to this writer's spill segments under ``<dir>/spill/`` and every later batch follows
it there until the spill is replayed, oldest first: the stream keeps each writer's order. A
lock file per writer lets a new process adopt the spill of one that died before replaying it.

The reader side (:class:`RedisReader`) is a consumer group member; its pending entries list is
the checkpoint, so nothing is acknowledged before the caller says its state is saved.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from gateway.predlog import FileSink, LogConfig, decode, list_segments, segment_name

logger = logging.getLogger("gateway.predlog")

FIELD = b"r"
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0
_REPLAY_BATCHES_PER_CALL = 8
_CLOSE_GRACE_SECONDS = 2.0
_LOCK_ATTEMPTS = 100
_LOCK_WAIT = 0.05
_MAX_BLOCK_SECONDS = 5.0
_READ_CHUNK = 1 << 20

Entry = tuple[bytes, dict[bytes, bytes] | None]


def connect(url: str, *, socket_timeout: float = 5.0) -> redis.Redis:
    """A client without its own retries: callers spill or back off on their own terms."""
    return redis.Redis.from_url(
        url,
        protocol=2,
        socket_connect_timeout=2.0,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
    )


def _entries(reply: Any) -> list[Entry]:
    """The entries of a one-stream XREAD/XREADGROUP reply (RESP2, see :func:`connect`)."""
    if not reply:
        return []
    return [(bytes(entry_id), values) for entry_id, values in reply[0][1]]


def _stream_id_key(entry_id: bytes) -> tuple[int, int]:
    millis, _, seq = entry_id.partition(b"-")
    return int(millis), int(seq or 0)


class SpillQueue:
    """A FIFO of encoded lines in this writer's spill segments, for when Redis is away."""

    def __init__(self, config: LogConfig, writer_name: str) -> None:
        self.directory = Path(config.dir) / "spill"
        self.writer_name = writer_name
        self.torn = 0
        # Retention must never delete records that were not delivered yet.
        out_config = replace(config, retention_seconds=None, retention_bytes=None)
        self._out = FileSink(out_config, writer_name, self.directory)
        self._lock_fd: int | None = None
        self._reading: tuple[str, int] = ("", 0)
        self._peeked: tuple[Path, int, bool] | None = None
        self._pending = False

    @property
    def pending(self) -> bool:
        """True while spilled lines wait for replay."""
        return self._pending

    @property
    def errors(self) -> int:
        return self._out.errors + self.torn

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._take_own_lock()
        self._adopt_orphans()
        self._out.open()
        self._pending = bool(list_segments(self.directory).get(self.writer_name))

    def append(self, lines: list[bytes]) -> None:
        self._out.write(lines)
        self._pending = True

    def poll(self) -> float | None:
        return self._out.poll()

    def peek(self, max_lines: int) -> list[bytes]:
        """The oldest spilled lines (without newline), up to max_lines; commit() consumes them."""
        for _ in range(2):
            for path in self._closed_segments():
                lines, offset, at_end = self._read(path, max_lines)
                if lines:
                    self._peeked = (path, offset, at_end)
                    return lines
                self._remove(path)
            if self._out.active_path is None:
                break
            # Replay reads closed files only; later spills start a new segment.
            self._out.roll()
        self._pending = False
        return []

    def commit(self) -> None:
        if self._peeked is None:
            return
        path, offset, at_end = self._peeked
        self._peeked = None
        if at_end:
            self._remove(path)
        else:
            self._reading = (path.name, offset)

    def close(self) -> None:
        self._out.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        if not list_segments(self.directory).get(self.writer_name):
            with contextlib.suppress(OSError):
                (self.directory / f"{self.writer_name}.lock").unlink()
        os.close(fd)

    def _closed_segments(self) -> list[Path]:
        active = self._out.active_path
        own = list_segments(self.directory).get(self.writer_name, [])
        paths = [self.directory / name for _, name in own]
        return [path for path in paths if path != active]

    def _read(self, path: Path, max_lines: int) -> tuple[list[bytes], int, bool]:
        name, offset = self._reading
        if name != path.name:
            offset = 0
        lines: list[bytes] = []
        try:
            handle = open(path, "rb")
        except FileNotFoundError:
            return lines, offset, True
        with handle:
            handle.seek(offset)
            pending = b""
            while len(lines) < max_lines:
                chunk = handle.read(_READ_CHUNK)
                if not chunk:
                    break
                pending += chunk
                start = 0
                while len(lines) < max_lines:
                    end = pending.find(b"\n", start)
                    if end < 0:
                        break
                    if end > start:
                        lines.append(pending[start:end])
                    offset += end + 1 - start
                    start = end + 1
                pending = pending[start:]
            at_end = not handle.read(1) and not pending
        if pending and len(lines) < max_lines:
            # A closed spill file ending mid-line: its writer died mid-write; that line is lost.
            self.torn += 1
            at_end = True
        return lines, offset, at_end

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self._reading = ("", 0)

    def _lock(self, writer: str, *, wait: bool) -> int | None:
        """Hold ``<writer>.lock``: proof that writer is alive, or that we are adopting it."""
        fd = os.open(self.directory / f"{writer}.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC)
        attempts = _LOCK_ATTEMPTS if wait else 1
        for attempt in range(attempts):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if attempt + 1 < attempts:
                    time.sleep(_LOCK_WAIT)
        os.close(fd)
        return None

    def _take_own_lock(self) -> int:
        fd = self._lock(self.writer_name, wait=True)
        if fd is None:
            raise RuntimeError(f"prediction log writer name {self.writer_name!r} is in use")
        return fd

    def _adopt_orphans(self) -> None:
        """Take over spill segments of writers that died: their records are older than ours."""
        for writer in sorted(list_segments(self.directory)):
            if writer == self.writer_name:
                continue
            fd = self._lock(writer, wait=False)
            if fd is None:
                continue
            try:
                own = list_segments(self.directory).get(self.writer_name, [])
                seq = own[-1][0] if own else 0
                for _, name in list_segments(self.directory).get(writer, []):
                    seq += 1
                    target = self.directory / segment_name(self.writer_name, seq)
                    os.rename(self.directory / name, target)
                logger.info("prediction log: adopted the spill of dead writer %s", writer)
                with contextlib.suppress(OSError):
                    (self.directory / f"{writer}.lock").unlink()
            finally:
                os.close(fd)


class RedisSink:
    """The Redis transport of :class:`gateway.predlog.PredictionLog`."""

    def __init__(self, config: LogConfig, writer_name: str) -> None:
        self.config = config
        self.spilled = 0
        self.replayed = 0
        self._spill = SpillQueue(config, writer_name)
        self._client = connect(config.url)
        self._retry_at = 0.0
        self._backoff = _BACKOFF_MIN
        self._failures = 0

    @property
    def errors(self) -> int:
        return self._spill.errors

    def open(self) -> None:
        self._spill.open()

    def write(self, lines: list[bytes]) -> None:
        if self._spill.pending and self._due():
            self._replay(_REPLAY_BATCHES_PER_CALL)
        if self._spill.pending or not self._due():
            self._park(lines)
            return
        try:
            self._xadd([line.rstrip(b"\n") for line in lines])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            self._park(lines)
            return
        self._succeeded()

    def poll(self) -> float | None:
        if self._spill.pending and self._due():
            self._replay(_REPLAY_BATCHES_PER_CALL)
        deadlines = [self._retry_at] if self._spill.pending else []
        spill_deadline = self._spill.poll()
        if spill_deadline is not None:
            deadlines.append(spill_deadline)
        return min(deadlines, default=None)

    def close(self) -> None:
        """Replay the spill if Redis answers within a short grace; otherwise the spill stays
        on disk for the next writer started on this machine (it adopts orphaned spills)."""
        deadline = time.monotonic() + _CLOSE_GRACE_SECONDS
        try:
            while self._spill.pending and time.monotonic() < deadline:
                time.sleep(max(0.0, min(self._retry_at, deadline) - time.monotonic()))
                self._replay(None)
        finally:
            self._spill.close()
            self._client.close()

    def _due(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _park(self, lines: list[bytes]) -> None:
        self._spill.append(lines)
        self.spilled += len(lines)

    def _replay(self, max_batches: int | None) -> None:
        """Move the oldest spilled lines into the stream; stops at the first failure."""
        done = 0
        while max_batches is None or done < max_batches:
            lines = self._spill.peek(self.config.batch_size)
            if not lines:
                return
            try:
                self._xadd(lines)
            except (RedisError, OSError) as exc:
                self._failed(exc)
                return
            self._spill.commit()
            self.replayed += len(lines)
            self._succeeded()
            done += 1

    def _xadd(self, payloads: list[bytes]) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            for payload in payloads:
                pipe.xadd(
                    self.config.stream,
                    {FIELD: payload},
                    maxlen=self.config.maxlen,
                    approximate=True,
                )
            pipe.execute()

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
        if self._failures & (self._failures - 1) == 0:
            logger.warning(
                "prediction log: redis unavailable (%d failures), spilling to disk: %s",
                self._failures,
                exc,
            )

    def _succeeded(self) -> None:
        if self._failures:
            logger.info("prediction log: redis answers again after %d failures", self._failures)
        self._failures = 0
        self._backoff = _BACKOFF_MIN


class RedisReader:
    """A consumer group member; see :func:`gateway.predlog.open_reader`.

    On start it re-reads its own pending entries, then new ones. Entries another consumer
    left pending longer than ``min_idle_ms`` are claimed with XAUTOCLAIM. Only ``ack()``
    acknowledges, so a crash before the caller saved its state means redelivery, not loss.
    """

    def __init__(self, config: LogConfig, *, group: str, consumer: str, min_idle_ms: int) -> None:
        if min_idle_ms < 0:
            raise ValueError(f"min_idle_ms must not be negative, got {min_idle_ms}")
        self.config = config
        self.group = group
        self.consumer = consumer
        self.min_idle_ms = min_idle_ms
        self.corrupt = 0
        self.ack_errors = 0
        self._client = connect(config.url, socket_timeout=_MAX_BLOCK_SECONDS + 5.0)
        self._group_ready = False
        self._pending_cursor: bytes | None = b"0"
        self._claim_cursor: bytes = b"0-0"
        self._next_claim = 0.0
        self._claim_interval = min(5.0, max(0.05, min_idle_ms / 2000))
        self._unacked: dict[bytes, None] = {}
        self._last_acked: bytes | None = None
        self._backoff = _BACKOFF_MIN

    def read(self, max_records: int = 10_000, timeout: float = 0.0) -> list[dict[str, Any]]:
        if max_records < 1:
            raise ValueError(f"max_records must be positive, got {max_records}")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            remaining = deadline - time.monotonic()
            block_ms = max(1, int(min(remaining, _MAX_BLOCK_SECONDS) * 1000))
            records: list[dict[str, Any]] = []
            try:
                records = self._fetch_with_group(max_records, block_ms if remaining > 0 else None)
                self._backoff = _BACKOFF_MIN
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and not _is_nogroup(exc):
                    raise
                logger.warning("prediction log reader: redis error, will retry: %s", exc)
                # Entries delivered in a lost reply sit in our pending list: re-read it.
                self._pending_cursor = b"0"
                self._group_ready = False
                time.sleep(max(0.0, min(self._backoff, deadline - time.monotonic())))
                self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
            if records or time.monotonic() >= deadline:
                return records

    def position(self) -> dict[str, Any]:
        last = None if self._last_acked is None else self._last_acked.decode()
        return {
            "redis": {
                "stream": self.config.stream,
                "group": self.group,
                "consumer": self.consumer,
                "last_acked": last,
            }
        }

    def ack(self) -> None:
        """XACK everything returned so far; on failure keep them and try again next time."""
        if not self._unacked:
            return
        ids = list(self._unacked)
        try:
            for start in range(0, len(ids), 1000):
                self._client.xack(self.config.stream, self.group, *ids[start : start + 1000])
        except (RedisError, OSError) as exc:
            self.ack_errors += 1
            logger.warning("prediction log reader: XACK failed, will retry: %s", exc)
            return
        self._unacked.clear()
        newest = max(ids, key=_stream_id_key)
        if self._last_acked is None or _stream_id_key(newest) > _stream_id_key(self._last_acked):
            self._last_acked = newest

    def close(self) -> None:
        self._client.close()

    def _fetch_with_group(self, max_records: int, block_ms: int | None) -> list[dict[str, Any]]:
        if not self._group_ready:
            self._create_group()
        try:
            return self._fetch(max_records, block_ms)
        except ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            # Redis restarted without its data: the group (and stream) must be made again.
            self._create_group()
            return self._fetch(max_records, block_ms)

    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self.config.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _fetch(self, max_records: int, block_ms: int | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if time.monotonic() >= self._next_claim:
            out.extend(self._claim(max_records))
        while self._pending_cursor is not None and len(out) < max_records:
            entries = self._xreadgroup(self._pending_cursor, max_records - len(out), None)
            if not entries:
                self._pending_cursor = None
                break
            self._pending_cursor = entries[-1][0]
            out.extend(self._accept(entries))
        if self._pending_cursor is None and len(out) < max_records:
            entries = self._xreadgroup(b">", max_records - len(out), None if out else block_ms)
            out.extend(self._accept(entries))
        return out

    def _claim(self, count: int) -> list[dict[str, Any]]:
        reply = self._client.xautoclaim(
            self.config.stream,
            self.group,
            self.consumer,
            min_idle_time=self.min_idle_ms,
            start_id=self._claim_cursor,
            count=count,
        )
        cursor = bytes(reply[0])
        self._claim_cursor = cursor
        if cursor == b"0-0":
            self._next_claim = time.monotonic() + self._claim_interval
        return self._accept(list(reply[1]))

    def _xreadgroup(self, entry_id: bytes, count: int, block_ms: int | None) -> list[Entry]:
        reply = self._client.xreadgroup(
            self.group, self.consumer, {self.config.stream: entry_id}, count=count, block=block_ms
        )
        return _entries(reply)

    def _accept(self, entries: list[Entry]) -> list[dict[str, Any]]:
        """Decode entries not handed out before; all of them become ours to acknowledge."""
        records: list[dict[str, Any]] = []
        for entry_id, values in entries:
            if entry_id in self._unacked:
                continue
            self._unacked[entry_id] = None
            raw = values.get(FIELD) if values else None
            if raw is None:
                # Trimmed by MAXLEN before we read it: acknowledged to clear the pending list.
                continue
            try:
                records.append(decode(raw))
            except ValueError:
                self.corrupt += 1
        return records


def _is_nogroup(exc: Exception) -> bool:
    return str(exc).startswith("NOGROUP")


def iter_stream(config: LogConfig, *, follow: bool) -> Iterator[dict[str, Any]]:
    """Every record of the stream, oldest first, without a consumer group (nothing is taken)."""
    client = connect(config.url, socket_timeout=_MAX_BLOCK_SECONDS + 5.0)
    try:
        last: bytes = b"0-0"
        while True:
            reply = client.xread({config.stream: last}, count=1000, block=1000 if follow else None)
            entries = _entries(reply)
            if not entries and not follow:
                return
            for entry_id, values in entries:
                last = entry_id
                raw = values.get(FIELD) if values else None
                if raw is None:
                    continue
                with contextlib.suppress(ValueError):
                    yield decode(raw)
    finally:
        client.close()
