"""The block page over HTTPS (`blockpage.https: {mode: local-ca}`): TLS in front of the same aiohttp app.

Each connection gets its own TLS context (`Certificates.server_context(client_ip)`), because the SNI callback
must know who asks: a name is given a certificate only if filterd blocks it for that client's group. So this
listener accepts connections itself and hands each, with its context, to `loop.connect_accepted_socket`, which
does the handshake and then gives the TLS transport to the app's request handler (as aiohttp's own server
would). A handshake that fails (an alert we sent, a client that does not trust the CA, a timeout) closes the
connection; it never reaches aiohttp. At most `max_handshakes` handshakes run at once, and `per_client` from
one address; past that, a new connection is closed at once (a client holding handshakes open cannot lock the
others out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from aiohttp import web

from filterd.tls.leaves import Certificates

log = logging.getLogger(__name__)

#: A TLS record of type alert, and an alert's level fatal (RFC 8446 5.1, 6).
_ALERT = 21
_FATAL = 2
#: Seconds a client has to finish the TLS handshake.
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
        context = self.certificates.server_context(client, lambda description: send_alert(conn, description))
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                server, conn, ssl=context, ssl_handshake_timeout=self.handshake_timeout
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()  # an alert sent, a certificate the client did not trust, a timeout: nothing to serve
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
