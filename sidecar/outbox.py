"""Durable outbox: every event is committed to SQLite before any delivery is tried.

One row per (event, target) holds the delivery's state (pending, delivered or dead), its
attempts, its last answer and when to try next. A sidecar that stops, or is killed, finds its
pending deliveries in the same file at the next start. Delivery is at least once: a request
that reached the receiver just before a crash is sent again with the same ``webhook-id``, which
receivers use to drop the repeat.

The file lives in the sidecar's ``state_dir`` (WAL journal, ``synchronous=FULL``: a committed
event survives a power cut, and readers of /webhooks never block the writer). One process
writes a given file at a time; the connection is shared between threads behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

__all__ = ["COUNTERS", "Attempt", "Due", "Outbox"]

DEFAULT_FILENAME = "outbox.sqlite3"
# Delivered and dead rows older than this are removed, so the file stays small.
DEFAULT_RETENTION = 30 * 86400.0
_PRUNE_EVERY = 3600.0
COUNTERS = ("sent", "failed", "retried", "dead_lettered")
State = Literal["pending", "delivered", "dead"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    created REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    target TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_attempt REAL,
    last_status INTEGER,
    last_error TEXT,
    info BLOB,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (event_id, target)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt);
CREATE INDEX IF NOT EXISTS deliveries_updated ON deliveries (updated);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Attempt:
    """The outcome of one delivery attempt, as `record` stores it."""

    event_id: str
    target: str
    state: State  # "pending" means: failed, try again at next_attempt
    status: int | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    next_attempt: float | None = None


@dataclass(frozen=True)
class Due:
    """A pending delivery whose time has come."""

    event_id: str
    event_type: str
    target: str
    attempts: int
    event: dict[str, Any]


class Outbox:
    """The durable store of events and their deliveries.

    Parameters
    ----------
    path
        The SQLite file, or a directory (the sidecar's ``state_dir``) to hold ``outbox.sqlite3``.
    retention
        Seconds to keep delivered and dead rows for the /webhooks history.
    """

    def __init__(self, path: str | Path, *, retention: float = DEFAULT_RETENTION) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / DEFAULT_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention = retention
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error:
            self._db.close()
            raise
        self._last_prune = 0.0
        self.prune(time.time())

    # -------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -------------------------------------------------------------------------- writing

    def enqueue(
        self, event: Mapping[str, Any], targets: Iterable[str], *, now: float | None = None
    ) -> int:
        """Commit `event` (a dict with ``id`` and ``type``) with one pending row per target.

        Enqueuing the same event id again adds only targets it did not have: safe to repeat
        after a crash between evaluating alerts and saving the sidecar's state.
        Returns the number of new deliveries.
        """
        now = time.time() if now is None else now
        event_id, event_type = str(event["id"]), str(event["type"])
        payload = orjson.dumps(dict(event), option=orjson.OPT_NON_STR_KEYS)
        names = list(dict.fromkeys(targets))
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO events (id, type, created, payload) VALUES (?, ?, ?, ?)",
                (event_id, event_type, now, payload),
            )
            added = 0
            for target in names:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO deliveries (event_id, target, state, next_attempt,"
                    " created, updated) VALUES (?, ?, 'pending', ?, ?, ?)",
                    (event_id, target, now, now, now),
                )
                added += cursor.rowcount
        if now - self._last_prune >= _PRUNE_EVERY:
            self.prune(now)
        return added

    def record(self, attempts: Iterable[Attempt], *, now: float) -> None:
        """Store the outcome of a round of attempts in one transaction (one fsync per round)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for attempt in attempts:
                self._record_one(attempt, now)

    def _record_one(self, attempt: Attempt, now: float) -> None:
        key = (attempt.event_id, attempt.target)
        if attempt.state == "pending":
            cursor = self._db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, last_attempt = ?,"
                " last_status = ?, last_error = ?, next_attempt = ?, updated = ?"
                " WHERE event_id = ? AND target = ? AND state = 'pending'",
                (now, attempt.status, attempt.error, attempt.next_attempt, now, *key),
            )
            counters: tuple[str, ...] = ("failed", "retried")
        else:
            info = orjson.dumps(attempt.info) if attempt.info else None
            cursor = self._db.execute(
                "UPDATE deliveries SET state = ?, attempts = attempts + 1, last_attempt = ?,"
                " last_status = ?, last_error = ?, info = ?, updated = ?"
                " WHERE event_id = ? AND target = ? AND state = 'pending'",
                (attempt.state, now, attempt.status, attempt.error, info, now, *key),
            )
            counters = ("sent",) if attempt.state == "delivered" else ("failed", "dead_lettered")
        # A row no longer pending (requeued or finished meanwhile) is left alone, uncounted.
        if cursor.rowcount:
            for name in counters:
                self._db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, 1)"
                    " ON CONFLICT (name) DO UPDATE SET value = value + 1",
                    (name,),
                )

    def requeue(self, event_id: str | None = None, target: str | None = None) -> int:
        """Give dead deliveries another series of attempts (all, or one event / one target)."""
        now = time.time()
        sql = (
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt = ?, updated = ?"
            " WHERE state = 'dead'"
        )
        args: list[Any] = [now, now]
        if event_id is not None:
            sql += " AND event_id = ?"
            args.append(event_id)
        if target is not None:
            sql += " AND target = ?"
            args.append(target)
        with self._lock, self._db:
            return self._db.execute(sql, args).rowcount

    def prune(self, now: float) -> int:
        """Drop finished deliveries past the retention, and events left with none."""
        self._last_prune = now
        with self._lock, self._db:
            removed = self._db.execute(
                "DELETE FROM deliveries WHERE state != 'pending' AND updated < ?",
                (now - self.retention,),
            ).rowcount
            self._db.execute(
                "DELETE FROM events WHERE id NOT IN (SELECT DISTINCT event_id FROM deliveries)"
            )
        return removed

    # -------------------------------------------------------------------------- reading

    def due(self, now: float, limit: int = 100) -> list[Due]:
        """Pending deliveries whose next attempt is at or before `now`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.event_id, e.type, d.target, d.attempts, e.payload"
                " FROM deliveries d JOIN events e ON e.id = d.event_id"
                " WHERE d.state = 'pending' AND d.next_attempt <= ?"
                " ORDER BY d.next_attempt, d.created LIMIT ?",
                (now, limit),
            ).fetchall()
        return [Due(r[0], r[1], r[2], r[3], orjson.loads(r[4])) for r in rows]

    def next_due(self) -> float | None:
        """When the earliest pending delivery is due, or None if nothing is pending."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(next_attempt) FROM deliveries WHERE state = 'pending'"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def deliveries(self, limit: int = 100, state: State | None = None) -> list[dict[str, Any]]:
        """The most recently updated deliveries, newest first, for GET /webhooks."""
        sql = (
            "SELECT d.event_id, e.type, d.target, d.state, d.attempts, d.last_status,"
            " d.last_error, d.last_attempt, d.next_attempt, d.info, d.created, d.updated"
            " FROM deliveries d JOIN events e ON e.id = d.event_id"
        )
        args: list[Any] = []
        if state is not None:
            sql += " WHERE d.state = ?"
            args.append(state)
        sql += " ORDER BY d.updated DESC, d.rowid DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {
                "event_id": r["event_id"],
                "type": r["type"],
                "target": r["target"],
                "state": r["state"],
                "attempts": r["attempts"],
                "last_status": r["last_status"],
                "last_error": r["last_error"],
                "last_attempt": r["last_attempt"],
                "next_attempt": r["next_attempt"] if r["state"] == "pending" else None,
                "response": orjson.loads(r["info"]) if r["info"] else {},
                "created": r["created"],
                "updated": r["updated"],
            }
            for r in rows
        ]

    def counters(self) -> dict[str, int]:
        """Running totals (sent, failed, retried, dead_lettered) plus the pending gauge."""
        with self._lock:
            stored = dict(self._db.execute("SELECT name, value FROM counters").fetchall())
            pending = self._db.execute(
                "SELECT COUNT(*) FROM deliveries WHERE state = 'pending'"
            ).fetchone()[0]
        out = {name: int(stored.get(name, 0)) for name in COUNTERS}
        out["pending"] = int(pending)
        return out
