"""Upstream responses read once and rendered per client, and the cache's own rules, on a fake clock."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

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
