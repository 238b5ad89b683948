"""QueryHandler: raw packet in, raw reply out, for every transport.

Returns the reply bytes at once when a stage answered synchronously (blocked, refused, local), or an
awaitable for the rest; None (at once or awaited) when nothing is to be sent: a packet dropped here, or an
answer whose decision is DROPPED (rate limiting). Never raises: a packet can at worst be dropped or get SERVFAIL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable

from filterd.dns import wire
from filterd.metrics import Metrics
from filterd.pipeline.base import Answer, Decision, Pipeline, Query
from filterd.querylog.events import QueryEvents
from filterd.transport.fastpath import Blocked, PacketCache

log = logging.getLogger(__name__)

UDP_MAX = 65535


class QueryHandler:
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.dropped = 0
        #: The query log and the safeguarding alerts, told of every answer (None: neither is on).
        self.events: QueryEvents | None = None
        #: Blocked answers and cache hits by the query's bytes, before any parse (`fastpath.py`); one per pipeline.
        self.fast: PacketCache | None = PacketCache.of(pipeline)
        self._fast_for = pipeline

    def handle(
        self, data: bytes, client_ip: str, protocol: str, logged: bool = True
    ) -> bytes | Awaitable[bytes | None] | None:
        """`logged` False: a load balancer's own health check (`proxy.py`), counted but kept out of the query log
        and the safeguarding alerts."""
        if self._fast_for is not self.pipeline:  # a reload swapped the pipeline: its answers may differ
            self.fast = PacketCache.of(self.pipeline)
            self._fast_for = self.pipeline
        fast = self.fast
        query: Query | None = None
        answer: Answer | None = None
        if fast is not None:
            hit = fast.lookup(data, client_ip, protocol)
            if hit is not None:
                reply, entry = hit
                queries = self.metrics.queries
                key = entry.counted
                if key is None or key[0] != protocol:
                    group = entry.group
                    key = entry.counted = queries.key(
                        protocol,
                        entry.question.qtype,
                        entry.answer.decision,
                        "default" if group is None else group.name,
                    )
                queries.counts[key] += 1
                if self.events is not None and logged:
                    self.events.hit(entry, client_ip)
                return reply
            if fast.missed is not None:
                try:
                    quick = fast.quick(data, client_ip, protocol, logged)
                except Exception:
                    quick = None  # (the slow path meets the same problem, and says so)
                if quick is not None:
                    if isinstance(quick, Blocked):  # a new blocked name, answered whole: count it and tell the log
                        q = quick.question
                        group = quick.group
                        self.metrics.queries.count(
                            protocol, q.qtype, Decision.BLOCKED, "default" if group is None else group.name
                        )
                        if self.events is not None and logged:
                            self.events.blocked(client_ip, group, q, quick.match)
                        return quick.reply
                    query, answer = quick  # (a blocked answer; or None, and the query read, for the stages)
        if query is None:
            try:
                q = wire.parse_query(data)
            except wire.BadVersion as exc:
                return self._count(wire.build_reply(exc.question, wire.BADVERS), protocol, exc.question.qtype)
            except wire.WireError as exc:
                if exc.rcode is None:
                    self.dropped += 1
                    return None
                return self._count(wire.error_reply(data, exc.rcode), protocol, 0)
            query = Query(data, q, client_ip, protocol, logged=logged)
        if answer is None:
            try:
                answer = self.pipeline.answer_now(query)
            except Exception:
                q = query.question
                log.exception("error answering %s %s", q.qname, q.qtype)
                answer = Answer(wire.build_reply(q, wire.SERVFAIL), Decision.ERROR, "internal error")
        if answer is not None:
            if fast is not None and fast.missed is not None:
                fast.store(query, answer)
            return self.finish(answer, query)
        if self.events is not None:
            query.received = time.perf_counter()  # the log's answer time: 0 for answers given at once
        return self._resolve(query)

    async def _resolve(self, query: Query) -> bytes | None:
        try:
            answer = await self.pipeline.resolve(query)
        except Exception:
            log.exception("error resolving %s %s", query.question.qname, query.question.qtype)
            answer = Answer(wire.build_reply(query.question, wire.SERVFAIL), Decision.ERROR, "internal error")
        return self.finish(answer, query)

    def finish(self, answer: Answer, query: Query) -> bytes | None:
        """The reply to send, or None: send nothing (a dropped query, still counted)."""
        q = query.question
        group = query.group
        self.metrics.queries.count(query.protocol, q.qtype, answer.decision, "default" if group is None else group.name)
        if self.events is not None and query.logged:
            self.events.answered(query, answer)
        if answer.decision is Decision.DROPPED:
            return None
        reply = answer.wire
        if query.protocol == "udp" and len(reply) > q.max_udp:
            reply = wire.truncate(reply, len(q.question), q.edns)
        return reply

    def _count(self, reply: bytes | None, protocol: str, qtype: int) -> bytes | None:
        if reply is not None:
            self.metrics.queries.count(protocol, qtype, Decision.ERROR)
        return reply
