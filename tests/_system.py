"""Find the system binaries some tests need; skip without them, fail under GATEWATCH_REQUIRE_ALL."""

from __future__ import annotations

import os
import shutil

import pytest


def require_binary(name: str) -> str:
    """Return the path of `name`, or skip the test; CI sets GATEWATCH_REQUIRE_ALL=1 to fail instead."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed"
    if os.environ.get("GATEWATCH_REQUIRE_ALL") == "1":
        pytest.fail(f"{message} (GATEWATCH_REQUIRE_ALL=1)")
    pytest.skip(message)
