"""QueryHandler: raw packet in, raw reply out, for every transport.

Returns the reply bytes at once when a stage answered synchronously (blocked, refused, local), or an
awaitable for the rest. Never raises: a packet can at worst be dropped or get SERVFAIL.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from filterd.dns import wire
from filterd.metrics import Metrics
from filterd.pipeline.base import Answer, Decision, Pipeline, Query

log = logging.getLogger(__name__)

UDP_MAX = 65535


class QueryHandler:
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        self.dropped = 0

    def handle(self, data: bytes, client_ip: str, protocol: str) -> bytes | Awaitable[bytes | None] | None:
        try:
            q = wire.parse_query(data)
        except wire.BadVersion as exc:
            return self._count(wire.build_reply(exc.question, wire.BADVERS), protocol, exc.question.qtype)
        except wire.WireError as exc:
            if exc.rcode is None:
                self.dropped += 1
                return None
            return self._count(wire.error_reply(data, exc.rcode), protocol, 0)
        query = Query(data, q, client_ip, protocol)
        try:
            answer = self.pipeline.answer_now(query)
        except Exception:
            log.exception("error answering %s %s", q.qname, q.qtype)
            answer = Answer(wire.build_reply(q, wire.SERVFAIL), Decision.ERROR, "internal error")
        if answer is not None:
            return self.finish(answer, query)
        return self._resolve(query)

    async def _resolve(self, query: Query) -> bytes | None:
        try:
            answer = await self.pipeline.resolve(query)
        except Exception:
            log.exception("error resolving %s %s", query.question.qname, query.question.qtype)
            answer = Answer(wire.build_reply(query.question, wire.SERVFAIL), Decision.ERROR, "internal error")
        return self.finish(answer, query)

    def finish(self, answer: Answer, query: Query) -> bytes:
        q = query.question
        group = query.group
        self.metrics.queries.count(query.protocol, q.qtype, answer.decision, "default" if group is None else group.name)
        reply = answer.wire
        if query.protocol == "udp" and len(reply) > q.max_udp:
            reply = wire.truncate(reply, len(q.question), q.edns)
        return reply

    def _count(self, reply: bytes | None, protocol: str, qtype: int) -> bytes | None:
        if reply is not None:
            self.metrics.queries.count(protocol, qtype, Decision.ERROR)
        return reply
