"""CacheStage: answers repeated questions from memory, synchronously, with TTLs counting down.

Keyed by (name, type, class, DO, CD, client group); names are lower-cased, and each client gets its own question bytes
back (0x20 case randomisation still matches). Positive answers live for their smallest TTL, negative ones
for the SOA's (RFC 2308; none without an SOA), SERVFAIL at most 5 s (RFC 9520); TC, FORMERR and REFUSED are
never stored. All TTLs are clamped to [min_ttl, max_ttl]. Least recently used entries are evicted.
When every upstream fails, an expired entry younger than `stale_max` is served with TTL 30 and EDE 3
(RFC 8767).

Sits before policy, so a cache hit (most queries on a home network) costs no list lookup. That is safe because
only answers that passed policy and the CNAME check are ever stored, and every change to the lists or the
local entries clears the cache, including answers still on their way from before the change (`generation`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from filterd.dns import wire
from filterd.dns.response import Response, cache_ttl, render
from filterd.groups.model import Group
from filterd.pipeline.base import SERVFAIL_REASON, Answer, CallNext, Decision, PassThrough, Query

#: (name, type, class, DO, CD, the client's group index: 0 for no group). A group sees only answers that passed
#: its own rules; a schedule opening or closing clears the cache (the policy's on_change).
CacheKey = tuple[str, int, int, bool, bool, int]
STALE_TTL = 30
SERVFAIL_TTL = 5


def cache_key(q: wire.Question, group: Group | None = None) -> CacheKey:
    return (
        q.qname,
        q.qtype,
        q.qclass,
        q.edns is not None and q.edns.do,
        bool(q.flags & wire.CD),
        0 if group is None else group.index,
    )


@dataclass(slots=True)
class CacheEntry:
    response: Response
    stored: float
    ttl: int
    upstream: str


class DnsCache:
    """A bounded LRU map from question to response, on an injected clock (seconds, monotonic)."""

    def __init__(
        self, size: int, min_ttl: int, max_ttl: int, stale_max: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.stale_max = stale_max
        self.clock = clock
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        #: questions whose upstreams all answered SERVFAIL, until when (RFC 9520: briefly, here 5 s)
        self._failures: OrderedDict[CacheKey, float] = OrderedDict()
        self.hits = 0
        self.misses = 0
        #: Bumped by clear(): a query that started before the lists changed must not fill the new cache.
        self.generation = 0
        self.stale = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget everything; an answer still on its way from before the clear is not stored either."""
        self.generation += 1
        self._entries.clear()
        self._failures.clear()

    def failed(self, key: CacheKey) -> None:
        """Remember that resolving this question failed with SERVFAIL, for at most 5 seconds."""
        if self.size <= 0:
            return
        self._failures[key] = self.clock() + min(SERVFAIL_TTL, self.max_ttl)
        self._failures.move_to_end(key)
        while len(self._failures) > max(self.size // 10, 16):
            self._failures.popitem(last=False)

    def recently_failed(self, key: CacheKey) -> bool:
        until = self._failures.get(key)
        if until is None:
            return False
        if self.clock() >= until:
            del self._failures[key]
            return False
        return True

    def get(self, key: CacheKey) -> tuple[CacheEntry, int] | None:
        """A fresh entry and its age in whole seconds, or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored
        if age >= entry.ttl:
            if age >= entry.ttl + self.stale_max:
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry, int(age)

    def get_stale(self, key: CacheKey) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.stored >= entry.ttl + self.stale_max:
            return None
        return entry

    def put(self, key: CacheKey, response: Response, upstream: str) -> bool:
        ttl = cache_ttl(response, self.min_ttl, self.max_ttl)
        if ttl is None or ttl <= 0 or self.size <= 0:
            return False
        self._entries[key] = CacheEntry(response, self.clock(), ttl, upstream)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return True


class CacheStage(PassThrough):
    name = "cache"

    def __init__(self, cache: DnsCache) -> None:
        self.cache = cache

    def answer_now(self, query: Query) -> Answer | None:
        cache = self.cache
        key = cache_key(query.question, query.group)
        found = cache.get(key)
        if found is None:
            if cache.recently_failed(key):
                cache.hits += 1
                return self._failure(query, key)
            return None  # (a miss is counted in handle: a blocked name is not a cache miss)
        cache.hits += 1
        entry, age = found
        wire_reply = render(entry.response, query.question, age=age, min_ttl=cache.min_ttl, max_ttl=cache.max_ttl)
        return Answer(wire_reply, Decision.CACHED, entry.upstream)

    async def handle(self, query: Query, call_next: CallNext) -> Answer:
        cache = self.cache
        cache.misses += 1
        generation = cache.generation
        answer = await call_next(query)
        key = cache_key(query.question, query.group)
        if answer.decision is Decision.FORWARDED and answer.response is not None:
            if generation != cache.generation:
                return answer  # the lists changed while this was forwarded: it passed the old ones only
            if cache.put(key, answer.response, answer.reason) and (cache.min_ttl > 0 or cache.max_ttl < 86400):
                reply = render(answer.response, query.question, min_ttl=cache.min_ttl, max_ttl=cache.max_ttl)
                return Answer(reply, answer.decision, answer.reason, answer.response)
        elif answer.decision is Decision.ERROR:
            if answer.reason == SERVFAIL_REASON:
                cache.failed(key)
            return self._stale(query, key) or answer
        return answer

    def _stale(self, query: Query, key: CacheKey) -> Answer | None:
        entry = self.cache.get_stale(key)
        if entry is None:
            return None
        self.cache.stale += 1
        ede = (wire.EDE_STALE, "filterd: stale answer, upstreams unreachable")
        reply = render(entry.response, query.question, ttl_override=STALE_TTL, ede=ede)
        return Answer(reply, Decision.CACHED, f"stale from {entry.upstream}", entry.response)

    def _failure(self, query: Query, key: CacheKey) -> Answer:
        stale = self._stale(query, key)
        if stale is not None:
            return stale
        ede = (wire.EDE_NO_REACHABLE_AUTHORITY, "filterd: upstreams answered SERVFAIL (cached for 5 s)")
        return Answer(wire.build_reply(query.question, wire.SERVFAIL, ede=ede), Decision.ERROR, SERVFAIL_REASON)
