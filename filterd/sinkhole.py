"""Replies for blocked names, built from bytes (pure; the policy stage and the block page share it).

A / AAAA get the sinkhole address (or 0.0.0.0 / :: in null mode) so browsers reach the block page.
Every other type gets NOERROR with no answer (HTTPS and SVCB included: browsers then fall back to A/AAAA).
Negative replies carry an SOA so resolvers cache them for `blocking.ttl`, and EDNS clients get an
Extended DNS Error 15 (Blocked) naming the list.
"""

from __future__ import annotations

import ipaddress
import struct

from filterd.config.schema import BlockingConfig, BlockingMode
from filterd.dns import wire

_SOA_MNAME = wire.encode_name("filterd.invalid")
_SOA_RNAME = wire.encode_name("hostmaster.filterd.invalid")
_NULL_V4 = ipaddress.IPv4Address("0.0.0.0").packed
_NULL_V6 = ipaddress.IPv6Address("::").packed
_COPIED_FLAGS = wire.RD | wire.CD  # the query's flags a reply copies (`wire.build_reply`)
_ID = struct.Struct("!H")


class BlockedReplies:
    """Builds the reply for a blocked query under one `blocking` config."""

    def __init__(self, config: BlockingConfig) -> None:
        self.mode = config.mode
        self.ttl = config.ttl
        if config.mode is BlockingMode.NULL:
            self._v4, self._v6 = _NULL_V4, _NULL_V6
        else:
            self._v4, self._v6 = config.sinkhole.ipv4.packed, config.sinkhole.ipv6.packed
        # the answers never change: made once (the hot path of a blocked A query is then one build_reply)
        self._a = (wire.rr(wire.NAME_PTR, wire.T_A, self.ttl, self._v4),)
        self._aaaa = (wire.rr(wire.NAME_PTR, wire.T_AAAA, self.ttl, self._v6),)
        #: The Extended DNS Error of each list's blocks (a few lists: made once each).
        self._ede: dict[str, tuple[int, str]] = {}
        #: Replies made before, by what they depend on besides the client's ID and question bytes: the list, the
        #: type and class, the RD and CD flags and the client's EDNS (none, or its DO bit). (The header without its
        #: ID, and the rest after the question.)
        self._made: dict[tuple[str, int, int, int, bool | None], tuple[bytes, bytes]] = {}

    def reply(self, q: wire.Question, entry: str, list_name: str) -> bytes:
        """The blocked reply: made once for each kind of query (`_made`), then the client's ID and question put in;
        made each time when its SOA is owned by a name other than the query's (a parent that is listed, a CNAME's
        target)."""
        if entry != q.qname and self._with_soa(q):
            return self._build(q, entry, list_name)
        key = (list_name, q.qtype, q.qclass, q.flags & _COPIED_FLAGS, None if q.edns is None else q.edns.do)
        made = self._made.get(key)
        if made is None:
            reply = self._build(q, entry, list_name)
            if len(self._made) >= 4096:  # (a client asking every type of every list: made again after this)
                self._made.clear()
            made = self._made[key] = (reply[2:12], reply[12 + len(q.question) :])
        return b"".join((_ID.pack(q.id), made[0], q.question, made[1]))

    def _with_soa(self, q: wire.Question) -> bool:
        """Whether the reply has an SOA: NXDOMAIN, and NOERROR without an answer (every type but A and AAAA)."""
        if self.mode is BlockingMode.REFUSED:
            return False
        return self.mode is BlockingMode.NXDOMAIN or q.qclass != wire.C_IN or q.qtype not in (wire.T_A, wire.T_AAAA)

    def _build(self, q: wire.Question, entry: str, list_name: str) -> bytes:
        ede = self._ede.get(list_name)
        if ede is None:
            if len(self._ede) >= 1024:  # (list names are few; group and schedule names too: never reached)
                self._ede.clear()
            ede = self._ede[list_name] = (wire.EDE_BLOCKED, f"filterd: {list_name}")
        if self.mode is BlockingMode.REFUSED:
            return wire.build_reply(q, wire.REFUSED, ede=ede)
        if not self._with_soa(q):  # A or AAAA: the address
            return wire.build_reply(q, answers=self._a if q.qtype == wire.T_A else self._aaaa, ede=ede)
        rcode = wire.NXDOMAIN if self.mode is BlockingMode.NXDOMAIN else wire.NOERROR
        # The SOA's owner is the listed name: the query name itself is the question's own bytes (a pointer), any
        # other name (a parent of it, or a CNAME target's) is encoded from its text, escapes and all.
        owner = wire.NAME_PTR if entry == q.qname else wire.encode_name(entry)
        soa = wire.rr(owner, wire.T_SOA, self.ttl, wire.soa_rdata(_SOA_MNAME, _SOA_RNAME, self.ttl))
        return wire.build_reply(q, rcode, authority=(soa,), ede=ede)
