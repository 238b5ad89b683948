"""DNS over HTTPS served to clients (RFC 8484): `/dns-query`, GET (`?dns=` base64url) and POST
(application/dns-message), HTTP/2 and HTTP/1.1, on hypercorn's protocol stack (h2 and h11, sans-IO) over
filterd's own TLS listener. The query goes to the same `QueryHandler` as UDP and TCP, with the TLS peer's address
as the client, so `dns.allow_clients`, groups, the query log and the alerts apply as on port 53.

`doh_query` (pure) turns a request into the DNS query or the reason it is refused: bad base64, a body over 65,535
bytes, a wrong content type or a packet too short for a DNS header get 400 (the issue's contract), an unknown path
404, another method 405. Nothing a client sends makes the server fail.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import struct
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from filterd.dns import wire
from filterd.transport.handler import QueryHandler

log = logging.getLogger(__name__)

PATH = "/dns-query"
MEDIA_TYPE = "application/dns-message"
MAX_QUERY = 65535  # a DNS message's largest size (RFC 8484 6)
DRAIN_MAX = 1 << 20  # an oversized body is read (and dropped) up to this much before the 400

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class Activity:
    """One DoH connection: when it last answered (loop time), and how many of its queries are being resolved. A
    connection that answers nothing for the idle timeout and resolves nothing is closed (`transport/encrypted.py`):
    a request trickled in a byte at a time must not hold a connection for ever."""

    last: float
    busy: int = 0


@dataclass(frozen=True, slots=True)
class DohRefusal:
    status: int
    reason: str


def doh_query(method: str, path: str, query_string: bytes, content_type: str, body: bytes) -> bytes | DohRefusal:
    """The DNS query a DoH request carries, or why it is refused (status and a short reason)."""
    if path != PATH:
        return DohRefusal(404, f"not found: DNS over HTTPS is at {PATH}")
    if method == "GET":
        params = urllib.parse.parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
        values = params.get("dns")
        if not values or len(values) != 1:
            return DohRefusal(400, "GET needs one dns= parameter (base64url, RFC 8484)")
        text = values[0]
        if len(text) > (MAX_QUERY * 4) // 3 + 4:
            return DohRefusal(400, "the dns= parameter is too long")
        try:
            packet = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            return DohRefusal(400, "the dns= parameter is not base64url")
        if "=" in text.rstrip("=") or not all(c.isalnum() or c in "-_=" for c in text):
            return DohRefusal(400, "the dns= parameter is not base64url")
    elif method == "POST":
        if content_type.split(";")[0].strip().lower() != MEDIA_TYPE:
            return DohRefusal(400, f"POST needs Content-Type: {MEDIA_TYPE}")
        if len(body) > MAX_QUERY:
            return DohRefusal(400, f"the body is larger than {MAX_QUERY} bytes")
        packet = body
    else:
        return DohRefusal(405, "only GET and POST")
    if len(packet) < 12:
        return DohRefusal(400, "not a DNS message (shorter than a header)")
    if packet[2] & 0x80:
        return DohRefusal(400, "not a DNS query (QR is set)")
    return packet


def min_ttl(reply: bytes) -> int | None:
    """The smallest TTL in the reply's answer and authority sections (Cache-Control's max-age, RFC 8484 5.1), or
    None when there is none or the reply cannot be read."""
    try:
        qdcount, ancount, nscount = struct.unpack_from("!HHH", reply, 4)
        pos = 12
        for _ in range(qdcount):
            pos = wire.read_name(reply, pos)[1] + 4
        ttls = []
        for _ in range(ancount + nscount):
            pos = wire.read_name(reply, pos)[1]
            ttl, rdlength = struct.unpack_from("!IH", reply, pos + 4)
            ttls.append(ttl)
            pos += 10 + rdlength
    except (wire.WireError, struct.error):
        return None
    return min(ttls) if ttls else None


class DohApp:
    """The ASGI application: one DNS query per request, to the running QueryHandler (a reload swaps its pipeline,
    not the handler)."""

    def __init__(self, handler: QueryHandler, activity: dict[tuple[str, int], Activity] | None = None) -> None:
        self.handler = handler
        #: The open connections' activity, by client address and port (hypercorn's `scope["client"]`).
        self.activity = activity if activity is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        # The body first, whatever the method: hypercorn's HTTP/2 stack fails the connection when a stream's data
        # arrives after its response.
        body, too_big = await _read_body(receive, MAX_QUERY)
        client = scope.get("client") or ("0.0.0.0", 0)
        activity = self.activity.get((client[0], client[1]))
        if activity is None:
            await self._answer(scope, send, headers, body, too_big)
            return
        activity.busy += 1
        try:
            await self._answer(scope, send, headers, body, too_big)
        finally:
            activity.busy -= 1
            activity.last = asyncio.get_running_loop().time()

    async def _answer(self, scope: Scope, send: Send, headers: dict[str, str], body: bytes, too_big: bool) -> None:
        if too_big:
            await _respond(send, 400, f"the body is larger than {MAX_QUERY} bytes\n".encode(), "text/plain")
            return
        content_type = headers.get("content-type", "")
        got = doh_query(scope["method"], scope["path"], scope.get("query_string", b""), content_type, body)
        if isinstance(got, DohRefusal):
            extra = [(b"allow", b"GET, POST")] if got.status == 405 else []
            await _respond(send, got.status, got.reason.encode() + b"\n", "text/plain; charset=utf-8", extra)
            return
        client = scope.get("client") or ("0.0.0.0", 0)
        result = self.handler.handle(got, client[0], "https")
        reply = result if result is None or isinstance(result, bytes) else await result
        if reply is None:  # dropped by the handler (unparseable as a query): nothing to answer with
            await _respond(send, 400, b"not a DNS query\n", "text/plain; charset=utf-8")
            return
        ttl = min_ttl(reply)
        cache = f"max-age={ttl}" if ttl is not None else "no-store"
        await _respond(send, 200, reply, MEDIA_TYPE, [(b"cache-control", cache.encode())])


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The request body, or (b"", True) when it is larger than `limit`: the rest is read and dropped, up to
    DRAIN_MAX bytes (never held), so the answer does not race the client's upload."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts), size > limit
        chunk = message.get("body", b"")
        size += len(chunk)
        if size <= limit:
            parts.append(chunk)
        else:
            parts.clear()
        if not message.get("more_body", False) or size > DRAIN_MAX:
            return (b"", True) if size > limit else (b"".join(parts), False)


async def _respond(
    send: Send, status: int, body: bytes, content_type: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
