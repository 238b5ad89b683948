"""The `filterd` command: thin argument handling over app.py and the config loader.

Global options (--config, --verbose) are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from filterd import __version__, logs
from filterd.app import App
from filterd.config.load import load_config, load_embedded
from filterd.config.schema import Config
from filterd.errors import ConfigError, FilterdError

log = logging.getLogger("filterd")

DEFAULT_CONFIG = Path("/etc/filterd/filterd.yaml")


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """The same options on the main parser and every subparser; only the main one sets defaults,
    so an option given after the subcommand is not overwritten by the subparser's default."""
    parser = argparse.ArgumentParser(add_help=False)
    missing = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "-c", "--config", type=Path, default=missing, help="config file (default: the embedded default config)"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="log debug messages",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="filterd",
        parents=[_global_options(defaults=True)],
        description="A filtering DNS resolver proxy for homes and schools.",
    )
    parser.add_argument("--version", action="version", version=f"filterd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the DNS server in the foreground")
    config = sub.add_parser("config", parents=[common], help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", parents=[common], help="validate a config file, print every error")
    check.add_argument("path", type=Path, nargs="?", help="the file to check (default: --config)")
    return parser


def load(path: Path | None) -> Config:
    return load_embedded() if path is None else load_config(path)


def cmd_config_check(args: argparse.Namespace) -> int:
    path = args.path or args.config
    if path is None:
        print("filterd config check: give the file to check: filterd config check PATH", file=sys.stderr)
        return 2
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT; a clean stop closes every listener."""
    app = App(config)
    await app.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("filterd %s ready", __version__)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await app.stop()


def run_serve(config: Config) -> None:
    try:
        import uvloop  # optional extra: filterd[fast]
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    try:
        run_serve(config)
    except FilterdError as exc:
        log.error("%s", exc)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose)
    with contextlib.suppress(KeyboardInterrupt):
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "config" and args.config_command == "check":
            return cmd_config_check(args)
    return 2
