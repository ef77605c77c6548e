"""Bounded memories of the engine: recent record keys, and entries waiting to be joined.

Both are bounded by counts of insertions, never by wall-clock time, and both save themselves as
one orjson blob: pickling hundreds of thousands of small tuples one by one takes ten times as
long, and the sidecar saves its state every few seconds.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Any

import orjson

__all__ = ["MAX_UNCHECKPOINTED", "Dedup", "Store", "frozen"]

MAX_UNCHECKPOINTED = 1_000_000
"""Keys kept beyond the window when no checkpoint completes (e.g. the state disk is full)."""
_MISSING = object()


class Dedup:
    """Keys of recent records, forgotten oldest first; never those since the last checkpoint.

    After a restart, the keys saved since the checkpoint before last are the records a reader
    may legitimately redeliver (saved, but not yet acknowledged when the process died). Until
    the next checkpoint, seeing one of them again is a redelivery (a record that was already
    a duplicate the first time comes back twice); anything else seen again is a duplicate.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._keys: set[tuple[str, str, int]] = set()
        self._order: deque[tuple[str, str, int]] = deque()
        self._since_checkpoint = 0
        self._redeliverable: set[tuple[str, str, int]] = set()

    def add(self, key: tuple[str, str, int]) -> bool:
        """Remember ``key``; False when it was already seen (a duplicate)."""
        if key in self._keys:
            return False
        self._keys.add(key)
        self._order.append(key)
        self._since_checkpoint += 1
        limit = self.window + min(self._since_checkpoint, MAX_UNCHECKPOINTED)
        while len(self._order) > limit:
            self._keys.discard(self._order.popleft())
        return True

    def checkpointed(self) -> None:
        self._since_checkpoint = 0
        self._redeliverable = set()

    def __getstate__(self) -> dict[str, Any]:
        # One orjson blob: pickling 100,000s of small tuples one by one costs ten times more.
        keys = orjson.dumps(list(self._order))
        return {"window": self.window, "keys": keys, "since": self._since_checkpoint}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.window = state["window"]
        self._order = deque(tuple(key) for key in orjson.loads(state["keys"]))
        self._keys = set(self._order)
        self._since_checkpoint = state["since"]
        self._redeliverable = set()

    def restored(self) -> None:
        count = min(self._since_checkpoint, len(self._order))
        self._redeliverable = set(itertools.islice(reversed(self._order), count))

    def redelivered(self, key: tuple[str, str, int]) -> bool:
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
