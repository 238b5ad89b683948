"""A worker's channel (`filterd/workers/channel.py`): messages both ways over a socket pair; a closed, truncated or
broken stream ends it (None), never an exception in the reader that would leave a worker unwatched."""

from __future__ import annotations

import asyncio
import socket
import struct

from filterd.workers.channel import MAX_MESSAGE, Channel


async def _pair() -> tuple[Channel, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return await Channel.open(ours), theirs


def test_messages_go_both_ways_in_order() -> None:
    async def run() -> None:
        a_sock, b_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a, b = await Channel.open(a_sock), await Channel.open(b_sock)
        rows = [("127.0.0.1", ("", "omegle.com", "A", "blocked", "chat-roulette", "video"), 1.0, 0.0)] * 1000
        a.send("rows", (rows, 3))
        a.send("metrics", 7)
        assert await b.receive() == ("rows", (rows, 3))
        assert await b.receive() == ("metrics", 7)
        b.send("stop")
        assert await a.receive() == ("stop", None)
        a.close()
        assert await b.receive() is None  # the other end closed

    asyncio.run(run())


def test_a_truncated_or_broken_stream_ends_the_channel() -> None:
    async def run() -> None:
        for raw in (
            struct.pack(">I", 100) + b"short",  # the writer died mid-message
            struct.pack(">I", 5) + b"\x00\x01\x02\x03\x04",  # not a pickle
            struct.pack(">I", MAX_MESSAGE + 1),  # a length no message has
        ):
            channel, theirs = await _pair()
            theirs.sendall(raw)
            theirs.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(channel.receive(), 5) is None, raw[:8]
            theirs.close()
            channel.close()

    asyncio.run(run())
