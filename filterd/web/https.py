"""The block page over HTTPS (`blockpage.https: {mode: local-ca}`): TLS in front of the same aiohttp app.

Each connection gets its own TLS context (`Certificates.server_context(client_ip)`), because the SNI callback
must know who asks: a name is given a certificate only if filterd blocks it for that client's group. So this
listener accepts connections itself and hands each, with its context, to `loop.connect_accepted_socket`, which
does the handshake and then gives the TLS transport to the app's request handler (as aiohttp's own server
would). A handshake that fails (an alert we sent, a client that does not trust the CA, a timeout) closes the
connection; it never reaches aiohttp. At most `MAX_HANDSHAKES` handshakes run at once; past that, new
connections are closed at once.
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

#: Seconds a client has to finish the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Handshakes in progress at once, for all clients.
MAX_HANDSHAKES = 256


class HttpsListener:
    """The HTTPS block page on one listening socket: `start()`, then `close()` (before the runner's cleanup)."""

    def __init__(self, runner: web.AppRunner, sock: socket.socket, certificates: Certificates) -> None:
        self.runner = runner
        self.sock = sock
        self.certificates = certificates
        self.handshakes: set[asyncio.Task[None]] = set()
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
            if len(self.handshakes) >= MAX_HANDSHAKES:
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn, str(peer[0])))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, conn: socket.socket, client: str) -> None:
        server = self.runner.server
        assert server is not None
        context = self.certificates.server_context(client)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                server, conn, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            conn.close()  # an alert sent, a certificate the client did not trust, a timeout: nothing to serve

    async def close(self) -> None:
        tasks = [task for task in (self.accepting, *self.handshakes) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.sock.close()
