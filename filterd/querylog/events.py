"""QueryEvents: what the transport tells after each answer, for the query log and the safeguarding alerts.

On the query path: a tuple handed to the log's queue, and, for a block in a category an alert rule watches, the
alert engine's count. Alerts found are handed to `on_alerts` (which composes and sends them in the background).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from filterd.blocklists.matcher import Match
from filterd.dns.wire import QTYPE_LABELS, Question
from filterd.groups.model import Group
from filterd.pipeline.base import Answer, Decision, Query
from filterd.querylog.store import QueryLog, Tail
from filterd.safeguarding.engine import Alert, AlertEngine
from filterd.transport.fastpath import Entry

#: Each decision as the log stores it (plain strings: the writer marshals them); those not logged are absent.
_DECISION_TEXT: dict[Decision, str] = {
    d: d.value for d in Decision if d not in (Decision.RATELIMITED, Decision.DROPPED)
}
_BLOCKED = _DECISION_TEXT[Decision.BLOCKED]
#: One answer as a worker relays it (`RelayEvents`, `QueryEvents.replay`): client, log tail, time, milliseconds.
Row = tuple[str, Tail, float, float]


class QueryEvents:
    def __init__(
        self,
        querylog: QueryLog | None,
        engine: AlertEngine | None,
        on_alerts: Callable[[list[Alert]], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.querylog = querylog if querylog is not None and querylog.enabled else None
        self.engine = engine if engine is not None and engine.enabled else None
        self.on_alerts = on_alerts
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.querylog is not None or self.engine is not None

    def answered(self, query: Query, answer: Answer) -> None:
        decision = answer.decision
        if decision not in _DECISION_TEXT:
            return  # rate limited or dropped: a flood's queries, counted in metrics, not worth a row each
        group = "" if query.group is None else query.group.name
        self.note(query.client_ip, log_tail(group, query.question, answer), answer_ms(query))

    def blocked(self, client_ip: str, group: Group | None, question: Question, match: Match) -> None:
        """`answered` for a new blocked name the packet cache's quick check answered whole (`fastpath.py`), with
        no `Query` or `Answer` made."""
        name = "" if group is None else group.name
        self.note(client_ip, blocked_tail(name, question, match.list, match.category), 0.0)

    def note(self, client_ip: str, tail: Tail, ms: float) -> None:
        """One answer, given now: a row in the query log, and a block counted for the alerts."""
        querylog = self.querylog
        if querylog is not None:
            querylog.log(client_ip, tail, self.clock(), ms)
        if tail[3] == _BLOCKED and self.engine is not None:
            self._observe(client_ip, tail)

    def hit(self, entry: Entry, client_ip: str) -> None:
        """A packet-cache hit (`fastpath.py`): the entry keeps its log tail, made at its first hit."""
        querylog = self.querylog
        if querylog is not None:
            querylog.hit(client_ip, entry_tail(entry), self.clock)
        if self.engine is not None and entry.answer.decision is Decision.BLOCKED:
            self._observe(client_ip, entry_tail(entry))

    def replay(self, rows: Iterable[Row]) -> None:
        """Answers a worker process gave (`filterd/workers/`), as (client, log tail, time, milliseconds): logged and
        counted for the alerts here, as if this process had given them."""
        querylog, engine = self.querylog, self.engine
        for client_ip, tail, when, ms in rows:
            if querylog is not None:
                querylog.log(client_ip, tail, when, ms)
            if engine is not None and tail[3] == _BLOCKED:
                self._observe(client_ip, tail)

    def _observe(self, client_ip: str, tail: Tail) -> None:
        """A block, for the alert engine: (client, group, name, category, list) from the log tail."""
        assert self.engine is not None
        alerts = self.engine.observe(client_ip, tail[0], tail[1], tail[5], tail[4])
        if alerts:
            self.on_alerts(alerts)


def answer_ms(query: Query) -> float:
    """How long a forwarded answer took, for the log (0 for one given at once)."""
    received = query.received
    return (time.perf_counter() - received) * 1000 if received else 0.0


def entry_tail(entry: Entry) -> Tail:
    """A packet-cache entry's log tail, made at its first logged hit and kept on it."""
    tail = entry.logged
    if tail is None:
        tail = entry.logged = log_tail("" if entry.group is None else entry.group.name, entry.question, entry.answer)
    return tail


def log_tail(group: str, question: Question, answer: Answer) -> Tail:
    """What the query log keeps of an answer besides who and when (plain strings: the writer marshals them):
    group, name, type, decision, list (a block's only), category."""
    decision = answer.decision
    if decision is Decision.BLOCKED:
        return blocked_tail(group, question, answer.reason, answer.category)
    qtype = QTYPE_LABELS.get(question.qtype, "other")
    return (group, question.qname, qtype, _DECISION_TEXT[decision], "", answer.category)


def blocked_tail(group: str, question: Question, listed: str, category: str) -> Tail:
    """`log_tail` of a block by `listed` (a list's name, or the local entries, a group's or a schedule's)."""
    return (group, question.qname, QTYPE_LABELS.get(question.qtype, "other"), _BLOCKED, listed, category)


#: A worker relays its answers at most this often (seconds), and at most this many in one batch (the rest of a
#: flood is counted as dropped, as the log's own queue does).
RELAY_EVERY = 0.05
RELAY_MAX_ROWS = 20_000


class RelayEvents(QueryEvents):
    """In a worker process (`filterd/workers/`): each answer's log tail, batched to the main process, which logs it
    and counts it for the alerts (`QueryEvents.replay`). `send(rows, dropped)` returns False when the main process
    is not keeping up (the batch is then dropped and counted)."""

    def __init__(self, send: Callable[[list[Row], int], bool], clock: Callable[[], float] = time.time) -> None:
        super().__init__(None, None, lambda alerts: None, clock)
        self.send = send
        self.rows: list[Row] = []
        self.dropped = 0
        self._due = False

    @property
    def enabled(self) -> bool:
        return True

    def note(self, client_ip: str, tail: Tail, ms: float) -> None:
        self._add((client_ip, tail, self.clock(), ms))

    def hit(self, entry: Entry, client_ip: str) -> None:
        self._add((client_ip, entry_tail(entry), self.clock(), 0.0))

    def _add(self, row: Row) -> None:
        rows = self.rows
        if len(rows) >= RELAY_MAX_ROWS:
            self.dropped += 1
            return
        rows.append(row)
        if not self._due:
            self._due = True
            asyncio.get_running_loop().call_later(RELAY_EVERY, self.flush)

    def flush(self) -> None:
        self._due = False
        rows, self.rows = self.rows, []
        if not rows and not self.dropped:
            return
        if self.send(rows, self.dropped):
            self.dropped = 0
        else:
            self.dropped += len(rows)
