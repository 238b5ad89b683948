"""Upstream responses read once and rendered per client, and the cache's own rules, on a fake clock."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.dns import wire
from filterd.dns.response import cache_ttl, parse_response, render, upstream_query
from filterd.pipeline.cache import DnsCache


def _response(
    q: dns.message.Message,
    rcode: int = 0,
    answers: tuple[str, ...] = (),
    soa: str | None = None,
    flags: int = 0,
    options: list[dns.edns.Option] | None = None,
) -> bytes:
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    r.flags |= flags
    for text in answers:
        r.answer.append(dns.rrset.from_text(*text.split(" ", 4)))
    if soa:
        r.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "SOA", soa))
    if options is not None:
        r.use_edns(0, options=options)
    return r.to_wire()


def _question(name: str = "www.example.org", **kw: object) -> tuple[dns.message.Message, wire.Question]:
    q = dns.message.make_query(name, "A", **kw)  # type: ignore[arg-type]
    return q, wire.parse_query(q.to_wire())


def test_ttls_count_down_and_question_is_the_clients() -> None:
    q, parsed = _question()
    resp = parse_response(_response(q, answers=("www.example.org. 300 IN A 192.0.2.1",)), len(parsed.question))
    _, client = _question("WWW.Example.ORG", use_edns=0)
    out = dns.message.from_wire(render(resp, client, age=42))
    assert out.id == client.id and out.question[0].name.to_text() == "WWW.Example.ORG."
    assert out.answer[0].ttl == 258
    assert out.edns == 0 and out.payload == 1232


def test_upstream_opt_is_dropped_and_ours_added_only_for_edns_clients() -> None:
    q, parsed = _question(use_edns=0)
    data = _response(
        q, answers=("www.example.org. 60 IN A 192.0.2.1",), options=[dns.edns.CookieOption(b"12345678", b"abcdefgh")]
    )
    resp = parse_response(data, len(parsed.question))
    assert b"abcdefgh" not in resp.body
    plain = dns.message.from_wire(render(resp, _question()[1]))
    assert plain.edns < 0
    with_edns = dns.message.from_wire(render(resp, parsed, ede=(3, "stale")))
    assert [(o.otype, o.text) for o in with_edns.options] == [(15, "stale")]


@pytest.mark.parametrize(
    ("rcode", "answers", "soa", "flags", "expected"),
    [
        (0, ("www.example.org. 300 IN A 192.0.2.1", "www.example.org. 100 IN A 192.0.2.2"), None, 0, 100),
        (3, (), "ns. host. 1 2 3 4 60", 0, 60),
        (0, (), "ns. host. 1 2 3 4 900", 0, 300),
        (3, (), None, 0, None),
        (0, (), None, 0, None),
        (2, (), None, 0, 5),
        (5, (), None, 0, None),
        (1, (), None, 0, None),
        (0, ("www.example.org. 300 IN A 192.0.2.1",), None, dns.flags.TC, None),
    ],
    ids=[
        "positive-min",
        "nxdomain-soa",
        "nodata-soa",
        "nxdomain-no-soa",
        "nodata-no-soa",
        "servfail",
        "refused",
        "formerr",
        "truncated",
    ],
)
def test_cache_ttl_rules(
    rcode: int, answers: tuple[str, ...], soa: str | None, flags: int, expected: int | None
) -> None:
    q, parsed = _question()
    resp = parse_response(_response(q, rcode, answers, soa, flags), len(parsed.question))
    assert cache_ttl(resp, 0, 86400) == expected


def test_cache_ttl_is_clamped() -> None:
    q, parsed = _question()
    resp = parse_response(_response(q, answers=("www.example.org. 5 IN A 192.0.2.1",)), len(parsed.question))
    assert cache_ttl(resp, 60, 3600) == 60
    assert cache_ttl(resp, 0, 2) == 2


def test_cnames_are_read() -> None:
    q, parsed = _question()
    data = _response(q, answers=("www.example.org. 60 IN CNAME Front.Omegle.com.", "front.omegle.com. 60 IN A 1.2.3.4"))
    assert parse_response(data, len(parsed.question)).cnames == ("front.omegle.com",)


def test_garbage_response_raises_wire_error() -> None:
    q, parsed = _question()
    data = _response(q, answers=("www.example.org. 60 IN A 192.0.2.1",))
    with pytest.raises(wire.WireError):
        parse_response(data[:-3], len(parsed.question))


def _opt_in_the_answer_section() -> tuple[bytes, int]:
    """Issue 13, defect 2: a reply whose only extra record is an OPT in the answer section (ARCOUNT 0)."""
    q, parsed = _question()
    data = bytearray(_response(q))
    struct.pack_into("!H", data, 6, 1)
    return bytes(data) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00", len(parsed.question)


def test_an_opt_record_outside_the_additional_section_is_a_wire_error() -> None:
    data, question_len = _opt_in_the_answer_section()
    with pytest.raises(wire.WireError, match="OPT record outside the additional section"):
        parse_response(data, question_len)


def _records(*records: bytes) -> tuple[bytes, int]:
    """A response to www.example.org A holding `records` (raw) in its answer section."""
    q, parsed = _question()
    data = bytearray(_response(q))
    struct.pack_into("!H", data, 6, len(records))
    return bytes(data) + b"".join(records), len(parsed.question)


def _rr(rtype: int, rdata: bytes, owner: bytes = b"\xc0\x0c") -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, 60, len(rdata)) + rdata


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ((_rr(1, b"\xc0\x00\x02\x01\x09"),), "type 1 record with 5 bytes"),
        ((_rr(28, b"\x20\x01"),), "type 28 record with 2 bytes"),
        ((_rr(5, b"\x05front"),), "runs past the end"),  # a CNAME name that does not end
        ((_rr(5, b"\x05front\xc0\x0c"), _rr(1, b"\x01\x02\x03\x04")), None),  # well-formed
        ((_rr(5, b"\x05front\xc0\x0c\x00"),), "CNAME or DNAME rdata is not one name"),
        ((_rr(6, b"\x00\x00" + b"\x00" * 19),), "SOA rdata"),
        ((_rr(1, b"\x01\x02\x03\x04", owner=b"\xc0\xff"),), "point back"),  # a forward pointer
    ],
)
def test_records_that_could_not_be_relayed_well_formed_are_wire_errors(
    records: tuple[bytes, ...], problem: str | None
) -> None:
    data, question_len = _records(*records)
    if problem is None:
        assert parse_response(data, question_len).answer_count == len(records)
        return
    with pytest.raises(wire.WireError, match=problem):
        parse_response(data, question_len)


def test_cname_targets_are_read_as_name_text() -> None:
    """Odd bytes escaped as in a query name, so a blocked reply's SOA owner can be encoded back exactly."""
    target = b"\x02x\xff\x03a.b\x06omegle\x03com\x00"
    data, question_len = _records(_rr(5, target))
    (text,) = parse_response(data, question_len).cnames
    assert text == "x\\255.a\\046b.omegle.com" and wire.encode_name(text) == target


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_mutated_responses_raise_nothing_but_wire_error(data: st.DataObject) -> None:
    q, parsed = _question(use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.org.", 60, "IN", "CNAME", "front.example.org."))
    r.answer.append(dns.rrset.from_text("front.example.org.", 60, "IN", "A", "192.0.2.1"))
    r.authority.append(dns.rrset.from_text("example.org.", 300, "IN", "SOA", "ns. host. 1 2 3 4 60"))
    packet = bytearray(r.to_wire())
    question_end = 12 + len(parsed.question)
    for _ in range(data.draw(st.integers(1, 6))):
        position = data.draw(st.integers(question_end, len(packet) - 1)) if len(packet) > question_end else 0
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "count"]))
        if op == "flip" and len(packet) > question_end:
            packet[position] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del packet[max(position, question_end) :]
        elif op == "insert":
            packet[position:position] = data.draw(st.binary(min_size=1, max_size=12))
        else:
            struct.pack_into("!H", packet, data.draw(st.sampled_from([6, 8, 10])), data.draw(st.integers(0, 65535)))
    try:
        response = parse_response(bytes(packet), len(parsed.question))
    except wire.WireError:
        return
    render(response, parsed)
    cache_ttl(response, 0, 86400)


def test_upstream_query_keeps_only_what_belongs_upstream() -> None:
    _, parsed = _question(use_edns=0, want_dnssec=True, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    out = dns.message.from_wire(upstream_query(parsed, 7))
    assert out.id == 7 and out.payload == 1232 and out.ednsflags & dns.flags.DO and list(out.options) == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _cache(size: int = 10, stale_max: float = 100) -> tuple[DnsCache, Clock]:
    clock = Clock()
    return DnsCache(size, 0, 86400, stale_max, clock), clock


def test_cache_expiry_and_stale_window() -> None:
    cache, clock = _cache()
    q, parsed = _question()
    resp = parse_response(_response(q, answers=("www.example.org. 10 IN A 192.0.2.1",)), len(parsed.question))
    key = ("www.example.org", 1, 1, False, False)
    assert cache.put(key, resp, "up")
    clock.now += 9.5
    found = cache.get(key)
    assert found is not None and found[1] == 9
    clock.now += 1
    assert cache.get(key) is None and cache.get_stale(key) is not None
    clock.now += 100
    assert cache.get_stale(key) is None and cache.get(key) is None and len(cache) == 0


def test_servfail_memory_lasts_5_seconds() -> None:
    cache, clock = _cache()
    key = ("x.example.org", 1, 1, False, False)
    cache.failed(key)
    clock.now += 4.9
    assert cache.recently_failed(key)
    clock.now += 0.2
    assert not cache.recently_failed(key)


def test_an_answer_from_before_the_lists_changed_is_not_cached() -> None:
    import asyncio

    from filterd.pipeline.base import Answer, Decision, Query
    from filterd.pipeline.cache import CacheStage

    cache, _ = _cache()
    stage = CacheStage(cache)
    q, parsed = _question()
    resp = parse_response(_response(q, answers=("www.example.org. 60 IN A 192.0.2.1",)), len(parsed.question))
    query = Query(q.to_wire(), parsed, "127.0.0.1", "udp")

    async def forwarded_while_lists_change(_: Query) -> Answer:
        cache.clear()  # e.g. a refresh swapped in lists that now block this name
        return Answer(render(resp, parsed), Decision.FORWARDED, "up", resp)

    async def forwarded(_: Query) -> Answer:
        return Answer(render(resp, parsed), Decision.FORWARDED, "up", resp)

    asyncio.run(stage.handle(query, forwarded_while_lists_change))
    assert stage.answer_now(query) is None and len(cache) == 0
    asyncio.run(stage.handle(query, forwarded))
    hit = stage.answer_now(query)
    assert hit is not None and hit.decision is Decision.CACHED


def test_rrsig_contents_are_never_rewritten() -> None:
    q, parsed = _question(use_edns=0, want_dnssec=True)
    sig = "A 13 3 300 20261231000000 20261101000000 12345 example.org. " + "AAAA" * 16
    data = _response(q, answers=("www.example.org. 300 IN A 192.0.2.1", f"www.example.org. 300 IN RRSIG {sig}"))
    resp = parse_response(data, len(parsed.question))
    out = dns.message.from_wire(render(resp, parsed, age=100))
    rrsig = next(rrset for rrset in out.answer if rrset.rdtype == dns.rdatatype.RRSIG)
    assert rrsig.ttl == 200  # the record's TTL counts down...
    assert rrsig[0].original_ttl == 300 and rrsig[0].key_tag == 12345  # ...its signed contents do not
    assert out.ednsflags & dns.flags.DO
