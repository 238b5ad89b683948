"""The kept UDP sockets to an upstream: ports rotate, replies are matched by ID and question, timeouts are timers."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import dns.message
import pytest

from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.udp import UdpPool


class Upstream(asyncio.DatagramProtocol):
    """Answers each query from loopback (or not, or with a spoofed copy first), noting the source ports."""

    def __init__(self, mode: str = "answer") -> None:
        self.mode = mode
        self.ports: list[int] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.ports.append(addr[1])
        if self.mode == "silent":
            return
        reply = dns.message.make_response(dns.message.from_wire(data)).to_wire()
        if self.mode == "spoof-first":
            bad = bytes([reply[0] ^ 0xFF]) + reply[1:]  # the wrong ID
            self.transport.sendto(bad, addr)
            self.transport.sendto(b"\x00" * 5, addr)  # and garbage
        self.transport.sendto(reply, addr)


async def _upstream(mode: str) -> tuple[Upstream, int]:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: Upstream(mode), local_addr=("127.0.0.1", 0))
    return proto, transport.get_extra_info("sockname")[1]


def _query(name: str) -> tuple[bytes, bytes]:
    wire = dns.message.make_query(name, "A").to_wire()
    return wire, wire[12:]


@pytest.mark.asyncio
async def test_ports_rotate_and_at_most_the_pool_size_is_open() -> None:
    upstream, port = await _upstream("answer")
    pool = UdpPool("127.0.0.1", port, sockets=2, uses=3)
    try:
        for i in range(12):
            packet, question = _query(f"n{i}.example")
            reply = await pool.exchange(packet, question, 2.0)
            assert reply[12:].startswith(question)
            assert len(pool.sockets) <= 2
        assert len(set(upstream.ports)) >= 4  # each socket retired after 3 queries: new ports
    finally:
        pool.close()
        assert upstream.transport is not None
        upstream.transport.close()


@pytest.mark.asyncio
async def test_spoofed_and_garbage_replies_are_ignored_and_counted() -> None:
    upstream, port = await _upstream("spoof-first")
    pool = UdpPool("127.0.0.1", port)
    try:
        packet, question = _query("example.org")
        reply = await pool.exchange(packet, question, 2.0)
        assert dns.message.from_wire(reply).question[0].name.to_text() == "example.org."
        assert pool.mismatches == 2
    finally:
        pool.close()
        assert upstream.transport is not None
        upstream.transport.close()


@pytest.mark.asyncio
async def test_a_silent_upstream_times_out_and_many_queries_share_the_sockets() -> None:
    upstream, port = await _upstream("silent")
    pool = UdpPool("127.0.0.1", port, sockets=4)
    try:
        queries = [_query(f"n{i}.example") for i in range(50)]
        results = await asyncio.gather(*(pool.exchange(p, q, 0.3) for p, q in queries), return_exceptions=True)
        assert all(isinstance(r, UpstreamError) and r.kind == "timeout" for r in results)
        assert len(set(upstream.ports)) <= 4 and len(upstream.ports) == 50
        assert all(not sock.pending for sock in pool.sockets)
    finally:
        pool.close()
        assert upstream.transport is not None
        upstream.transport.close()


@pytest.mark.asyncio
async def test_an_unreachable_upstream_fails_as_a_network_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    pool = UdpPool("127.0.0.1", port)
    try:
        packet, question = _query("example.org")
        with pytest.raises(UpstreamError) as err:
            await pool.exchange(packet, question, 1.0)
        assert err.value.kind in ("network", "timeout")
    finally:
        pool.close()
