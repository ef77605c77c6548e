"""Errors of the gateway, each carrying the HTTP status it maps to.

GatewayError
 ├── ClientError                 4xx: the caller's fault, the message says what to fix
 │    ├── InvalidInput           400
 │    ├── Unauthorized           401
 │    ├── Forbidden              403
 │    ├── NotFound               404  (ModelNotFound)
 │    ├── MethodNotAllowed       405
 │    ├── PayloadTooLarge        413
 │    └── UnsupportedMediaType   415
 ├── ModelNotReady               503
 └── Overloaded                  503  (with Retry-After)
RegistryError                    a registry folder, manifest or artifact that cannot be used
ConfigError                      gatewatch.toml that does not validate (names the key)

Domain errors import nothing from the web stack; `app.py` maps them to responses in one place.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the errors that become an HTTP answer."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ClientError(GatewayError):
    status_code = 400


class InvalidInput(ClientError):
    status_code = 400


class Unauthorized(ClientError):
    status_code = 401


class Forbidden(ClientError):
    status_code = 403


class NotFound(ClientError):
    status_code = 404


class ModelNotFound(NotFound):
    pass


class MethodNotAllowed(ClientError):
    status_code = 405


class PayloadTooLarge(ClientError):
    status_code = 413


class UnsupportedMediaType(ClientError):
    status_code = 415


class ModelNotReady(GatewayError):
    status_code = 503


class Overloaded(GatewayError):
    status_code = 503


class RegistryError(Exception):
    """A registry entry that cannot be read, pushed or trusted."""


class ConfigError(ValueError):
    """A config value that does not validate; `key` is its dotted path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason
