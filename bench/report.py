#!/usr/bin/env python3
"""Markdown tables from a bench/run.py result (run.py prints them at the end and writes them beside the JSON).

    python3 bench/report.py bench/results/latest-full.json

Throughput: the median of the repetitions [min-max]; ratios are of medians. Latency: the median over the
repetitions of each run's p50 and p99 (per-query times from dnsperf -v). Memory in MB (10^6 bytes).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FILES = {
    "a": "a: 100% blocked",
    "b": "b: 100% cache hits",
    "c": "c: mix 10% blocked / 85% hits / 5% misses",
    "d": "d: 100% misses (forwarded)",
}
ORDER = ("filterd", "dnsmasq", "unbound", "floor")
#: The list store's targets (the issue): bytes a name above filterd with no list, load seconds, reload peak.
TARGET_BYTES_PER_NAME = 24
TARGET_LOAD_S = 3.0
TARGET_RELOAD_PEAK = 1.5


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 1e6:,.1f}"


def _num(value: float) -> str:
    return f"{value:,.0f}"


def _odd_rcodes(rcodes: str) -> list[str]:
    """Response codes other than NOERROR above 0.1% of the answers."""
    return [
        m.group(1)
        for m in re.finditer(r"([A-Z]+) \d+ \(([0-9.]+)%\)", rcodes)
        if m.group(1) != "NOERROR" and float(m.group(2)) > 0.1
    ]


def list_cost(info: dict[str, Any]) -> float:
    """A server's memory for its list: RSS with the list (1 s after load) minus RSS without, plus, for a mapped
    table (filterd), the pages of it that the lookups made resident afterwards; for the others the larger of
    "after load" and "after lookups". Not what the same lookups put in the caches: filterd's packet cache keeps
    up to `cache.size` blocked replies, which is the cache's memory, not the list's (RSS after lookups shows both)."""
    nolist, with_list = info["mem_nolist"]["rss"], info["mem_list"]["rss"]
    if "mapped_list_touched" in info:
        return float(with_list - nolist + max(info["mapped_list_touched"] - info.get("mapped_list", 0), 0))
    return float(max(with_list, info.get("mem_list_touched", {}).get("rss", 0)) - nolist)


def _median_of(xs: Sequence[Sequence[float]], i: int) -> float:
    return statistics.median(x[i] for x in xs)


def _cpu_cell(xs: Sequence[Sequence[float]]) -> str:
    user, system, children = (_median_of(xs, i) for i in range(3))
    return f"{user:.1f} / {system:.1f}" + (f" + {children:.1f}" if children >= 0.05 else "")


def _per_file(
    names: list[str], runs: dict[tuple[str, str], Any], cell: Callable[[Sequence[Sequence[float]]], str]
) -> list[str]:
    """A table of one row a query file and one column a server: `cell` of the runs' values, "-" for none."""
    out = ["| query file | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for f, label in FILES.items():
        cells = [label] + [cell(runs[(n, f)]) if runs.get((n, f)) else "-" for n in names]
        out.append("| " + " | ".join(cells) + " |")
    return out


def render(r: dict[str, Any]) -> str:
    servers: dict[str, Any] = r.get("servers", {})
    names = [n for n in ORDER if n in servers]
    runs: list[dict[str, Any]] = r.get("runs", [])
    s = r.get("settings", {})
    v = r.get("versions", {})
    m = r.get("machine", {})
    out: list[str] = []
    when = r.get("started", "?")
    out.append(f"### filterd benchmark: {r.get('mode', '?')} run, {when}, {r.get('duration_s', '?')} s")
    out.append("")
    loop = servers.get("filterd", {}).get("event_loop", "?")
    store = servers.get("filterd", {}).get("store", "?")
    upstream = r.get("upstream", "?")
    out.append(
        f"- machine: {m.get('nproc', '?')} vCPU {m.get('cpu', '?')}, {m.get('memory', '?')}, Debian "
        f"{m.get('debian', '?')}, kernel {m.get('kernel', '?')}; load average {r.get('load_start', '?')} at the "
        f"start, {r.get('load_end', '?')} at the end"
    )
    out.append(
        f"- filterd {v.get('filterd', '?')} ({m.get('filterd_commit', '?')}), Python {v.get('python', '?')}, "
        f"event loop **{loop}** (uvloop {v.get('uvloop', '?')}), list store: {store}"
    )
    out.append(
        f"- dnsmasq {v.get('dnsmasq', '?')} (`addn-hosts`), unbound {v.get('unbound', '?')} (1 thread, "
        f"`local-zone: always_null`), upstream {upstream} {v.get(upstream, '')}, dnsperf {v.get('dnsperf', '?')}"
    )
    if "floor" in servers:
        out.append(
            "- floor: `bench/floor.py`, the least a Python server on the same event loop does (the names in a set, "
            "replies kept by the question's bytes, misses forwarded; no groups, allow or local entries, bypass "
            "checks, EDNS, TTLs, counting or log): filterd / floor is filterd's share of what Python allows here"
        )
    if s.get("pin"):
        out.append("- pinned (`--pin`): each server on the last CPU alone, dnsperf and the upstream on the others")
    out.append(
        f"- {s.get('names', 0):,} names; repetitions: {s.get('reps', '?')}; throughput: {s.get('seconds', '?')} s "
        f"runs of `dnsperf {s.get('tput_args', '')}`; latency: {s.get('lat_seconds', '?')} s runs at "
        f"{s.get('lat_rate', 0):,} queries/s offered"
    )
    flags: list[str] = []
    qps: dict[tuple[str, str], list[float]] = defaultdict(list)
    lat: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    cpu: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for run in runs:
        key = (run["server"], run["file"])
        where = f"{run['server']} {run['file']} rep {run['rep']} ({run['kind']})"
        sent = run.get("sent") or 0
        if sent and run.get("lost", 0) / sent > 0.001:
            flags.append(f"{where}: {int(run['lost'])} of {int(sent)} queries lost")
        odd = _odd_rcodes(run.get("rcodes", ""))
        if odd:
            flags.append(f"{where}: answers {', '.join(odd)} ({run.get('rcodes')})")
        if run["kind"] == "tput":
            qps[key].append(run["qps"])
            if "cpu_us" in run:
                cpu[key].append(run["cpu_us"])
            if run["file"] in ("c", "d") and sent > run.get("lines", sent):
                flags.append(f"{where}: sent {int(sent):,} > {run['lines']:,} lines, so some misses were repeated")
        elif "p50_ms" in run:
            lat[key].append((run["p50_ms"], run["p99_ms"]))
            if run.get("qps", 0) < 0.95 * s.get("lat_rate", 0):
                flags.append(f"{where}: only {run['qps']:,.0f} queries/s answered of {s.get('lat_rate'):,} offered")

    reps = max((len(x) for x in qps.values()), default=0)
    peers = [n for n in names if n != "filterd"]
    head = ["query file", *names] + [f"filterd / {p}" for p in peers if "filterd" in names]
    if qps:
        out.append("")
        out.append(f"**Throughput**, queries/s (median of {reps} run{'s' if reps != 1 else ''} [min-max]):")
        out.append("")
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * (len(head) - 1))
    for f, label in FILES.items():
        if not any((n, f) in qps for n in names):
            continue
        cells = [label]
        for n in names:
            xs = qps.get((n, f), [])
            cells.append(f"{_num(statistics.median(xs))} [{_num(min(xs))}-{_num(max(xs))}]" if xs else "-")
        if "filterd" in names:
            for p in peers:
                fx, px = qps.get(("filterd", f)), qps.get((p, f))
                cells.append(f"**{statistics.median(fx) / statistics.median(px):.2f}**" if fx and px else "-")
        out.append("| " + " | ".join(cells) + " |")

    if lat:
        out.append("")
        out.append(f"**Latency** at {s.get('lat_rate', 0):,} queries/s offered, ms (p50 / p99; median of the runs):")
        out.append("")
        out.extend(_per_file(names, lat, lambda xs: f"{_median_of(xs, 0):.3f} / {_median_of(xs, 1):.3f}"))

    if cpu:
        out.append("")
        out.append(
            "**CPU a query** in the throughput runs, microseconds (/proc/PID/stat over each run, divided by the "
            "queries answered; median of the runs): the server's user / system time, + its child processes' "
            "(filterd's query-log writer). At full throughput the server's own core is the limit, so its user + "
            "system time a query is what sets its rate."
        )
        out.append("")
        out.extend(_per_file(names, cpu, _cpu_cell))

    count = s.get("names", 0) or 1
    out.append("")
    out.append(
        "**Load time and memory**, MB = 10^6 bytes, RSS and PSS summed over the process and its children "
        "(/proc/PID/smaps_rollup); load = start to the first correct answer for the list's last name:"
    )
    out.append("")
    out.append(
        "| server | load s | RSS / PSS no list | RSS / PSS with list | RSS / PSS with list, after lookups "
        "| list cost, bytes a name | RSS after the runs | reload: peak RSS / PSS | peak / steady RSS |"
    )
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in names:
        info = servers[n]
        nolist, with_list = info.get("mem_nolist", {}), info.get("mem_list", {})
        touched = info.get("mem_list_touched", {})
        load = f"{info['load_s']:.2f}" if "load_s" in info else "-"
        extra = [f"restart {info['restart_s']:.2f}"] if "restart_s" in info else []
        if "ready_nolist_s" in info:
            extra.append(f"no list {info['ready_nolist_s']:.2f}")
        load += f" ({'; '.join(extra)})" if extra else ""
        cost = "-"
        if nolist and touched:
            cost = f"{list_cost(info) / count:,.0f}"
        rl = info.get("reload", {})
        if rl.get("status") == "ok":
            peak = f"{_mb(rl['peak']['rss'])} / {_mb(rl['peak']['pss'])}"
            ratio = f"{rl['peak']['rss'] / rl['steady']['rss']:.2f}"
        elif rl:
            peak, ratio = f"n/a ({rl.get('why', '?')})", "n/a"
        else:
            peak, ratio = "-", "-"
        out.append(
            f"| {n} | {load} | {_mb(nolist.get('rss'))} / {_mb(nolist.get('pss'))} "
            f"| {_mb(with_list.get('rss'))} / {_mb(with_list.get('pss'))} "
            f"| {_mb(touched.get('rss'))} / {_mb(touched.get('pss'))} | {cost} "
            f"| {_mb(info.get('mem_after', {}).get('rss'))} | {peak} | {ratio} |"
        )

    fd = servers.get("filterd", {})
    if fd.get("mem_list") and fd.get("mem_nolist"):
        above = list_cost(fd)
        budget = TARGET_BYTES_PER_NAME * count
        rl = fd.get("reload", {})
        out.append("")
        out.append("**filterd's list-store targets:**")
        out.append("")
        out.append("| target | measured | met |")
        out.append("|---|---:|---|")
        out.append(
            f"| resident memory of the list <= {budget / 1e6:,.2g} MB above filterd with no list "
            f"({TARGET_BYTES_PER_NAME} bytes a name) | {above / 1e6:,.1f} MB ({above / count:,.0f} bytes a name) "
            f"| {'yes' if above <= budget else '**no**'} |"
        )
        load_s = fd.get("load_s", 0.0)
        out.append(
            f"| load <= {TARGET_LOAD_S:.0f} s | {load_s:.2f} s | {'yes' if load_s <= TARGET_LOAD_S else '**no**'} |"
        )
        if rl.get("status") == "ok":
            ratio = rl["peak"]["rss"] / rl["steady"]["rss"]
            met = "yes" if ratio <= TARGET_RELOAD_PEAK else "**no**"
            out.append(f"| reload peak <= {TARGET_RELOAD_PEAK}x steady RSS | {ratio:.2f}x | {met} |")
        else:
            out.append(f"| reload peak <= {TARGET_RELOAD_PEAK}x steady RSS | n/a ({rl.get('why', 'not run')}) | - |")

    rows = fd.get("querylog_rows")
    if rows:
        out.append("")
        if "error" in rows:
            out.append(f"filterd's query log: its counts could not be read ({rows['error']}).")
        else:
            written, dropped, failed = (int(rows.get(k, 0)) for k in ("written", "dropped", "failed"))
            total = written + dropped + failed or 1
            out.append(
                f"filterd's query log ({s.get('querylog', '?')}), over all the runs: {written:,} "
                f"answers written ({100 * written / total:.0f}%), {dropped:,} dropped while every core was busy "
                f"(its queue was full), {failed:,} failed."
            )

    errors = r.get("errors", [])
    if flags or errors:
        out.append("")
        out.append("**Flags:**")
        out.append("")
        out.extend(f"- error: {e.splitlines()[0] if e else e}" for e in errors)
        out.extend(f"- {f}" for f in flags)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: report.py RESULT.json", file=sys.stderr)
        return 2
    sys.stdout.write(render(json.loads(Path(args[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
