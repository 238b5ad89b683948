"""One worker's socket pair: length-prefixed pickled (kind, payload) messages, both ways.

Pickle is safe here: both ends are filterd, the same user, on a socket pair nobody else holds (a worker's end is
passed to it at spawn, never bound to a path).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
import struct
from typing import Any

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
#: A message longer than this is a bug or a corrupt stream: the channel is closed instead of allocating it.
MAX_MESSAGE = 64 << 20


class ChannelError(Exception):
    pass


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    def send(self, kind: str, payload: Any = None) -> None:
        """Queue one message (never blocks; `backlog` says how much is waiting for the other end)."""
        if self._writer.is_closing():
            return
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)) + data)

    def backlog(self) -> int:
        """Bytes written and not yet taken by the other end."""
        return self._writer.transport.get_write_buffer_size()

    async def receive(self) -> tuple[str, Any] | None:
        """The next message; None once the other end has closed (or died), or sent what is not a message (a bug:
        the channel is then closed, as if it had died)."""
        try:
            (length,) = _LENGTH.unpack(await self._reader.readexactly(_LENGTH.size))
            if length > MAX_MESSAGE:
                raise ChannelError(f"a message of {length} bytes")
            kind, payload = pickle.loads(await self._reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        except (ChannelError, pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
            log.error("workers: a broken message on a worker's channel (%s); closing it", exc)
            self.close()
            return None
        return str(kind), payload

    def close(self) -> None:
        self._writer.close()
