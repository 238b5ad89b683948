"""Forwarding faults, injected with the in-process fake upstream: failover, deadlines, spoofed answers."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import dns.message
import dns.rcode
import pytest

from tests.support import Dnsmasq, FakeUpstream, RunningFilterd, addresses, ede, free_port

Start = Callable[[str], RunningFilterd]


def _start(start: Start, *upstreams: str, timeout: float = 1.0) -> RunningFilterd:
    listed = ", ".join(f'"{u}"' for u in upstreams)
    return start(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: [{listed}]
          timeout: {timeout}
        metrics:
          listen: 127.0.0.1:0
    """)


def test_silent_upstream_fails_over_to_the_next(
    start_filterd: Start, fake_upstream: FakeUpstream, dnsmasq: Dnsmasq
) -> None:
    fake_upstream.behaviour = lambda q: []
    server = _start(start_filterd, fake_upstream.address, dnsmasq.address, timeout=2.0)
    started = time.monotonic()
    assert addresses(server.query("example.org", "A")) == ["192.0.2.10"]
    assert time.monotonic() - started < 2.0
    assert fake_upstream.received == ["example.org"]
    assert server.metric("filterd_upstream_errors_total", upstream=fake_upstream.address, kind="timeout") == 1


@pytest.mark.parametrize(("rcode", "kind"), [(dns.rcode.SERVFAIL, "servfail"), (dns.rcode.REFUSED, "refused")])
def test_servfail_and_refused_fail_over(
    start_filterd: Start, fake_upstream: FakeUpstream, dnsmasq: Dnsmasq, rcode: int, kind: str
) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.rcode(q, rcode)
    server = _start(start_filterd, fake_upstream.address, dnsmasq.address)
    assert addresses(server.query("example.org", "A")) == ["192.0.2.10"]
    assert server.metric("filterd_upstream_errors_total", upstream=fake_upstream.address, kind=kind) == 1


def test_all_silent_gives_servfail_within_the_deadline(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: []
    server = _start(start_filterd, fake_upstream.address, timeout=0.6)
    started = time.monotonic()
    reply = server.query("example.org", "A", timeout=5)
    elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert ede(reply)[0][0] == 22
    assert 0.5 <= elapsed < 1.5
    assert server.metric("filterd_queries_total", protocol="udp", qtype="A", decision="error") == 1


def test_unreachable_upstream_gives_network_error(start_filterd: Start) -> None:
    server = _start(start_filterd, f"127.0.0.1:{free_port()}", timeout=1.0)  # nothing listens there
    reply = server.query("example.org", "A", timeout=5)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert ede(reply)[0][0] == 23


def _spoofed_first(q: dns.message.Message) -> list[tuple[float, bytes]]:
    """A reply with the wrong ID, then one with the wrong question, then the real one."""
    wrong_id = dns.message.make_response(q)
    wrong_id.id = (q.id + 1) % 65536
    wrong_id.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "203.0.113.66"))
    other = dns.message.make_query("evil.example", "A")
    other.id = q.id
    other_response = dns.message.make_response(other)
    other_response.answer.append(dns.rrset.from_text("evil.example.", 60, "IN", "A", "203.0.113.67"))
    return [
        (0.0, wrong_id.to_wire()),
        (0.01, other_response.to_wire()),
        (0.1, FakeUpstream.answer(q, "192.0.2.1")[0][1]),
    ]


def test_spoofed_answers_are_ignored(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = _spoofed_first
    server = _start(start_filterd, fake_upstream.address)
    reply = server.query("example.com", "A")
    assert addresses(reply) == ["192.0.2.1"]
    assert server.metric("filterd_upstream_errors_total", upstream=fake_upstream.address, kind="mismatch") == 2


def test_garbage_from_upstream_is_ignored(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: [(0.0, b"\x00garbage"), (0.05, FakeUpstream.answer(q)[0][1])]
    server = _start(start_filterd, fake_upstream.address)
    assert addresses(server.query("example.com", "A")) == ["192.0.2.1"]


def _opt_in_the_answer_section(q: dns.message.Message) -> list[tuple[float, bytes]]:
    """Issue 13, defect 2: a reply whose answer section holds an OPT record, with ARCOUNT 0."""
    reply = bytearray(dns.message.make_response(q).to_wire())
    struct.pack_into("!H", reply, 6, 1)
    return [(0.0, bytes(reply) + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00")]


def test_an_unreadable_reply_fails_over_to_the_next_upstream(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    good = FakeUpstream()
    good.start()
    try:
        fake_upstream.behaviour = _opt_in_the_answer_section
        server = _start(start_filterd, fake_upstream.address, good.address)
        reply = server.query("example.com", "A")
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.1"]
        assert fake_upstream.received == ["example.com"] and good.received == ["example.com"]
        assert server.metric("filterd_upstream_errors_total", upstream=fake_upstream.address, kind="mismatch") == 1
        good.behaviour = lambda q: []  # and when no upstream gives a usable answer: SERVFAIL with its reason
        reply = server.query("other.example.com", "A", timeout=5)
        assert reply.rcode() == dns.rcode.SERVFAIL and ede(reply)[0][0] == 22
    finally:
        good.stop()


def test_upstream_queries_use_random_ids_and_spread_over_ports(
    start_filterd: Start, fake_upstream: FakeUpstream
) -> None:
    server = _start(start_filterd, fake_upstream.address)
    for i in range(8):
        q = dns.message.make_query(f"n{i}.example.com", "A")
        q.id = 4242
        assert dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3).id == 4242
    ids = {qid for qid, _ in fake_upstream.sources}
    ports = {port for _, port in fake_upstream.sources}
    assert len(fake_upstream.sources) == 8
    assert len(ids) >= 7 and len(ports) >= 7  # random 16-bit values: one repeat among 8 is possible, rare


def test_metrics_for_forwarded_queries(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = _start(start_filterd, dnsmasq.address)
    server.query("example.org", "A")
    server.query("omegle.com", "A")
    server.query("example.org", "MX", tcp=True)
    assert server.metric("filterd_queries_total", protocol="udp", qtype="A", decision="forwarded") == 1
    assert server.metric("filterd_queries_total", protocol="udp", qtype="A", decision="blocked") == 1
    assert server.metric("filterd_queries_total", protocol="tcp", qtype="MX", decision="forwarded") == 1
    assert server.metric("filterd_upstream_request_duration_seconds_count", upstream=dnsmasq.address) == 2
    assert server.metric("filterd_blocklist_entries", list="chat-roulette") > 200
    assert server.metric("filterd_build_info", version="0.1.0") == 1
    assert "example.org" not in server.metrics_text() and '127.0.0.1"' not in server.metrics_text()


def test_dead_upstream_is_skipped_until_a_probe_sees_it_again(
    start_filterd: Start, fake_upstream: FakeUpstream, dnsmasq: Dnsmasq
) -> None:
    fake_upstream.behaviour = lambda q: []
    server = _start(start_filterd, fake_upstream.address, dnsmasq.address, timeout=1.0)
    for name in ("example.org", "www.example.org"):  # two timeouts in a row: marked down
        assert addresses(server.query(name, "A")) != []
    assert server.metric("filterd_upstream_up", upstream=fake_upstream.address) == 0
    assert server.metric("filterd_upstream_up", upstream=dnsmasq.address) == 1
    started = time.monotonic()
    assert addresses(server.query("safe.example.net", "A")) == ["192.0.2.20"]
    assert time.monotonic() - started < 0.3  # not waited out
    fake_upstream.behaviour = FakeUpstream.answer  # it recovers; a probe notices
    deadline = time.monotonic() + 5
    while server.metric("filterd_upstream_up", upstream=fake_upstream.address) == 0:
        assert time.monotonic() < deadline, "the probe never marked the upstream up again"
        time.sleep(0.1)
    assert addresses(server.query("after.example.com", "A")) == ["192.0.2.1"]  # the first upstream again
    assert "after.example.com" in fake_upstream.received


def test_servfail_then_recovery(start_filterd: Start, fake_upstream: FakeUpstream, dnsmasq: Dnsmasq) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.rcode(q, dns.rcode.SERVFAIL)
    server = _start(start_filterd, fake_upstream.address, dnsmasq.address)
    assert addresses(server.query("example.org", "A")) == ["192.0.2.10"]  # from the second upstream
    assert server.metric("filterd_upstream_up", upstream=fake_upstream.address) == 1  # alive, just failing
    fake_upstream.behaviour = FakeUpstream.answer
    assert addresses(server.query("recovered.example.com", "A")) == ["192.0.2.1"]
