"""RateLimitStage: a token bucket per client network for UDP, DNS over TLS and DNS over HTTPS queries; over it, a
UDP query gets a TC=1 reply some of the time (slip), else nothing, and a DoT or DoH query gets REFUSED (its client
cannot retry over anything cheaper, and a DoH stream must be answered).

The bucket is per /24 (IPv4) or /56 (IPv6), not per address, so one device cannot dodge it by hopping addresses
and a whole household behind one NAT shares one generous bucket (the default is far above what a busy household
or classroom asks: docs/pipeline.md says how it was measured). Over the rate, every `slip`-th query gets an empty
TC=1 reply (as BIND's RRL): a real client behind a flooding neighbour retries over TCP, which is never limited
here (a TCP client cannot spoof its address, and TCP has its own per-client bounds in `transport/tcp.py`); the
others are dropped (`Decision.DROPPED`: the transport sends nothing). Loopback and `ratelimit.exempt` are never
limited. The clock is injected, so unit tests control time.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Sequence

from filterd.config.schema import IPNetwork, RateLimitConfig
from filterd.dns import wire
from filterd.metrics import RateLimitCounter
from filterd.pipeline.base import Answer, Decision, PassThrough, Query

_MEMO_LIMIT = 4096
#: The protocols a bucket limits: plain TCP is bounded per connection and is where a slipped UDP client retries;
#: DoT and DoH are what managed devices use for every query, so "the same limits" (issue 18) includes the rate.
LIMITED = frozenset({"udp", "tls", "https"})
#: Buckets kept at most; past it the full (idle) ones go, then the oldest quarter (state lost: they start full).
MAX_BUCKETS = 65536
_EXEMPT = -1


class Bucket:
    __slots__ = ("excess", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        #: Queries over the rate so far: every slip-th of them is slipped.
        self.excess = 0


class TokenBuckets:
    """Token buckets by key: `qps` tokens a second, at most `burst` held; a query takes one."""

    def __init__(
        self, qps: float, burst: float, clock: Callable[[], float] = time.monotonic, limit: int = MAX_BUCKETS
    ) -> None:
        self.qps = qps
        self.burst = max(burst, 1.0)
        self.clock = clock
        self.limit = limit
        self.buckets: dict[int, Bucket] = {}

    def take(self, key: int) -> Bucket | None:
        """None when the key may send this query now; else its bucket (over the rate)."""
        now = self.clock()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.limit:
                self._shed(now)
            self.buckets[key] = Bucket(self.burst - 1.0, now)
            return None
        tokens = bucket.tokens + (now - bucket.stamp) * self.qps
        bucket.stamp = now
        if tokens >= 1.0:
            bucket.tokens = min(tokens, self.burst) - 1.0
            return None
        bucket.tokens = tokens
        bucket.excess += 1
        return bucket

    def _shed(self, now: float) -> None:
        """Make room: a full bucket holds nothing a new one would not; if too few are full, the oldest go too."""
        refill = self.burst / self.qps if self.qps > 0 else float("inf")
        full = [key for key, b in self.buckets.items() if now - b.stamp >= refill]
        for key in full:
            del self.buckets[key]
        if len(self.buckets) > self.limit * 3 // 4:
            for key in list(self.buckets)[: len(self.buckets) - self.limit * 3 // 4]:
                del self.buckets[key]


def network_key(client_ip: str, exempt: Sequence[IPNetwork]) -> int:
    """The bucket of a client address: its /24 (IPv4, also IPv4-mapped IPv6) or /56 (IPv6) as one number,
    or _EXEMPT."""
    address = ipaddress.ip_address(client_ip.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in exempt):
        return _EXEMPT
    if isinstance(address, ipaddress.IPv4Address):
        return int(address) >> 8
    return (1 << 56) | (int(address) >> 72)


class RateLimitStage(PassThrough):
    name = "ratelimit"

    def __init__(
        self,
        config: RateLimitConfig,
        counts: RateLimitCounter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.exempt = tuple(config.exempt)
        self.slip = config.slip
        self.counts = counts if counts is not None else RateLimitCounter()
        self.buckets = TokenBuckets(config.qps, config.burst, clock)
        self._memo: dict[str, int] = {}

    def key_of(self, client_ip: str) -> int:
        key = self._memo.get(client_ip)
        if key is None:
            key = network_key(client_ip, self.exempt)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo = {}
            self._memo[client_ip] = key
        return key

    def answer_now(self, query: Query) -> Answer | None:
        if query.protocol not in LIMITED:
            return None  # plain TCP: the transport bounds it, and it is where a slipped UDP client retries
        key = self.key_of(query.client_ip)
        if key == _EXEMPT:
            return None
        bucket = self.buckets.take(key)
        if bucket is None:
            return None
        if query.protocol != "udp":
            self.counts.refused += 1
            q = query.question
            return Answer(wire.build_reply(q, wire.REFUSED), Decision.RATELIMITED, "refused")
        if self.slip and bucket.excess % self.slip == 0:
            self.counts.slipped += 1
            q = query.question
            return Answer(wire.truncate(wire.build_reply(q), len(q.question), q.edns), Decision.RATELIMITED, "slip")
        self.counts.dropped += 1
        return Answer(b"", Decision.DROPPED, "rate limited")
