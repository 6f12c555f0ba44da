"""The ``gateway`` command: run, check, routes, schema, version."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from . import __version__, logs
from .config import Plan, build, load
from .errors import GatewayError
from .yamlsource import Source

DEFAULT_CONFIG = "config/gateway.yaml"


def main(argv: list[str] | None = None) -> int:
    # `gateway ...` imports from the working directory as `python -m gateway ...` does, so a
    # project's modules (`mysite.settings`) resolve when it is run from the project's folder.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except GatewayError as exc:
        print(f"gateway: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Route HTTP, WebSocket, MQTT, email and SMS to ASGI applications.")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the gateway")
    run.add_argument("app", nargs="?", metavar="MODULE:APP",
                     help="serve one ASGI app for every HTTP and WebSocket path, as uvicorn and daphne do (instead of a config file)")
    run.add_argument("-c", "--config", help=f"config file (default: {DEFAULT_CONFIG})")
    run.add_argument("--listen", action="append", metavar="ADDRESS",
                     help="with MODULE:APP: where to listen (default 127.0.0.1:8000; repeat for several)")
    run.add_argument("--log-level", choices=logs.LEVELS, help="overrides logging.level")
    run.add_argument("--log-format", choices=("console", "json"), help="overrides logging.format")
    run.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="event loop (auto: uvloop when installed)")
    run.add_argument("--reload", action="store_true",
                     help="restart when a .py or .yaml file changes under the working directory, the config's folder "
                          "or python_path (development)")
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="run N gateway processes sharing the listeners (reuse_port) and the layer (needs a shared layer, e.g. redis)")
    run.add_argument("--pid-file", metavar="PATH", help="write the process id here, for `gateway reload`")
    run.set_defaults(func=_run)

    reload = sub.add_parser("reload", help="make a running gateway re-read its config (SIGHUP to the pid in --pid-file)")
    reload.add_argument("--pid-file", required=True, metavar="PATH", help="the file `gateway run --pid-file` wrote")
    reload.set_defaults(func=_reload)

    check = sub.add_parser("check", help="validate a config file without starting anything")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    check.set_defaults(func=_check)

    routes = sub.add_parser("routes", help="print the routing table of a config file")
    routes.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    routes.set_defaults(func=_routes)

    schema = sub.add_parser("schema", help="print the config reference (Markdown) generated from the schema")
    schema.add_argument("--plugins", action="append", default=[], help="also document adapters found in this plugin folder")
    schema.set_defaults(func=_schema)

    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def _version(args: argparse.Namespace) -> int:
    print(f"asgi-gateway {__version__}")
    return 0


def _run(args: argparse.Namespace) -> int:
    plan = _run_plan(args)
    cfg = plan.config.logging
    level, fmt = args.log_level or cfg.level, args.log_format or cfg.format
    logs.configure(level, fmt)
    if args.workers < 1:
        raise GatewayError("--workers must be at least 1")
    if args.reload:
        if args.workers > 1:
            raise GatewayError("--reload runs one process: leave out --workers")
        return _run_reloading(args, plan)
    if args.workers > 1:
        if args.app:
            raise GatewayError("--workers needs a config file (-c FILE): its layer must be shared, e.g. redis")
        from .workers import run_workers

        return run_workers(args.config, args.workers, level, fmt, args.loop)
    install_loop(args.loop)
    from .server import Gateway

    with _pid_file(args.pid_file):
        asyncio.run(Gateway(plan, config_path=None if args.app else args.config).serve())
    return 0


@contextlib.contextmanager
def _pid_file(path: str | None) -> Iterator[None]:
    """``--pid-file``: where ``gateway reload`` finds the process to signal."""
    if path is None:
        yield
        return
    Path(path).write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            Path(path).unlink()


def _reload(args: argparse.Namespace) -> int:
    try:
        pid = int(Path(args.pid_file).read_text().strip())
    except (OSError, ValueError) as exc:
        raise GatewayError(f"--pid-file {args.pid_file}: no gateway pid there ({exc}); start it with gateway run --pid-file") from None
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise GatewayError(f"no process {pid} (from {args.pid_file}): is the gateway running?") from None
    print(f"gateway: asked process {pid} to reload its config (it logs gateway.reloaded or gateway.reload_failed)")
    return 0


def _run_plan(args: argparse.Namespace) -> Plan:
    if args.app is not None and (args.app.endswith((".yaml", ".yml")) or Path(args.app).is_file()) and not args.config:
        args.config, args.app = args.app, None  # `gateway run gateway.yaml` means the config file
    if args.app is None:
        if args.listen:
            raise GatewayError("--listen goes with MODULE:APP; in a config file set adapters.http.listen")
        args.config = args.config or DEFAULT_CONFIG
        return load(args.config)
    if args.config:
        raise GatewayError(f"give either a config file (-c {args.config}) or an app ({args.app}), not both")
    if ":" not in args.app:
        raise GatewayError(f"{args.app!r} is neither a config file nor an app: write module:attribute, e.g. mysite.asgi:application")
    listen = args.listen or ["127.0.0.1:8000"]
    routes = [{"app": args.app}]
    data = {"adapters": {"http": {"listen": listen}}, "routes": {"http": routes, "websocket": routes}}
    return build(Source(data, files=[f"gateway run {args.app}"]), Path.cwd())


def _run_reloading(args: argparse.Namespace, plan: Plan) -> int:
    """Run ``gateway run`` without ``--reload`` in a child process, restarted on code changes."""
    try:
        from watchfiles import PythonFilter, run_process
    except ImportError:
        raise GatewayError("--reload needs watchfiles: pip install 'asgi-gateway[reload]'") from None
    config_dir = Path(args.config).resolve().parent if args.config else Path.cwd().resolve()
    roots = {Path.cwd().resolve(), config_dir, *((config_dir / p).resolve() for p in plan.config.python_path)}
    command = [sys.executable, "-m", "gateway", "run", *([args.app] if args.app else ["-c", args.config]), "--loop", args.loop]
    for address in args.listen or ():
        command += ["--listen", address]
    if args.log_level:
        command += ["--log-level", args.log_level]
    if args.log_format:
        command += ["--log-format", args.log_format]
    run_process(*sorted(roots), target=shlex.join(command), target_type="command",
                watch_filter=PythonFilter(extra_extensions=(".yaml", ".yml", ".html")),
                callback=lambda changes: print(f"gateway: reloading ({len(changes)} changed)", file=sys.stderr))
    return 0


def install_loop(choice: str) -> None:
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise GatewayError("--loop uvloop: uvloop is not installed (pip install 'asgi-gateway[speed]')") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _check(args: argparse.Namespace) -> int:
    plan = load(args.config)
    n_routes = sum(1 for _ in plan.routes())
    adapters = ", ".join(a.name for a in plan.adapters) or "none"
    bridges = f"; {len(plan.bridges)} bridges" if plan.bridges else ""
    print(f"{args.config}: OK ({len(plan.adapters)} adapters: {adapters}; {n_routes} routes{bridges})")
    return 0


def _routes(args: argparse.Namespace) -> int:
    print_routes(load(args.config), sys.stdout)
    return 0


def print_routes(plan: Plan, out: TextIO) -> None:
    rows = [("PROTOCOL", "MATCHER", "APP", "NAME", "MIDDLEWARE")]
    if any(ap.name == "http" for ap in plan.adapters):
        for protocol, path, owner in plan.mounts():  # matched before the routes
            rows.append((protocol, f"mount {path}", f"({owner})", "-", "-"))
    for protocol, route in plan.routes():
        rows.append((protocol, route.matcher.describe(), route.target, route.name or "-", ", ".join(route.middleware) or "-"))
    for bridge in plan.bridges:  # those from a protocol are listed above, as the routes they are
        if bridge.group is not None:
            rows.append(("group", bridge.group, f"bridge -> {bridge.describe_target()}", bridge.name, "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


def _schema(args: argparse.Namespace) -> int:
    from .docgen import config_reference

    sys.stdout.write(config_reference([Path(p) for p in args.plugins]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
