"""DNS over TCP under a hostile client (issue 13, defects 3 and 4): one that never reads its replies, and one that
holds many connections. Real sockets on loopback; other clients use other loopback addresses (127.0.0.x)."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterator

import dns.message
import dns.rcode
import pytest

from filterd.transport.tcp import TcpLimits
from tests.support import FakeUpstream, RunningFilterd, addresses

Start = Callable[..., RunningFilterd]


def _start(start: Start, upstream: FakeUpstream, limits: TcpLimits) -> RunningFilterd:
    return start(
        f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream.address}"]
  timeout: 3
metrics:
  listen: 127.0.0.1:0
""",
        tcp=limits,
    )


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _frame(packet: bytes) -> bytes:
    return struct.pack("!H", len(packet)) + packet


def _read(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _ask(sock: socket.socket, name: str = "omegle.com") -> dns.message.Message:
    sock.sendall(_frame(dns.message.make_query(name, "A").to_wire()))
    length = struct.unpack("!H", _read(sock, 2))[0]
    return dns.message.from_wire(_read(sock, length))


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(10) == b""
    except ConnectionError:
        return True


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for sock in held:
            sock.close()


def test_a_client_that_never_reads_its_replies_is_bounded_then_closed(
    start_filterd: Start, fake_upstream: FakeUpstream
) -> None:
    limits = TcpLimits(idle_timeout=2.0, max_unsent_bytes=32 * 1024)
    server = _start(start_filterd, fake_upstream, limits)
    chunk = _frame(dns.message.make_query("omegle.com", "A").to_wire()) * 200  # blocked: answered at once
    flood = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the replies pile up at filterd, not here
    peak = 0.0
    try:
        flood.connect(("127.0.0.1", server.port))
        flood.setblocking(False)
        sent, stalled_at, next_sample = 0, None, 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and sent < 200_000_000:  # bounded in time and bytes
            now = time.monotonic()
            if now >= next_sample:
                peak = max(peak, server.metric("filterd_tcp_unsent_bytes"))
                next_sample = now + 0.05
            try:
                sent += flood.send(chunk)
                stalled_at = None
            except BlockingIOError:
                stalled_at = stalled_at or now
                if now - stalled_at > 1.0:
                    break  # filterd has stopped reading this client: its queries wait in the kernel
                time.sleep(0.01)
        assert stalled_at is not None, f"filterd read all {sent} bytes of queries of a client that reads nothing"
        for _ in range(5):
            peak = max(peak, server.metric("filterd_tcp_unsent_bytes"))
        assert 0 < peak <= limits.max_unsent_bytes + 1024, peak  # one reply past the bound at most
        # meanwhile everyone else is answered, over UDP and TCP
        assert addresses(server.query("omegle.com")) == ["127.0.0.1"]
        with _connect(server.port, "127.0.0.2") as other:
            assert addresses(_ask(other, "example.com")) == ["192.0.2.1"]
        # stuck for the idle timeout: closed, its unsent replies freed
        deadline = time.monotonic() + limits.idle_timeout + 5
        while server.metric("filterd_tcp_closed_total", reason="stuck") < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.metric("filterd_tcp_closed_total", reason="stuck") == 1
        assert server.metric("filterd_tcp_unsent_bytes") == 0
        assert server.metric("filterd_tcp_connections") == 0
    finally:
        flood.close()


def test_one_client_with_many_connections_does_not_lock_out_the_others(
    start_filterd: Start, fake_upstream: FakeUpstream
) -> None:
    limits = TcpLimits()  # the defaults: 256 in all, 16 per client
    server = _start(start_filterd, fake_upstream, limits)
    with _sockets() as held:
        for _ in range(300):  # more than the whole server's bound, from one address
            held.append(_connect(server.port, "127.0.0.2"))
        time.sleep(0.3)
        assert server.metric("filterd_tcp_connections") == limits.max_connections_per_client
        started = time.monotonic()
        for i in range(20):
            with _connect(server.port, f"127.0.0.{10 + i}") as other:
                assert addresses(_ask(other)) == ["127.0.0.1"]
        assert time.monotonic() - started < 5
        assert _closed_by_peer(held[0])  # the client's own oldest idle connections made room for its newer ones
        assert addresses(_ask(held[-1])) == ["127.0.0.1"]
        assert server.metric("filterd_tcp_closed_total", reason="evicted") >= 300 - limits.max_connections_per_client


def test_at_the_server_bound_the_oldest_idle_connection_makes_room(
    start_filterd: Start, fake_upstream: FakeUpstream
) -> None:
    limits = TcpLimits(max_connections=16, max_connections_per_client=4)
    server = _start(start_filterd, fake_upstream, limits)
    with _sockets() as held:
        for i in range(8):  # 32 connections from 8 addresses: the server's 16 are full of idle ones
            for _ in range(4):
                held.append(_connect(server.port, f"127.0.0.{2 + i}"))
        time.sleep(0.3)
        assert server.metric("filterd_tcp_connections") == 16
        with _connect(server.port, "127.0.0.100") as newcomer:
            assert addresses(_ask(newcomer)) == ["127.0.0.1"]
        assert _closed_by_peer(held[16])  # the oldest still open then
        assert addresses(_ask(held[-1])) == ["127.0.0.1"]


@pytest.mark.parametrize("source", ["127.0.0.1", "127.0.0.5"], ids=["loopback", "other"])
def test_busy_connections_are_never_evicted_the_new_one_is_refused(
    start_filterd: Start, fake_upstream: FakeUpstream, source: str
) -> None:
    fake_upstream.behaviour = lambda q: [(1.0, FakeUpstream.answer(q)[0][1])]
    limits = TcpLimits(max_connections_per_client=2)
    server = _start(start_filterd, fake_upstream, limits)
    with _sockets() as held:
        for i in range(2):
            sock = _connect(server.port, source)
            sock.sendall(_frame(dns.message.make_query(f"slow{i}.example.com", "A").to_wire()))
            held.append(sock)
        time.sleep(0.3)
        with _connect(server.port, source) as third:
            assert _closed_by_peer(third)  # both of its client's connections are busy: refused at once
        with _connect(server.port, "127.0.0.9") as other:
            assert _ask(other, "omegle.com").rcode() == dns.rcode.NOERROR  # another client is not affected
        for sock in held:  # and the busy ones get their answers
            length = struct.unpack("!H", _read(sock, 2))[0]
            assert addresses(dns.message.from_wire(_read(sock, length))) == ["192.0.2.1"]
        assert server.metric("filterd_tcp_closed_total", reason="refused") == 1
