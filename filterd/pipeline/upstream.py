"""UpstreamResolver: the end of the chain; forwards a query to the upstreams in order and relays the answer.

Each exchange uses a fresh random ID and a fresh socket (so a fresh random source port); a reply whose ID or
question does not match is ignored and we keep listening until the deadline (RFC 5452). On a timeout,
SERVFAIL, REFUSED or network error the next upstream is tried; all of them share one `dns.timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Sequence

from filterd.config.schema import Endpoint
from filterd.dns import wire
from filterd.metrics import Metrics
from filterd.pipeline.base import Answer, Decision, Query

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """One failed exchange; `kind` is the label of filterd_upstream_errors_total."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class _UdpExchange(asyncio.DatagramProtocol):
    def __init__(self, qid: int, question: bytes, on_mismatch: asyncio.Handle | None = None) -> None:
        self.qid = qid
        self.question = question
        self.future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.mismatches = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        if self.future.done():
            return
        header = wire.response_header(data)
        if (
            header is None
            or header[0] != self.qid
            or not header[1] & wire.QR
            or not wire.question_matches(data, self.question)
        ):
            self.mismatches += 1  # spoofed or stale: ignore it and keep listening
            return
        self.future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError("network", str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.future.done():
            self.future.set_exception(UpstreamError("network", str(exc or "connection closed")))


def _with_id(packet: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + packet[2:]


async def exchange_udp(upstream: Endpoint, packet: bytes, question: bytes, timeout: float) -> tuple[bytes, int]:
    """Send one query; return (response, mismatched replies ignored). Raises UpstreamError."""
    loop = asyncio.get_running_loop()
    qid = secrets.randbits(16)
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _UdpExchange(qid, question), remote_addr=(upstream.host, upstream.port)
        )
    except OSError as exc:
        raise UpstreamError("network", str(exc)) from None
    try:
        transport.sendto(_with_id(packet, qid))
        try:
            return await asyncio.wait_for(asyncio.shield(protocol.future), timeout), protocol.mismatches
        except TimeoutError:
            kind = "mismatch" if protocol.mismatches else "timeout"
            raise UpstreamError(kind, f"no matching answer within {timeout:.2f}s") from None
    finally:
        transport.close()


async def exchange_tcp(upstream: Endpoint, packet: bytes, question: bytes, timeout: float) -> bytes:
    """The same over TCP (RFC 7766), for answers too large for UDP."""
    qid = secrets.randbits(16)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
            try:
                writer.write(struct.pack("!H", len(packet)) + _with_id(packet, qid))
                await writer.drain()
                while True:
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(length)
                    header = wire.response_header(data)
                    if header and header[0] == qid and header[1] & wire.QR and wire.question_matches(data, question):
                        return data
            finally:
                writer.close()
    except TimeoutError:
        raise UpstreamError("timeout", f"no TCP answer within {timeout:.2f}s") from None
    except (OSError, asyncio.IncompleteReadError) as exc:
        raise UpstreamError("network", f"TCP: {exc}") from None


class UpstreamResolver:
    name = "upstream"

    def __init__(self, upstreams: Sequence[Endpoint], timeout: float, metrics: Metrics) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = tuple(upstreams)
        self.timeout = timeout
        self.metrics = metrics

    async def resolve(self, query: Query) -> Answer:
        q = query.question
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        kinds: list[str] = []
        for index, upstream in enumerate(self.upstreams):
            remaining = deadline - loop.time()
            if remaining <= 0.001:
                break
            share = remaining / (len(self.upstreams) - index)
            label = str(upstream)
            started = time.perf_counter()
            try:
                response = await self._exchange(upstream, query.raw, q.question, share)
            except UpstreamError as exc:
                kinds.append(exc.kind)
                self.metrics.upstream_errors.labels(upstream=label, kind=exc.kind).inc()
                log.debug("upstream %s failed for %s: %s", label, q.qname, exc)
                continue
            rcode = response[3] & 0xF
            if rcode in (wire.SERVFAIL, wire.REFUSED):
                kind = "servfail" if rcode == wire.SERVFAIL else "refused"
                kinds.append(kind)
                self.metrics.upstream_errors.labels(upstream=label, kind=kind).inc()
                continue
            self.metrics.upstream_duration.labels(upstream=label).observe(time.perf_counter() - started)
            return Answer(wire.with_id_and_question(response, q.id, q.question), Decision.FORWARDED, label)
        network_only = bool(kinds) and all(k == "network" for k in kinds)
        code = wire.EDE_NETWORK_ERROR if network_only else wire.EDE_NO_REACHABLE_AUTHORITY
        text = f"filterd: no upstream answered ({', '.join(sorted(set(kinds))) or 'timeout'})"
        return Answer(wire.build_reply(q, wire.SERVFAIL, ede=(code, text)), Decision.ERROR, "upstreams failed")

    async def _exchange(self, upstream: Endpoint, packet: bytes, question: bytes, timeout: float) -> bytes:
        started = asyncio.get_running_loop().time()
        response, mismatches = await exchange_udp(upstream, packet, question, timeout)
        if mismatches:
            self.metrics.upstream_errors.labels(upstream=str(upstream), kind="mismatch").inc(mismatches)
        if response[2] & 0x02:  # TC: the answer did not fit; ask again over TCP
            left = timeout - (asyncio.get_running_loop().time() - started)
            response = await exchange_tcp(upstream, packet, question, max(left, 0.05))
        return response
