"""The sidecar's configuration: one frozen object built from gatewatch.toml.

The sidecar reads only the sections it needs (``[gateway] registry``, ``[log]``, ``[sidecar]`` and
``[monitors.*]``) and validates them in one place, so a bad value stops the process at start with
a message naming the key instead of failing later inside the consumer loop. Sections that belong
to others (models, alerts, webhooks) are kept untouched in ``raw`` for the parsers that own them.
Relative paths are relative to the folder of the config file, so the gateway and the sidecar find
the same registry and log whatever their working directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.predlog import LogConfig
from sidecar.drift import MIN_WINDOW_VALUES
from sidecar.errors import ConfigError

__all__ = [
    "DEFAULT_MONITORS",
    "MonitorSettings",
    "SidecarConfig",
    "load_config",
    "parse_config",
]


@dataclass(frozen=True, slots=True)
class MonitorSettings:
    """What the ``[monitors.*]`` tables switch on, and the detectors' parameters."""

    drift: bool = True
    delta: float = 2e-5
    var_delta: float = 1e-9
    window: int = 1000
    ks_alpha: float = 1e-4
    psi_threshold: float = 0.25
    accuracy: bool = True
    accuracy_window: int = 1000
    concept: bool = True
    concept_delta: float = 0.002
    shadow: bool = True


DEFAULT_MONITORS = MonitorSettings()


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Everything the sidecar process needs; paths are absolute once built."""

    registry: Path = Path("registry")
    log: LogConfig = field(default_factory=LogConfig)
    listen: str = "127.0.0.1:8001"
    state_dir: Path = Path("var/sidecar")
    checkpoint_interval: float = 2.0
    label_ttl: float = 86400.0
    batch: int = 5000
    public_url: str | None = None
    monitors: MonitorSettings = DEFAULT_MONITORS
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0]

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


def load_config(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Read gatewatch.toml (or use the defaults when ``path`` is None) and validate it."""
    if path is None:
        return parse_config({}, base_dir=Path.cwd(), environ=environ)
    file = Path(path).absolute()
    try:
        with file.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read the config file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(file), f"not valid TOML ({exc})") from exc
    config = parse_config(data, base_dir=file.parent, environ=environ)
    return dataclasses.replace(config, path=file)


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, environ: Mapping[str, str] | None = None
) -> SidecarConfig:
    """Build the config from parsed TOML; relative paths are taken relative to ``base_dir``."""
    env = os.environ if environ is None else environ
    gateway = _table(data, "gateway")
    registry = _string(gateway, "gateway.registry", "registry")
    sidecar = _table(data, "sidecar")
    _reject_unknown(
        sidecar,
        "sidecar",
        {"listen", "state_dir", "checkpoint_interval", "label_ttl", "batch", "public_url"},
    )
    listen_env = env.get("GATEWATCH_SIDECAR_LISTEN")
    listen = (
        _listen(listen_env, "GATEWATCH_SIDECAR_LISTEN")
        if listen_env
        else _listen(_string(sidecar, "sidecar.listen", "127.0.0.1:8001"), "sidecar.listen")
    )
    state_dir = env.get("GATEWATCH_SIDECAR_STATE_DIR")
    return SidecarConfig(
        registry=_resolve(base_dir, registry),
        log=_log_config(_table(data, "log"), base_dir),
        listen=listen,
        state_dir=(
            Path(state_dir).absolute()
            if state_dir
            else _resolve(base_dir, _string(sidecar, "sidecar.state_dir", "var/sidecar"))
        ),
        checkpoint_interval=_positive(sidecar, "sidecar.checkpoint_interval", 2.0),
        label_ttl=_positive(sidecar, "sidecar.label_ttl", 86400.0),
        batch=_count(sidecar, "sidecar.batch", 5000),
        public_url=_url(sidecar.get("public_url"), "sidecar.public_url"),
        monitors=_monitors(_table(data, "monitors")),
        raw=dict(data),
    )


_MONITOR_KEYS = {
    "drift": {"enabled", "delta", "var_delta", "window", "ks_alpha", "psi_threshold"},
    "accuracy": {"enabled", "window"},
    "concept": {"enabled", "delta"},
    "shadow": {"enabled"},
}


def _monitors(table: Mapping[str, Any]) -> MonitorSettings:
    _reject_unknown(table, "monitors", set(_MONITOR_KEYS))
    sections = {name: _table(table, name, prefix="monitors.") for name in _MONITOR_KEYS}
    for name, keys in _MONITOR_KEYS.items():
        _reject_unknown(sections[name], f"monitors.{name}", keys)
    drift, accuracy = sections["drift"], sections["accuracy"]
    concept, shadow = sections["concept"], sections["shadow"]
    d = DEFAULT_MONITORS
    return MonitorSettings(
        drift=_bool(drift, "monitors.drift.enabled", d.drift),
        delta=_fraction(drift, "monitors.drift.delta", d.delta),
        var_delta=_fraction(drift, "monitors.drift.var_delta", d.var_delta),
        window=_window(drift, "monitors.drift.window", d.window),
        ks_alpha=_fraction(drift, "monitors.drift.ks_alpha", d.ks_alpha),
        psi_threshold=_positive(drift, "monitors.drift.psi_threshold", d.psi_threshold),
        accuracy=_bool(accuracy, "monitors.accuracy.enabled", d.accuracy),
        accuracy_window=_count(accuracy, "monitors.accuracy.window", d.accuracy_window),
        concept=_bool(concept, "monitors.concept.enabled", d.concept),
        concept_delta=_fraction(concept, "monitors.concept.delta", d.concept_delta),
        shadow=_bool(shadow, "monitors.shadow.enabled", d.shadow),
    )


def _log_config(table: Mapping[str, Any], base_dir: Path) -> LogConfig:
    try:
        log = LogConfig.from_table(table)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return dataclasses.replace(log, dir=str(_resolve(base_dir, log.dir)))


def _table(data: Mapping[str, Any], name: str, *, prefix: str = "") -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{prefix}{name}", f"must be a table, got {type(value).__name__}")
    return value


def _reject_unknown(table: Mapping[str, Any], prefix: str, known: set[str]) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(known))})")


def _key(full: str) -> str:
    return full.rpartition(".")[2]


def _string(table: Mapping[str, Any], full: str, default: str | None) -> str:
    value = table.get(_key(full), default)
    if not isinstance(value, str) or not value:
        raise ConfigError(full, f"must be a non-empty string, got {value!r}")
    return value


def _bool(table: Mapping[str, Any], full: str, default: bool) -> bool:
    value = table.get(_key(full), default)
    if not isinstance(value, bool):
        raise ConfigError(full, f"must be true or false, got {value!r}")
    return value


def _number(table: Mapping[str, Any], full: str, default: float) -> float:
    value = table.get(_key(full), default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(full, f"must be a number, got {value!r}")
    return float(value)


def _positive(table: Mapping[str, Any], full: str, default: float) -> float:
    value = _number(table, full, default)
    if value <= 0:
        raise ConfigError(full, f"must be a positive number, got {value!r}")
    return value


def _fraction(table: Mapping[str, Any], full: str, default: float) -> float:
    value = _number(table, full, default)
    if not 0 < value < 1:
        raise ConfigError(full, f"must be between 0 and 1 (exclusive), got {value!r}")
    return value


def _count(table: Mapping[str, Any], full: str, default: int) -> int:
    value = table.get(_key(full), default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(full, f"must be a positive integer, got {value!r}")
    return value


def _window(table: Mapping[str, Any], full: str, default: int) -> int:
    value = _count(table, full, default)
    if value < MIN_WINDOW_VALUES:
        raise ConfigError(full, f"must be at least {MIN_WINDOW_VALUES} records, got {value}")
    return value


def _listen(value: str, key: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(key, f"must be HOST:PORT with a port in 1..65535, got {value!r}")
    return value


def _url(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(key, f"must be an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _resolve(base_dir: Path, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path
