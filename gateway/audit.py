"""The audit trail: every change of what serves, appended as one JSON line.

Kept beside gatewatch.toml (`audit.jsonl`) unless the config names another path. Each line is
written with one `write` on a file opened for appending, so lines from the CLI, the admin API
and gateway workers never interleave.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson

__all__ = ["append", "audit_path", "cli_user", "read"]

log = logging.getLogger("gatewatch.audit")
write_errors = 0


def audit_path(config_path: Path | None, configured: str | None = None) -> Path | None:
    if configured:
        path = Path(configured)
        if not path.is_absolute() and config_path is not None:
            path = config_path.parent / path
        return path
    return config_path.parent / "audit.jsonl" if config_path is not None else None


def cli_user() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid-{os.getuid()}"


def append(
    path: Path | None,
    *,
    who: str,
    action: str,
    model: str | None = None,
    before: Any = None,
    after: Any = None,
    why: str | None = None,
) -> dict[str, Any]:
    entry = {
        "ts": time.time(),
        "who": who,
        "action": action,
        "model": model,
        "before": before,
        "after": after,
        "why": why,
        "pid": os.getpid(),
    }
    if path is not None:
        line = orjson.dumps(entry, option=orjson.OPT_NON_STR_KEYS) + b"\n"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            # A read-only config folder (a ConfigMap) must not stop what the entry records:
            # say so loudly, count it, and keep serving. Set gateway.audit_log to a writable path.
            global write_errors
            write_errors += 1
            log.error(
                "audit trail %s is not writable (%s); entry: %s", path, exc, line.decode().strip()
            )
    return entry


def read(path: Path, model: str | None = None) -> Iterator[Mapping[str, Any]]:
    if not path.is_file():
        return
    with open(path, "rb") as f:
        for line in f:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if model is None or entry.get("model") == model:
                yield entry
