"""Durable checkpoints of the sidecar: engine state and log position, saved together.

The engine state and the reader position must always describe the same prefix of the log, so
both go into one file that is replaced atomically (write a temporary file, fsync it, rename it
over the old one, fsync the folder). A crash at any moment leaves either the previous checkpoint
or the new one, never a mix; the reader is acknowledged only after the save, so what it
redelivers after a crash is at most what the engine's de-dup memory still holds.

The file is a pickle: load it only from a state folder the operator controls, as with any
pickle (it is written by this process and never received from the network).
"""

from __future__ import annotations

import gc
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.errors import StateError

__all__ = [
    "STATE_FILE",
    "STATE_FORMAT",
    "Checkpoint",
    "encode_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "write_checkpoint",
]

STATE_FILE = "state.pkl"
STATE_FORMAT = 1
"""Bumped whenever the pickled layout changes; an older file is refused, not misread."""

_TEMP_PREFIX = ".state-"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a restart needs: the engine snapshot, the reader position, and other parts' state
    (alert policy, ...) under names of their choosing."""

    engine: dict[str, Any]
    position: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def encode_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Serialise now (the engine keeps mutating its objects afterwards)."""
    payload = {
        "format": STATE_FORMAT,
        "engine": checkpoint.engine,
        "position": checkpoint.position,
        "extra": checkpoint.extra,
    }
    return pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)


def write_checkpoint(state_dir: str | os.PathLike[str], blob: bytes) -> Path:
    """Atomically replace ``state_dir/state.pkl`` with ``blob``; durable when this returns."""
    folder = Path(state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / STATE_FILE
    fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return target


def save_checkpoint(state_dir: str | os.PathLike[str], checkpoint: Checkpoint) -> Path:
    return write_checkpoint(state_dir, encode_checkpoint(checkpoint))


def load_checkpoint(state_dir: str | os.PathLike[str]) -> Checkpoint | None:
    """The last saved checkpoint, or None on a first start; leftovers of a crashed save are
    removed. A file that cannot be used raises StateError rather than silently starting over."""
    folder = Path(state_dir)
    if not folder.is_dir():
        return None
    for leftover in folder.glob(f"{_TEMP_PREFIX}*"):
        leftover.unlink(missing_ok=True)
    target = folder / STATE_FILE
    try:
        blob = target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"{target}: cannot read the state file ({exc.strerror})") from exc
    try:
        payload = _unpickle(blob)
    except Exception as exc:
        raise StateError(
            f"{target}: corrupt state file ({exc}); move it away to rebuild from the log"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise StateError(
            f"{target}: state format {found!r}, expected {STATE_FORMAT}; "
            "move it away to rebuild from the log"
        )
    return Checkpoint(payload["engine"], payload["position"], payload.get("extra") or {})


def _unpickle(blob: bytes) -> Any:
    """Unpickle with the cyclic collector paused: building a state of a million objects would
    otherwise trigger thousands of collections that cannot find any garbage (twice the time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return pickle.loads(blob)
    finally:
        if enabled:
            gc.enable()


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); platforms without directory fds skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
