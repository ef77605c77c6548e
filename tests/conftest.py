from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests._models import push_linreg, push_logreg


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    """A registry with churn v1, v2 (20-feature LogisticRegression) and price v1 (regression)."""
    root = tmp_path / "registry"
    work = tmp_path / "work"
    work.mkdir()
    push_logreg(root, work, seed=0)
    push_logreg(root, work, seed=1, C=0.1)
    push_linreg(root, work)
    return root


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write gatewatch.toml text into the test folder and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "gatewatch.toml"
        path.write_text(text)
        return path

    return write
