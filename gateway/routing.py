"""The routing table: which loaded version answers a request, and which ones shadow it.

A table is immutable; a reload builds a new one and swaps the reference, so a request that
picked its version keeps it to the end while new requests see the new table at once.
Sticky keys hash (model, key) to a point in [0, 1): a key is on the canary when its point is
below the weight, so raising the weight only moves keys from primary to canary, never back.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.errors import ModelNotFound, ModelNotReady
from gateway.models import Model

__all__ = ["ModelRoutes", "Route", "RoutingTable", "sticky_point"]

Route = Literal["primary", "canary", "pinned"]


def sticky_point(model: str, key: str) -> float:
    """A stable point in [0, 1) for (model, key), the same in every process and release."""
    digest = hashlib.blake2b(f"{model}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    name: str
    versions: Mapping[int, Model]
    primary: int | None
    canary: int | None = None
    weight: float = 0.0
    shadows: tuple[int, ...] = ()
    sticky_header: str | None = None

    def allowed(self) -> set[int]:
        """Versions an un-pinned request may be answered by under this table."""
        out = {self.primary} if self.primary is not None else set()
        if self.canary is not None and self.weight > 0:
            out.add(self.canary)
        return out


@dataclass(frozen=True, slots=True)
class RoutingTable:
    models: Mapping[str, ModelRoutes] = field(default_factory=dict)
    keep_hint: str = "name it in [models.NAME] of gatewatch.toml or raise gateway.keep_versions"

    def routes(self, name: str) -> ModelRoutes:
        routes = self.models.get(name)
        if routes is None:
            raise ModelNotFound(f"model {name!r} is not served here")
        return routes

    def pick(
        self,
        name: str,
        version: int | None,
        sticky_key: str | None = None,
        rng: random.Random | None = None,
    ) -> tuple[Model, Route]:
        routes = self.routes(name)
        if version is not None:
            model = routes.versions.get(version)
            if model is None:
                raise ModelNotFound(
                    f"model {name!r} version {version} is not loaded; to load it, {self.keep_hint}"
                    f" (loaded: {sorted(routes.versions)})"
                )
            return model, "pinned"
        if routes.canary is not None and routes.weight > 0:
            if sticky_key is not None:
                on_canary = sticky_point(name, sticky_key) < routes.weight
            else:
                on_canary = (rng or random).random() < routes.weight
            if on_canary:
                return routes.versions[routes.canary], "canary"
        if routes.primary is None:
            raise ModelNotReady(f"model {name!r} has no version that loaded; see /admin/status")
        return routes.versions[routes.primary], "primary"

    def shadows(self, name: str) -> list[Model]:
        routes = self.models.get(name)
        if routes is None or not routes.shadows:
            return []
        return [routes.versions[v] for v in routes.shadows if v in routes.versions]
