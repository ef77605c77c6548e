"""The `gatewatch` command: serve, registry, and the tools around them.

Every subcommand fails with one line on stderr and exit code 2 for the user's mistakes, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.errors import ConfigError, RegistryError

if TYPE_CHECKING:
    from gateway.predlog import LogConfig

__all__ = ["main"]

Handler = Callable[[argparse.Namespace], int]


def _config_path(arg: str | None) -> str | None:
    if arg:
        return arg
    return "gatewatch.toml" if Path("gatewatch.toml").is_file() else None


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.config import load_config

    env = {}
    if args.registry:
        env["GATEWATCH_REGISTRY"] = args.registry
    if args.listen:
        env["GATEWATCH_LISTEN"] = args.listen
    os.environ.update(env)
    path = _config_path(args.config)
    config = load_config(path)
    if path:
        os.environ["GATEWATCH_CONFIG"] = str(Path(path).resolve())
    workers = args.workers or config.workers
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Every worker writes its samples here and /metrics sums them.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gatewatch-metrics-")
    print(
        f"gatewatch {__version__}: serving {config.registry} on http://{config.listen}", flush=True
    )
    uvicorn.run(
        "gateway.app:create_app_from_env",
        factory=True,
        host=config.host,
        port=config.port,
        workers=workers if workers > 1 else None,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def cmd_registry_push(args: argparse.Namespace) -> int:
    from gateway.manifest import build_manifest, check_min_metrics, read_csv
    from gateway.registry import push, validate_name

    validate_name(args.name)
    model = Path(args.model)
    if not model.is_file():
        raise RegistryError(f"no model file {model}")
    train = read_csv(args.train_data, args.target)
    eval_table = read_csv(args.eval_data, args.target) if args.eval_data else None
    manifest = build_manifest(
        args.name,
        model,
        train,
        eval_table=eval_table,
        code_revision=args.code_revision,
        allow_nan=args.allow_nan,
    )
    check_min_metrics(manifest["metrics"], args.min_metric or [])
    from gateway.registry import sha256_file

    manifest["sha256"] = sha256_file(model)
    version = push(args.registry, manifest, model)
    figures = ", ".join(f"{k}={v:.4f}" for k, v in manifest["metrics"].items())
    print(f"pushed {args.name} v{version} to {args.registry} ({figures})")
    return 0


def cmd_registry_list(args: argparse.Namespace) -> int:
    from gateway.registry import list_models, list_versions, read_manifest

    names = [args.name] if args.name else list_models(args.registry)
    for name in names:
        versions = list_versions(args.registry, name)
        if args.name and not versions:
            raise RegistryError(f"no model {name!r} in {args.registry}")
        for v in versions:
            m = read_manifest(args.registry, name, v)
            figures = " ".join(f"{k}={val:.4f}" for k, val in (m.get("metrics") or {}).items())
            print(f"{name}\tv{v}\t{m['flavor']}\t{m['task']}\t{m.get('created_at', '')}\t{figures}")
    return 0


def cmd_registry_show(args: argparse.Namespace) -> int:
    from gateway.registry import read_manifest

    print(json.dumps(read_manifest(args.registry, args.name, args.version), indent=2))
    return 0


def _log_config(args: argparse.Namespace) -> LogConfig:
    from gateway.config import load_config

    return load_config(_config_path(args.config)).log


def cmd_log_tail(args: argparse.Namespace) -> int:
    from gateway.predlog import tail

    try:
        tail(_log_config(args), follow=args.follow, model=args.model, out=sys.stdout)
    except BrokenPipeError:
        pass
    return 0


def cmd_log_stats(args: argparse.Namespace) -> int:
    from gateway.predlog import stats

    print(json.dumps(stats(_log_config(args)), indent=2, default=str))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(Path(args.dir))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewatch", description="Serve and watch versioned models."
    )
    parser.add_argument("--version", action="version", version=f"gatewatch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="gatewatch.toml (default: ./gatewatch.toml if present)")
    serve.add_argument("--registry", help="registry folder (overrides the config)")
    serve.add_argument("--listen", help="HOST:PORT (overrides the config)")
    serve.add_argument("--workers", type=int, default=0, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="warning")
    serve.set_defaults(handler=cmd_serve)

    reg = sub.add_parser("registry", help="push, list and show model versions")
    reg.add_argument("--registry", default="registry", help="registry folder (default: ./registry)")
    regsub = reg.add_subparsers(dest="registry_command", required=True)
    p = regsub.add_parser("push", help="register the next version of a model")
    p.add_argument("name")
    p.add_argument(
        "--model", required=True, help="artifact: .skops, .joblib or a pickled river model"
    )
    p.add_argument("--train-data", required=True, help="CSV with a header, features and the target")
    p.add_argument("--target", required=True, help="name of the target column")
    p.add_argument(
        "--eval-data", help="CSV to compute validation metrics on (default: a 20%% holdout)"
    )
    p.add_argument("--min-metric", action="append", metavar="NAME=VALUE", help="refuse below this")
    p.add_argument("--code-revision", help="revision of the training code, for the lineage")
    p.add_argument("--allow-nan", action="store_true", help="the model accepts NaN inputs")
    p.set_defaults(handler=cmd_registry_push)
    p = regsub.add_parser("list", help="list models and versions")
    p.add_argument("name", nargs="?")
    p.set_defaults(handler=cmd_registry_list)
    p = regsub.add_parser("show", help="print a version's manifest")
    p.add_argument("name")
    p.add_argument("version", type=int)
    p.set_defaults(handler=cmd_registry_show)
    logp = sub.add_parser("log", help="read the prediction log")
    logp.add_argument("--config", help="gatewatch.toml (default: ./gatewatch.toml if present)")
    logsub = logp.add_subparsers(dest="log_command", required=True)
    p = logsub.add_parser("tail", help="print records")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new records")
    p.add_argument("--model", help="only this model's records")
    p.set_defaults(handler=cmd_log_tail)
    p = logsub.add_parser("stats", help="counts per model, version and role, and the time span")
    p.set_defaults(handler=cmd_log_stats)

    demo = sub.add_parser("demo", help="train demo models, serve them, send traffic, stop")
    demo.add_argument("--dir", default="demo", help="working folder (default: ./demo)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except (RegistryError, ConfigError) as exc:
        print(f"gatewatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
