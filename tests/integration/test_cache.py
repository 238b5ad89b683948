"""The cache, as a client sees it: hits, TTLs counting down, negative answers, stale answers, merging."""

from __future__ import annotations

import concurrent.futures
import shutil
import subprocess
import time
from collections.abc import Callable

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from tests.support import FakeUpstream, RunningFilterd, addresses, ede

Start = Callable[..., RunningFilterd]


def _start(start: Start, upstream: FakeUpstream, extra: str = "", timeout: float = 1.0) -> RunningFilterd:
    return start(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream.address}"]
  timeout: {timeout}
metrics:
  listen: 127.0.0.1:0
{extra}
""")


def test_second_query_is_a_cache_hit(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream)
    assert addresses(server.query("www.example.com", "A")) == ["192.0.2.1"]
    assert addresses(server.query("www.example.com", "A")) == ["192.0.2.1"]
    assert fake_upstream.received == ["www.example.com"]
    assert server.metric("filterd_queries_total", protocol="udp", qtype="A", decision="cached") == 1
    assert server.metric("filterd_cache_hits_total") == 1
    assert server.metric("filterd_cache_misses_total") == 1
    assert server.metric("filterd_cache_entries") == 1


def test_case_randomised_question_hits_and_is_echoed(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream)
    server.query("www.example.com", "A")
    reply = server.query("wWw.ExAmPlE.cOm", "A")
    assert reply.question[0].name.to_text() == "wWw.ExAmPlE.cOm."
    assert reply.answer[0].name.to_text() == "wWw.ExAmPlE.cOm."
    assert len(fake_upstream.received) == 1


def test_do_bit_is_part_of_the_key(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream)
    server.query("www.example.com", "A")
    server.query("www.example.com", "A", want_dnssec=True)
    assert len(fake_upstream.received) == 2


def test_dig_shows_ttl_counting_down(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is not installed: `apt-get install bind9-dnsutils` (the README's test command does it)")
    fake_upstream.behaviour = lambda q: FakeUpstream.answer(q, ttl=300)
    server = _start(start_filterd, fake_upstream)

    def ttl() -> int:
        out = subprocess.run(
            [dig, "@127.0.0.1", "-p", str(server.port), "countdown.example.com", "+noall", "+answer"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return int(out.split()[1])

    first = ttl()
    time.sleep(2.1)
    second = ttl()
    assert first == 300 and 297 <= second <= 298
    assert len(fake_upstream.received) == 1


def _negative(q: dns.message.Message, rcode: int, soa: bool) -> list[tuple[float, bytes]]:
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    if soa:
        r.authority.append(
            dns.rrset.from_text("example.com.", 300, "IN", "SOA", "ns.example.com. host.example.com. 1 2 3 4 60")
        )
    return [(0.0, r.to_wire())]


@pytest.mark.parametrize("rcode", [dns.rcode.NXDOMAIN, dns.rcode.NOERROR], ids=["NXDOMAIN", "NODATA"])
def test_negative_answers_cached_for_soa_minimum(start_filterd: Start, fake_upstream: FakeUpstream, rcode: int) -> None:
    fake_upstream.behaviour = lambda q: _negative(q, rcode, soa=True)
    server = _start(start_filterd, fake_upstream)
    first = server.query("nope.example.com", "AAAA")
    second = server.query("nope.example.com", "AAAA")
    assert first.rcode() == second.rcode() == rcode
    assert first.authority[0].ttl == 60  # min(SOA TTL 300, MINIMUM 60)
    assert len(fake_upstream.received) == 1


def test_negative_answer_without_soa_is_not_cached(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: _negative(q, dns.rcode.NXDOMAIN, soa=False)
    server = _start(start_filterd, fake_upstream)
    server.query("nope.example.com", "A")
    server.query("nope.example.com", "A")
    assert len(fake_upstream.received) == 2


@pytest.mark.parametrize("rcode", [dns.rcode.REFUSED, dns.rcode.FORMERR], ids=["REFUSED", "FORMERR"])
def test_refused_and_formerr_are_never_cached(start_filterd: Start, fake_upstream: FakeUpstream, rcode: int) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.rcode(q, rcode)
    server = _start(start_filterd, fake_upstream)
    server.query("x.example.com", "A")
    server.query("x.example.com", "A")
    assert len(fake_upstream.received) == 2


def test_servfail_is_remembered_for_at_most_5_seconds(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.rcode(q, dns.rcode.SERVFAIL)
    server = _start(start_filterd, fake_upstream)
    assert server.query("broken.example.com", "A").rcode() == dns.rcode.SERVFAIL
    assert server.query("broken.example.com", "A").rcode() == dns.rcode.SERVFAIL
    assert len(fake_upstream.received) == 1
    fake_upstream.behaviour = FakeUpstream.answer
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline and not addresses(server.query("broken.example.com", "A")):
        time.sleep(0.5)
    assert addresses(server.query("broken.example.com", "A")) == ["192.0.2.1"]
    assert len(fake_upstream.received) >= 2


def test_truncated_answer_is_not_cached(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    def truncated(q: dns.message.Message) -> list[tuple[float, bytes]]:
        r = dns.message.make_response(q)
        r.flags |= dns.flags.TC
        return [(0.0, r.to_wire())]

    fake_upstream.behaviour = truncated
    fake_upstream.tcp_behaviour = FakeUpstream.answer
    server = _start(start_filterd, fake_upstream)
    assert addresses(server.query("tc.example.com", "A")) == ["192.0.2.1"]  # fetched again over TCP
    assert fake_upstream.tcp_queries == 1
    server.query("tc.example.com", "A")
    assert fake_upstream.tcp_queries == 1  # the TCP answer was cached, the TC one never was


def test_ttls_are_clamped(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.answer(q, ttl=5)
    low = _start(start_filterd, fake_upstream, "cache: {min_ttl: 120, max_ttl: 3600}")
    assert low.query("a.example.com", "A").answer[0].ttl == 120
    assert low.query("a.example.com", "A").answer[0].ttl in (119, 120)
    fake_upstream.behaviour = lambda q: FakeUpstream.answer(q, ttl=86400)
    high = _start(start_filterd, fake_upstream, "cache: {max_ttl: 1h}")
    assert high.query("b.example.com", "A").answer[0].ttl == 3600


def test_lru_eviction(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream, "cache: {size: 2}")
    for name in ("one", "two", "one", "three", "one", "two"):
        server.query(f"{name}.example.com", "A")
    # one, two (miss, miss); one (hit); three evicts two; one (hit); two (miss)
    assert fake_upstream.received == ["one.example.com", "two.example.com", "three.example.com", "two.example.com"]
    assert server.metric("filterd_cache_entries") == 2


def test_cache_size_zero_turns_it_off(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream, "cache: {size: 0}")
    server.query("a.example.com", "A")
    server.query("a.example.com", "A")
    assert len(fake_upstream.received) == 2


def test_serve_stale_when_every_upstream_fails(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.answer(q, ttl=1)
    server = _start(start_filterd, fake_upstream, "cache: {stale_max: 1h}", timeout=0.5)
    assert addresses(server.query("stale.example.com", "A")) == ["192.0.2.1"]
    time.sleep(1.2)
    fake_upstream.behaviour = lambda q: []
    reply = server.query("stale.example.com", "A", timeout=5)
    assert addresses(reply) == ["192.0.2.1"]
    assert reply.answer[0].ttl == 30
    assert ede(reply)[0][0] == 3
    assert server.metric("filterd_cache_stale_total") == 1


def test_no_stale_answer_beyond_stale_max(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.answer(q, ttl=1)
    server = _start(start_filterd, fake_upstream, "cache: {stale_max: 1}", timeout=0.5)
    server.query("stale.example.com", "A")
    time.sleep(2.2)
    fake_upstream.behaviour = lambda q: []
    assert server.query("stale.example.com", "A", timeout=5).rcode() == dns.rcode.SERVFAIL


def test_identical_queries_in_flight_are_merged(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: [(0.3, FakeUpstream.answer(q)[0][1])]
    server = _start(start_filterd, fake_upstream)

    def ask(i: int) -> tuple[int, dns.message.Message]:
        q = dns.message.make_query("merge.example.com", "A")
        q.id = 1000 + i
        return q.id, dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(ask, range(5)))
    assert all(reply.id == qid and addresses(reply) == ["192.0.2.1"] for qid, reply in results)
    assert fake_upstream.received == ["merge.example.com"]
