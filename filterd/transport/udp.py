"""DNS over UDP. Synchronous answers are sent from `datagram_received` itself; the rest become tasks,
bounded in number (over the bound a query is dropped, as a loaded resolver does: the client retries)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any, cast

from filterd.transport.handler import QueryHandler

log = logging.getLogger(__name__)


class UdpDispatch:
    """What both UDP servers do with a datagram: the PROXY header (if on), the handler, then the reply at once or
    from a bounded task. `dest` is where `_send` sends the reply: the client's address, or for the wildcard
    server the address with the control message that picks the source."""

    def __init__(self, handler: QueryHandler, max_inflight: int = 2048) -> None:
        self.handler = handler
        self.max_inflight = max_inflight
        self.tasks: set[asyncio.Task[None]] = set()
        self.overloaded = 0
        self.proxy = handler.metrics.proxy  # dns.proxy_protocol (one gate per server, configured on reload)

    def received(self, data: bytes, addr: tuple[Any, ...], dest: Any = None) -> None:
        """A datagram from `addr`; its reply goes to `dest` (None: to `addr`)."""
        if dest is None:
            dest = addr
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
            self._send(result, dest)
            return
        if len(self.tasks) >= self.max_inflight:
            self.overloaded += 1
            result.close()  # type: ignore[attr-defined]
            return
        task = asyncio.ensure_future(self._finish(result, dest))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, pending: Any, dest: Any) -> None:
        reply = await pending
        if reply is not None:
            self._send(reply, dest)

    def _send(self, reply: bytes, dest: Any) -> None:
        raise NotImplementedError


#: Datagrams read at one wake-up of a `SocketUdpServer` before the loop runs anything else.
BATCH = 64


class SocketUdpServer(UdpDispatch):
    """A UDP socket read by this class itself (`loop.add_reader`), a batch of datagrams a wake-up, each copied out
    of one buffer kept for the socket (`recvfrom_into`). For stock asyncio, whose datagram transport reads one
    datagram a wake-up into a new 256 KiB buffer; uvloop's transport is served as `UdpServer`. A reply the socket
    has no room for is dropped and counted (`overloaded`), as a loaded resolver does: the client asks again."""

    def __init__(self, sock: socket.socket, handler: QueryHandler, max_inflight: int = 2048) -> None:
        super().__init__(handler, max_inflight)
        self.sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._buffer = bytearray(65535)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self.sock.fileno(), self._readable)

    def is_closing(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def _readable(self) -> None:
        buffer = self._buffer
        receive = self.sock.recvfrom_into
        for _ in range(BATCH):
            try:
                size, addr = receive(buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP errors queued on the socket
                log.debug("udp: %s", exc)
                continue
            self.received(bytes(buffer[:size]), addr)
            if self._closed:  # (a reply's callback may have closed it: a reload that stopped this listener)
                return

    def _send(self, reply: bytes, dest: Any) -> None:
        if self._closed:
            return
        try:
            self.sock.sendto(reply, dest)
        except (BlockingIOError, InterruptedError):
            self.overloaded += 1
        except OSError as exc:
            log.debug("udp: sending to %s: %s", dest[0], exc)


def reads_its_own_sockets(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether UDP on this loop is best served by `SocketUdpServer`: stock asyncio's selector loop (uvloop's own
    datagram transport is faster than any reading done in Python)."""
    return isinstance(loop, asyncio.SelectorEventLoop)


class UdpServer(UdpDispatch, asyncio.DatagramProtocol):
    def __init__(self, handler: QueryHandler, max_inflight: int = 2048) -> None:
        super().__init__(handler, max_inflight)
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # uvloop's is not a subclass

    datagram_received = UdpDispatch.received  # (the hot path: no call in between)

    def _send(self, reply: bytes, dest: tuple[Any, ...]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, dest)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp: %s", exc)  # e.g. ICMP port unreachable from a client that went away
