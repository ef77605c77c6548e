"""Build a routing table from the config and the registry, loading what it needs.

Runs in a worker thread (loading and warming models is blocking work). Versions already loaded
by the previous table are reused as they are; a version the config names that cannot be loaded
makes the whole config invalid (the caller keeps the last good table), while a version loaded
only for pinning is skipped with a logged reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config import GatewayConfig, ModelConfig
from gateway.errors import ConfigError, RegistryError
from gateway.models import Model, load_model
from gateway.registry import list_models, list_versions, read_manifest, verify_artifact
from gateway.routing import ModelRoutes, RoutingTable

__all__ = ["LoadReport", "build_table"]

log = logging.getLogger("gatewatch.loader")


@dataclass
class LoadReport:
    loaded: list[tuple[str, int]] = field(default_factory=list)
    reused: list[tuple[str, int]] = field(default_factory=list)
    refused: list[tuple[str, int, str]] = field(default_factory=list)


def _wanted(config: GatewayConfig, name: str, available: list[int]) -> tuple[set[int], set[int]]:
    """(versions the config names, versions kept only for pinning)."""
    mc = config.models.get(name)
    named = mc.versions() if mc else set()
    keep = set(available[-config.keep_versions :]) if config.keep_versions else set()
    if mc is None and available:
        keep.add(available[-1])
    return named, keep - named


def _check_named(name: str, mc: ModelConfig, available: list[int]) -> None:
    checks = [("primary", mc.primary)]
    if mc.canary is not None:
        checks.append(("canary.version", mc.canary.version))
    checks += [("shadow", v) for v in mc.shadow]
    for key, version in checks:
        if version is not None and version not in available:
            raise ConfigError(
                f"models.{name}.{key}",
                f"version {version} is not in the registry (have {available or 'none'})",
            )


def _load(
    root: Path,
    name: str,
    version: int,
    previous: Mapping[tuple[str, int], Model],
    allow_pickle: bool,
) -> tuple[Model, bool]:
    manifest = read_manifest(root, name, version)
    # Checked again even for a version already in memory: a reload must notice a file that
    # was tampered with or corrupted since, rather than keep vouching for it.
    artifact = verify_artifact(root, manifest)
    old = previous.get((name, version))
    if old is not None and old.manifest.get("sha256") == manifest["sha256"]:
        return old, True
    return load_model(artifact, manifest, allow_pickle=allow_pickle), False


def build_table(
    config: GatewayConfig, previous: RoutingTable | None = None
) -> tuple[RoutingTable, LoadReport]:
    root = config.registry
    if not root.is_dir():
        raise ConfigError("gateway.registry", f"no registry folder at {root}")
    report = LoadReport()
    prev: dict[tuple[str, int], Model] = {}
    if previous is not None:
        for routes in previous.models.values():
            for v, m in routes.versions.items():
                prev[(routes.name, v)] = m
    names = list_models(root)
    for name in config.models:
        if name not in names:
            raise ConfigError(f"models.{name}", "no such model in the registry")
    models: dict[str, ModelRoutes] = {}
    for name in names:
        available = list_versions(root, name)
        mc = config.models.get(name)
        if mc is not None:
            _check_named(name, mc, available)
        named, extra = _wanted(config, name, available)
        loaded: dict[int, Model] = {}
        for version in sorted(named | extra):
            try:
                model, reused = _load(root, name, version, prev, config.allow_pickle)
            except RegistryError as exc:
                report.refused.append((name, version, str(exc)))
                log.error("refusing %s v%d: %s", name, version, exc)
                if version in named:
                    raise ConfigError(
                        f"models.{name}", f"version {version} cannot be served: {exc}"
                    ) from exc
                continue
            loaded[version] = model
            (report.reused if reused else report.loaded).append((name, version))
        if mc is not None:
            canary = mc.canary
            models[name] = ModelRoutes(
                name=name,
                versions=loaded,
                primary=mc.primary if mc.primary is not None else (max(loaded) if loaded else None),
                canary=canary.version if canary else None,
                weight=canary.weight if canary else 0.0,
                shadows=mc.shadow,
                sticky_header=mc.sticky_header,
            )
        else:
            models[name] = ModelRoutes(
                name=name, versions=loaded, primary=max(loaded) if loaded else None
            )
    return RoutingTable(models), report
