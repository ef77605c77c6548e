"""Edit the routing of one model in gatewatch.toml, keeping the user's comments and layout.

The CLI (`gatewatch rollout`), the admin API and the sidecar's rollout controller all change
routing through `edit_routing`: it edits with tomlkit, validates the result as the gateway
would (including that every named version is in the registry), and replaces the file
atomically under a lock. The running gateway notices the new file and reloads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import Table

from gateway.config import ModelConfig, parse_config
from gateway.errors import ConfigError
from gateway.registry import list_versions

__all__ = ["Change", "edit_routing", "routing_of", "set_routing"]

Change = Callable[[Table], None]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def routing_of(mc: ModelConfig | None) -> dict[str, Any]:
    """A plain, comparable view of a model's routing, for the audit trail and the APIs."""
    if mc is None:
        return {"primary": None, "canary": None, "shadow": [], "sticky_header": None}
    return {
        "primary": mc.primary,
        "canary": {"version": mc.canary.version, "weight": mc.canary.weight} if mc.canary else None,
        "shadow": list(mc.shadow),
        "sticky_header": mc.sticky_header,
        "paused": bool(mc.rollout.get("paused", False)),
    }


def _write_atomic(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def edit_routing(path: Path, model: str, change: Change) -> tuple[dict[str, Any], dict[str, Any]]:
    """Apply `change` to `[models.<model>]`; returns the routing (before, after)."""
    with _locked(path):
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        try:
            doc = tomlkit.parse(text)
        except Exception as exc:
            raise ConfigError(str(path), f"not valid TOML ({exc})") from exc
        before_cfg = parse_config(tomllib.loads(text), path.parent, path=path)
        if "models" not in doc:
            doc["models"] = tomlkit.table(is_super_table=True)
        models = doc["models"]
        if model not in models:
            models[model] = tomlkit.table()
        table = models[model]
        if before_cfg.models.get(model) is None:
            # A model with no table serves its newest version: make that explicit first.
            versions = list_versions(before_cfg.registry, model)
            if not versions:
                raise ConfigError(f"models.{model}", "no such model in the registry")
            table["primary"] = versions[-1]
        change(table)
        new_text = tomlkit.dumps(doc)
        after_cfg = parse_config(tomllib.loads(new_text), path.parent, path=path)
        mc = after_cfg.models[model]
        available = list_versions(after_cfg.registry, model)
        for version in sorted(mc.versions()):
            if version not in available:
                raise ConfigError(
                    f"models.{model}",
                    f"version {version} is not in the registry (have {available})",
                )
        _write_atomic(path, new_text)
        return routing_of(before_cfg.models.get(model)), routing_of(mc)


def _canary(table: Table) -> Mapping[str, Any] | None:
    raw = table.get("canary")
    return raw if isinstance(raw, Mapping) else None


def set_canary(version: int, weight: float) -> Change:
    def change(table: Table) -> None:
        canary = tomlkit.inline_table()
        canary.update({"version": version, "weight": weight})
        table["canary"] = canary

    return change


def set_weight(weight: float) -> Change:
    def change(table: Table) -> None:
        canary = _canary(table)
        if canary is None:
            raise ConfigError("canary", "there is no canary to weigh; use --canary V --weight W")
        canary["weight"] = weight  # type: ignore[index]

    return change


def promote() -> Change:
    def change(table: Table) -> None:
        canary = _canary(table)
        if canary is None:
            raise ConfigError("canary", "there is no canary to promote")
        version = int(canary["version"])
        table["primary"] = version
        del table["canary"]
        _drop_shadow(table, version)

    return change


def rollback() -> Change:
    def change(table: Table) -> None:
        if _canary(table) is None:
            raise ConfigError("canary", "there is no canary to roll back")
        del table["canary"]

    return change


def add_shadow(version: int) -> Change:
    def change(table: Table) -> None:
        shadows = [int(v) for v in table.get("shadow", [])]
        if version not in shadows:
            table["shadow"] = [*shadows, version]

    return change


def _drop_shadow(table: Table, version: int) -> None:
    if "shadow" in table:
        shadows = [int(v) for v in table["shadow"] if int(v) != version]
        if shadows:
            table["shadow"] = shadows
        else:
            del table["shadow"]


def remove_shadow(version: int) -> Change:
    def change(table: Table) -> None:
        _drop_shadow(table, version)

    return change


def set_primary(version: int) -> Change:
    def change(table: Table) -> None:
        table["primary"] = version

    return change


def set_paused(paused: bool) -> Change:
    def change(table: Table) -> None:
        if "rollout" not in table:
            table["rollout"] = tomlkit.table()
        table["rollout"]["paused"] = paused  # type: ignore[index]

    return change


def _check_plain(key: str, value: Any) -> None:
    """Only what TOML can hold: a null inside a value has no TOML form."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            if v is None:
                raise ConfigError(f"{key}.{k}", "must not be null")
            _check_plain(f"{key}.{k}", v)
    elif isinstance(value, list):
        for v in value:
            if v is None:
                raise ConfigError(key, "must not hold null")
            _check_plain(key, v)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise ConfigError(key, f"unsupported value {value!r}")


def set_routing(body: Mapping[str, Any]) -> Change:
    """Replace the routing keys given (admin API); `null` removes a key."""
    allowed = {"primary", "canary", "shadow", "sticky_header"}
    unknown = set(body) - allowed
    if unknown:
        raise ConfigError("routing", f"unknown keys {sorted(unknown)} (known: {sorted(allowed)})")

    for key, value in body.items():
        _check_plain(f"routing.{key}", value)

    def change(table: Table) -> None:
        for key, value in body.items():
            if value is None:
                if key in table:
                    del table[key]
            elif key == "canary":
                if not isinstance(value, Mapping):
                    raise ConfigError("canary", "must be an object {version, weight}")
                inline = tomlkit.inline_table()
                inline.update(dict(value))
                table["canary"] = inline
            else:
                table[key] = value

    return change
