"""``python -m sidecar --config gatewatch.toml``."""

from __future__ import annotations

from sidecar.cli import main

raise SystemExit(main())
