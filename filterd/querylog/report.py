"""The weekly report: per group and device, blocked attempts by category and by hour of day, bypass attempts, the
top blocked names and the alerts that fired; as text for the terminal and as one self-contained HTML page (inline
SVG charts, no scripts, no external files) a safeguarding lead can print. Pure: rows in, text out."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from filterd.config.schema import DEFAULT_CATEGORIES
from filterd.querylog.record import Record

#: What each category is, in words (the block page's, plus the bypass categories).
LABELS = {
    **dict(DEFAULT_CATEGORIES),
    "bypass-protection": "getting round the filter (Firefox's DNS, Private Relay)",
    "doh-major-providers": "getting round the filter (a public encrypted DNS service)",
    "doh-other-resolvers": "getting round the filter (a public encrypted DNS service)",
    "icloud-private-relay": "getting round the filter (iCloud Private Relay)",
    "schedule": "any site, during a schedule",
    "group": "a site blocked for the group",
}

#: Lists and categories that are attempts to get round the filter rather than to reach a site.
BYPASS = {"bypass-protection", "doh-bypass", "doh-major-providers", "doh-other-resolvers", "icloud-private-relay"}


@dataclass
class Device:
    client: str
    mac: str = ""
    device: str = ""
    group: str = ""
    queries: int = 0
    blocked: int = 0
    by_category: Counter[str] = field(default_factory=Counter)
    by_hour: list[int] = field(default_factory=lambda: [0] * 24)
    bypass: int = 0
    names: Counter[str] = field(default_factory=Counter)

    @property
    def label(self) -> str:
        return self.device or self.client


@dataclass
class Report:
    since: float
    until: float
    devices: dict[str, Device]
    top_blocked: list[tuple[str, int]]
    alerts: list[tuple[Any, ...]]
    queries: int
    blocked: int

    def groups(self) -> dict[str, list[Device]]:
        out: dict[str, list[Device]] = {}
        for device in sorted(self.devices.values(), key=lambda d: (-d.blocked, d.label)):
            out.setdefault(device.group or "(no group)", []).append(device)
        return dict(sorted(out.items()))


def is_bypass(record: Record) -> bool:
    return record.list in BYPASS or record.category in BYPASS


def build(rows: Iterable[Record], alerts: Sequence[tuple[Any, ...]], since: float, until: float) -> Report:
    devices: dict[str, Device] = {}
    top: Counter[str] = Counter()
    queries = blocked = 0
    for row in rows:
        n = row.count
        queries += n
        device = devices.get(row.client)
        if device is None:
            device = devices[row.client] = Device(row.client)
        device.mac = device.mac or row.mac
        device.device = device.device or row.device
        device.group = device.group or row.group
        device.queries += n
        if row.decision != "blocked":
            continue
        blocked += n
        device.blocked += n
        if is_bypass(row):
            device.bypass += n
        device.by_category[row.category or row.list] += n
        device.by_hour[datetime.fromtimestamp(row.time).hour] += n
        device.names[row.name] += n
        top[row.name] += n
    return Report(since, until, devices, top.most_common(15), list(alerts), queries, blocked)


def _date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M")


def render_text(report: Report) -> str:
    out = [
        f"filterd report, {_date(report.since)} to {_date(report.until)}",
        f"{report.queries} queries, {report.blocked} blocked, {len(report.alerts)} alerts",
        "",
    ]
    for group, devices in report.groups().items():
        out.append(f"Group {group}")
        for device in devices:
            if not device.blocked:
                continue
            ident = ", ".join(x for x in (device.client, device.mac) if x)
            out.append(f"  {device.label} ({ident}): {device.blocked} blocked, {device.bypass} bypass attempts")
            for category, count in device.by_category.most_common():
                out.append(f"    {LABELS.get(category, category)} ({category}): {count}")
            busiest = [h for h, n in enumerate(device.by_hour) if n]
            if busiest:
                out.append("    hours: " + ", ".join(f"{h:02d}:00 ({device.by_hour[h]})" for h in busiest))
            out.append("    names: " + ", ".join(f"{n} ({c})" for n, c in device.names.most_common(5)))
        quiet = [d.label for d in devices if not d.blocked]
        if quiet:
            out.append(f"  no blocked attempts: {', '.join(quiet)}")
        out.append("")
    if report.top_blocked:
        out.append("Top blocked names: " + ", ".join(f"{n} ({c})" for n, c in report.top_blocked))
    if report.alerts:
        out.append("Alerts:")
        for when, rule, client, _mac, device, group, names, result in report.alerts:
            out.append(f"  {_date(when)} {rule}: {device or client} ({group or 'no group'}): {names} [{result}]")
    return "\n".join(out).rstrip() + "\n"


def _bars(values: Sequence[int], labels: Sequence[str], width: int = 480, height: int = 90) -> str:
    """A small inline SVG bar chart (no script, prints as is)."""
    top = max(values) if values and max(values) else 1
    step = width / max(len(values), 1)
    parts = [f'<svg viewBox="0 0 {width} {height + 16}" width="{width}" height="{height + 16}" role="img">']
    for i, (value, label) in enumerate(zip(values, labels, strict=True)):
        h = round(value / top * height)
        x = round(i * step + 1)
        parts.append(
            f'<rect x="{x}" y="{height - h}" width="{max(1, round(step) - 2)}" height="{h}"><title>'
            f"{html.escape(label)}: {value}</title></rect>"
        )
        if len(values) <= 24 and (len(values) < 13 or i % 3 == 0):
            parts.append(f'<text x="{x}" y="{height + 12}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:60em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.5em}h3{font-size:1em;margin:1em 0 .2em}
table{border-collapse:collapse;margin:.3em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}
rect{fill:#5a7bbf}text{font-size:10px;fill:#555}.muted{color:#666}.device{page-break-inside:avoid}
@media print{body{margin:1cm}}
"""


def render_html(report: Report) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>filterd report {e(_date(report.since))} to {e(_date(report.until))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Filter report: {e(_date(report.since))} to {e(_date(report.until))}</h1>",
        f"<p>{report.queries} queries, <strong>{report.blocked} blocked</strong>, {len(report.alerts)} alerts. "
        '<span class="muted">Only blocked attempts are shown per device; nothing else of its browsing.</span></p>',
    ]
    for group, devices in report.groups().items():
        out.append(f"<h2>Group {e(group)}</h2>")
        for device in devices:
            if not device.blocked:
                continue
            ident = ", ".join(x for x in (device.client, device.mac) if x)
            out.append(f'<div class="device"><h3>{e(device.label)} <span class="muted">({e(ident)})</span></h3>')
            out.append(f"<p>{device.blocked} blocked attempts, {device.bypass} attempts to get round the filter.</p>")
            out.append("<table><tr><th>What kind of site</th><th>Attempts</th></tr>")
            for category, count in device.by_category.most_common():
                words = LABELS.get(category, category)
                out.append(f'<tr><td>{e(words)} <span class="muted">({e(category)})</span></td><td>{count}</td></tr>')
            out.append("</table><p class=muted>By hour of day</p>")
            out.append(_bars(device.by_hour, [f"{h:02d}" for h in range(24)]))
            names = ", ".join(f"{e(n)} ({c})" for n, c in device.names.most_common(8))
            out.append(f"<p>Names: {names}</p></div>")
        quiet = [d.label for d in devices if not d.blocked]
        if quiet:
            out.append(f"<p class=muted>No blocked attempts: {e(', '.join(quiet))}</p>")
    if report.top_blocked:
        out.append("<h2>Top blocked names</h2><table><tr><th>Name</th><th>Attempts</th></tr>")
        out += [f"<tr><td>{e(n)}</td><td>{c}</td></tr>" for n, c in report.top_blocked]
        out.append("</table>")
    out.append("<h2>Alerts</h2>")
    if report.alerts:
        out.append("<table><tr><th>When</th><th>Rule</th><th>Device</th><th>Names</th><th>Delivery</th></tr>")
        for when, rule, client, _mac, device, group, names, result in report.alerts:
            who = f"{device or client} ({group or 'no group'})"
            out.append(
                f"<tr><td>{e(_date(when))}</td><td>{e(rule)}</td><td>{e(who)}</td><td>{e(names)}</td>"
                f"<td>{e(result)}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
