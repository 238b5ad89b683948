"""The `filterd` command: thin argument handling over app.py and the config loader.

Global options (--config, --verbose) are accepted before or after the subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filterd import __version__, logs, systemd
from filterd.config.load import load_config, load_embedded
from filterd.config.schema import Config
from filterd.errors import ConfigError, FilterdError

if TYPE_CHECKING:  # (asyncio, the admin client and the server: imported when used, so that `filterd serve`
    # starts loading the lists sooner: `start_early`)
    import asyncio
    from concurrent.futures import Future

    from filterd.admin_client import AdminClient
    from filterd.blocklists.load import Prepared

log = logging.getLogger("filterd")

DEFAULT_CONFIG = Path("/etc/filterd/filterd.yaml")


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """The same options on the main parser and every subparser; only the main one sets defaults,
    so an option given after the subcommand is not overwritten by the subparser's default."""
    parser = argparse.ArgumentParser(add_help=False)
    missing = None if defaults else argparse.SUPPRESS
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=missing,
        help=f"config file (default: {DEFAULT_CONFIG} or the embedded one)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if defaults else argparse.SUPPRESS,
        help="log debug messages",
    )
    parser.add_argument(
        "--json", action="store_true", default=False if defaults else argparse.SUPPRESS, help="print JSON output"
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="filterd",
        parents=[_global_options(defaults=True)],
        description="A filtering DNS resolver proxy for homes and schools.",
        epilog=f"Without --config: {DEFAULT_CONFIG} if it exists, else the embedded default config.",
    )
    parser.add_argument("--version", action="version", version=f"filterd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", parents=[common], help="run the DNS server in the foreground (SIGHUP reloads)")

    config = sub.add_parser("config", parents=[common], help="work with config files")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", parents=[common], help="validate a config file, print every error")
    check.add_argument("path", type=Path, nargs="?", help="the file to check (default: --config)")

    lists = sub.add_parser("lists", parents=[common], help="the blocklists of the running server")
    lists_sub = lists.add_subparsers(dest="lists_command", required=True, metavar="ACTION")
    lists_sub.add_parser("show", parents=[common], help="each list: source, entries, last success and error")
    update = lists_sub.add_parser("update", parents=[common], help="refresh lists now and print each result")
    update.add_argument("names", nargs="*", metavar="NAME", help="the lists to refresh (default: all)")
    update.add_argument("--force", action="store_true", help="download in full and accept a shrunk list")

    check_name = sub.add_parser("check", parents=[common], help="what filterd does with a name, and why")
    check_name.add_argument("name")
    check_name.add_argument("--offline", action="store_true", help="decide from the config and files, no server")
    check_name.add_argument("--client", metavar="IP", help="as asked by this client: its group and schedules")

    for action, text in (
        ("block", "block a name and everything under it, on this instance (kept across restarts)"),
        ("allow", "never block a name nor anything under it, on this instance (kept across restarts)"),
        ("reset", "remove a name from this instance's local block and allow entries"),
    ):
        local = sub.add_parser(action, parents=[common], help=text)
        local.add_argument("name")
    sub.add_parser("reload", parents=[common], help="re-read the config and the lists (like SIGHUP)")

    querylog = sub.add_parser("log", parents=[common], help="the query log: who asked what, and what filterd did")
    querylog.add_argument("--client", metavar="IP", help="only this device (its IP address)")
    querylog.add_argument("--group", help="only this client group")
    querylog.add_argument("--blocked", action="store_true", help="only blocked queries")
    querylog.add_argument("--since", metavar="DURATION", help="only this recent: 1h, 7d, ...")
    querylog.add_argument("--limit", type=int, default=1000, help="at most this many rows, newest first")
    querylog.add_argument("--delete", action="store_true", help="delete every record of --client (and its alerts)")

    report = sub.add_parser("report", parents=[common], help="blocked attempts per group and device, and alerts")
    report.add_argument("--since", metavar="DURATION", default="7d", help="the period (default: %(default)s)")
    report.add_argument("--html", type=Path, metavar="FILE", help="also write a printable HTML page here")

    suggest = lists_sub.add_parser(
        "suggest", parents=[common], help="forwarded names that look like chat-roulette sites, to review"
    )
    suggest.add_argument("--since", metavar="DURATION", default="7d", help="the period (default: %(default)s)")

    ca = sub.add_parser(
        "ca",
        parents=[common],
        help="the local CA: the block page over HTTPS, and DoT/DoH's certificate (tls.mode local-ca)",
    )
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, metavar="ACTION")
    ca_init = ca_sub.add_parser("init", parents=[common], help="create the CA in state_dir/ca (never overwrites)")
    ca_init.add_argument("--name", help="the name devices show for it (default: filterd block page CA (HOST))")
    ca_export = ca_sub.add_parser("export", parents=[common], help="print the CA certificate to install on devices")
    ca_export.add_argument("--der", action="store_true", help="binary DER instead of PEM (Windows, some MDMs)")
    ca_rotate = ca_sub.add_parser(
        "rotate", parents=[common], help="make a new CA; the old one signs until --until, while devices get the new one"
    )
    ca_rotate.add_argument("--until", metavar="YYYY-MM-DD", help="when the new CA takes over (default: in 30 days)")
    ca_rotate.add_argument("--name", help="the new CA's name (default: the old one's)")
    return parser


def load(path: Path | None) -> Config:
    """--config, else /etc/filterd/filterd.yaml if it exists, else the embedded default. A list file that cannot be
    read is no error here (only `config check` says so): the server starts without that list and keeps trying."""
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    return load_embedded() if path is None else load_config(path, check_files=False)


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


async def serve(config: Config, early: Future[Prepared | None] | None = None) -> None:
    """Run until SIGTERM or SIGINT; a clean stop closes every listener. `early`: the lists being loaded meanwhile
    (`start_early`)."""
    import asyncio

    from filterd.app import App  # (the lists are compiling meanwhile: `start_early`)

    app = App(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[object]] = set()
    ready = False

    def reload() -> None:
        if not ready:
            log.warning("SIGHUP: still starting; the config and lists being loaded are the current ones")
            return
        log.info("SIGHUP: reloading the config and the lists")
        task = loop.create_task(app.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Before start: a signal during a long list load must neither kill filterd (SIGHUP's default) nor be lost.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    await app.start(await _prepared(early))
    ready = True
    if stop.is_set():
        await app.stop()
        return
    settle_heap()
    log.info(
        "filterd %s ready (event loop: %s)", __version__, "uvloop" if "uvloop" in type(loop).__module__ else "asyncio"
    )
    # DNS answers now, and every signal handler is in place: systemd (Type=notify) starts dependents.
    systemd.ready(f"answering DNS on {', '.join(map(str, app.listening.dns))}")
    try:
        await stop.wait()
    finally:
        systemd.stopping()
        log.info("stopping")
        await app.stop()


#: Allocations between two collections of the young generation (Python's default: 700).
GC_YOUNG = 20_000


def settle_heap() -> None:
    """Once started (main process and workers alike)."""
    # Everything built at start (config, lists, pipeline) lives until the end: out of the collector's way, so a full
    # collection walks only what queries allocate (fewer and shorter pauses of the loop; docs/pipeline.md).
    gc.collect()
    gc.freeze()
    # A young-generation collection walks every object still alive in it (the queries in flight: their tasks,
    # futures and coroutines) each `threshold0` allocations: every 700 by default, 7% of a miss's cost in a
    # profile. Every 20,000 costs 30x less; the cyclic garbage waiting for it is a few hundred KB at most.
    gc.set_threshold(GC_YOUNG, 20, 20)


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner when it is installed (a regular dependency wherever it has a wheel), else asyncio's."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return run


def start_early(config: Config) -> Future[Prepared | None]:
    """Load the state_dir and the lists in a thread (their compile in a child process) while the rest of filterd
    is imported: a first start with a large list answers sooner (`blocklists.load.prepare`)."""
    import threading
    from concurrent.futures import Future

    from filterd.blocklists.load import prepare

    future: Future[Prepared | None] = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(prepare(config))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="filterd-prepare", daemon=True).start()
    return future


async def _prepared(early: Future[Prepared | None] | None) -> Prepared | None:
    """The early load's result; None when it failed: the server's own load then meets the problem and says it."""
    if early is None:
        return None
    import asyncio

    try:
        return await asyncio.wrap_future(early)
    except Exception as exc:
        log.debug("the early load of the lists failed (%s); loading them again", exc)
        return None


def run_serve(config: Config, early: Future[Prepared | None] | None = None) -> None:
    # Outside the `except ImportError:` above: an exception raised while serving must not carry uvloop's
    # ModuleNotFoundError as its context, at the head of every traceback.
    event_loop_runner()(serve(config, early))


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            log.error("%s", problem)
        return 1
    try:
        run_serve(config, start_early(config))
    except FilterdError as exc:
        log.error("%s", exc)
        return 1
    return 0


# --- commands that ask the running server (through the admin API) -------------------------------------


def _client(args: argparse.Namespace) -> AdminClient:
    from filterd.admin_client import AdminClient

    return AdminClient.from_config(load(args.config))


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def cmd_lists_show(args: argparse.Namespace) -> int:
    rows = _client(args).get("/api/lists")
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        state = "" if row.get("enabled", True) else " (disabled)"
        print(f"{row['name']}{state}")
        print(f"  source:        {row['source']}")
        entries = f"{row['entries']} names"
        if row["name"] == "local":
            entries = f"{row['entries']} blocked, {row.get('allowed', 0)} allowed"
        print(f"  entries:       {entries}")
        if row["name"] == "local":
            for label, key in (("blocked", "blocked_names"), ("allowed", "allowed_names")):
                if row.get(key):
                    print(f"  {label + ':':14} {', '.join(row[key])}")
            continue
        print(f"  last success:  {_when(row.get('last_success'))}")
        print(f"  last error:    {row.get('last_error') or '-'}")
        print(f"  next refresh:  {_when(row.get('next_refresh'))}")
    return 0


def cmd_lists_update(args: argparse.Namespace) -> int:
    results = _client(args).post("/api/lists/update", {"names": args.names, "force": args.force})
    if args.json:
        _print_json(results)
    else:
        for result in results:
            print(f"{result['list']}: {result['result']}: {result['message']}")
    return 0 if all(r["result"] in ("updated", "not_modified") for r in results) else 1


def cmd_check(args: argparse.Namespace) -> int:
    if args.offline:
        from filterd.app import offline_check

        result = offline_check(load(args.config), args.name, args.client)
    else:
        params = {"name": args.name} | ({"client": args.client} if args.client else {})
        result = _client(args).get("/api/check", **params)
    if args.json:
        _print_json(result)
    else:
        print(f"{result['name']}: {result['decision']}: {result['reason']}")
    return 0


def cmd_local(args: argparse.Namespace) -> int:
    result = _client(args).post(f"/api/{args.command}", {"name": args.name})
    if args.json:
        _print_json(result)
    elif args.command == "reset":
        done = "removed from the local entries" if result["changed"] else "was not in the local entries"
        print(f"{result['name']}: {done}")
    else:
        print(f"{result['name']}: {'blocked' if args.command == 'block' else 'allowed'} (with everything under it)")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        client = _client(args)
    except ConfigError as exc:  # the server would refuse the same file: say so without asking it
        result: dict[str, Any] = {"ok": False, "errors": exc.problems}
    else:
        result = client.post("/api/reload")
    if args.json:
        _print_json(result)
    elif result.get("ok"):
        lists = ", ".join(f"{name} {count}" for name, count in result.get("lists", {}).items())
        print(f"reloaded in {result.get('seconds', 0):.2f}s ({lists})")
    else:
        for error in result.get("errors", []):
            print(error, file=sys.stderr)
        print("reload refused: the running config stays in use", file=sys.stderr)
    return 0 if result.get("ok") else 1


def cmd_log(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.delete:
        if not args.client:
            print("filterd log --delete: give the device: --client IP", file=sys.stderr)
            return 2
        result = client.post("/api/log/delete", {"client": args.client})
        if args.json:
            _print_json(result)
        else:
            print(f"{result['client']}: {result['deleted']} query log rows deleted (and its alerts)")
        return 0
    params = {"limit": str(args.limit)}
    for key in ("client", "group", "since"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    if args.blocked:
        params["blocked"] = "1"
    rows = client.get("/api/log", **params)
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"]))
        who = row["device"] or row["client"]
        group = f" [{row['group']}]" if row["group"] else ""
        what = f"{row['decision']} by {row['list']}" if row["decision"] == "blocked" else row["decision"]
        times = f" (x{row['count']})" if row.get("count", 1) > 1 else ""
        print(f"{when} {who}{group} {row['name']} {row['qtype']}: {what}{times}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    client = _client(args)
    print(client.get_text("/api/report", since=args.since), end="")
    if args.html is not None:
        page = client.get_text("/api/report", since=args.since, format="html")
        args.html.write_text(page, encoding="utf-8")
        print(f"(the printable page: {args.html})")
    return 0


def cmd_lists_suggest(args: argparse.Namespace) -> int:
    found = _client(args).get("/api/suggest", since=args.since)
    if args.json:
        _print_json(found)
    elif not found:
        print(f"nothing to suggest in the last {args.since}")
    else:
        for item in found:
            print(
                f"{item['name']} ({item['lookups']} lookups): {item['reason']}; block it: filterd block {item['name']}"
            )
    return 0


def _ca_folder(args: argparse.Namespace) -> Path:
    from filterd.tls import ca as tls_ca  # (cryptography: only for these commands)

    return tls_ca.ca_dir(load(args.config).state_dir)


def cmd_ca_init(args: argparse.Namespace) -> int:
    from filterd.tls import ca as tls_ca

    folder = _ca_folder(args)
    ca = tls_ca.init(folder, args.name or tls_ca.default_name(), datetime.datetime.now(datetime.UTC))
    print(f"created the local CA in {folder} (key: ca.key, mode 0600)")
    print(f"  SHA-256 fingerprint: {ca.fingerprint}")
    print(
        "install it on managed devices (`filterd ca export`, deploy/README.md), then set blockpage.https "
        "and/or tls: {mode: local-ca, names: [...]}"
    )
    return 0


def cmd_ca_export(args: argparse.Namespace) -> int:
    from filterd.tls import ca as tls_ca

    ca = tls_ca.load(_ca_folder(args)).newest
    if args.der:
        sys.stdout.buffer.write(ca.der)
    else:
        sys.stdout.write(ca.pem.decode("ascii"))
    return 0


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    from filterd.tls import ca as tls_ca

    now = datetime.datetime.now(datetime.UTC)
    switch = now + datetime.timedelta(days=tls_ca.ROTATE_DAYS)
    if args.until:
        try:
            switch = datetime.datetime.fromisoformat(args.until)
            switch = switch.replace(tzinfo=datetime.UTC) if switch.tzinfo is None else switch.astimezone(datetime.UTC)
        except ValueError:
            print(f"filterd ca rotate: --until {args.until!r} is not a date like 2027-01-31", file=sys.stderr)
            return 2
    folder = _ca_folder(args)
    authority = tls_ca.rotate(folder, args.name, switch, now)
    assert authority.next is not None
    print(f"made a new CA in {folder}: it signs from {switch:%Y-%m-%d %H:%M} UTC; until then the old one does")
    print(f"  new SHA-256 fingerprint: {authority.next.fingerprint}")
    print("install it on every device before that date (`filterd ca export`); `filterd reload` picks it up")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose)
    commands = {
        ("serve", None): cmd_serve,
        ("config", "check"): cmd_config_check,
        ("lists", "show"): cmd_lists_show,
        ("lists", "update"): cmd_lists_update,
        ("check", None): cmd_check,
        ("block", None): cmd_local,
        ("allow", None): cmd_local,
        ("reset", None): cmd_local,
        ("reload", None): cmd_reload,
        ("log", None): cmd_log,
        ("report", None): cmd_report,
        ("lists", "suggest"): cmd_lists_suggest,
        ("ca", "init"): cmd_ca_init,
        ("ca", "export"): cmd_ca_export,
        ("ca", "rotate"): cmd_ca_rotate,
    }
    actions = ("config_command", "lists_command", "ca_command")
    action = next((getattr(args, name) for name in actions if getattr(args, name, None)), None)
    command = commands[(args.command, action)]
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return command(args)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            return 1
        except FilterdError as exc:
            print(f"filterd {args.command}: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `filterd lists show | head`
            sys.stderr.close()
            return 0
    return 130
