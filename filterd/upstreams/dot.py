"""DNS over TLS to one upstream (RFC 7858) on a `KeptConnection`: every query pipelined on the one connection
with its own ID, replies matched by ID and question as they come, in any order (RFC 7766)."""

from __future__ import annotations

import asyncio
import secrets
import struct

from filterd.dns import wire
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.kept import KeptConnection, Session, SessionClosed

MAX_PENDING = 1024  # queries in flight on the one connection


class _DotSession(Session):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer)
        #: query ID -> (its future, its question bytes)
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes]] = {}
        self.mismatches = 0

    def busy(self) -> bool:
        return bool(self.pending)

    def fail_all(self, reason: str) -> None:
        for future, _ in self.pending.values():
            if not future.done():
                future.set_exception(SessionClosed(reason))


class DotUpstream(KeptConnection[_DotSession]):
    def _start(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> _DotSession:
        return _DotSession(reader, writer)

    async def _ask(self, session: _DotSession, packet: bytes, question: bytes, deadline: float) -> bytes:
        if len(session.pending) >= MAX_PENDING:
            raise UpstreamError("network", f"{MAX_PENDING} queries in flight already")
        if session.writer.is_closing():
            raise SessionClosed("the connection is closing")
        qid = secrets.randbits(16)
        while qid in session.pending:
            qid = secrets.randbits(16)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        session.pending[qid] = (future, question)
        try:
            session.writer.write(struct.pack("!HH", len(packet), qid) + packet[2:])
            try:
                async with asyncio.timeout_at(deadline):
                    data = await future
            except TimeoutError:
                raise UpstreamError("timeout", "no answer in time") from None
        finally:
            session.pending.pop(qid, None)
        return packet[:2] + data[2:]

    async def _read(self, session: _DotSession) -> None:
        reader = session.reader
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout):
                    head = await reader.readexactly(2)
            except TimeoutError:
                if session.pending:
                    continue
                return  # idle: closed by `_drop`
            data = await reader.readexactly(struct.unpack("!H", head)[0])
            header = wire.response_header(data)
            entry = session.pending.get(header[0]) if header is not None else None
            if (
                header is None
                or entry is None
                or not header[1] & wire.QR
                or entry[0].done()
                or not wire.question_matches(data, entry[1])
            ):
                session.mismatches += 1  # late (its query timed out) or not ours
                continue
            entry[0].set_result(data)
