"""DNS over HTTPS to one upstream (RFC 8484) on a `KeptConnection`: POST application/dns-message, one HTTP/2
stream per query on the one connection (as many at once as the server's SETTINGS allow), on the `h2` library's
sans-IO protocol; a GOAWAY or a used-up stream ID space moves new queries to a new connection.

Why not httpx[http2]: measured with bench/encrypted.py, filterd forwarding misses through httpx's HTTP/2 client
spent about 9x the CPU of the plain path (1,290 against 140 us a query); the same h2 protocol under this thin shell
costs about 2.1-2.4x plain on uvloop, and h2's own work is most of that (about 84 us, as much as a whole plain miss:
see `bench/encrypted.py --clients`), so the shell keeps its own part small: the streams started in one event-loop
turn leave in one write, a timer (not a task or a Timeout context) bounds each, h2 checks no headers either way
(`client_config`), received data is acknowledged in bulk (`CONNECTION_WINDOW`), and the stream table is ours. aiohttp's
client speaks HTTP/1.1 only (one query per connection at a time), and aioquic's HTTP stack is HTTP/3 only.

filterd connects to the pinned address, or to the one `dns.bootstrap` gave for NAME, never through the system
resolver; TLS is verified for NAME (the SNI and `:authority` carry it). Never clear text.
"""

from __future__ import annotations

import asyncio
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack

from filterd.config.schema import EncryptedUpstream
from filterd.dns import wire
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.kept import IDLE_TIMEOUT, AddressLookup, KeptConnection, Session, SessionClosed

MEDIA_TYPE = b"application/dns-message"
READ_SIZE = 65536
#: Flow control in bulk (RFC 9113 5.2): each stream may receive this much, more than any DNS reply (65,535 bytes,
#: plus at most 256 bytes of padding a DATA frame), so no stream ever needs a WINDOW_UPDATE ...
STREAM_WINDOW = 1 << 20
#: ... and the connection's window is opened this far once, then topped up when half is used: one WINDOW_UPDATE
#: every few million replies, where acknowledging each reply's data cost a few percent of h2's work a query.
CONNECTION_WINDOW = 1 << 30


def client_config() -> h2.config.H2Configuration:
    """The h2 client's configuration, with h2's header checks off both ways (the server's alone were about 10 us, a
    tenth of h2's work a query: bench/encrypted.py's h2 floor): our request headers are constants (`request_headers`),
    and of the server's we read only `:status` and `content-type`, each compared byte for byte, so a malformed header
    still fails the query (`_finish`); h2 still checks the reply's length against its content-length and every
    frame, and HPACK still bounds the header list."""
    return h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )


def client_connection() -> h2.connection.H2Connection:
    """A new client connection (`client_config`) whose first SETTINGS and WINDOW_UPDATE are queued: the windows of
    `STREAM_WINDOW` and `CONNECTION_WINDOW`, and no server push."""
    conn = h2.connection.H2Connection(config=client_config())
    codes = h2.settings.SettingCodes
    settings = {codes(code): value for code, value in conn.local_settings.items()}  # h2's defaults, and:
    settings[codes.INITIAL_WINDOW_SIZE] = STREAM_WINDOW
    settings[codes.ENABLE_PUSH] = 0  # a DoH client takes no pushed streams
    conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
    conn.initiate_connection()
    conn.increment_flow_control_window(CONNECTION_WINDOW - conn.inbound_flow_control_window)
    return conn


def request_headers(upstream: EncryptedUpstream) -> list[tuple[bytes, bytes]]:
    """Every request's headers but its content-length: lower-case, valid, in HTTP/2's order (pseudo-headers first)."""
    authority = upstream.server_name if upstream.port == 443 else f"{upstream.server_name}:{upstream.port}"
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":authority", authority.encode()),
        (b":path", upstream.path.encode()),
        (b"accept", MEDIA_TYPE),
        (b"content-type", MEDIA_TYPE),
    ]


class _Stream:
    __slots__ = ("body", "content_type", "future", "question", "status")

    def __init__(self, future: asyncio.Future[bytes], question: bytes) -> None:
        self.future = future
        self.question = question
        self.status = 0
        self.content_type = b""
        self.body: bytes | bytearray = b""


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(UpstreamError("timeout", "no HTTPS answer in time"))


class _H2Session(Session):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        self.h2 = client_connection()
        #: The streams waiting for their reply; a stream leaves when it ends, is reset, fails or gives up.
        self.streams: dict[int, _Stream] = {}
        #: Set whenever a stream ends: a query waiting for the server's stream limit tries again.
        self.slot = asyncio.Event()
        self._flush_queued = False
        self.flush()

    def flush(self) -> None:
        self._flush_queued = False
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def flush_soon(self) -> None:
        """Write what h2 has queued once this turn of the event loop is over: the queries started in the same turn
        share one TLS record and one send (a write a query was a sixth of filterd's CPU a miss)."""
        if not self._flush_queued:
            self._flush_queued = True
            asyncio.get_running_loop().call_soon(self.flush)

    def busy(self) -> bool:
        return bool(self.streams)

    def fail_all(self, reason: str) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if not stream.future.done():
                stream.future.set_exception(SessionClosed(reason))
        self.slot.set()


class DohUpstream(KeptConnection[_H2Session]):
    alpn = "h2"

    def __init__(
        self,
        upstream: EncryptedUpstream,
        context: ssl.SSLContext,
        lookup: AddressLookup,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        super().__init__(upstream, context, lookup, idle_timeout)
        self._headers = request_headers(upstream)

    def _start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _H2Session:
        return _H2Session(reader, writer)

    async def _ask(self, session: _H2Session, packet: bytes, question: bytes, deadline: float) -> bytes:
        if len(session.streams) >= session.h2.remote_settings.max_concurrent_streams:
            await self._wait_for_slot(session, deadline)
        if session.closed or session.writer.is_closing():
            raise SessionClosed("the connection is closing")
        body = b"\x00\x00" + packet[2:]  # ID 0 (RFC 8484 4.1): HTTP caches see one query as one
        try:
            stream_id = session.h2.get_next_available_stream_id()
            # the length as a literal never indexed: ~40 lengths would otherwise fill HPACK's dynamic table, and
            # every search of it (each header of each request) would walk them
            length = hpack.NeverIndexedHeaderTuple(b"content-length", b"%d" % len(body))
            session.h2.send_headers(stream_id, [*self._headers, length])
        except h2.exceptions.NoAvailableStreamIDError:
            session.closed = True  # new queries go to a new connection; this one drains
            raise SessionClosed("stream IDs used up") from None
        except h2.exceptions.ProtocolError as exc:
            raise UpstreamError("network", f"HTTP/2: {exc}") from None
        try:
            session.h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError as exc:  # e.g. a flow-control window smaller than the query
            self._reset(session, stream_id)  # (else h2 would count the half-sent stream as open for ever)
            raise UpstreamError("network", f"HTTP/2: {exc}") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        session.streams[stream_id] = _Stream(future, question)
        session.flush_soon()
        timer = loop.call_at(deadline, _expire, future)  # a timer: cheaper than a Timeout context around the await
        try:
            data = await future
        finally:
            timer.cancel()
            if session.streams.pop(stream_id, None) is not None:  # timed out or cancelled: the server may stop
                self._reset(session, stream_id)
        return packet[:2] + data[2:]

    @staticmethod
    async def _wait_for_slot(session: _H2Session, deadline: float) -> None:
        """Wait until the server's SETTINGS_MAX_CONCURRENT_STREAMS lets one more stream open."""
        try:
            async with asyncio.timeout_at(deadline):
                while len(session.streams) >= session.h2.remote_settings.max_concurrent_streams:
                    session.slot.clear()
                    await session.slot.wait()
                    if session.closed:
                        raise SessionClosed("the connection closed")
        except TimeoutError:
            raise UpstreamError("timeout", "no HTTPS answer in time") from None

    @staticmethod
    def _reset(session: _H2Session, stream_id: int) -> None:
        try:
            session.h2.reset_stream(stream_id)
            session.flush_soon()
        except h2.exceptions.H2Error:
            pass

    async def _read(self, session: _H2Session) -> None:
        reader = session.reader
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                if session.streams:
                    continue
                session.h2.close_connection()
                session.flush()
                return  # idle: closed by `_drop`
            if not data:
                return
            try:
                events = session.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                raise SessionClosed(f"HTTP/2 protocol error: {exc}") from None
            for event in events:
                self._on_event(session, event)
            window = session.h2.inbound_flow_control_window
            if window < CONNECTION_WINDOW // 2:
                session.h2.increment_flow_control_window(CONNECTION_WINDOW - window)
            session.flush()

    def _on_event(self, session: _H2Session, event: h2.events.Event) -> None:
        # a reply is ResponseReceived, DataReceived and StreamEnded; the other events (settings, window updates,
        # pings) h2 answers itself; received data is acknowledged in bulk (`CONNECTION_WINDOW`), not here
        if isinstance(event, h2.events.DataReceived):
            stream = session.streams.get(event.stream_id)
            if stream is not None and event.data:
                if not stream.body:
                    stream.body = event.data  # the usual case: the whole reply in one DATA frame, no copy
                elif isinstance(stream.body, bytearray):
                    stream.body += event.data
                else:
                    stream.body = bytearray(stream.body) + event.data  # (many small frames: no quadratic copying)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = session.streams.get(event.stream_id)
            if stream is not None:
                for name, value in event.headers or ():
                    if name == b":status":
                        stream.status = int(value)
                    elif name == b"content-type":
                        stream.content_type = bytes(value).split(b";")[0].strip().lower()
        elif isinstance(event, h2.events.StreamEnded):
            stream = session.streams.pop(event.stream_id, None)
            if stream is not None and not stream.future.done():
                _finish(stream, self.upstream)
            session.slot.set()
        elif isinstance(event, h2.events.StreamReset):
            stream = session.streams.pop(event.stream_id, None)
            if stream is not None and not stream.future.done():
                stream.future.set_exception(UpstreamError("network", f"stream reset ({event.error_code})"))
            session.slot.set()
        elif isinstance(event, h2.events.ConnectionTerminated):  # GOAWAY: what it did not take is asked again
            session.closed = True
            last = event.last_stream_id if event.last_stream_id is not None else 0
            for stream_id in [sid for sid in session.streams if sid > last]:
                stream = session.streams.pop(stream_id)
                if not stream.future.done():
                    stream.future.set_exception(SessionClosed("the server sent GOAWAY"))
            session.slot.set()


def _finish(stream: _Stream, upstream: EncryptedUpstream) -> None:
    if stream.status != 200:
        stream.future.set_exception(UpstreamError("network", f"HTTP {stream.status} from {upstream}"))
        return
    if stream.content_type != MEDIA_TYPE:
        stream.future.set_exception(UpstreamError("mismatch", f"content type {stream.content_type.decode()!r}"))
        return
    data = bytes(stream.body)
    header = wire.response_header(data)
    if header is None or not header[1] & wire.QR or not wire.question_matches(data, stream.question):
        stream.future.set_exception(UpstreamError("mismatch", "the reply is not an answer to the question asked"))
        return
    stream.future.set_result(data)
