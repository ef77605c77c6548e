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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
        os.environ["GATEWATCH_CONFIG"] = str(Path(path).absolute())
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


def cmd_rollout(args: argparse.Namespace) -> int:
    from gateway import audit, rollout
    from gateway.config import load_config

    path = Path(_config_path(args.config) or "gatewatch.toml")
    if not path.is_file():
        raise ConfigError(str(path), "no config file to edit (use --config)")
    changes: list[tuple[str, rollout.Change]] = []
    if args.canary is not None:
        if args.weight is None:
            raise ConfigError("--canary", "needs --weight W (the share of traffic, 0..1)")
        changes.append(
            (
                f"canary v{args.canary} at weight {args.weight}",
                rollout.set_canary(args.canary, args.weight),
            )
        )
    elif args.weight is not None:
        changes.append((f"canary weight {args.weight}", rollout.set_weight(args.weight)))
    if args.primary is not None:
        changes.append((f"primary v{args.primary}", rollout.set_primary(args.primary)))
    for v in args.shadow or []:
        changes.append((f"shadow v{v}", rollout.add_shadow(v)))
    for v in args.no_shadow or []:
        changes.append((f"no shadow v{v}", rollout.remove_shadow(v)))
    if args.promote:
        changes.append(("promote the canary", rollout.promote()))
    if args.rollback:
        changes.append(("roll back the canary", rollout.rollback()))
    if args.pause or args.resume:
        changes.append(
            (
                "pause automatic rollout" if args.pause else "resume automatic rollout",
                rollout.set_paused(args.pause),
            )
        )
    if not changes:
        raise ConfigError("rollout", "nothing to change (see gatewatch rollout --help)")

    def apply(table: Any) -> None:
        for _, change in changes:
            change(table)

    before, after = rollout.edit_routing(path, args.name, apply)
    what = "; ".join(text for text, _ in changes)
    audit.append(
        audit.audit_path(path.absolute(), load_config(path).audit_log),
        who=audit.cli_user(),
        action="edit",
        model=args.name,
        before=before,
        after=after,
        why=args.reason or what,
    )
    print(f"{args.name}: {what}\n  before {json.dumps(before)}\n  after  {json.dumps(after)}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from gateway import audit
    from gateway.config import load_config

    config_path = _config_path(args.config)
    configured = args.file or (load_config(config_path).audit_log if config_path else None)
    path = audit.audit_path(Path(config_path).absolute() if config_path else None, configured)
    if path is None:
        raise ConfigError("audit", "no config file: pass --config or --file")
    for entry in audit.read(path, args.model):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["ts"]))
        detail = f"{json.dumps(entry.get('before'))} -> {json.dumps(entry.get('after'))}"
        print(
            f"{when}  {entry['who']:<16} {entry['action']:<16} {entry.get('model') or '-':<12} {detail}  {entry.get('why') or ''}"
        )
    return 0


def cmd_sidecar(args: argparse.Namespace) -> int:
    from sidecar.cli import main as sidecar_main

    return sidecar_main(list(args.rest))


def cmd_webhook_test(args: argparse.Namespace) -> int:
    from sidecar.delivery import webhook_test_main

    path = _config_path(args.config)
    if path is None:
        raise ConfigError("webhook", "no gatewatch.toml here: pass --config")
    return webhook_test_main(path, args.name)


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

    ro = sub.add_parser(
        "rollout", help="change a model's canary, shadows or primary in gatewatch.toml"
    )
    ro.add_argument("name", help="model name")
    ro.add_argument("--config", help="gatewatch.toml (default: ./gatewatch.toml)")
    ro.add_argument(
        "--canary", type=int, metavar="V", help="make version V the canary (with --weight)"
    )
    ro.add_argument("--weight", type=float, metavar="W", help="canary share of traffic, 0..1")
    ro.add_argument("--primary", type=int, metavar="V", help="make version V the primary")
    ro.add_argument("--shadow", type=int, action="append", metavar="V", help="mirror traffic to V")
    ro.add_argument(
        "--no-shadow", type=int, action="append", metavar="V", help="stop mirroring to V"
    )
    ro.add_argument("--promote", action="store_true", help="the canary becomes the primary")
    ro.add_argument("--rollback", action="store_true", help="remove the canary")
    ro.add_argument("--pause", action="store_true", help="stop automatic rollout decisions")
    ro.add_argument("--resume", action="store_true", help="resume automatic rollout decisions")
    ro.add_argument("--reason", help="why, for the audit trail")
    ro.set_defaults(handler=cmd_rollout)

    au = sub.add_parser("audit", help="print the audit trail of routing changes")
    au.add_argument("--config", help="gatewatch.toml (the trail is audit.jsonl beside it)")
    au.add_argument("--file", help="read this audit file instead")
    au.add_argument("--model", help="only this model")
    au.set_defaults(handler=cmd_audit)

    sc = sub.add_parser(
        "sidecar", help="run the sidecar (drift, accuracy, alerts, rollouts, dashboard)"
    )
    sc.add_argument(
        "rest", nargs=argparse.REMAINDER, help="--config gatewatch.toml [--log-level info]"
    )
    sc.set_defaults(handler=cmd_sidecar)

    wh = sub.add_parser("webhook", help="check a [[webhooks]] target")
    whsub = wh.add_subparsers(dest="webhook_command", required=True)
    p = whsub.add_parser("test", help="send a test event to one target and print the answer")
    p.add_argument("name", help="the webhook's name in gatewatch.toml")
    p.add_argument("--config", help="gatewatch.toml (default: ./gatewatch.toml)")
    p.set_defaults(handler=cmd_webhook_test)

    demo = sub.add_parser("demo", help="train demo models, serve them, send traffic, stop")
    demo.add_argument("--dir", default="demo", help="working folder (default: ./demo)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sidecar"]:
        # The sidecar has its own parser; hand it everything after the subcommand.
        args = argparse.Namespace(rest=argv[1:])
        return cmd_sidecar(args)
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
