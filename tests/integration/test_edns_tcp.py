"""EDNS hygiene and DNS over TCP (RFC 6891, 6840, 7766), checked with real clients."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest

from filterd.transport.tcp import TcpLimits
from tests.support import FakeUpstream, RunningFilterd, addresses, udp_raw

Start = Callable[..., RunningFilterd]


def _start(start: Start, upstream: FakeUpstream, **options: object) -> RunningFilterd:
    return start(
        f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream.address}"]
  timeout: 1
""",
        **options,
    )


CLIENT_OPTIONS = [
    dns.edns.CookieOption(b"clientck", b""),
    dns.edns.ECSOption("198.51.100.0", 24),
    dns.edns.GenericOption(12, b"\x00" * 16),  # padding
    dns.edns.GenericOption(11, b""),  # tcp keepalive
    dns.edns.GenericOption(65001, b"unknown"),  # unknown: ignored, never a FORMERR
]


def test_client_options_are_not_forwarded(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream)
    reply = server.query("opts.example.com", "A", options=CLIENT_OPTIONS, payload=4096)
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.1"]
    upstream_query = fake_upstream.queries[0]
    assert upstream_query.edns == 0 and upstream_query.payload == 1232
    assert list(upstream_query.options) == []


def test_upstream_cookie_is_neither_relayed_nor_cached(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    def with_cookie(q: dns.message.Message) -> list[tuple[float, bytes]]:
        r = dns.message.make_response(q)
        r.use_edns(0, options=[dns.edns.CookieOption(b"clientck", b"servercookie1234")])
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", "192.0.2.1"))
        return [(0.0, r.to_wire())]

    fake_upstream.behaviour = with_cookie
    server = _start(start_filterd, fake_upstream)
    for _ in range(2):  # forwarded, then from the cache
        reply = server.query("cookie.example.com", "A")
        assert addresses(reply) == ["192.0.2.1"]
        assert [o.otype for o in reply.options] == []
        assert reply.payload == 1232
    assert len(fake_upstream.received) == 1


def test_edns_version_1_gets_badvers(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream)
    q = dns.message.make_query("v1.example.com", "A", use_edns=1)
    reply = dns.query.udp(q, "127.0.0.1", port=server.port, timeout=3)
    assert reply.rcode() == dns.rcode.BADVERS
    assert fake_upstream.received == []


def test_two_opt_records_get_formerr(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream)
    packet = dns.message.make_query("two.example.com", "A", use_edns=0).to_wire()
    opt = packet[-11:]
    doubled = packet[:10] + struct.pack("!H", 2) + packet[12:] + opt
    reply = udp_raw(server.port, doubled)
    assert reply is not None and reply[3] & 0xF == dns.rcode.FORMERR


def _big_txt(q: dns.message.Message, size: int) -> list[tuple[float, bytes]]:
    r = dns.message.make_response(q)
    chunks = " ".join(f'"{"y" * 200}"' for _ in range(size // 200))
    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "TXT", chunks))
    return [(0.0, r.to_wire(max_size=65535))]  # an upstream that ignores our buffer size


def test_buffer_under_512_counts_as_512(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: _big_txt(q, 400)
    server = _start(start_filterd, fake_upstream)
    reply = server.query("mid.example.com", "TXT", payload=256)
    assert not reply.flags & dns.flags.TC and reply.answer


def test_udp_replies_are_capped_at_1232(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: _big_txt(q, 1400)
    server = _start(start_filterd, fake_upstream)
    small = server.query("big.example.com", "TXT", payload=4096)
    assert small.flags & dns.flags.TC and small.answer == [] and small.edns == 0
    full = server.query("big.example.com", "TXT", tcp=True)
    assert not full.flags & dns.flags.TC and sum(len(s) for s in full.answer[0][0].strings) == 1400


@pytest.mark.parametrize(
    ("kwargs", "ad"),
    [({}, False), ({"want_dnssec": True}, True), ({"flags": dns.flags.RD | dns.flags.AD}, True)],
    ids=["plain", "DO", "AD"],
)
def test_ad_only_when_asked(
    start_filterd: Start, fake_upstream: FakeUpstream, kwargs: dict[str, object], ad: bool
) -> None:
    def authentic(q: dns.message.Message) -> list[tuple[float, bytes]]:
        r = dns.message.from_wire(FakeUpstream.answer(q)[0][1])
        r.flags |= dns.flags.AD
        return [(0.0, r.to_wire())]

    fake_upstream.behaviour = authentic
    server = _start(start_filterd, fake_upstream)
    reply = server.query("ad.example.com", "A", **kwargs)
    assert bool(reply.flags & dns.flags.AD) is ad


def _tcp_exchange(port: int, packets: list[bytes], count: int) -> list[dns.message.Message]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(p)) + p for p in packets))
        replies = []
        for _ in range(count):
            length = struct.unpack("!H", _read(sock, 2))[0]
            replies.append(dns.message.from_wire(_read(sock, length)))
        return replies


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_tcp_pipelining_answers_out_of_order(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: [
        (0.4 if q.question[0].name.to_text().startswith("slow") else 0.0, FakeUpstream.answer(q)[0][1])
    ]
    server = _start(start_filterd, fake_upstream)
    slow = dns.message.make_query("slow.example.com", "A")
    slow.id = 1
    fast = dns.message.make_query("fast.example.com", "A")
    fast.id = 2
    blocked = dns.message.make_query("omegle.com", "A")
    blocked.id = 3
    replies = _tcp_exchange(server.port, [slow.to_wire(), fast.to_wire(), blocked.to_wire()], 3)
    assert [r.id for r in replies] == [3, 2, 1] or [r.id for r in replies] == [2, 3, 1]
    assert {r.id: addresses(r) for r in replies} == {1: ["192.0.2.1"], 2: ["192.0.2.1"], 3: ["127.0.0.1"]}


def test_tcp_idle_connections_are_closed(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream, tcp=TcpLimits(idle_timeout=0.5))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        assert sock.recv(10) == b""  # closed by filterd
        assert 0.4 <= time.monotonic() - started < 3


def test_tcp_connections_are_bounded(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    """At the bound a new connection closes the oldest idle one (tests/integration/test_tcp_limits.py has more)."""
    server = _start(start_filterd, fake_upstream, tcp=TcpLimits(max_connections=2, idle_timeout=5))
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    try:
        q = dns.message.make_query("omegle.com", "A").to_wire()
        time.sleep(0.1)
        assert _tcp_exchange_on(held[1], q).rcode() == dns.rcode.NOERROR  # held[0] is now the oldest idle
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as extra:
            assert _tcp_exchange_on(extra, q).rcode() == dns.rcode.NOERROR
            assert held[0].recv(10) == b""  # closed to make room
            assert _tcp_exchange_on(held[1], q).rcode() == dns.rcode.NOERROR  # the other one still works
    finally:
        for sock in held:
            sock.close()


def test_tcp_queries_in_flight_per_connection_are_bounded(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: [(0.3, FakeUpstream.answer(q)[0][1])]
    server = _start(start_filterd, fake_upstream, tcp=TcpLimits(max_inflight_per_connection=2))
    packets = [dns.message.make_query(f"q{i}.example.com", "A").to_wire() for i in range(4)]
    started = time.monotonic()
    replies = _tcp_exchange(server.port, packets, 4)
    assert all(addresses(r) == ["192.0.2.1"] for r in replies)
    assert time.monotonic() - started >= 0.55  # two rounds of 0.3 s, not one


def _tcp_exchange_on(sock: socket.socket, packet: bytes) -> dns.message.Message:
    sock.sendall(struct.pack("!H", len(packet)) + packet)
    length = struct.unpack("!H", _read(sock, 2))[0]
    return dns.message.from_wire(_read(sock, length))
