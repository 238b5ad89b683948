"""QueryEvents: what the transport tells after each answer, for the query log and the safeguarding alerts.

On the query path: a tuple handed to the log's queue, and, for a block in a category an alert rule watches, the
alert engine's count. Alerts found are handed to `on_alerts` (which composes and sends them in the background).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from filterd.dns.wire import qtype_label
from filterd.pipeline.base import Answer, Decision, Query
from filterd.querylog.store import QueryLog
from filterd.safeguarding.engine import Alert, AlertEngine

_NOT_LOGGED = frozenset({Decision.RATELIMITED, Decision.DROPPED})


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
        if answer.decision in _NOT_LOGGED:
            return  # a flood's queries: counted in metrics, not worth a row each
        group = "" if query.group is None else query.group.name
        blocked = answer.decision is Decision.BLOCKED
        name = query.question.qname
        if self.querylog is not None:
            ms = (time.perf_counter() - query.received) * 1000 if query.received else 0.0
            self.querylog.add_fields(
                self.clock(),
                query.client_ip,
                group,
                name,
                qtype_label(query.question.qtype),
                answer.decision,  # a str enum: stored as its text
                answer.reason if blocked else "",
                answer.category,
                ms,
            )
        if blocked and self.engine is not None:
            alerts = self.engine.observe(query.client_ip, group, name, answer.category, answer.reason)
            if alerts:
                self.on_alerts(alerts)
