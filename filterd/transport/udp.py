"""DNS over UDP. Synchronous answers are sent from `datagram_received` itself; the rest become tasks,
bounded in number (over the bound a query is dropped, as a loaded resolver does: the client retries)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from filterd.transport.handler import QueryHandler

log = logging.getLogger(__name__)


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, handler: QueryHandler, max_inflight: int = 2048) -> None:
        self.handler = handler
        self.max_inflight = max_inflight
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.overloaded = 0
        self.proxy = handler.metrics.proxy  # dns.proxy_protocol (one gate per server, configured on reload)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        client = addr[0]
        logged = True
        proxy = self.proxy
        if proxy.active:  # dns.proxy_protocol: the header names the client (`proxy.py`); the reply goes to addr
            unwrapped = proxy.unwrap(data, client)
            if unwrapped is None:
                return
            data, client, logged = unwrapped
        result = self.handler.handle(data, client, "udp", logged)
        if result is None:
            return
        if isinstance(result, bytes):
            self._send(result, addr)
            return
        if len(self.tasks) >= self.max_inflight:
            self.overloaded += 1
            result.close()  # type: ignore[attr-defined]
            return
        task = asyncio.ensure_future(self._finish(result, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, pending: Any, addr: tuple[Any, ...]) -> None:
        reply = await pending
        if reply is not None:
            self._send(reply, addr)

    def _send(self, reply: bytes, addr: tuple[Any, ...]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp: %s", exc)  # e.g. ICMP port unreachable from a client that went away
