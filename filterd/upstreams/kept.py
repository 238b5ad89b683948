"""KeptConnection: what DoT and DoH to an upstream share. One TLS connection, kept and reused by every query
(each protocol pipelines on it: `dot.py` by DNS ID, `doh.py` by HTTP/2 stream); closed after `idle_timeout` with
nothing in flight; after a failed connect, new ones wait out a backoff (0.5 s doubling to 15 s) and queries in the
meantime fail at once, so the resolver moves on to the next upstream instead of waiting. A query sent on a kept
connection that the upstream had closed meanwhile is asked once more on a new one.

Never clear text: a certificate that does not verify for the upstream's name fails the exchange (`tls`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from filterd.config.schema import EncryptedUpstream
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.tls import describe

log = logging.getLogger(__name__)

#: name -> its addresses, asked of the plain `dns.bootstrap` resolvers; OSError when none answered.
AddressLookup = Callable[[str], Awaitable[list[str]]]

IDLE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 15.0
ADDRESS_TTL = 300.0  # seconds a bootstrap answer for NAME is used


class SessionClosed(Exception):
    """The connection ended before this query's reply came."""


class Session:
    """One open connection; subclasses add what their protocol tracks per query."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def busy(self) -> bool:
        """Queries in flight (the idle timeout waits for them)."""
        raise NotImplementedError

    def fail_all(self, reason: str) -> None:
        raise NotImplementedError


S = TypeVar("S", bound=Session)


class KeptConnection(Generic[S]):
    #: The ALPN protocol the server must pick (None: any, or none).
    alpn: str | None = None

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
        self._session: S | None = None
        self._connecting: asyncio.Task[S] | None = None
        self._retry_at = 0.0
        self._backoff = BACKOFF_FIRST
        self._last_error: UpstreamError | None = None
        self._address: tuple[str, float] | None = None
        #: Connections opened so far (tests and the benchmark check that they are reused).
        self.connects = 0

    async def exchange(self, packet: bytes, question: bytes, timeout: float) -> bytes:
        """The reply to `packet` (whose ID it keeps), or UpstreamError."""
        deadline = asyncio.get_running_loop().time() + timeout
        for attempt in range(2):
            session = self._session
            if session is not None and not session.closed:
                fresh = False  # the common case: no coroutine to find it
            else:
                session, fresh = await self._session_for(deadline)
            try:
                return await self._ask(session, packet, question, deadline)
            except SessionClosed as exc:
                if fresh or attempt:
                    raise UpstreamError("network", str(exc)) from None
        raise AssertionError("unreachable")

    # --- for the protocols ---------------------------------------------------------------------------------

    def _start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> S:
        raise NotImplementedError

    async def _ask(self, session: S, packet: bytes, question: bytes, deadline: float) -> bytes:
        raise NotImplementedError

    async def _read(self, session: S) -> None:
        """Read replies until the connection ends or is idle; then `_drop` it."""
        raise NotImplementedError

    def _drop(self, session: S, reason: str) -> None:
        session.closed = True
        if self._session is session:
            self._session = None
        session.fail_all(reason)
        session.writer.close()

    # --- connecting ----------------------------------------------------------------------------------------

    async def _session_for(self, deadline: float) -> tuple[S, bool]:
        session = self._session
        if session is not None and not session.closed:
            return session, False
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

    async def _connect(self) -> S:
        loop = asyncio.get_running_loop()
        up = self.upstream
        try:
            try:
                address = up.host or await self._lookup()
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    reader, writer = await asyncio.open_connection(
                        address, up.port, ssl=self.context, server_hostname=up.server_name
                    )
            except ssl.SSLError as exc:
                raise UpstreamError("tls", describe(exc)) from None
            except TimeoutError:
                raise UpstreamError("timeout", f"no TLS connection within {CONNECT_TIMEOUT:.0f}s") from None
            except (OSError, EOFError) as exc:
                self._address = None  # ask the bootstrap again next time
                raise UpstreamError("network", str(exc) or type(exc).__name__) from None
            chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if self.alpn is not None and chosen != self.alpn:
                writer.close()
                raise UpstreamError("network", f"the server does not speak {self.alpn} (ALPN: {chosen})")
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
        session = self._start(reader, writer)
        session.task = loop.create_task(self._read_then_drop(session))
        self._session = session
        return session

    async def _read_then_drop(self, session: S) -> None:
        reason = "the upstream closed the connection"
        try:
            await self._read(session)
        except asyncio.IncompleteReadError:
            pass
        except (OSError, ssl.SSLError) as exc:
            reason = f"connection lost: {exc}"
        except SessionClosed as exc:
            reason = str(exc)
        finally:
            self._drop(session, reason)

    async def _lookup(self) -> str:
        now = asyncio.get_running_loop().time()
        if self._address is not None and self._address[1] > now:
            return self._address[0]
        name = self.upstream.server_name
        try:
            addresses = await self.lookup(name)
        except OSError as exc:
            raise UpstreamError("network", f"cannot look up {name} (dns.bootstrap): {exc}") from None
        if not addresses:
            raise UpstreamError("network", f"{name} has no address (dns.bootstrap)")
        self._address = (addresses[0], now + ADDRESS_TTL)
        return addresses[0]

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        session = self._session
        if session is not None:
            if session.task is not None:
                session.task.cancel()
            self._drop(session, "filterd is stopping")


def _retrieve(task: asyncio.Task[S]) -> None:
    """A failed connect nobody waits for any more is not an 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()
