"""DNS over TCP (RFC 7766): several queries per connection, answered as they complete (possibly out of
order), an idle timeout, and bounds that keep one client from hurting the others:

- connections per client address and in all; at either bound a new connection closes the oldest idle one it
  competes with (its client's own first), and is refused only when none of them is idle;
- queries in flight per connection;
- unsent reply bytes per connection: past the bound filterd stops reading that connection's queries until the
  client has taken its replies, and closes it when that does not happen within the idle timeout.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass

from filterd.metrics import TcpCollector
from filterd.transport import proxyproto
from filterd.transport.handler import QueryHandler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TcpLimits:
    #: Seconds a connection may sit without a query, or with its replies unread, before it is closed (RFC 7766 6.2.3).
    idle_timeout: float = 10.0
    #: Connections open at once (per listen address).
    max_connections: int = 256
    #: Connections open at once from one client address (loopback included): a school's NAT or a busy stub
    #: resolver needs a few, one client must not hold them all.
    max_connections_per_client: int = 16
    #: Queries of one connection being resolved at once; the next is read when one finishes.
    max_inflight_per_connection: int = 32
    #: Reply bytes a connection may leave unread (held in filterd's memory) before its queries are no longer read.
    max_unsent_bytes: int = 64 * 1024


class _Connection:
    __slots__ = ("client", "last_active", "logged", "pending", "writer")

    def __init__(self, client: str, writer: asyncio.StreamWriter, now: float, logged: bool = True) -> None:
        self.client = client
        #: False: a proxy's own connection (a LOCAL PROXY header, its health check), kept out of the query log.
        self.logged = logged
        self.writer = writer
        self.pending: set[asyncio.Task[None]] = set()
        #: When a query last came in or a reply went out (loop time): the oldest idle is closed first.
        self.last_active = now

    def unsent(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def idle(self) -> bool:
        """Nothing in flight and nothing unsent: closing it loses no answer."""
        return not self.pending and self.unsent() == 0


class TcpServer:
    def __init__(self, handler: QueryHandler, limits: TcpLimits | None = None, protocol: str = "tcp") -> None:
        self.handler = handler
        #: The `protocol` label of the queries (`tls`: the same server behind DNS over TLS, `transport/encrypted.py`).
        self.protocol = protocol
        self.limits = limits if limits is not None else TcpLimits()
        self.idle_timeout = self.limits.idle_timeout
        self.max_inflight = self.limits.max_inflight_per_connection
        self.max_unsent = self.limits.max_unsent_bytes
        #: Open connections, oldest first; and the same by client address.
        self.open: dict[_Connection, None] = {}
        self.by_client: dict[str, dict[_Connection, None]] = {}
        self.stats: TcpCollector = handler.metrics.tcp
        self.stats.listeners.append(self)

    def open_connections(self) -> int:
        return len(self.open)

    def unsent_bytes(self) -> int:
        return sum(conn.unsent() for conn in self.open)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "0.0.0.0"
        proxy = self.handler.metrics.proxy
        guard = proxy.active and not proxy.from_proxy(client)  # a header from anyone else closes the connection
        logged = True
        if proxy.active and not guard:  # dns.proxy_protocol: the connection starts with the real client's address
            header = await self._read_proxy_header(reader)
            if header is None:
                writer.transport.abort()
                return
            client, logged = header.source or client, not header.local
        conn = _Connection(client, writer, asyncio.get_running_loop().time(), logged)
        if not self._admit(conn):
            self.stats.closed["refused"] += 1
            writer.transport.abort()
            return
        # Past this many unsent bytes the transport pauses and `drain()` waits, below a quarter of it again.
        writer.transport.set_write_buffer_limits(high=self.max_unsent)
        stuck = False
        try:
            stuck = await self._read_queries(conn, reader, guard)
            if conn.pending and not stuck:
                await asyncio.wait(conn.pending, timeout=self.idle_timeout)
        finally:
            self._forget(conn)
            for task in conn.pending:
                task.cancel()
            await self._close(writer, abort=stuck)

    async def _read_proxy_header(self, reader: asyncio.StreamReader) -> proxyproto.ProxyHeader | None:
        """A proxy's connection's PROXY v2 header (who it is for), within the idle timeout; None: drop it."""
        proxy = self.handler.metrics.proxy
        try:
            async with asyncio.timeout(self.idle_timeout):
                fixed = await reader.readexactly(proxyproto.FIXED)
                header = proxyproto.parse(fixed + await reader.readexactly(proxyproto.body_length(fixed)))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, proxyproto.ProxyError):
            proxy.counts["invalid"] += 1
            return None
        proxy.counts["accepted"] += 1
        return header

    async def _read_queries(self, conn: _Connection, reader: asyncio.StreamReader, guard: bool = False) -> bool:
        """Read and answer queries until the client stops; True if it stopped taking its replies (stuck).
        `guard`: close the connection if it starts with a PROXY header (its sender is not a listed proxy)."""
        writer = conn.writer
        loop = asyncio.get_running_loop()
        while True:
            if conn.unsent() > self.max_unsent:
                try:  # backpressure: read no more of its queries until it has taken its replies
                    async with asyncio.timeout(self.idle_timeout):
                        await writer.drain()
                except TimeoutError:
                    self.stats.closed["stuck"] += 1
                    return True
                except ConnectionError:
                    return False
            try:
                async with asyncio.timeout(self.idle_timeout):
                    prefix = await reader.readexactly(2)
                    length = struct.unpack("!H", prefix)[0]
                    data = b""
                    if guard and length >= 10:  # the first 12 bytes of the stream: a PROXY signature?
                        data = await reader.readexactly(10)
                        if self.handler.metrics.proxy.untrusted_header(prefix + data):
                            return False
                    guard = False
                    data += await reader.readexactly(length - len(data))
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return False
            conn.last_active = loop.time()
            result = self.handler.handle(data, conn.client, self.protocol, conn.logged)
            if result is None:
                continue
            if isinstance(result, bytes):
                self._write(conn, result)
                continue
            if len(conn.pending) >= self.max_inflight:
                await asyncio.wait(conn.pending, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.ensure_future(self._reply(result, conn))
            conn.pending.add(task)
            task.add_done_callback(conn.pending.discard)

    def _admit(self, conn: _Connection) -> bool:
        """Make room for a new connection by closing the oldest idle one it competes with; False if none is."""
        mine = self.by_client.get(conn.client, {})
        if len(mine) >= self.limits.max_connections_per_client and not self._evict(mine):
            return False
        if len(self.open) >= self.limits.max_connections and not self._evict(self.open):
            return False
        self.open[conn] = None
        self.by_client.setdefault(conn.client, {})[conn] = None
        return True

    def _evict(self, candidates: Iterable[_Connection]) -> bool:
        oldest = min((c for c in candidates if c.idle()), key=lambda c: c.last_active, default=None)
        if oldest is None:
            return False
        self.stats.closed["evicted"] += 1
        self._forget(oldest)  # its own serve() sees the connection end and finishes
        oldest.writer.transport.abort()
        return True

    def _forget(self, conn: _Connection) -> None:
        self.open.pop(conn, None)
        mine = self.by_client.get(conn.client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.by_client[conn.client]

    def _write(self, conn: _Connection, reply: bytes) -> None:
        if not conn.writer.is_closing():
            conn.writer.write(struct.pack("!H", len(reply)) + reply)
            conn.last_active = asyncio.get_running_loop().time()

    async def _reply(self, pending: Awaitable[bytes | None], conn: _Connection) -> None:
        reply = await pending
        if reply is not None:
            self._write(conn, reply)

    async def _close(self, writer: asyncio.StreamWriter, *, abort: bool) -> None:
        """Close, letting the replies already written go out, unless the client is not taking them (abort: a
        graceful close would wait for it forever)."""
        if abort:
            writer.transport.abort()
            return
        writer.close()
        try:
            async with asyncio.timeout(self.idle_timeout):
                await writer.wait_closed()
        except TimeoutError:
            writer.transport.abort()
        except Exception:  # the client reset it: closed all the same
            pass
