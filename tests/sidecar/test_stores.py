"""The engine's de-dup memory: batched lookups in numpy arrays, checked against the plain rule."""

from __future__ import annotations

import pickle
import random
from collections import deque

import orjson

from sidecar._stores import Dedup, record_key


class OneByOne:
    """The rule written the obvious way: a set and a queue, one key at a time."""

    def __init__(self, window: int, cap: int) -> None:
        self.window, self.cap = window, cap
        self.keys: set[bytes] = set()
        self.order: deque[bytes] = deque()
        self.since = 0

    def add(self, key: bytes) -> bool:
        if key in self.keys:
            return False
        self.keys.add(key)
        self.order.append(key)
        self.since += 1
        while len(self.order) > self.window + min(self.since, self.cap):
            self.keys.discard(self.order.popleft())
        return True


def test_batched_admission_equals_adding_one_key_at_a_time() -> None:
    """Random keys with many repeats near the window's edge, cut into random batches (some
    larger than the window), checkpoints and a pickle round trip in between."""
    rng = random.Random(7)
    window = 50
    dedup, reference = Dedup(window), OneByOne(window, 1_000_000)
    pool = [record_key(f"r{i}", "primary", 1) for i in range(400)]
    for _ in range(300):
        batch: list[bytes | None] = [
            None if rng.random() < 0.05 else pool[rng.randrange(len(pool))]
            for _ in range(rng.choice((1, 3, 20, 80)))
        ]
        expected = [False if key is None else reference.add(key) for key in batch]
        assert dedup.admit(batch) == expected
        if rng.random() < 0.2:
            dedup.checkpointed()
            reference.since = 0
        if rng.random() < 0.1:
            dedup = pickle.loads(pickle.dumps(dedup))
    assert len(dedup) == len(reference.order)


def test_keys_differ_by_id_role_and_version() -> None:
    keys = {
        record_key("a", "primary", 1),
        record_key("a", "shadow", 1),
        record_key("a", "primary", 2),
        record_key("b", "primary", 1),
        record_key("a\x1fprimary", "1", 1),
    }
    assert len(keys) == 5
    assert all(len(key) == 8 for key in keys)


def test_keys_since_the_last_checkpoint_are_redeliveries_after_a_restore() -> None:
    dedup = Dedup(10)
    old = [record_key(f"old{i}", "primary", 1) for i in range(5)]
    new = [record_key(f"new{i}", "primary", 1) for i in range(3)]
    dedup.admit(old)
    dedup.checkpointed()
    dedup.admit(new)
    restored = pickle.loads(pickle.dumps(dedup))
    restored.restored()
    assert restored.admit([*old, *new]) == [False] * 8
    assert [restored.redelivered(k) for k in (*old, *new)] == [False] * 5 + [True] * 3


def test_a_checkpoint_written_before_keys_were_hashed_still_restores() -> None:
    dedup = Dedup.__new__(Dedup)
    dedup.__setstate__(
        {
            "window": 10,
            "keys": orjson.dumps([["a", "primary", 1], ["b", "feedback", 0]]),
            "since": 0,
        }
    )
    assert dedup.admit([record_key("a", "primary", 1), record_key("b", "feedback", 0)]) == [
        False,
        False,
    ]
    assert dedup.admit([record_key("c", "primary", 1)]) == [True]
