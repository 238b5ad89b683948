"""DNS over TCP (RFC 7766): several queries per connection, answered as they complete (possibly out of
order), an idle timeout, and bounds on connections and on queries in flight per connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass

from filterd.transport.handler import QueryHandler

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TcpLimits:
    #: Seconds a connection may sit without a query before it is closed (RFC 7766 6.2.3).
    idle_timeout: float = 10.0
    #: Connections open at once; more are closed at once.
    max_connections: int = 256
    #: Queries of one connection being resolved at once; the next is read when one finishes.
    max_inflight_per_connection: int = 32


class TcpServer:
    def __init__(self, handler: QueryHandler, limits: TcpLimits | None = None) -> None:
        self.handler = handler
        limits = limits if limits is not None else TcpLimits()
        self.idle_timeout = limits.idle_timeout
        self.max_connections = limits.max_connections
        self.max_inflight = limits.max_inflight_per_connection
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.max_connections:
            writer.close()
            return
        self.connections += 1
        peer = writer.get_extra_info("peername")
        client_ip = peer[0] if peer else "0.0.0.0"
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        length = struct.unpack("!H", await reader.readexactly(2))[0]
                        data = await reader.readexactly(length)
                except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    break
                result = self.handler.handle(data, client_ip, "tcp")
                if result is None:
                    continue
                if isinstance(result, bytes):
                    writer.write(struct.pack("!H", len(result)) + result)
                    continue
                if len(pending) >= self.max_inflight:
                    await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.ensure_future(self._reply(result, writer))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.wait(pending, timeout=self.idle_timeout)
        finally:
            self.connections -= 1
            for task in pending:
                task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _reply(pending: object, writer: asyncio.StreamWriter) -> None:
        reply = await pending  # type: ignore[misc]
        if reply is not None and not writer.is_closing():
            writer.write(struct.pack("!H", len(reply)) + reply)
