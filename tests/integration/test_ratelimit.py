"""Rate limiting with a real server: a flooding client network gets TC=1 slips and drops, counted; others are not
touched. The clients are on loopback, which is exempt by default, so these tests set `ratelimit.exempt: []`;
other networks are other loopback /24s (127.0.1.x)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import dns.flags
import dns.message

from tests.support import FakeUpstream, RunningFilterd, addresses, query

Start = Callable[..., RunningFilterd]


def _start(start: Start, upstream: FakeUpstream, ratelimit: str) -> RunningFilterd:
    return start(
        f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream.address}"]
ratelimit: {ratelimit}
metrics:
  listen: 127.0.0.1:0
"""
    )


def _flood(port: int, source: str, count: int, name: str = "omegle.com") -> tuple[int, int, float]:
    """Send `count` UDP queries from `source` as fast as replies can be read, in batches of 20 (so no reply is
    lost to a socket buffer). Returns (full replies, TC=1 replies, seconds taken)."""
    full = truncated = 0
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        for first in range(0, count, 20):
            for i in range(first, min(first + 20, count)):
                q = dns.message.make_query(name, "A", use_edns=0)
                q.id = i
                sock.sendto(q.to_wire(), ("127.0.0.1", port))
            sock.settimeout(0.2)
            while True:
                try:
                    reply = dns.message.from_wire(sock.recv(4096))
                except TimeoutError:
                    break
                if reply.flags & dns.flags.TC:
                    assert reply.answer == [] and str(reply.question[0].name) == f"{name}."
                    truncated += 1
                else:
                    assert addresses(reply) == ["127.0.0.1"]
                    full += 1
    return full, truncated, time.monotonic() - started


def test_a_flooding_network_gets_slips_and_drops_and_another_does_not(
    start_filterd: Start, fake_upstream: FakeUpstream
) -> None:
    qps = 50
    server = _start(start_filterd, fake_upstream, f"{{qps: {qps}, burst: {qps}, slip: 2, exempt: []}}")
    sent = 600
    full, slipped, seconds = _flood(server.port, "127.0.0.1", sent)
    dropped = sent - full - slipped
    assert full <= qps + seconds * qps + 1  # the burst, and the rate while the flood lasted
    assert slipped >= 100 and abs(slipped - dropped) <= 1  # every second query over the rate slips (slip: 2)
    assert server.metric("filterd_ratelimited_total", action="slip") == slipped
    assert server.metric("filterd_ratelimited_total", action="drop") == dropped
    assert server.metric("filterd_queries_total", protocol="udp", qtype="A", decision="ratelimited") == slipped
    assert server.metric("filterd_queries_total", protocol="udp", qtype="A", decision="dropped") == dropped
    # another network, right away: all answered; and the slipped client's retry over TCP is answered too
    assert _flood(server.port, "127.0.1.1", 40)[:2] == (40, 0)
    assert addresses(query("omegle.com", "A", server.port, tcp=True)) == ["127.0.0.1"]
    assert addresses(query("example.com", "A", server.port, tcp=True)) == ["192.0.2.1"]


def test_loopback_is_exempt_by_default(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream, "{qps: 1, burst: 1}")
    assert _flood(server.port, "127.0.0.1", 100)[:2] == (100, 0)
    assert server.metric("filterd_ratelimited_total", action="drop") == 0


def test_off(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _start(start_filterd, fake_upstream, "false")
    assert server.app is not None and server.app.pipeline is not None
    assert "ratelimit" not in server.app.pipeline.describe()
    assert _flood(server.port, "127.0.0.1", 100)[:2] == (100, 0)
