"""Upstream responses: read once into a `Response`, then rendered for each client (pure).

The upstream's OPT record is removed when the response is read: EDNS is hop by hop, so the upstream's
COOKIE and other options are neither relayed nor cached, and each client gets filterd's own OPT (its DO
bit, 1232 bytes, an Extended DNS Error if there is one). TTLs are patched in place when a response is
rendered, so a cached answer counts down; RRSIG contents and the OPT TTL field are never touched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from filterd.dns import wire
from filterd.dns.wire import WireError

_RR = struct.Struct("!HHIH")
_SERVFAIL_TTL = 5  # RFC 9520: cache resolution failures briefly, at most 5 minutes; we take 5 seconds


@dataclass(frozen=True, slots=True)
class Response:
    #: The response without its OPT record (ARCOUNT adjusted); ID and question as the upstream sent them.
    body: bytes
    question_len: int
    flags: int
    rcode: int
    #: Offset of each record's TTL field in `body`, and its TTL as received.
    ttl_offsets: tuple[int, ...]
    ttls: tuple[int, ...]
    answer_count: int
    #: Targets of CNAME / DNAME records in the answer section, as `wire.name_text` (the query name's form).
    cnames: tuple[str, ...]
    #: min(SOA TTL, SOA MINIMUM) of an SOA in the authority section (RFC 2308), if there is one.
    negative_ttl: int | None

    @property
    def truncated(self) -> bool:
        return bool(self.flags & wire.TC)


def parse_response(data: bytes, question_len: int) -> Response:
    """Read a response whose question (already checked) is `question_len` bytes long.

    Raises WireError, and nothing else, for anything filterd could not relay as a well-formed reply: a record
    or a name that runs past the end, a compression pointer that does not point back, an OPT record outside
    the additional section, an IN A or AAAA record of the wrong size, a CNAME, DNAME or SOA whose names overrun
    their rdata. The resolver counts that as the upstream failing and asks the next one."""
    try:
        return _parse_response(data, question_len)
    except (struct.error, IndexError, ValueError) as exc:  # a bug's way out for a hostile reply: still a failure
        raise WireError(wire.FORMERR, f"unreadable response ({exc})") from None


#: rdata sizes of the fixed-size types filterd relays most (RFC 1035 3.4.1, RFC 3596).
_RDATA_SIZE = {wire.T_A: 4, wire.T_AAAA: 16}


def _parse_response(data: bytes, question_len: int) -> Response:
    if len(data) < 12 + question_len:
        raise WireError(wire.FORMERR, "response shorter than its question")
    _, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!HHHHHH", data)
    pos = 12 + question_len
    keep: list[bytes] = [b"", data[12:pos]]
    offsets: list[int] = []
    ttls: list[int] = []
    cnames: list[str] = []
    negative: int | None = None
    removed = 0
    out_len = pos
    for index in range(ancount + nscount + arcount):
        start = pos
        _, pos = wire.read_name(data, pos)
        if pos + 10 > len(data):
            raise WireError(wire.FORMERR, "record runs past the end of the response")
        rtype, rclass, ttl, rdlength = _RR.unpack_from(data, pos)
        rdata_at = pos + 10
        end = rdata_at + rdlength
        if end > len(data):
            raise WireError(wire.FORMERR, "rdata runs past the end of the response")
        if rtype == wire.T_OPT:
            if index < ancount + nscount:  # RFC 6891 6.1.1: OPT only in the additional section
                raise WireError(wire.FORMERR, "OPT record outside the additional section")
            removed += 1
            pos = end
            continue
        if rclass == wire.C_IN and rdlength != _RDATA_SIZE.get(rtype, rdlength):
            raise WireError(wire.FORMERR, f"type {rtype} record with {rdlength} bytes of rdata")
        offsets.append(out_len + (pos - start) + 4)
        ttls.append(ttl & 0x7FFFFFFF)
        if rtype in (wire.T_CNAME, 39):
            labels, after = wire.read_name(data, rdata_at)
            if after != end:
                raise WireError(wire.FORMERR, "CNAME or DNAME rdata is not one name")
            if index < ancount:
                cnames.append(wire.name_text(labels))
        elif rtype == wire.T_SOA:
            _, after = wire.read_name(data, rdata_at)
            _, after = wire.read_name(data, after)
            if after + 20 != end:
                raise WireError(wire.FORMERR, "SOA rdata is not two names and five numbers")
            if ancount <= index < ancount + nscount:
                minimum = struct.unpack_from("!I", data, after + 16)[0]
                value = min(ttl & 0x7FFFFFFF, minimum)
                ttls[-1] = value  # RFC 2308 3: the SOA's TTL in a negative answer is min(TTL, MINIMUM)
                negative = value if negative is None else min(negative, value)
        keep.append(data[start:end])
        out_len += end - start
        pos = end
    header = struct.pack("!HHHHHH", 0, flags, qdcount, ancount, nscount, arcount - removed)
    keep[0] = header
    body = b"".join(keep)
    return Response(
        body, question_len, flags, flags & 0xF, tuple(offsets), tuple(ttls), ancount, tuple(cnames), negative
    )


def cache_ttl(response: Response, min_ttl: int, max_ttl: int) -> int | None:
    """How long a response may be cached, or None if it must not be (RFC 2308, RFC 9520)."""
    if response.truncated:
        return None
    rcode = response.rcode
    if rcode == wire.SERVFAIL:
        return min(_SERVFAIL_TTL, max_ttl)  # (filterd treats upstream SERVFAIL as a failure; see CacheStage)
    if rcode == wire.NXDOMAIN or (rcode == wire.NOERROR and response.answer_count == 0):
        if response.negative_ttl is None:
            return None  # no SOA: no negative caching
        return _clamp(response.negative_ttl, min_ttl, max_ttl)
    if rcode != wire.NOERROR:
        return None  # FORMERR, REFUSED, NOTIMP, ...: never cached
    answer_ttls = response.ttls[: response.answer_count]
    return _clamp(min(answer_ttls), min_ttl, max_ttl)


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(value, high))


def render(
    response: Response,
    q: wire.Question,
    *,
    age: int = 0,
    min_ttl: int = 0,
    max_ttl: int = 86400,
    ttl_override: int | None = None,
    ede: tuple[int, str] | None = None,
) -> bytes:
    """The response as this client gets it: its ID, its question bytes, TTLs counted down by `age`
    seconds, AD only if it asked with AD or DO (RFC 6840 5.7), and filterd's OPT if it sent one."""
    out = bytearray(response.body)
    flags = response.flags & ~wire.TC
    if not (q.flags & wire.AD or (q.edns is not None and q.edns.do)):
        flags &= ~wire.AD
    struct.pack_into("!HH", out, 0, q.id, flags)
    out[12 : 12 + response.question_len] = q.question
    for offset, ttl in zip(response.ttl_offsets, response.ttls, strict=True):
        value = ttl_override if ttl_override is not None else max(_clamp(ttl, min_ttl, max_ttl) - age, 0)
        struct.pack_into("!I", out, offset, value)
    if q.edns is not None:
        arcount = struct.unpack_from("!H", out, 10)[0]
        struct.pack_into("!H", out, 10, arcount + 1)
        out += wire.opt_record(ede, q.edns.do)
    return bytes(out)


def upstream_query(q: wire.Question, qid: int) -> bytes:
    """The query filterd sends upstream: the question, RD/CD/AD copied, and filterd's own OPT (1232 bytes,
    the client's DO bit, no options: the client's COOKIE, padding, keepalive and Client Subnet stay here)."""
    flags = q.flags & (wire.RD | wire.CD | wire.AD)
    header = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1)
    return header + q.question + wire.opt_record(None, q.edns is not None and q.edns.do)
