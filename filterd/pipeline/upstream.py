"""UpstreamResolver: the end of the chain; forwards a query to the upstreams in order and relays the answer.

Each exchange uses a fresh random ID on one of the upstream's kept sockets, each on its own random source port
and retired after a few hundred queries (`filterd/upstreams/udp.py`); a reply whose ID or question does not
match is ignored and we keep listening until the deadline (RFC 5452). On a timeout,
SERVFAIL, REFUSED, network error or a reply `parse_response` cannot read (counted as `mismatch`) the next
upstream is tried; all of them share one `dns.timeout`.
Identical queries in flight are merged into one upstream exchange (RFC 5452 section 5). Queries under a
`dns.forward_zones` zone go to that zone's upstreams. An upstream that keeps timing out is skipped until a
probe shows it alive again (`UpstreamHealth`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from filterd.config.schema import EncryptedUpstream, Endpoint
from filterd.dns import wire
from filterd.dns.response import Response, parse_response, render, upstream_query
from filterd.metrics import Metrics
from filterd.pipeline.base import SERVFAIL_REASON, Answer, Decision, Query
from filterd.pipeline.upstream_health import UpstreamHealth
from filterd.upstreams.errors import UpstreamError
from filterd.upstreams.pool import EncryptedUpstreams
from filterd.upstreams.udp import UdpPool

__all__ = ["UpstreamError", "UpstreamResolver", "exchange_tcp", "exchange_udp", "upstreams_for"]

log = logging.getLogger(__name__)

MergeKey = tuple[str, int, int, bool, bool]


def _with_id(packet: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + packet[2:]


async def exchange_udp(upstream: Endpoint, packet: bytes, question: bytes, timeout: float) -> tuple[bytes, int]:
    """One query on a socket of its own (a fresh random port), for the few exchanges outside a resolver (the
    list hosts' lookups, a probe with no resolver): a pool of one socket, used once (`upstreams/udp.py`, which
    matches the reply). Returns (response, mismatched replies ignored). Raises UpstreamError."""
    pool = UdpPool(upstream.host, upstream.port, sockets=1, uses=1)
    try:
        return await pool.exchange(packet, question, timeout), pool.mismatches
    finally:
        pool.close()


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


def upstreams_for(
    qname: str, zones: Mapping[str, tuple[Endpoint, ...]], default: tuple[Endpoint, ...]
) -> tuple[Endpoint, ...]:
    """The zone's upstreams for a name under a forward zone (the longest zone wins), else the defaults."""
    if zones:
        name = qname
        while True:
            found = zones.get(name)
            if found is not None:
                return found
            if not name:
                break
            dot = name.find(".")
            name = name[dot + 1 :] if dot >= 0 else ""
    return default


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one forwarding attempt across the upstreams gave: a response, or the kinds of failure."""

    response: Response | None
    upstream: str
    failures: tuple[str, ...]


class UpstreamResolver:
    name = "upstream"

    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        timeout: float,
        metrics: Metrics,
        zones: Mapping[str, Sequence[Endpoint]] | None = None,
        health: UpstreamHealth | None = None,
        encrypted: EncryptedUpstreams | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = tuple(upstreams)
        self.zones = {zone: tuple(eps) for zone, eps in (zones or {}).items()}
        self.timeout = timeout
        self.metrics = metrics
        every = {*self.upstreams, *(ep for eps in self.zones.values() for ep in eps)}
        self.health = health if health is not None else UpstreamHealth(sorted(every, key=str), metrics)
        #: The DoT and DoH clients of the `tls://` and `https://` upstreams (`filterd/upstreams/`).
        self.encrypted = encrypted
        if encrypted is None and any(isinstance(ep, EncryptedUpstream) for ep in every):
            raise ValueError("encrypted upstreams need their clients (EncryptedUpstreams)")
        self.health.probe = self.exchange
        self._inflight: dict[MergeKey, asyncio.Future[_Outcome]] = {}
        #: The kept UDP sockets of each plain upstream (`filterd/upstreams/udp.py`), made at first use.
        self._pools: dict[Endpoint, UdpPool] = {}
        #: Each upstream's latency histogram (a `labels()` lookup costs more than the observation)
        self._durations: dict[str, Any] = {}

    def upstreams_for(self, qname: str) -> tuple[Endpoint, ...]:
        return upstreams_for(qname, self.zones, self.upstreams)

    async def resolve(self, query: Query) -> Answer:
        q = query.question
        key = (q.qname, q.qtype, q.qclass, q.edns is not None and q.edns.do, bool(q.flags & wire.CD))
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._inflight[key] = pending
            try:
                outcome = await self._forward(q)
                pending.set_result(outcome)
            except BaseException as exc:
                pending.set_exception(exc)
                pending.exception()  # mark retrieved: the waiters below get it too
                raise
            finally:
                del self._inflight[key]
        else:
            outcome = await asyncio.shield(pending)  # the same question already on its way: its answer
        if outcome.response is not None:
            return Answer(render(outcome.response, q), Decision.FORWARDED, outcome.upstream, outcome.response)
        kinds = outcome.failures
        network_only = bool(kinds) and all(k == "network" for k in kinds)
        code = wire.EDE_NETWORK_ERROR if network_only else wire.EDE_NO_REACHABLE_AUTHORITY
        text = f"filterd: no upstream answered ({', '.join(sorted(set(kinds))) or 'timeout'})"
        reason = SERVFAIL_REASON if kinds and all(k == "servfail" for k in kinds) else "upstreams failed"
        return Answer(wire.build_reply(q, wire.SERVFAIL, ede=(code, text)), Decision.ERROR, reason)

    async def _forward(self, q: wire.Question) -> _Outcome:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        packet = upstream_query(q, 0)
        candidates = self.health.order(self.upstreams_for(q.qname))
        failures: list[str] = []
        for index, upstream in enumerate(candidates):
            remaining = deadline - loop.time()
            if remaining <= 0.001:
                break
            share = remaining / (len(candidates) - index)
            label = str(upstream)
            started = time.perf_counter()
            try:
                response = await self._exchange(upstream, packet, q.question, share)
            except UpstreamError as exc:
                failures.append(exc.kind)
                self.metrics.upstream_errors.labels(upstream=label, kind=exc.kind).inc()
                self.health.failed(upstream, exc.kind)
                log.debug("upstream %s failed for %s: %s", label, q.qname, exc)
                continue
            self.health.succeeded(upstream, time.perf_counter() - started)
            if response.rcode in (wire.SERVFAIL, wire.REFUSED):
                kind = "servfail" if response.rcode == wire.SERVFAIL else "refused"
                failures.append(kind)
                self.metrics.upstream_errors.labels(upstream=label, kind=kind).inc()
                continue
            duration = self._durations.get(label)
            if duration is None:
                duration = self._durations[label] = self.metrics.upstream_duration.labels(upstream=label)
            duration.observe(time.perf_counter() - started)
            return _Outcome(response, label, ())
        return _Outcome(None, "", tuple(failures))

    async def _exchange(self, upstream: Endpoint, packet: bytes, question: bytes, timeout: float) -> Response:
        try:
            return parse_response(await self.exchange(upstream, packet, question, timeout), len(question))
        except wire.WireError as exc:
            raise UpstreamError("mismatch", f"unreadable response: {exc.reason}") from None

    async def exchange(self, upstream: Endpoint, packet: bytes, question: bytes, timeout: float) -> bytes:
        """One query to one upstream over its transport: UDP (TCP when truncated), or DoT/DoH; raw reply bytes."""
        if isinstance(upstream, EncryptedUpstream):
            assert self.encrypted is not None  # checked in __init__
            return await self.encrypted.exchange(upstream, packet, question, timeout)
        loop = asyncio.get_running_loop()
        started = loop.time()
        pool = self._pools.get(upstream)
        if pool is None:
            pool = self._pools[upstream] = UdpPool(upstream.host, upstream.port)
        try:
            data = await pool.exchange(packet, question, timeout)
        finally:
            if pool.mismatches != pool.reported:
                new, pool.reported = pool.mismatches - pool.reported, pool.mismatches
                self.metrics.upstream_errors.labels(upstream=str(upstream), kind="mismatch").inc(new)
        if data[2] & 0x02:  # TC: the answer did not fit; ask again over TCP
            left = timeout - (loop.time() - started)
            data = await exchange_tcp(upstream, packet, question, max(left, 0.05))
        return data

    async def start(self) -> None:
        self.health.start()

    async def stop(self) -> None:
        await self.health.stop()
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self.encrypted is not None:
            await self.encrypted.close()
