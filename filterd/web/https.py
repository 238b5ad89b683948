"""The block page over HTTPS (`blockpage.https: {mode: local-ca}`): TLS in front of the same aiohttp app.

A name is given a certificate only if filterd blocks it for the client's group, so this listener accepts
connections itself. For each, it first peeks at the ClientHello (the bytes stay in the socket) and reads its
server name (`filterd/tls/clienthello.py`), asks `Certificates.prepare(name, client_ip)` for the leaf (a new one
is minted in a worker thread, so a flood of new names does not stall DNS on the same event loop), then hands the
socket, with a TLS context whose SNI callback only switches to that leaf, to `loop.connect_accepted_socket`,
which does the handshake and gives the TLS transport to the app's request handler (as aiohttp's own server
would). A name that gets no certificate gets the TLS alert at once, without a handshake; bytes that are not a
ClientHello, and a handshake that fails (a client that does not trust the CA, a timeout), close the connection;
neither reaches aiohttp. At most `max_handshakes` handshakes run at once, and `per_client` from one address;
past that, a new connection is closed at once (a client holding handshakes open cannot lock the others out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from aiohttp import web

from filterd.tls.clienthello import MAX_BYTES, ClientHelloError, Incomplete, server_name
from filterd.tls.leaves import ERROR, Certificates

log = logging.getLogger(__name__)

#: A TLS record of type alert, and an alert's level fatal (RFC 8446 5.1, 6).
_ALERT = 21
_FATAL = 2
#: Seconds a client has to finish the TLS handshake (its ClientHello included).
HANDSHAKE_TIMEOUT = 10.0
#: Handshakes in progress at once, for all clients and for one client address.
MAX_HANDSHAKES = 256
PER_CLIENT = 32


class HttpsListener:
    """The HTTPS block page on one listening socket: `start()`, then `close()` (before the runner's cleanup)."""

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        certificates: Certificates,
        *,
        max_handshakes: int = MAX_HANDSHAKES,
        per_client: int = PER_CLIENT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.runner = runner
        self.sock = sock
        self.certificates = certificates
        self.max_handshakes = max_handshakes
        self.per_client = per_client
        self.handshake_timeout = handshake_timeout
        self.handshakes: set[asyncio.Task[None]] = set()
        #: Handshakes in progress per client address.
        self.clients: dict[str, int] = {}
        self.accepting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        assert self.runner.server is not None, "runner.setup() first"
        self.sock.setblocking(False)
        self.accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(self.sock)
            except OSError as exc:  # out of file descriptors, a connection reset before accept: try again shortly
                log.debug("blockpage https: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            client = str(peer[0])
            if len(self.handshakes) >= self.max_handshakes or self.clients.get(client, 0) >= self.per_client:
                conn.close()
                continue
            self.clients[client] = self.clients.get(client, 0) + 1
            task = loop.create_task(self._handshake(conn, client))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket, client: str) -> None:
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handshake_timeout
        try:
            try:
                name = await peek_server_name(conn, deadline)
            except ClientHelloError:  # not TLS, too long, given up, too slow: closed, as the handshake would fail
                refuse(conn, None)
                return
            leaf, result = await self.certificates.prepare(name, client)
            if leaf is None:  # no certificate for this name and client: the alert, no handshake at all
                failed = result == ERROR
                refuse(
                    conn, ssl.ALERT_DESCRIPTION_INTERNAL_ERROR if failed else ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
                )
                return
            assert name is not None  # prepare() refuses a ClientHello without one, and one that is not ASCII
            prepared = (name.decode("ascii"), leaf)
            context = self.certificates.server_context(client, lambda alert: send_alert(conn, alert), prepared)
            remaining = deadline - loop.time()
            if remaining <= 0:
                conn.close()
                return
            await loop.connect_accepted_socket(server, conn, ssl=context, ssl_handshake_timeout=remaining)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()  # a certificate the client did not trust, a timeout, a reset: nothing to serve
        except asyncio.CancelledError:  # the listener is closing
            conn.close()
            raise
        finally:
            left = self.clients.pop(client, 1) - 1
            if left > 0:
                self.clients[client] = left

    async def close(self) -> None:
        tasks = [task for task in (self.accepting, *self.handshakes) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.sock.close()


def send_alert(conn: socket.socket, description: int) -> None:
    """A fatal TLS alert record, in clear (no keys exist yet: it answers the ClientHello), byte for byte what
    OpenSSL writes for the SNI callback's alert; asyncio's TLS transport would close the connection without it,
    and the client would see only an EOF instead of why (`unrecognized name`)."""
    with contextlib.suppress(OSError):  # a client already gone: nothing to tell
        conn.send(bytes((_ALERT, 3, 3, 0, 2, _FATAL, description)))


def refuse(conn: socket.socket, description: int | None) -> None:
    """Close a connection without a handshake, after the alert if one is given. What the client sent is read
    first: a socket closed with unread bytes sends a reset, which could reach the client before the alert."""
    with contextlib.suppress(OSError):  # nothing there (BlockingIOError), or a client already gone
        conn.recv(MAX_BYTES)
    if description is not None:
        send_alert(conn, description)
    conn.close()


async def peek_server_name(conn: socket.socket, deadline: float) -> bytes | None:
    """The SNI name of the ClientHello waiting in `conn` (None: it names none), read with MSG_PEEK so that the
    TLS handshake still reads it all; `ClientHelloError` if the bytes are no ClientHello, the client closes, or
    it is not whole by `deadline` (the loop's clock). A ClientHello split across TCP segments is peeked again as
    they come: the socket's low-water mark (SO_RCVLOWAT) is set to the bytes still needed, so the loop is woken
    once they are there, not for every segment nor in a busy loop."""
    seen = 0
    needed = 1
    try:
        while True:
            if needed > 1:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, needed)
            await _readable(conn, deadline)
            try:
                data = conn.recv(MAX_BYTES, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if len(data) <= seen:  # nothing new although readable: the client closed (or sent nothing at all)
                raise ClientHelloError("the client closed before its ClientHello was whole")
            seen = len(data)
            try:
                return server_name(data)
            except Incomplete as more:
                needed = more.needed
    finally:
        if needed > 1:
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)


async def _readable(conn: socket.socket, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not waiter.done():
            waiter.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, ready)
    try:
        async with asyncio.timeout_at(deadline):
            await waiter
    except TimeoutError:
        raise ClientHelloError("no whole ClientHello within the handshake timeout") from None
    finally:
        loop.remove_reader(fd)
