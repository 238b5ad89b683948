"""The encrypted listeners: DNS over TLS (`dns.tls_listen`: `tcp.py`'s server behind TLS, same limits) and DNS
over HTTPS (`dns.https_listen`: `doh.py` on hypercorn's HTTP/2 and HTTP/1.1 protocols), on sockets the app bound.

Both bound each client as DNS over TCP does (`TcpLimits`: connections per client address and in all, the idle
timeout, which also bounds the TLS handshake). Connections still in their TLS handshake are bounded the same way,
before the handshake starts: filterd accepts them itself (`_accept`) and hands each admitted socket to TLS, so a
client that opens connections and never says hello holds at most its share, for at most the idle timeout. The
certificate (`certs.py`: the `tls` files, or one the local CA makes) is loaded into the two contexts given here,
which stay the same objects for the listeners' life: a renewed certificate reaches new connections through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from filterd.config.schema import Endpoint
from filterd.transport.certs import ServedCertificates
from filterd.transport.doh import Activity, DohApp
from filterd.transport.handler import QueryHandler
from filterd.transport.tcp import TcpLimits, TcpServer

log = logging.getLogger(__name__)

_Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class EncryptedListeners:
    def __init__(self, handler: QueryHandler, certificates: ServedCertificates, limits: TcpLimits) -> None:
        self.handler = handler
        self.certificates = certificates
        self.limits = limits
        #: The accept loops, one per listening socket.
        self._accepting: dict[asyncio.Task[None], socket.socket] = {}
        #: Connections in their TLS handshake, per client address.
        self._handshaking: dict[str, int] = {}
        self._handshakes: set[asyncio.Task[None]] = set()
        self._dot = TcpServer(handler, limits, protocol="tls")
        self._doh_config = _hypercorn_config(limits)
        self._doh_context = WorkerContext(None)
        #: Each DoH connection's activity, by client address and port: see `_doh_deadline`.
        self._doh_activity: dict[tuple[str, int], Activity] = {}
        self._doh_app = ASGIWrapper(DohApp(handler, self._doh_activity))  # type: ignore[arg-type]  # ASGI 3
        #: DoH connections open, in all and per client address.
        self._doh_open: dict[str, int] = {}
        self._doh_connections: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}

    async def serve_dot(self, sock: socket.socket) -> Endpoint:
        return self._started(sock, self.certificates.dot, self._dot.serve, "dns-over-tls")

    async def serve_doh(self, sock: socket.socket) -> Endpoint:
        return self._started(sock, self.certificates.doh, self._doh_connection, "dns-over-https")

    def _started(self, sock: socket.socket, context: ssl.SSLContext, serve: _Serve, what: str) -> Endpoint:
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._accept(sock, context, serve, what))
        self._accepting[task] = sock
        host, port = sock.getsockname()[:2]
        bound = Endpoint(host, port)
        log.info("%s: listening on %s", what, bound)
        return bound

    async def _accept(self, sock: socket.socket, context: ssl.SSLContext, serve: _Serve, what: str) -> None:
        """Accept, admit (handshakes in progress: per client address and in all), then TLS and `serve`."""
        loop = asyncio.get_running_loop()
        limits = self.limits
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # out of file descriptors, or the like: keep listening
                log.warning("%s: accept failed: %s", what, exc)
                await asyncio.sleep(0.1)
                continue
            client = peer[0] if peer else "0.0.0.0"
            if (
                self._handshaking.get(client, 0) >= limits.max_connections_per_client
                or sum(self._handshaking.values()) >= limits.max_connections
            ):
                self.handler.metrics.tcp.closed["refused"] += 1
                conn.close()
                continue
            self._handshaking[client] = self._handshaking.get(client, 0) + 1
            task = loop.create_task(self._handshake(conn, client, context, serve))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, client: str, context: ssl.SSLContext, serve: _Serve) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, serve, loop=loop)  # `serve` runs once the handshake is done
        try:
            await loop.connect_accepted_socket(
                lambda: protocol, conn, ssl=context, ssl_handshake_timeout=self.limits.idle_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, EOFError, ValueError) as exc:
            log.debug("tls handshake with %s failed: %r", client, exc)
            conn.close()
        finally:
            left = self._handshaking[client] - 1
            if left:
                self._handshaking[client] = left
            else:
                del self._handshaking[client]

    async def _doh_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = peer[0] if peer else "0.0.0.0"
        if (
            self._doh_open.get(client, 0) >= self.limits.max_connections_per_client
            or sum(self._doh_open.values()) >= self.limits.max_connections
        ):
            self.handler.metrics.tcp.closed["refused"] += 1
            writer.transport.abort()
            return
        self._doh_open[client] = self._doh_open.get(client, 0) + 1
        self._doh_connections[writer] = asyncio.current_task()
        loop = asyncio.get_running_loop()
        key = (client, peer[1] if peer else 0)
        activity = self._doh_activity[key] = Activity(loop.time())
        deadline = loop.create_task(self._doh_deadline(writer, activity))
        try:
            await TCPServer(self._doh_app, loop, self._doh_config, self._doh_context, {}, reader, writer)
        except Exception as exc:  # a client's protocol error ends its connection, never the server
            log.debug("dns-over-https: connection from %s ended: %r", client, exc)
        finally:
            deadline.cancel()
            self._doh_activity.pop(key, None)
            self._doh_connections.pop(writer, None)
            left = self._doh_open[client] - 1
            if left:
                self._doh_open[client] = left
            else:
                del self._doh_open[client]

    async def _doh_deadline(self, writer: asyncio.StreamWriter, activity: Activity) -> None:
        """Close a DoH connection that has answered nothing for the idle timeout and is resolving nothing: hypercorn
        times out idle connections and single reads, not a request sent a byte at a time (slowloris), which held
        the connection slots of every client for ever."""
        loop = asyncio.get_running_loop()
        timeout = self.limits.idle_timeout
        while True:
            left = activity.last + timeout - loop.time()
            if left > 0 or activity.busy:
                await asyncio.sleep(max(left, timeout / 4))
                continue
            self.handler.metrics.tcp.closed["stuck"] += 1
            writer.transport.abort()
            return

    async def close(self) -> None:
        for task, sock in self._accepting.items():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sock.close()
        self._accepting.clear()
        for task in list(self._handshakes):
            task.cancel()
        await self._doh_context.terminated.set()  # hypercorn's connections close when idle
        # Aborted, not cancelled: Python 3.11's streams log a cancelled connection task as an error.
        tasks = [task for task in self._doh_connections.values() if task is not None]
        for writer in list(self._doh_connections):
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=5)


def _hypercorn_config(limits: TcpLimits) -> HypercornConfig:
    config = HypercornConfig()
    config.keep_alive_timeout = limits.idle_timeout
    config.read_timeout = max(1, int(limits.idle_timeout))
    config.keep_alive_max_requests = 1_000_000  # a browser keeps one connection for all of its lookups
    config.h2_max_concurrent_streams = limits.max_inflight_per_connection
    config.include_server_header = False
    config.accesslog = None
    config.errorlog = logging.getLogger("filterd.transport.doh.http")
    return config
