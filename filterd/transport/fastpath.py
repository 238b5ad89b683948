"""PacketCache: repeated queries answered from their bytes, before any parse or stage (PowerDNS's packet cache).

The key is the query from offset 2 (flags, counts, question, EDNS) with the question name case-folded and the
client's group index in front; the value is the finished reply. A hit copies the client's ID and question bytes
(0x20 case) into it and returns it: no `wire.parse_query`, no `Query`, no stage. Only two kinds of answer are
kept, both computed by the slow path first:

- blocked (bypass signals and list blocks): the reply for a name never changes until the lists do;
- fresh cache hits: the cached response as rendered for the client, its TTL offsets precomputed; the TTLs are
  rewritten in place when the answer's age in whole seconds changes (at most once a second) and an entry is
  dropped the moment its `DnsCache` entry expires, so it is never served past its TTL (stale answers, SERVFAIL
  and everything else always take the slow path, with its rules).

On a miss, `quick` reads the question of a usual query from the bytes the key walked and lets the policy decide
at once: a name the lists block is answered there, without the full parse or the stages that cannot answer for
it (docs/pipeline.md: "The quick check of a new name").

What the slow path guarantees still holds:

- Access and rate limiting run first: a client outside `allow_clients` never gets a fast answer, and a UDP
  client over its rate goes to the slow path, which slips or drops it; a hit takes a token from its bucket.
- The group is part of the key (the client stage's memoised lookup: one dict lookup a query).
- Invalidation: every change to the lists, the local entries, the allow list and the schedules calls
  `policy.changed`, which clears the `DnsCache` (`app.build_pipeline` wires it); its `generation` then moves and
  the packet cache is emptied before the next lookup. A new pipeline (a reload) gets a new packet cache.
- The EDNS fields that change the answer are in the key (the OPT's UDP size, version and DO bit; its options,
  which filterd never echoes, are left out so a client's padding or cookie does not defeat the cache). A reply
  is kept only when it fits the client's UDP size (so it is never one that must be cut to TC=1), which also
  makes it right for TCP.
- Metrics count each hit as the slow path did (decision, type, group; `filterd_cache_hits` for cache hits), and
  the query log and the safeguarding alerts (`QueryHandler.events`) are told of every hit, with the answer the
  slow path gave.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from filterd.blocklists.matcher import Match
from filterd.dns.response import Response
from filterd.dns.wire import DO_BIT, Edns, Question, name_text, read_name
from filterd.groups.model import Group
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Answer, Decision, Pipeline, Query
from filterd.pipeline.cache import CacheEntry, CacheStage, DnsCache, cache_key
from filterd.pipeline.client import ClientStage
from filterd.pipeline.policy import PolicyStage
from filterd.pipeline.ratelimit import LIMITED, RateLimitStage

_TTL = struct.Struct("!I")
_HH = struct.Struct("!HH")
_OPT_FIXED = struct.Struct("!HIH")  # the OPT's UDP size, TTL (extended rcode, version, DO), RDLENGTH
#: The packet cache holds at most this many replies (or the answer cache's size, if larger); the oldest go first.
MIN_SIZE = 1024
#: an = 0, ns = 0, ar = 1: a query whose only extra record is (at most) its OPT
_OPT_ONLY = b"\x00\x00\x00\x00\x00\x01"
_OPT_HEAD = b"\x00\x00\x29"  # root owner, type OPT
_NO_GROUP = b"\x00\x00"  # (`group_prefix(None)`)


def packet_key(data: bytes, group: bytes) -> tuple[bytes, int, int] | None:
    """The cache key of a query, the offset just past its question and the number of labels in its name (-1 when
    one is longer than 32 bytes), or None (not a query this cache can key: the slow path will say why). Label
    lengths are under 64, so `bytes.lower()` on the name changes only its letters. The key is the group (2 bytes),
    the header after the ID (10), then the name in wire form, lower case (`quick_question` reads it there)."""
    n = len(data)
    i = 12
    labels = 0
    while i < n:
        length = data[i]
        if length == 0:
            break
        if length > 32:  # (one comparison a label for both checks: a label this long is rare)
            if length > 63:
                return None  # a compression pointer or an unknown label type: the slow path answers FORMERR
            labels = -n  # (stays negative: fewer than n labels follow)
        i += length + 1
        labels += 1
    else:
        return None
    qend = i + 5  # the root label, QTYPE, QCLASS
    if qend > n:
        return None
    if labels < 0:
        labels = -1
    if n == qend:
        return b"".join((group, data[2:12], data[12:i].lower(), data[i:qend])), qend, labels
    extra = data[qend:]
    size = n - qend
    if data[6:12] == _OPT_ONLY and extra[:3] == _OPT_HEAD and size >= 11 and (extra[9] << 8 | extra[10]) == size - 11:
        extra = extra[:9]  # the OPT's fixed fields (UDP size, extended rcode, version, DO); not its options
    return b"".join((group, data[2:12], data[12:i].lower(), data[i:qend], extra)), qend, labels


_HEADER = struct.Struct("!6H")
#: The bytes a plain name's text may hold (`wire.name_text`: printable ASCII but the space and `\\`; the dots)
_PLAIN = bytes(range(0x21, 0x7F)).replace(b"\\", b"")
#: A name's wire form to its text: each label's length byte (1-32) made a dot; every other byte kept
_LENGTHS_TO_DOTS = bytes(46 if 0 < b <= 32 else b for b in range(256))
_NO_OPTIONS = b""
_new = tuple.__new__  # (a NamedTuple made from a tuple: no keyword handling, no defaults)


def quick_question(data: bytes, key: bytes, qend: int, labels: int) -> Question | None:
    """The question of a query `packet_key` keyed (`key`, `qend`, `labels`: what it returned), read as
    `wire.parse_query` reads it, when the query has the usual shape: a QUERY with one question, nothing else but
    an EDNS version 0 OPT, a name of at most 255 bytes. None for anything else: `wire.parse_query` then reads
    it, and answers or drops what is wrong with it."""
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0xF800 or qd != 1 or an or ns:  # QR and the opcode; the counts
        return None
    end = qend - 5  # the root label
    if end - 12 > 254:
        return None  # too long a name: FORMERR from the full parse
    size = len(data)
    if size == qend:
        if ar:
            return None
        edns = None
    else:
        if ar != 1 or data[qend : qend + 3] != _OPT_HEAD or size < qend + 11:
            return None
        udp_size, ttl, rdlength = _OPT_FIXED.unpack_from(data, qend + 3)
        if qend + 11 + rdlength != size or ttl & 0xFF0000:
            return None  # not the OPT alone; or an EDNS version other than 0 (BADVERS from the full parse)
        edns = _new(Edns, (udp_size, bool(ttl & DO_BIT), 0, data[qend + 11 :] if rdlength else _NO_OPTIONS))
    # The name's text: its wire form in lower case (the key's) with each label's length byte made a dot, the first
    # one then cut off. That is `wire.name_text` when every label is at most 32 bytes (its length byte a control
    # character) and holds only plain bytes, no dot: exactly one dot a label, nothing else to escape. Otherwise
    # that function writes it.
    text = key[12:end].translate(_LENGTHS_TO_DOTS)
    if text.count(46) != labels or text.translate(None, _PLAIN):
        qname = name_text(read_name(data, 12)[0])  # (`packet_key` checked it: no pointer, no overrun)
    else:
        qname = text[1:].decode("ascii")
    qtype, qclass = _HH.unpack_from(data, end + 1)
    return _new(Question, (qid, flags, qname, qtype, qclass, data[12:qend], edns, qend))


def _never_quiet(qname: str, qtype: int) -> bool:
    return False  # (a stage with no `quiet` of its own: every query takes the stages)


class Blocked(NamedTuple):
    """A new blocked name answered by `PacketCache.quick`: the reply, and what the count and the query log need."""

    reply: bytes
    question: Question
    match: Match
    group: Group | None


@dataclass(slots=True)
class Entry:
    """One finished reply: `head` (flags and counts) and `tail` (everything after the question) around the
    client's own ID and question."""

    head: bytes
    tail: bytes
    qend: int
    #: The slow path's question and answer (the query log, the alerts) and the metrics' labels.
    question: Question
    answer: Answer
    group: Group | None
    #: For a cache hit: its `DnsCache` entry, the TTL offsets in `tail`, the clamped TTLs, and the age in whole
    #: seconds `tail` was written for.
    cached: CacheEntry | None = None
    offsets: tuple[int, ...] = ()
    ttls: tuple[int, ...] = ()
    age: int = 0
    #: What the query log keeps of this answer (`events.log_tail`), made at the first hit that is logged.
    logged: tuple[str, str, str, str, str, str] | None = None
    #: Its key in `filterd_queries_total` (`QueryCounter.key`) for the protocol of its latest hit.
    counted: tuple[str, str, str, str] | None = None

    def refresh(self, age: int) -> None:
        out = bytearray(self.tail)
        for offset, ttl in zip(self.offsets, self.ttls, strict=True):
            _TTL.pack_into(out, offset, max(ttl - age, 0))
        self.tail = bytes(out)
        self.age = age


class PacketCache:
    """The packet cache of one pipeline; `QueryHandler` makes a new one when its pipeline is replaced."""

    def __init__(self, pipeline: Pipeline, cache: DnsCache, size: int | None = None) -> None:
        self.pipeline = pipeline
        self.cache = cache
        self.size = size if size is not None else max(cache.size, MIN_SIZE)
        self.generation = cache.generation
        #: Oldest first (an OrderedDict: a plain dict's first key is slow to find after many deletions at its front).
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.access: AccessStage | None = None
        self.ratelimit: RateLimitStage | None = None
        self.client: ClientStage | None = None
        #: The policy stage, and the `quiet` of the stages before it that this class does not stand in for (DDR,
        #: the bypass signals, the local names): `quick`'s checks.
        self.policy: PolicyStage | None = None
        checks = []
        for stage in pipeline.stages:
            if isinstance(stage, AccessStage):
                self.access = stage
            elif isinstance(stage, RateLimitStage):
                self.ratelimit = stage
            elif isinstance(stage, ClientStage):
                if stage.groups:
                    self.client = stage
            elif isinstance(stage, PolicyStage):
                self.policy = stage
                break
            elif not isinstance(stage, CacheStage):
                checks.append(getattr(stage, "quiet", _never_quiet))
        self._checks = tuple(checks)
        self._prefix: dict[int, bytes] = {}
        #: The keys of blocked answers given once lately (at most `size`, then forgotten together): a blocked reply
        #: is kept at its second answer, so a name asked once (most of a file of new names, every name of a
        #: random-subdomain flood) costs a set insert instead of an entry, and never pushes out replies that
        #: are asked again.
        self.once: set[bytes] = set()
        self.hits = 0
        #: Set by `lookup` when it keyed the query but had no answer: (key, question end, the client's group, the
        #: name's labels), for `quick` and `store`.
        self.missed: tuple[bytes, int, Group | None, int] | None = None

    @classmethod
    def of(cls, pipeline: Pipeline) -> PacketCache | None:
        """The packet cache for a pipeline, or None when it has no answer cache (whose generation says when the
        lists changed: without it nothing here could be invalidated)."""
        for stage in pipeline.stages:
            if isinstance(stage, CacheStage):
                return cls(pipeline, stage.cache)
        return None

    def group_prefix(self, group: Group | None) -> bytes:
        index = 0 if group is None else group.index
        prefix = self._prefix.get(index)
        if prefix is None:
            prefix = self._prefix[index] = index.to_bytes(2, "big")
        return prefix

    def lookup(self, data: bytes, client_ip: str, protocol: str) -> tuple[bytes, Entry] | None:
        """The reply for this query and the entry it came from, or None: ask the slow path (then `missed` says
        whether `store` may keep its answer)."""
        self.missed = None
        if self.generation != self.cache.generation:
            self.entries.clear()
            self.generation = self.cache.generation
        if self.access is not None and not self.access.allowed(client_ip):
            return None
        if self.client is None:
            group = None
            keyed = packet_key(data, _NO_GROUP)
        else:
            group = self.client.group_of(client_ip)
            keyed = packet_key(data, self.group_prefix(group))
        if keyed is None:
            return None
        key, qend, labels = keyed
        entry = self.entries.get(key)
        if entry is None or entry.group is not group:
            self.missed = key, qend, group, labels
            return None
        cached = entry.cached
        if cached is not None:
            age = self.cache.clock() - cached.stored
            if age >= cached.ttl:
                del self.entries[key]  # expired: the slow path fetches it again (or applies serve-stale's rules)
                self.missed = key, qend, group, labels
                return None
            if int(age) != entry.age:
                entry.refresh(int(age))
        if protocol in LIMITED and self.ratelimit is not None and not self._take(client_ip):
            return None  # over the rate: the slow path slips, drops or refuses it
        if cached is not None:
            self.cache.hits += 1
        self.hits += 1
        return b"".join((data[:2], entry.head, data[12 : entry.qend], entry.tail)), entry

    def quick(
        self, data: bytes, client_ip: str, protocol: str, logged: bool
    ) -> Blocked | tuple[Query, Answer | None] | None:
        """After `lookup` missed: the query read without the full parse, and the policy's decision made at once.

        - `Blocked`: a name the lists block, asked for the first time lately (most of a flood of new names): its
          reply is made here, from the question and the decision, without a `Query`, an `Answer` or any stage;
          `QueryHandler` only counts it and tells the query log.
        - (query, answer): the query read, for the stages to go on with; `answer` is its blocked answer when this
          is the name's second time (the slow path's `store` then keeps it), or when the reply does not fit the
          client; None when it is not blocked (the policy's decision made: the stage does not decide again), when
          a stage before the policy may answer it, or when the client is over its rate.
        - None: not the usual shape of a query; the full parse reads it.

        What the stages before the policy would do for a blocked name: access and the group were settled by
        `lookup`; the rate limit takes its token here; the cache never holds an answer for a name the lists block
        now (it keeps only answers that passed, and is cleared whenever the lists, local entries, allow list
        or schedules change); DDR, the bypass signals and the local names say whether they are `quiet` for the
        name and type (any that is not: the stages answer it)."""
        policy = self.policy
        missed = self.missed
        if policy is None or missed is None:
            return None
        key, qend, group, labels = missed
        q = quick_question(data, key, qend, labels)
        if q is None:
            return None
        qname = q.qname
        qtype = q.qtype
        for quiet in self._checks:
            if not quiet(qname, qtype):
                return Query(data, q, client_ip, protocol, group, logged=logged), None
        match = policy.decide(qname, group)
        if match is None:
            query = Query(data, q, client_ip, protocol, group, logged=logged)
            query.policy_passed = True
            return query, None
        if protocol in LIMITED and self.ratelimit is not None and not self._take(client_ip):
            return Query(data, q, client_ip, protocol, group, logged=logged), None  # the slow path slips or drops it
        reply = policy.reply(q, match)
        if len(reply) <= q.max_udp and self._first_time(key):
            self.missed = None
            return _new(Blocked, (reply, q, match, group))
        query = Query(data, q, client_ip, protocol, group, logged=logged)
        return query, policy.blocked(query, match)

    def _first_time(self, key: bytes) -> bool:
        """Whether a blocked answer's key is new lately: then it is remembered (`once`), and kept the next time."""
        once = self.once
        if key in once:
            return False
        if len(once) >= self.size:
            once.clear()
        once.add(key)
        return True

    def _take(self, client_ip: str) -> bool:
        """Take a token from the client network's bucket if it has one; False (nothing taken) if it has none."""
        limiter = self.ratelimit
        assert limiter is not None
        key = limiter.key_of(client_ip)
        if key < 0:
            return True  # exempt (loopback, ratelimit.exempt)
        buckets = limiter.buckets
        bucket = buckets.buckets.get(key)
        if bucket is not None and bucket.tokens + (buckets.clock() - bucket.stamp) * buckets.qps < 1.0:
            return False
        return buckets.take(key) is None

    def store(self, query: Query, answer: Answer) -> None:
        """Keep the slow path's synchronous answer to the query `lookup` just missed, if it is one to keep."""
        keyed = self.missed
        self.missed = None
        if keyed is None or self.generation != self.cache.generation:
            return
        key, qend, _, _ = keyed
        decision = answer.decision
        if decision is Decision.BLOCKED:
            if self._first_time(key):
                return
            self.once.discard(key)
        elif decision is not Decision.CACHED or answer.response is not None:
            return  # (a cached answer with its response is stale: RFC 8767's rules, only when the upstreams fail)
        q = query.question
        reply = answer.wire
        if len(reply) > q.max_udp or qend != q.end or len(reply) < qend:
            return  # cut to TC=1 for this client; or a question this key does not describe (never, in practice)
        entry = Entry(reply[2:12], reply[qend:], qend, q, answer, query.group)
        if decision is Decision.CACHED:
            found = self.cache.get(cache_key(q, query.group))
            if found is None:
                return
            entry.cached = found[0]
            entry.offsets, entry.ttls = self._ttls(found[0].response, qend)
            entry.refresh(found[1])  # (the slow path rendered it a moment ago, perhaps in the second before)
        if len(self.entries) >= self.size:
            self.entries.popitem(last=False)
        self.entries[key] = entry

    def _ttls(self, response: Response, qend: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        low, high = self.cache.min_ttl, self.cache.max_ttl
        offsets = tuple(offset - qend for offset in response.ttl_offsets)
        return offsets, tuple(max(low, min(ttl, high)) for ttl in response.ttls)
