"""gatewatch.toml for the gateway: one frozen value, validated in one place.

The gateway reads `[gateway]`, `[log]` and `[models.*]`; the sidecar's sections are accepted
here and validated by the sidecar. A bad value raises ConfigError naming its dotted key, so a
hot reload can refuse it and keep the last good config serving.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.predlog import LogConfig
from gateway.registry import NAME_RE

__all__ = ["Canary", "GatewayConfig", "ModelConfig", "load_config", "parse_config"]

SECTIONS = frozenset({"gateway", "log", "models", "sidecar", "monitors", "alerts", "webhooks"})
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}")
MODEL_KEYS = frozenset(
    {"primary", "canary", "shadow", "sticky_header", "max_batch_size", "max_wait_ms", "rollout"}
)


@dataclass(frozen=True, slots=True)
class Canary:
    version: int
    weight: float


@dataclass(frozen=True, slots=True)
class ModelConfig:
    primary: int | None = None
    canary: Canary | None = None
    shadow: tuple[int, ...] = ()
    sticky_header: str | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    rollout: Mapping[str, Any] = field(default_factory=dict)

    def versions(self) -> set[int]:
        named = {v for v in (self.primary,) if v is not None} | set(self.shadow)
        if self.canary is not None:
            named.add(self.canary.version)
        return named


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    registry: Path = Path("registry")
    listen: str = "127.0.0.1:8000"
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch_rows: int = 10_000
    keep_versions: int = 2
    allow_pickle: bool = False
    predict_timeout: float = 30.0
    max_in_flight: int = 1024
    shadow_queue: int = 1000
    batching: bool = True
    max_batch_size: int = 32
    max_wait_ms: float = 2.0
    workers: int = 1
    cors_origins: tuple[str, ...] = ()
    audit_log: str | None = None
    log: LogConfig = field(default_factory=LogConfig)
    models: Mapping[str, ModelConfig] = field(default_factory=dict)
    path: Path | None = None

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _int(key: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value}")
    return value


def _float(key: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if not low <= value <= high:
        bound = f"between {low:g} and {high:g}" if high != math.inf else f"at least {low:g}"
        raise ConfigError(key, f"must be {bound}, got {value}")
    return float(value)


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a table, got {type(value).__name__}")
    return value


def _listen(key: str, value: Any) -> str:
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(key, f"must be HOST:PORT, got {value!r}")
    port = value.rsplit(":", 1)[1]
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(key, f"bad port in {value!r}")
    return value


def _model(name: str, table: Mapping[str, Any]) -> ModelConfig:
    prefix = f"models.{name}"
    if not NAME_RE.fullmatch(name):
        raise ConfigError(prefix, f"invalid model name (must match {NAME_RE.pattern})")
    for key in table:
        if key not in MODEL_KEYS:
            raise ConfigError(
                f"{prefix}.{key}", f"unknown key (known: {', '.join(sorted(MODEL_KEYS))})"
            )
    primary = table.get("primary")
    if primary is not None:
        primary = _int(f"{prefix}.primary", primary, minimum=1)
    canary = None
    if "canary" in table:
        raw = _table(f"{prefix}.canary", table["canary"])
        for key in raw:
            if key not in ("version", "weight"):
                raise ConfigError(f"{prefix}.canary.{key}", "unknown key (known: version, weight)")
        if "version" not in raw:
            raise ConfigError(f"{prefix}.canary.version", "is required")
        canary = Canary(
            _int(f"{prefix}.canary.version", raw["version"], minimum=1),
            _float(f"{prefix}.canary.weight", raw.get("weight", 0.0), high=1.0),
        )
        if primary is None:
            raise ConfigError(f"{prefix}.primary", "is required when a canary is set")
        if canary.version == primary:
            raise ConfigError(f"{prefix}.canary.version", "must differ from the primary")
    shadow = table.get("shadow", [])
    if isinstance(shadow, int):
        shadow = [shadow]
    if not isinstance(shadow, list):
        raise ConfigError(f"{prefix}.shadow", f"must be a list of versions, got {shadow!r}")
    shadows = tuple(_int(f"{prefix}.shadow", v, minimum=1) for v in shadow)
    sticky = table.get("sticky_header")
    if sticky is not None and (not isinstance(sticky, str) or not _HEADER_RE.fullmatch(sticky)):
        raise ConfigError(f"{prefix}.sticky_header", f"must be an HTTP header name, got {sticky!r}")
    batch = table.get("max_batch_size")
    wait = table.get("max_wait_ms")
    rollout = table.get("rollout", {})
    return ModelConfig(
        primary=primary,
        canary=canary,
        shadow=shadows,
        sticky_header=sticky.lower() if sticky else None,
        max_batch_size=_int(f"{prefix}.max_batch_size", batch, minimum=1)
        if batch is not None
        else None,
        max_wait_ms=_float(f"{prefix}.max_wait_ms", wait, high=1000.0)
        if wait is not None
        else None,
        rollout=dict(_table(f"{prefix}.rollout", rollout)),
    )


_GATEWAY_KEYS: dict[str, Any] = {
    "max_body_bytes": lambda k, v: _int(k, v, minimum=1),
    "max_batch_rows": lambda k, v: _int(k, v, minimum=1),
    "keep_versions": lambda k, v: _int(k, v, minimum=0),
    "predict_timeout": lambda k, v: _float(k, v, low=0.001),
    "max_in_flight": lambda k, v: _int(k, v, minimum=1),
    "shadow_queue": lambda k, v: _int(k, v, minimum=0),
    "max_batch_size": lambda k, v: _int(k, v, minimum=1),
    "max_wait_ms": lambda k, v: _float(k, v, high=1000.0),
    "workers": lambda k, v: _int(k, v, minimum=1),
}


def parse_config(
    data: Mapping[str, Any],
    base_dir: Path | None = None,
    *,
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Validate a parsed gatewatch.toml; relative paths are relative to `base_dir`."""
    environ = os.environ if environ is None else environ
    base = base_dir or Path.cwd()
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(key, f"unknown section (known: {', '.join(sorted(SECTIONS))})")
    gw = dict(_table("gateway", data.get("gateway", {})))
    kwargs: dict[str, Any] = {}
    for key, value in gw.items():
        if key == "registry":
            if not isinstance(value, str) or not value:
                raise ConfigError("gateway.registry", "must be a folder path")
            kwargs["registry"] = value
        elif key == "listen":
            kwargs["listen"] = _listen("gateway.listen", value)
        elif key == "audit_log":
            if not isinstance(value, str) or not value:
                raise ConfigError("gateway.audit_log", "must be a file path")
            kwargs["audit_log"] = value
        elif key == "cors_origins":
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(
                    "gateway.cors_origins", 'must be a list of origins like "https://app.example"'
                )
            kwargs["cors_origins"] = tuple(value)
        elif key in ("allow_pickle", "batching"):
            if not isinstance(value, bool):
                raise ConfigError(f"gateway.{key}", f"must be true or false, got {value!r}")
            kwargs[key] = value
        elif key in _GATEWAY_KEYS:
            kwargs[key] = _GATEWAY_KEYS[key](f"gateway.{key}", value)
        else:
            known = ", ".join(
                sorted(
                    {
                        "registry",
                        "listen",
                        "allow_pickle",
                        "batching",
                        "cors_origins",
                        "audit_log",
                        *_GATEWAY_KEYS,
                    }
                )
            )
            raise ConfigError(f"gateway.{key}", f"unknown key (known: {known})")
    if environ.get("GATEWATCH_REGISTRY"):
        kwargs["registry"] = environ["GATEWATCH_REGISTRY"]
    if environ.get("GATEWATCH_LISTEN"):
        kwargs["listen"] = _listen("GATEWATCH_LISTEN", environ["GATEWATCH_LISTEN"])
    registry = Path(kwargs.pop("registry", "registry"))
    kwargs["registry"] = registry if registry.is_absolute() else base / registry
    try:
        log = LogConfig.from_table(_table("log", data.get("log", {})))
    except ValueError as exc:
        raise ConfigError("log", str(exc)) from exc
    if not Path(log.dir).is_absolute():
        log = _replace_dir(log, str(base / log.dir))
    models_raw = _table("models", data.get("models", {}))
    models = {name: _model(name, _table(f"models.{name}", t)) for name, t in models_raw.items()}
    return GatewayConfig(log=log, models=models, path=path, **kwargs)


def _replace_dir(log: LogConfig, directory: str) -> LogConfig:
    from dataclasses import replace

    return replace(log, dir=directory)


def load_config(
    path: str | Path | None, *, environ: Mapping[str, str] | None = None
) -> GatewayConfig:
    """Read and validate gatewatch.toml; with no file, the defaults (serve every model's newest)."""
    if path is None:
        return parse_config({}, Path.cwd(), environ=environ)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"unreadable ({exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML ({exc})") from exc
    # absolute(), not resolve(): a Kubernetes ConfigMap is a symlink to a folder that is
    # replaced on every update, and the watch must keep reading the link, not its old target.
    path = path.absolute()
    return parse_config(data, path.parent, path=path, environ=environ)
