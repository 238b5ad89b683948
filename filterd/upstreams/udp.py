"""Plain DNS over UDP to an upstream, on a pool of kept sockets (as dnsmasq's 64 random sockets).

A socket per query (a new source port each time) cost a socket, a connect, an event-loop transport and a close
for every miss: most of a miss's cost. Here each upstream has up to `SOCKETS` connected sockets, each bound by
the kernel to its own random port, and a query takes one of them at random; a socket is retired after `USES`
queries (and a new one, on a new port, takes its place), so the source port still changes: an off-path
attacker must match the port, the random 16-bit ID and the question (RFC 5452), as with dnsmasq.

A reply is matched to its query by (socket, ID) and then its question; anything else (spoofed, late, from a
retired query) is counted as a mismatch and ignored. A query's timeout is a timer on its future, not a task.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from typing import Any

from filterd.dns import wire
from filterd.upstreams.errors import UpstreamError

#: Sockets kept per upstream (dnsmasq keeps 64 for all its upstreams).
SOCKETS = 32
#: Queries a socket carries before it is retired for a new one (a new random port).
USES = 512

_ID = struct.Struct("!H")


class _Socket(asyncio.DatagramProtocol):
    """One connected UDP socket and the queries waiting on it, by ID."""

    def __init__(self, pool: UdpPool) -> None:
        self.pool = pool
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.uses = 0
        self.retired = False
        self.mismatches = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # (uvloop's is not a subclass)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12 or not data[2] & 0x80:  # shorter than a header, or not a response
            self.mismatches += 1
            self.pool.mismatches += 1
            return
        waiting = self.pending.get(_ID.unpack_from(data)[0])
        if waiting is None or not wire.question_matches(data, waiting[1]):
            self.mismatches += 1  # spoofed, or late for a query that gave up: ignored
            self.pool.mismatches += 1
            return
        future = waiting[0]
        if not future.done():
            future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP unreachable and the like (a connected socket hears them): every query waiting here fails now
        for future, _ in list(self.pending.values()):
            if not future.done():
                future.set_exception(UpstreamError("network", str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.pool.forget(self)
        for future, _ in list(self.pending.values()):
            if not future.done():
                future.set_exception(UpstreamError("network", str(exc or "connection closed")))

    def done(self, qid: int) -> None:
        self.pending.pop(qid, None)
        if self.retired and not self.pending and self.transport is not None:
            self.transport.close()


class UdpPool:
    """The kept sockets to one upstream address."""

    def __init__(self, host: str, port: int, sockets: int = SOCKETS, uses: int = USES) -> None:
        self.address = (host, port)
        self.size = sockets
        self.uses = uses
        self.sockets: list[_Socket] = []
        #: Replies ignored (spoofed, stale, not a response), ever; the resolver counts them into its metric.
        self.mismatches = 0
        self.reported = 0
        self._opening = 0
        #: Random bytes from the kernel's CSPRNG for query IDs, fetched 4 KB at a time (one system call per
        #: 2,048 queries, not one per query)
        self._random = b""
        self._at = 0

    def _id(self) -> int:
        at = self._at
        if at >= len(self._random):
            self._random, at = os.urandom(4096), 0
        self._at = at + 2
        return self._random[at] << 8 | self._random[at + 1]

    def forget(self, sock: _Socket) -> None:
        if sock in self.sockets:
            self.sockets.remove(sock)

    async def _socket(self) -> _Socket:
        """A socket to send on: a random one of the pool, or a new one while the pool is not full."""
        if len(self.sockets) + self._opening < self.size:
            self._opening += 1
            try:
                loop = asyncio.get_running_loop()
                _, sock = await loop.create_datagram_endpoint(lambda: _Socket(self), remote_addr=self.address)
            except OSError as exc:
                raise UpstreamError("network", str(exc)) from None
            finally:
                self._opening -= 1
            self.sockets.append(sock)
            return sock
        if not self.sockets:  # (all being opened by other queries right now)
            return await self._socket_when_open()
        return random.choice(self.sockets)

    async def _socket_when_open(self) -> _Socket:
        for _ in range(100):
            await asyncio.sleep(0.001)
            if self.sockets:
                return random.choice(self.sockets)
        raise UpstreamError("network", "no socket to the upstream could be opened")

    async def exchange(self, packet: bytes, question: bytes, timeout: float) -> bytes:
        """Send one query; its response. Raises UpstreamError: timeout, or mismatch when only replies that did
        not match arrived on its socket meanwhile, or network."""
        sock = await self._socket()
        transport = sock.transport
        if transport is None:
            raise UpstreamError("network", "the socket to the upstream closed")
        qid = self._id()
        while qid in sock.pending:
            qid = self._id()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        sock.pending[qid] = (future, question)
        sock.uses += 1
        if sock.uses >= self.uses and not sock.retired:
            sock.retired = True  # no new queries: it closes when its last one is answered or gives up
            self.forget(sock)
        before = sock.mismatches
        timer = loop.call_later(timeout, _expire, future, timeout)
        try:
            transport.sendto(_ID.pack(qid) + packet[2:])
            data = await future
        except UpstreamError as exc:
            if exc.kind == "timeout" and sock.mismatches > before:
                raise UpstreamError("mismatch", str(exc)) from None
            raise
        finally:
            timer.cancel()
            sock.done(qid)
        return data

    def close(self) -> None:
        """No new queries; each socket closes once its queries in flight are answered or give up (a reload that
        replaces the upstreams loses none)."""
        for sock in self.sockets:
            sock.retired = True
            if not sock.pending and sock.transport is not None:
                sock.transport.close()
        self.sockets = []


def _expire(future: asyncio.Future[bytes], timeout: float) -> None:
    if not future.done():
        future.set_exception(UpstreamError("timeout", f"no matching answer within {timeout:.2f}s"))
