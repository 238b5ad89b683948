"""LocalStage: queries filterd answers itself and never forwards.

- ANY: the RFC 8482 minimal answer (one synthesized HINFO "RFC8482").
"""

from __future__ import annotations

from filterd.dns import wire
from filterd.pipeline.base import Answer, Decision, PassThrough, Query

_HINFO_RFC8482 = b"\x07RFC8482\x00"
_ANY_TTL = 3600


class LocalStage(PassThrough):
    name = "local"

    def answer_now(self, query: Query) -> Answer | None:
        q = query.question
        if q.qtype == wire.T_ANY:
            hinfo = wire.rr(wire.NAME_PTR, wire.T_HINFO, _ANY_TTL, _HINFO_RFC8482, q.qclass)
            return Answer(wire.build_reply(q, answers=(hinfo,)), Decision.LOCAL, "RFC 8482 ANY")
        return None
