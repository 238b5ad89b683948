"""Packets that try to break filterd: it answers what it can, drops what it must, and never falls over."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode

from bench import fuzz
from tests.support import FakeUpstream, RunningFilterd, udp_raw

Start = Callable[..., RunningFilterd]


def _server(start: Start, upstream: FakeUpstream) -> RunningFilterd:
    return start(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream.address}"]
""")


def test_responses_are_dropped(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    response = dns.message.make_response(dns.message.make_query("example.org", "A")).to_wire()
    assert udp_raw(server.port, response, timeout=0.5) is None
    assert fake_upstream.received == []


def test_short_packets_are_dropped(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    assert udp_raw(server.port, b"\x12\x34\x01", timeout=0.5) is None


def test_unparseable_question_gets_formerr(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    packet = dns.message.make_query("example.org", "A").to_wire()[:-3]
    reply = udp_raw(server.port, packet)
    assert reply is not None and reply[:2] == packet[:2] and reply[3] & 0xF == dns.rcode.FORMERR
    assert reply[2] & 0x80  # QR


def test_two_questions_get_formerr(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    q = dns.message.make_query("example.org", "A").to_wire()
    packet = q[:4] + b"\x00\x02" + q[6:] + q[12:]
    reply = udp_raw(server.port, packet)
    assert reply is not None and reply[3] & 0xF == dns.rcode.FORMERR


def test_other_opcodes_get_notimp(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY):
        q = dns.message.make_query("example.org", "SOA")
        q.set_opcode(opcode)
        reply = udp_raw(server.port, q.to_wire())
        assert reply is not None and reply[3] & 0xF == dns.rcode.NOTIMP
    assert fake_upstream.received == []


def _pointer_in_the_question() -> bytes:
    """www + a compression pointer forward to example.org in the additional section (issue 13, defect 1)."""
    header = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 1)
    return header + b"\x03www\xc0\x16\x00\x01\x00\x01" + b"\x07example\x03org\x00" + struct.pack("!HHIH", 1, 1, 0, 0)


def test_a_pointer_in_the_question_name_is_formerr_and_never_forwarded(
    start_filterd: Start, fake_upstream: FakeUpstream
) -> None:
    server = _server(start_filterd, fake_upstream)
    reply = udp_raw(server.port, _pointer_in_the_question())
    assert reply is not None
    parsed = dns.message.from_wire(reply)  # the reply parses: no pointer echoed into a packet without its target
    assert parsed.id == 0x4242 and parsed.rcode() == dns.rcode.FORMERR and parsed.question == []
    assert fake_upstream.received == []


#: The short fuzz run (bench/fuzz.py has the full one, 1,000,000 packets): about 4 s here.
FUZZ_PACKETS = 20_000
RSS_GROWTH_LIMIT_KIB = 40 * 1024  # the cache (10,000 entries) and its index fill up; beyond that is a leak


def test_fuzz_every_reply_parses(tmp_path: Path) -> None:
    """filterd (its own process) takes 20,000 fuzzed packets over UDP and TCP; every reply parses (dnspython and
    dnslib) and is right for its query, none is lost, filterd still answers, and its memory stays bounded."""
    with fuzz.upstream() as upstream_port, fuzz.filterd(tmp_path, upstream_port) as server:
        before = server.rss_kib()
        tally = fuzz.run(server.port, FUZZ_PACKETS, seconds=60, seed=20261128)
        assert tally.sent == FUZZ_PACKETS and tally.seconds < 30, tally.seconds
        assert tally.failures == 0, tally.samples[:5]
        assert tally.lost == 0 and tally.replies == tally.expected > FUZZ_PACKETS * 0.8
        assert tally.tcp > FUZZ_PACKETS * 0.05 and tally.dnslib_ok > FUZZ_PACKETS * 0.5
        assert server.answers_normally() == []
        growth = server.rss_kib() - before
        assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"
        assert server.tracebacks() == ""
