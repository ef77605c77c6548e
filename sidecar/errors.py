"""Errors of the sidecar process.

Every error the sidecar raises on purpose derives from one base class, so callers (the CLI, the
app factory) can catch them together while tests can still tell them apart::

    SidecarError
    ├── ConfigError (also a ValueError)   gatewatch.toml or an environment override is invalid
    └── StateError                        the saved state file cannot be used

No module here imports the web framework: the HTTP layer maps errors to status codes itself.
"""

from __future__ import annotations

__all__ = ["ConfigError", "SidecarError", "StateError"]


class SidecarError(Exception):
    """Base class of the errors the sidecar raises on purpose."""


class ConfigError(SidecarError, ValueError):
    """A configuration value is invalid; the message names the key, e.g. "sidecar.batch: ...".

    Build it as ``ConfigError(key, reason)``. ``ConfigError("key: reason")`` is accepted too, so
    parsers that already format their own messages (alert rules, webhooks) can reuse the class.
    """

    def __init__(self, key: str, reason: str | None = None) -> None:
        if reason is None:
            key, _, reason = key.partition(": ")
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if reason else key)


class StateError(SidecarError):
    """The state file exists but cannot be loaded (corrupt, or written by another format)."""
