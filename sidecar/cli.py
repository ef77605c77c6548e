"""``gatewatch sidecar`` / ``python -m sidecar``: run the sidecar with uvicorn."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from sidecar.app import create_app
from sidecar.config import load_config
from sidecar.errors import ConfigError

__all__ = ["main"]

_STARTUP_FAILURE = 3
"""uvicorn's own exit code when the app's startup fails."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewatch sidecar",
        description="Watch the prediction log: drift, accuracy, canary and shadow analysis.",
    )
    parser.add_argument(
        "--config",
        "-c",
        help="gatewatch.toml to read (default: ./gatewatch.toml if present, else the defaults)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="log level of the sidecar and uvicorn (default: info)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run until interrupted; returns the process exit code (2: bad config, 3: startup failed)."""
    args = _parser().parse_args(argv)
    path = args.config
    if path is None and Path("gatewatch.toml").is_file():
        path = "gatewatch.toml"
    try:
        config = load_config(path)
    except ConfigError as exc:
        print(f"gatewatch sidecar: invalid configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(f"gatewatch sidecar: dashboard at http://{config.listen}/ (status: /status)", flush=True)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config),
            host=config.host,
            port=config.port,
            log_level=args.log_level,
            access_log=False,
            lifespan="on",
        )
    )
    server.run()
    return 0 if server.started else _STARTUP_FAILURE
