"""What the admin page shows, computed from query log rows and the server's own state. Pure: rows in, numbers
out; the page (filterd/web/console.py) reads the rows and renders the result."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from filterd.querylog.record import Record
from filterd.querylog.report import LABELS
from filterd.querylog.store import Totals

#: The decisions a row can carry, in the order the overview lists them.
DECISIONS = ("blocked", "forwarded", "cached", "local", "refused", "error")


@dataclass(frozen=True)
class DeviceCount:
    label: str  # the device's name, else its address
    client: str
    group: str
    blocked: int


@dataclass(frozen=True)
class Overview:
    queries: int
    by_decision: tuple[tuple[str, int], ...]
    blocked: int
    by_category: tuple[tuple[str, str, int], ...]  # (category, what it is in words, blocked attempts)
    by_hour: tuple[int, ...]  # blocked attempts per hour of the day (local time), 24 values
    devices: tuple[DeviceCount, ...]
    top_blocked: tuple[tuple[str, int], ...]

    @property
    def blocked_share(self) -> float:
        return self.blocked / self.queries if self.queries else 0.0


def local_midnight(now: float) -> float:
    """The start of today (local time) as seconds since 1970."""
    day = time.localtime(now)
    return time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))


def tally(rows: Iterable[Record], top: int = 10) -> Totals:
    """What `QueryLog.totals` counts in SQL, counted from rows in Python (newest first, as `rows()` gives them):
    the tests' oracle for it."""
    decisions: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    names: Counter[str] = Counter()
    hours = [0] * 24
    devices: dict[str, tuple[str, str]] = {}
    blocked_by: Counter[str] = Counter()
    for row in rows:
        decisions[row.decision] += row.count
        if row.decision != "blocked":
            continue
        categories[row.category or row.list or "other"] += row.count
        names[row.name] += row.count
        hours[time.localtime(row.time).tm_hour] += row.count
        blocked_by[row.client] += row.count
        devices.setdefault(row.client, (row.device, row.group))
    return Totals(
        dict(decisions),
        dict(categories.most_common()),
        tuple(hours),
        tuple((client, *devices[client], n) for client, n in blocked_by.most_common(top)),
        tuple(names.most_common(top)),
    )


def overview(totals: Totals | Iterable[Record], top: int = 10) -> Overview:
    """The overview of a span of the log: from `QueryLog.totals` (what the page does), or from rows."""
    if not isinstance(totals, Totals):
        totals = tally(totals, top)
    decisions = totals.decisions
    order = [d for d in DECISIONS if decisions.get(d)] + sorted(d for d in decisions if d not in DECISIONS)
    return Overview(
        queries=sum(decisions.values()),
        by_decision=tuple((d, decisions[d]) for d in order),
        blocked=decisions.get("blocked", 0),
        by_category=tuple((c, LABELS.get(c, ""), n) for c, n in totals.categories.items()),
        by_hour=totals.hours,
        devices=tuple(DeviceCount(device or client, client, group, n) for client, device, group, n in totals.devices),
        top_blocked=totals.names,
    )


@dataclass(frozen=True)
class LogFilter:
    """The query log page's filters; empty strings match everything."""

    device: str = ""  # a client address or a device name, exactly
    group: str = ""
    decision: str = ""
    category: str = ""
    since: str = "24h"

    def matches(self, row: Record) -> bool:
        return (
            (not self.device or self.device in (row.client, row.device))
            and (not self.decision or row.decision == self.decision)
            and (not self.category or self.category in (row.category, row.list))
        )


def row_reason(row: Record) -> str:
    """What the log row says happened, in words (`filterd check` says why, as of now)."""
    if row.decision == "blocked":
        what = LABELS.get(row.category, row.category)
        return f"blocked by {row.list or 'a rule'}" + (f" ({what})" if what else "")
    return {
        "forwarded": "not blocked: asked the upstream",
        "cached": "not blocked: answered from the cache",
        "local": "answered by filterd itself (a local name)",
        "refused": "refused: this client is not served",
        "error": "not blocked: the upstream failed",
    }.get(row.decision, row.decision)


def devices_by_group(
    seen: Sequence[str], group_of: Mapping[str, str], names: Mapping[str, Iterable[str]]
) -> dict[str, list[tuple[str, str]]]:
    """(label, address) of every seen client, by the name of its group ("" for none)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for client in sorted(seen):
        known = sorted(names.get(client, ()), key=lambda n: (-n.count("."), n))
        out.setdefault(group_of.get(client, ""), []).append((known[0] if known else client, client))
    return out
