"""Bounded memories of the engine: recent record keys, and entries waiting to be joined.

Both are bounded by counts of insertions, never by wall-clock time, and both save themselves as
one orjson blob: pickling hundreds of thousands of small tuples one by one takes ten times as
long, and the sidecar saves its state every few seconds.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

__all__ = ["MAX_UNCHECKPOINTED", "Dedup", "Store", "frozen", "record_key"]

MAX_UNCHECKPOINTED = 1_000_000
"""Keys kept beyond the window when no checkpoint completes (e.g. the state disk is full)."""
_MISSING = object()
_KEY = np.dtype("<u8")


def record_key(rid: str, role: str, number: int) -> bytes:
    """The de-dup key of a record: 8 bytes of a keyed-free BLAKE2b of (id, role, version).

    Fixed width and stable across processes (unlike ``hash``), so keys can live in numpy
    arrays and in a checkpoint; two different records share one with odds of about 1 in 10^8
    over a million keys.
    """
    text = f"{rid}\x1f{role}\x1f{number}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=8).digest()


class Dedup:
    """Keys of recent records, forgotten oldest first; never those since the last checkpoint.

    After a restart, the keys saved since the checkpoint before last are the records a reader
    may legitimately redeliver (saved, but not yet acknowledged when the process died). Until
    the next checkpoint, seeing one of them again is a redelivery (a record that was already
    a duplicate the first time comes back twice); anything else seen again is a duplicate.

    The keys live in numpy arrays, not in a set of Python objects: 100,000 small objects that
    each outlive the batch they were allocated in pinned the allocator's arenas between every
    batch's short-lived records, and the sidecar's resident memory kept climbing long after its
    live heap was flat. A batch is looked up at once (``admit``); the result is the same as
    adding its keys one by one, whatever the batch size.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._ring = np.empty(0, dtype=_KEY)  # live keys, oldest first
        self._base = 0  # position of _ring[0] in the sequence of all keys ever added
        self._sorted = np.empty(0, dtype=_KEY)
        self._sorted_pos = np.empty(0, dtype=np.int64)
        self._since_checkpoint = 0
        self._redeliverable: frozenset[bytes] = frozenset()

    def __len__(self) -> int:
        return len(self._ring)

    def admit(self, keys: Sequence[bytes | None]) -> list[bool]:
        """Remember each key not seen before (None: skipped); True where it is new.

        Equal to calling a per-key ``add`` in order: a key seen earlier in the same batch is a
        duplicate, and the window moves on after every new key.
        """
        present = [k for k in keys if k is not None]
        positions = self._positions(present)
        total = self._base + len(self._ring)
        length, since = len(self._ring), self._since_checkpoint
        fresh: dict[bytes, int] = {}
        admitted: list[bool] = []
        j = 0
        for key in keys:
            if key is None:
                admitted.append(False)
                continue
            pos = fresh.get(key, positions[j])
            j += 1
            if pos >= total - length:
                admitted.append(False)
                continue
            fresh[key] = total
            total += 1
            since += 1
            length = min(length + 1, self.window + min(since, MAX_UNCHECKPOINTED))
            admitted.append(True)
        self._since_checkpoint = since
        if fresh:
            self._append(np.frombuffer(b"".join(fresh), dtype=_KEY), length)
        return admitted

    def _positions(self, keys: list[bytes]) -> list[int]:
        """Where each key was added (-1: not among the live keys)."""
        if not keys or not len(self._sorted):
            return [-1] * len(keys)
        wanted = np.frombuffer(b"".join(keys), dtype=_KEY)
        at = np.minimum(np.searchsorted(self._sorted, wanted), len(self._sorted) - 1)
        found = self._sorted[at] == wanted
        return np.where(found, self._sorted_pos[at], -1).tolist()  # type: ignore[no-any-return]

    def _append(self, new: np.ndarray, length: int) -> None:
        ring = np.concatenate((self._ring, new))
        dropped = len(ring) - length
        self._base += dropped
        self._ring = ring[dropped:].copy()
        keep = self._sorted_pos >= self._base
        old, old_pos = self._sorted[keep], self._sorted_pos[keep]
        order = np.argsort(new, kind="stable")
        new_pos = self._base + len(self._ring) - len(new) + order
        new_sorted = new[order]
        keep_new = new_pos >= self._base
        new_sorted, new_pos = new_sorted[keep_new], new_pos[keep_new]
        at = np.searchsorted(old, new_sorted)
        self._sorted = np.insert(old, at, new_sorted)
        self._sorted_pos = np.insert(old_pos, at, new_pos)

    def checkpointed(self) -> None:
        self._since_checkpoint = 0
        self._redeliverable = frozenset()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "ring": self._ring.tobytes(),
            "since": self._since_checkpoint,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        Dedup.__init__(self, state["window"])
        if "ring" in state:
            ring = np.frombuffer(state["ring"], dtype=_KEY)
        else:  # a checkpoint written before keys were hashed: a list of (id, role, version)
            old = [record_key(*key) for key in orjson.loads(state["keys"])]
            ring = np.frombuffer(b"".join(old), dtype=_KEY)
        self._since_checkpoint = state["since"]
        self._append(ring, len(ring))

    def restored(self) -> None:
        count = min(self._since_checkpoint, len(self._ring))
        tail = self._ring[len(self._ring) - count :].tobytes()
        self._redeliverable = frozenset(tail[i : i + 8] for i in range(0, len(tail), 8))

    def redelivered(self, key: bytes) -> bool:
        """Whether a key seen again may be the redelivery of an unacknowledged record."""
        return key in self._redeliverable


class Store:
    """Values by request id, forgotten past a ts-based TTL or after ``size`` later insertions.

    Both bounds count insertions, not live entries, so memory stays bounded even when most
    entries are taken out early (joined) and the order queue keeps their stale keys. Values
    must be JSON values: the store is saved as orjson, for speed. Callers store tuples, not
    lists (see ``frozen``), and get tuples back after a restore.
    """

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl = ttl
        self.size = size
        self.expired = 0
        self._items: dict[str, Any] = {}
        self._order: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: str, ts: float, value: Any) -> float:
        """Add an entry; returns when the oldest entry expires (for ``Engine._advance``)."""
        self._items[key] = value
        order = self._order
        order.append((ts, key))
        while len(order) > self.size:
            self._forget(order.popleft()[1])
        return order[0][0] + self.ttl

    def replace(self, key: str, value: Any) -> None:
        """Change the value of a present entry; it keeps its place and age."""
        if key in self._items:
            self._items[key] = value

    def get(self, key: str) -> Any:
        return self._items.get(key)

    def pop(self, key: str) -> Any:
        return self._items.pop(key, None)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "ttl": self.ttl,
            "size": self.size,
            "expired": self.expired,
            "items": orjson.dumps(self._items),
            "order": orjson.dumps(list(self._order)),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.ttl, self.size, self.expired = state["ttl"], state["size"], state["expired"]
        self._items = {key: frozen(value) for key, value in orjson.loads(state["items"]).items()}
        self._order = deque((ts, key) for ts, key in orjson.loads(state["order"]))

    def trim(self, newest_ts: float) -> float:
        """Forget entries older than the TTL, from the oldest inserted on; returns when the
        oldest remaining entry expires."""
        cutoff = newest_ts - self.ttl
        order = self._order
        while order and order[0][0] < cutoff:
            self._forget(order.popleft()[1])
        return order[0][0] + self.ttl if order else math.inf

    def _forget(self, key: str) -> None:
        if self._items.pop(key, _MISSING) is not _MISSING:
            self.expired += 1


def frozen(value: Any) -> Any:
    """Lists as tuples. The garbage collector stops tracking a tuple of numbers after one look,
    so the many predictions waiting for labels cost nothing in later full collections, which
    would otherwise take a third of the consumer's time."""
    if type(value) is not list:
        return value
    for item in value:
        if type(item) is list:
            return tuple(map(frozen, value))
    return tuple(value)
