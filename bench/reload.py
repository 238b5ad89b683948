#!/usr/bin/env python3
"""Reloads under load: filterd answering dnsperf at a fixed rate while a SIGHUP arrives every 2 s.

    python3 bench/reload.py [--names 100000] [--seconds 30] [--interval 2] [--loops asyncio,uvloop] [--rate QPS]

For each event loop (stock asyncio, then uvloop):
  1. filterd with an N-name list (`format: domains`), the benchmark's upstream (nsd, else dnsmasq) and the mix
     file of bench/gen.py (10% blocked, 85% 1,000 cached names, 5% fresh misses), its cache warmed;
  2. its capacity: dnsperf with no rate cap on the mix for a few seconds (`-c 8 -q 100`, as bench/run.py);
  3. dnsperf at half that rate (`-Q`, or --rate) for S seconds, twice: **same**, a SIGHUP every 2 s and nothing
     changed (the reload must keep the compiled list and the cache), and **changed**, a new name appended to
     the list file before each SIGHUP (the list is compiled again, the cache cleared);
  4. for each run: queries sent, lost (no answer within dnsperf's 5 s), p99 and max latency, and how many
     reloads filterd logged as done, with the longest.

The target is 0 lost in every run. Exit status 0 when it was met, 1 when a query was lost, 2 when the run
itself failed. Every packet goes to 127.0.0.1; every dnsperf run is bounded by -l and by `timeout`; every process
started here is stopped by its PID (also on SIGINT/SIGTERM). Setup is bench/run.py's: Debian's dnsperf and
dnsmasq-base (nsd if installed), and a venv with filterd[fast] in WORK/venv unless --python names one; the stock
asyncio runs block the uvloop import in that same Python.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402
import run  # noqa: E402

#: The capacity run: as bench/run.py measures throughput (8 sockets, 100 outstanding, no rate cap).
CAPACITY_ARGS = run.TPUT_ARGS
#: Under a rate cap: enough outstanding queries that the rate holds through a stall of a few hundred ms.
RATE_ARGS = ("-c", "8", "-q", "2000", "-t", "5")
#: The most queries/s a run may be asked for (sizes the query files: a miss must never repeat within a run).
MAX_RATE = 40_000
#: Runs python as `filterd serve` with the uvloop import blocked: the stock asyncio loop in the same venv.
NO_UVLOOP = "import sys; sys.modules['uvloop'] = None; from filterd.cli import main; sys.exit(main())"
WITH_UVLOOP = "import sys; from filterd.cli import main; sys.exit(main())"


def config_text(port: int, upstream: int, listfile: Path, state: Path, querylog: str) -> str:
    return (
        "# filterd under bench/reload.py: loopback only, the local upstream, null answers, the admin API on (so the\n"
        "# compiled lists live in state_dir, as in production)\n"
        f'dns:\n  listen: ["{run.HOST}:{port}"]\n  upstreams: ["{run.HOST}:{upstream}"]\n'
        # the upstream's zone answers 127.10.x.y, which rebinding protection would drop
        f'  rebind_allow: ["{gen.ZONE}"]\n'
        'blocking:\n  mode: "null"\n'
        f'lists:\n  - {{name: bench, path: "{listfile}", format: domains}}\n'
        "cache:\n  size: 10000\n"
        f'state_dir: "{state}"\n'
        f'admin:\n  listen: "{run.HOST}:{run.free_port()}"\n'
        f"querylog: {{privacy: {querylog}}}\n"  # as production runs it (or off)
    )


def udp_drops() -> int:
    """The machine's UDP receive-buffer overflows so far (/proc/net/snmp RcvbufErrors: every socket, dnsperf's too)."""
    try:
        rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return -1


def socket_drops(port: int) -> int:
    """Datagrams dropped by the UDP socket bound to 127.0.0.1:port, its buffer full (/proc/net/udp `drops`)."""
    local = f"0100007F:{port:04X}"
    try:
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local:
                return int(fields[-1])
    except (OSError, IndexError, ValueError):
        pass
    return -1


def reloads_in(log: Path, offset: int) -> list[float]:
    """The durations of the reloads filterd logged as done after `offset`."""
    text = run._new_text(log, offset)
    return [float(m.group(1)) for m in re.finditer(r"reload: done in ([0-9.]+)s", text)]


def loaded(log: Path, offset: int, count: int, limit: float) -> None:
    """Wait until `count` reloads are logged done after `offset` (at most `limit` seconds)."""
    deadline = time.monotonic() + limit
    while len(reloads_in(log, offset)) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def under_reloads(
    proc: run.Proc, listfile: Path, qfile: Path, rate: int, seconds: int, interval: float, mode: str
) -> dict[str, Any]:
    """dnsperf at `rate` for `seconds` while a SIGHUP goes to filterd every `interval` seconds (mode "same" or
    "changed"; "none": no SIGHUP, the control)."""
    size = listfile.stat().st_size
    log_at = proc.log.stat().st_size
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def load() -> None:
        try:
            result.update(run.dnsperf(proc.port, qfile, seconds, (*RATE_ARGS, "-Q", str(rate)), verbose=True))
        except BaseException as exc:  # reported by the caller
            failure.append(exc)

    drops, filterd_drops = udp_drops(), socket_drops(proc.port)
    worker = threading.Thread(target=load)
    worker.start()
    sent = 0
    try:
        time.sleep(min(interval, 1.0))
        started = time.monotonic()
        while mode != "none" and worker.is_alive() and time.monotonic() - started < seconds - interval:
            if mode == "changed":
                with listfile.open("a") as f:
                    f.write(f"reload-{sent}-{time.time_ns():x}.example\n")
            os.kill(proc.pid, signal.SIGHUP)
            sent += 1
            worker.join(interval)
        worker.join(seconds + 60)
    finally:
        if listfile.stat().st_size != size:  # (only then: a truncate would change the file's time)
            with listfile.open("r+b") as raw:
                raw.truncate(size)
    drops, filterd_drops = udp_drops() - drops, socket_drops(proc.port) - filterd_drops
    if failure:
        raise run.BenchError(f"dnsperf failed: {failure[0]}")
    if not proc.alive():
        raise run.BenchError(f"filterd died during the reloads:\n{proc.log_tail()}")
    loaded(proc.log, log_at, sent, 30)
    done = reloads_in(proc.log, log_at)
    result.update(
        mode=mode,
        rate=rate,
        sighups=sent,
        reloads_done=len(done),
        udp_rcvbuf_errors=drops,
        filterd_socket_drops=filterd_drops,
        reload_max_s=max(done, default=None),
        log=run._new_text(proc.log, log_at)[-3000:],
    )
    return result


def one_loop(ctx: run.Ctx, loop: str, python: str) -> dict[str, Any]:
    a = ctx.args
    listfile = ctx.data / "blocklist.domains"
    state = ctx.work / f"state-{loop}"
    shutil.rmtree(state, ignore_errors=True)
    port = run.free_port()
    config = ctx.work / f"filterd-{loop}.yaml"
    config.write_text(config_text(port, ctx.upstream_port, listfile, state, a.querylog))
    code = NO_UVLOOP if loop == "asyncio" else WITH_UVLOOP
    log = ctx.work / f"filterd-{loop}.log"
    log.unlink(missing_ok=True)
    proc = run.Proc(f"filterd ({loop})", port, [python, "-c", code, "serve", "--config", str(config)], log)
    ctx.launch(proc)
    try:
        load_s = proc.wait_until(lambda: run.is_blocked(run.ask(port, ctx.manifest["last_blocked"], 0.05)), 300)
        seen = run.event_loop(proc.pid)
        if seen != loop:
            raise run.BenchError(f"filterd runs {seen}, not {loop} (is uvloop installed in {python}?)")
        run.spot_check(ctx, proc)
        run.warm(ctx, proc)
        capacity = run.dnsperf(port, ctx.data / "q-c-tput-1.txt", a.capacity_seconds, CAPACITY_ARGS)
        rate = a.rate or int(capacity["qps"] / 2)
        print(
            f"{loop}: loaded {a.names:,} names in {load_s:.1f} s; capacity {capacity['qps']:.0f} q/s "
            f"(lost {int(capacity.get('lost', 0))}); reloads at {rate} q/s (load average {run.loadavg()})",
            flush=True,
        )
        runs = []
        for rep, mode in enumerate(a.modes.split(","), 1):
            run.warm(ctx, proc)
            r = under_reloads(proc, listfile, ctx.data / f"q-c-lat-{rep}.txt", rate, a.seconds, a.interval, mode)
            r["load"] = run.loadavg()
            runs.append(r)
            print(
                f"  {r['mode']:7} sent {int(r.get('sent', 0)):7} lost {int(r.get('lost', 0)):5}  "
                f"p99 {r.get('p99_ms', -1):7.2f} ms  max {r.get('max_ms', -1):7.1f} ms  "
                f"SIGHUPs {r['sighups']}, reloads done {r['reloads_done']} (longest {r['reload_max_s']} s); "
                f"UDP buffer overflows {r['udp_rcvbuf_errors']} ({r['filterd_socket_drops']} at filterd)",
                flush=True,
            )
        return {"load_s": round(load_s, 2), "capacity": capacity, "rate": rate, "runs": runs, "loop": seen}
    finally:
        ctx.halt(proc)


def render(results: dict[str, Any]) -> str:
    lines = [
        f"# filterd: reloads under load ({results['started']})",
        "",
        f"{results['settings']['names']:,} names; a SIGHUP every {results['settings']['interval']} s for "
        f"{results['settings']['seconds']} s at half the measured capacity (dnsperf -Q); load average at the start "
        f"{results['load_start']}, at the end {results['load_end']}; {results['machine']['nproc']} CPUs, "
        f"{results['machine']['cpu']}.",
        "",
        "| loop | capacity q/s | rate q/s | list | sent | lost | p99 ms | max ms | reloads done | longest reload s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for loop, info in results["loops"].items():
        for r in info["runs"]:
            lines.append(
                f"| {loop} | {info['capacity']['qps']:.0f} | {info['rate']} | {r['mode']} | {int(r.get('sent', 0))} "
                f"| {int(r.get('lost', 0))} | {r.get('p99_ms', -1):.2f} | {r.get('max_ms', -1):.1f} "
                f"| {r['reloads_done']}/{r['sighups']} | {r['reload_max_s']} |"
            )
    lines += ["", f"Target: 0 lost in every run: {'met' if results.get('met') else 'NOT met'}."]
    for error in results["errors"]:
        lines.append(f"Error: {error}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", type=int, default=100_000, help="names in the list (default 100,000)")
    ap.add_argument("--seconds", type=int, default=30, help="seconds of each run under reloads (default 30)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between SIGHUPs (default 2)")
    ap.add_argument("--capacity-seconds", type=int, default=8, help="seconds of the capacity run (default 8)")
    ap.add_argument("--rate", type=int, help="queries/s under reloads (default: half the measured capacity)")
    ap.add_argument("--loops", default="asyncio,uvloop", help="event loops to run, in order (default both)")
    ap.add_argument(
        "--modes", default="none,same,changed", help="runs per loop: none (no SIGHUP: the control), same, changed"
    )
    ap.add_argument("--out", type=Path, default=HERE / "results", help="where the table and JSON go")
    ap.add_argument("--work", type=Path, default=Path("/tmp/filterd-bench-reload"), help="data, configs, logs, venv")
    ap.add_argument("--python", help="a Python with filterd (and uvloop) installed; skips the venv")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get install missing packages")
    ap.add_argument("--upstream", choices=("auto", "nsd", "dnsmasq"), default="auto", help="auto: nsd if installed")
    ap.add_argument(
        "--querylog", choices=("full", "blocked-only", "off"), default="full", help="filterd's query log privacy"
    )
    a = ap.parse_args(argv)
    a.groups = False  # what bench/run.py's helpers ask of the arguments
    a.pin = False  # (every process on every CPU, as a Pi runs them)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {
            k: v
            for k, v in vars(a).items()
            if k in ("names", "seconds", "interval", "rate", "loops", "modes", "querylog")
        },
        "load_start": run.loadavg(),
        "loops": {},
        "errors": [],
    }
    ctx: run.Ctx | None = None
    status = 0
    try:
        if not a.no_install:
            run.ensure_debs(run.SMOKE_DEBS)
        python = a.python or run.ensure_venv(a.work)
        results["machine"] = run.machine()
        results["versions"] = run.tool_versions(python)
        lines = MAX_RATE * (a.seconds + 5)
        manifest = gen.generate(
            a.work / "data",
            names=a.names,
            reps=len(a.modes.split(",")),
            c_lines=run.C_MAX_QPS * a.capacity_seconds,
            lat_lines=lines,
            ab_lines=1000,
        )
        ctx = run.Ctx(a, a.work, a.work / "data", manifest, python, [python, "-m", "filterd"], results=results)
        run.start_upstream(ctx)
        for loop in a.loops.split(","):
            if loop not in ("asyncio", "uvloop"):
                raise run.BenchError(f"unknown event loop {loop!r}: asyncio or uvloop")
            results["loops"][loop] = one_loop(ctx, loop, python)
        lost = sum(int(r.get("lost", 0)) for info in results["loops"].values() for r in info["runs"])
        results["met"] = lost == 0
        status = 0 if lost == 0 else 1
    except KeyboardInterrupt:
        results["errors"].append("interrupted (SIGINT/SIGTERM)")
        status = 2
    except (run.BenchError, OSError, subprocess.SubprocessError) as exc:
        results["errors"].append(str(exc))
        print(f"bench: {exc}", file=sys.stderr, flush=True)
        status = 2
    finally:
        if ctx is not None:
            for proc in reversed(list(ctx.running)):
                ctx.halt(proc)
    results["load_end"] = run.loadavg()
    results.setdefault("machine", {"nproc": os.cpu_count(), "cpu": "?"})
    table = render(results)
    json_path = a.out / f"reload-{stamp}.json"
    json_path.write_text(json.dumps(results, indent=1, default=str))
    json_path.with_suffix(".md").write_text(table)
    shutil.copyfile(json_path, a.out / "latest-reload.json")
    shutil.copyfile(json_path.with_suffix(".md"), a.out / "latest-reload.md")
    print()
    print(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
