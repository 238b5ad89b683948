"""DNS over TLS to one upstream (RFC 7858): one kept connection, every query pipelined on it with its own ID,
replies matched by ID and question as they come, in any order (RFC 7766); closed after `idle_timeout` with
nothing in flight; after a failed connect, new ones wait out a backoff (0.5 s doubling to 15 s) and queries in
the meantime fail at once, so the resolver moves on to the next upstream instead of waiting. A query sent on a
kept connection that the upstream had closed meanwhile is asked once more on a new one.

Never clear text: a certificate that does not verify for the upstream's name fails the exchange (`tls`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import struct
from collections.abc import Awaitable, Callable

from filterd.config.schema import EncryptedUpstream
from filterd.dns import wire
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.tls import describe

log = logging.getLogger(__name__)

#: name -> its addresses, asked of the plain `dns.bootstrap` resolvers; OSError when none answered.
AddressLookup = Callable[[str], Awaitable[list[str]]]

IDLE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 15.0
MAX_PENDING = 1024  # queries in flight on the one connection


class _Closed(Exception):
    """The connection ended before this query's reply came."""


class _Connection:
    __slots__ = ("closed", "mismatches", "pending", "reader", "task", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.closed = False
        self.mismatches = 0
        self.task: asyncio.Task[None] | None = None


class DotUpstream:
    def __init__(
        self,
        upstream: EncryptedUpstream,
        context: ssl.SSLContext,
        lookup: AddressLookup,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.context = context
        self.lookup = lookup
        self.idle_timeout = idle_timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Task[_Connection] | None = None
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        self._last_error: UpstreamError | None = None
        #: Connections opened so far (tests and the benchmark check that they are reused).
        self.connects = 0

    async def exchange(self, packet: bytes, question: bytes, timeout: float) -> bytes:
        """The reply to `packet` (its ID replaced by one of ours), or UpstreamError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for attempt in range(2):
            conn, fresh = await self._connection(deadline)
            try:
                return await self._ask(conn, packet, question, deadline)
            except _Closed as exc:
                if fresh or attempt:
                    raise UpstreamError("network", str(exc)) from None
        raise AssertionError("unreachable")

    async def _connection(self, deadline: float) -> tuple[_Connection, bool]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn, False
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at and self._last_error is not None:
            wait = self._retry_at - loop.time()
            raise UpstreamError(self._last_error.kind, f"{self._last_error}; next attempt in {wait:.1f}s")
        if self._connecting is None:
            self._connecting = loop.create_task(self._connect())
            self._connecting.add_done_callback(_retrieve)
        try:
            async with asyncio.timeout_at(deadline):
                return await asyncio.shield(self._connecting), True
        except TimeoutError:
            raise UpstreamError("timeout", f"{self.upstream}: no TLS connection in time") from None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        up = self.upstream
        try:
            try:
                address = up.host or await self._address()
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(
                        address, up.port, ssl=self.context, server_hostname=up.server_name
                    )
            except ssl.SSLError as exc:
                raise UpstreamError("tls", describe(exc)) from None
            except TimeoutError:
                raise UpstreamError("timeout", f"no TLS connection within {CONNECT_TIMEOUT:.0f}s") from None
            except (OSError, EOFError) as exc:
                raise UpstreamError("network", str(exc) or type(exc).__name__) from None
        except UpstreamError as exc:
            self._retry_at = loop.time() + self._backoff
            log.warning("upstream %s: %s (next attempt in %.1fs)", up, exc, self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            self._last_error = exc
            raise
        finally:
            self._connecting = None
        self._backoff = BACKOFF_FIRST
        self._last_error = None
        self.connects += 1
        conn = _Connection(reader, writer)
        conn.task = loop.create_task(self._read(conn))
        self._conn = conn
        return conn

    async def _address(self) -> str:
        name = self.upstream.server_name
        try:
            addresses = await self.lookup(name)
        except OSError as exc:
            raise UpstreamError("network", f"cannot look up {name} (dns.bootstrap): {exc}") from None
        if not addresses:
            raise UpstreamError("network", f"{name} has no address (dns.bootstrap)")
        return addresses[0]

    async def _ask(self, conn: _Connection, packet: bytes, question: bytes, deadline: float) -> bytes:
        if len(conn.pending) >= MAX_PENDING:
            raise UpstreamError("network", f"{MAX_PENDING} queries in flight already")
        if conn.writer.is_closing():
            raise _Closed("the connection is closing")
        qid = secrets.randbits(16)
        while qid in conn.pending:
            qid = secrets.randbits(16)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        conn.pending[qid] = (future, question)
        try:
            conn.writer.write(struct.pack("!HH", len(packet), qid) + packet[2:])
            try:
                async with asyncio.timeout_at(deadline):
                    return await future
            except TimeoutError:
                raise UpstreamError("timeout", "no answer in time") from None
        finally:
            conn.pending.pop(qid, None)

    async def _read(self, conn: _Connection) -> None:
        """Hand each reply to the query with its ID; on the end of the connection, fail those still waiting."""
        reason = "the upstream closed the connection"
        try:
            while True:
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        head = await conn.reader.readexactly(2)
                except TimeoutError:
                    if conn.pending:
                        continue
                    reason = "idle"
                    break
                data = await conn.reader.readexactly(struct.unpack("!H", head)[0])
                header = wire.response_header(data)
                entry = conn.pending.get(header[0]) if header is not None else None
                if (
                    header is None
                    or entry is None
                    or not header[1] & wire.QR
                    or entry[0].done()
                    or not wire.question_matches(data, entry[1])
                ):
                    conn.mismatches += 1  # late (its query timed out) or not ours
                    continue
                entry[0].set_result(data)
        except asyncio.IncompleteReadError:
            pass
        except (OSError, ssl.SSLError) as exc:
            reason = f"connection lost: {exc}"
        finally:
            self._drop(conn, reason)

    def _drop(self, conn: _Connection, reason: str) -> None:
        conn.closed = True
        if self._conn is conn:
            self._conn = None
        for future, _ in conn.pending.values():
            if not future.done():
                future.set_exception(_Closed(reason))
        conn.writer.close()

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        conn = self._conn
        if conn is not None:
            if conn.task is not None:
                conn.task.cancel()
            self._drop(conn, "filterd is stopping")


def _retrieve(task: asyncio.Task[_Connection]) -> None:
    """A failed connect nobody waits for any more is not an 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
