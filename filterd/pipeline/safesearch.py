"""SafeSearchStage: the search and video hosts answered with the providers' safe endpoints (`safe_search`).

For a client with safe search on, a query for a host in `filterd/data/safesearch.tsv` (www.google.co.uk,
www.youtube.com, www.bing.com, duckduckgo.com, ...; exact names, not the names under them) gets:

- A / AAAA: a CNAME from the name to the safe host (forcesafesearch.google.com, restrict.youtube.com, ...) and
  that host's own records, resolved through the upstreams by the chain's UpstreamResolver, with their TTLs; the
  CNAME has the smallest of them, so the answer expires as a whole. The engine then forces its safe mode for
  everyone on the network, signed in or not. Rows of type A (Yandex, as AdGuard Home answers it) give a fixed
  address instead: A gets it, AAAA gets NODATA.
- HTTPS / SVCB: NODATA (with an SOA), so a browser connects to the rewritten addresses, not to the hints and ECH
  keys an HTTPS record of the real name would give it.
- Any other type (MX, TXT, ...): forwarded as usual.

Rewritten answers carry EDE 4 (Forged Answer, RFC 8914 4.5: "because of policy") naming the provider, and are
`local` in filterd_queries_total (reason `safe-search <provider>`; labels stay bounded). When the safe host
cannot be resolved the client gets SERVFAIL, never the unrewritten name.

After policy, so a blocked name stays blocked. Inside the cache, whose `handle` stores only forwarded answers with
an upstream response: a rewritten answer is neither, so it is never cached. That is the point: safe search is a
per-client setting, and the cache (keyed by question and client group) must never give a rewritten answer to a
client without safe search, nor a plain one to a client with it. The second holds because while a client's
setting is on, its queries for these names never reach the forwarding path that fills the cache, and a reload
(the only way a setting changes) starts a new, empty cache. The safe hosts' own records are the same for every
client, so the stage keeps those itself (a few entries, for their TTL): a repeated query is answered at once,
without an upstream exchange. `settings_for(query)` is the one place that says whose setting applies.

The data file's header gives the sources and the licence of the mapping.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources

from filterd.config.schema import SafeSearchConfig, YoutubeRestriction
from filterd.dns import wire
from filterd.dns.response import Response
from filterd.pipeline.base import Answer, CallNext, Decision, PassThrough, Query, Resolver

DATA_FILE = "safesearch.tsv"
#: The `safe_search.<provider>` switches; every row of the data names one.
PROVIDERS = frozenset(f.name for f in dataclasses.fields(SafeSearchConfig)) - {"enabled"}
LEVELS = ("strict", "moderate")
#: TTL of the answers made here without an upstream: the fixed addresses and NODATA (with its SOA).
REWRITE_TTL = 300
#: The longest a safe host's records are kept here, whatever TTL the upstream gave.
MAX_KEEP = 86400
EDE_FORGED = 4  # RFC 8914 4.5

_ADDRESS_TYPES = (wire.T_A, wire.T_AAAA)
_NODATA_TYPES = (wire.T_HTTPS, wire.T_SVCB)
_SOA_MNAME = wire.encode_name("filterd.invalid")
_SOA_RNAME = wire.encode_name("hostmaster.filterd.invalid")
_RR = struct.Struct("!HHIH")


@dataclass(frozen=True, slots=True)
class Rewrite:
    """One row of the data file."""

    host: str
    provider: str
    level: str
    #: "CNAME" (to `target`, resolved upstream) or "A" (`target` is a fixed IPv4 address)
    kind: str
    target: str
    source: str

    def explain(self) -> str:
        """What a client with safe search on gets for this name, in words (for `filterd check`)."""
        if self.kind == "A":
            answer = f"A answered with {self.target}, AAAA with NODATA"
        else:
            answer = f"A/AAAA answered with a CNAME to {self.target} and its addresses"
        return f"safe search ({self.provider}): {answer}, HTTPS/SVCB with NODATA; other types forwarded"


def parse_rewrites(text: str, source: str = DATA_FILE) -> tuple[Rewrite, ...]:
    """The data file's rows (tab-separated; `#` starts a comment line). ValueError names the line."""
    rows: list[Rewrite] = []
    seen: set[tuple[str, str]] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        problem = _row_problem(fields)
        if problem is None and (fields[0], fields[2]) in seen:
            problem = f"{fields[0]} is listed twice at level {fields[2]}"
        if problem is not None:
            raise ValueError(f"{source}:{number}: {problem}")
        rows.append(Rewrite(*fields))
        seen.add((fields[0], fields[2]))
    return tuple(rows)


def _row_problem(fields: list[str]) -> str | None:
    if len(fields) != 6:
        return f"expected 6 tab-separated fields (host, provider, level, type, target, source), not {len(fields)}"
    host, provider, level, kind, target, _ = fields
    if host != host.lower() or not host or host.endswith("."):
        return f"{host!r} is not a lower-case host name without the trailing dot"
    if provider not in PROVIDERS:
        return f"unknown provider {provider!r} (a `safe_search` switch: {', '.join(sorted(PROVIDERS))})"
    if level not in LEVELS or (level == "moderate" and provider != "youtube"):
        return f"level {level!r}: strict, or moderate for youtube"
    if kind == "A":
        try:
            ipaddress.IPv4Address(target)
        except ValueError:
            return f"{target!r} is not an IPv4 address"
    elif kind != "CNAME" or not target or target != target.lower():
        return f"type {kind!r} with target {target!r}: expected CNAME to a lower-case host name, or A"
    return None


def shipped_rewrites() -> tuple[Rewrite, ...]:
    """The mapping shipped in the package (`filterd/data/safesearch.tsv`)."""
    return parse_rewrites(resources.files("filterd.data").joinpath(DATA_FILE).read_text(encoding="utf-8"))


def provider_level(settings: SafeSearchConfig, provider: str) -> str | None:
    """The level a setting asks of a provider ("strict", "moderate"), or None when it leaves it alone."""
    if provider == "youtube":
        return None if settings.youtube is YoutubeRestriction.OFF else settings.youtube.value
    return "strict" if getattr(settings, provider) else None


class SafeSearchRules:
    """The mapping, and which rows each setting switches on (worked out once per distinct setting)."""

    def __init__(self, rows: Iterable[Rewrite]) -> None:
        self.rows = tuple(rows)
        #: Every name some setting rewrites: most queries are turned away by this one set lookup.
        self.hosts = frozenset(row.host for row in self.rows)
        self._tables: dict[SafeSearchConfig, dict[str, Rewrite]] = {}

    def lookup(self, name: str, settings: SafeSearchConfig | None) -> Rewrite | None:
        """The rewrite of `name` under `settings`, or None (not a rewritten host, or safe search off)."""
        if settings is None or not settings.enabled or name not in self.hosts:
            return None
        table = self._tables.get(settings)
        if table is None:
            table = {row.host: row for row in self.rows if provider_level(settings, row.provider) == row.level}
            self._tables[settings] = table
        return table.get(name)


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A safe host's records as the upstream answered them, kept for `ttl` seconds from `stored`."""

    rcode: int
    #: (owner in wire format, uncompressed; type; TTL; rdata with no compressed names)
    records: tuple[tuple[bytes, int, int, bytes], ...]
    #: The smallest TTL of the records, or the SOA's for an empty answer; 0: not kept.
    ttl: int
    stored: float


class SafeSearchStage(PassThrough):
    name = "safesearch"

    def __init__(
        self,
        config: SafeSearchConfig,
        resolver: Resolver,
        rules: SafeSearchRules | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.rules = rules if rules is not None else SafeSearchRules(shipped_rewrites())
        self.clock = clock
        #: (safe host, qtype) -> its records; bounded by the data (a few hosts, two types).
        self._resolved: dict[tuple[str, int], _Resolved] = {}

    def settings_for(self, query: Query) -> SafeSearchConfig | None:
        """The safe search setting of this query's client: its group's own `safe_search` when the group has one,
        else the top-level `safe_search`; None when it is off."""
        group = query.group
        config = self.config
        if group is not None and group.config.safe_search is not None:
            config = group.config.safe_search
        return config if config.enabled else None

    def rewrite_of(self, name: str) -> Rewrite | None:
        """The rewrite under the top-level setting (`filterd check`, which has no client)."""
        return self.rules.lookup(name, self.config)

    def rewrite_for(self, query: Query) -> Rewrite | None:
        q = query.question
        if q.qname not in self.rules.hosts or q.qclass != wire.C_IN:
            return None
        return self.rules.lookup(q.qname, self.settings_for(query))

    def answer_now(self, query: Query) -> Answer | None:
        rewrite = self.rewrite_for(query)
        if rewrite is None:
            return None
        q = query.question
        if q.qtype in _NODATA_TYPES:
            return self._nodata(q, rewrite)
        if q.qtype not in _ADDRESS_TYPES:
            return None  # MX, TXT, ...: forwarded as usual
        if rewrite.kind == "A":
            if q.qtype == wire.T_AAAA:
                return self._nodata(q, rewrite)
            record = wire.rr(wire.NAME_PTR, wire.T_A, REWRITE_TTL, ipaddress.IPv4Address(rewrite.target).packed)
            return self._reply(q, rewrite, wire.NOERROR, (record,))
        return self._from_kept(q, rewrite)

    async def handle(self, query: Query, call_next: CallNext) -> Answer:
        rewrite = self.rewrite_for(query)
        if rewrite is None or query.question.qtype not in _ADDRESS_TYPES:
            return await call_next(query)
        answer = self.answer_now(query)  # another query may have resolved the safe host meanwhile
        return answer if answer is not None else await self._resolve(query, rewrite)

    def _from_kept(self, q: wire.Question, rewrite: Rewrite) -> Answer | None:
        kept = self._resolved.get((rewrite.target, q.qtype))
        if kept is None:
            return None
        age = int(self.clock() - kept.stored)
        if age >= kept.ttl:
            return None
        return self._rewritten(q, rewrite, kept, age)

    async def _resolve(self, query: Query, rewrite: Rewrite) -> Answer:
        """Ask the upstreams for the safe host's records (identical questions in flight share one exchange)."""
        q = query.question
        target = _question(rewrite.target, q.qtype)
        header = struct.pack("!HHHHHH", 0, wire.RD, 1, 0, 0, 0)
        answer = await self.resolver.resolve(Query(header + target.question, target, query.client_ip, query.protocol))
        resolved = None
        if answer.decision is Decision.FORWARDED and answer.response is not None:
            resolved = _read_answer(answer.response, q.qtype, self.clock())
        if resolved is None:
            text = f"filterd: safe search: {rewrite.target} could not be resolved ({answer.reason or 'no answer'})"
            reply = wire.build_reply(q, wire.SERVFAIL, ede=(wire.EDE_NO_REACHABLE_AUTHORITY, text))
            return Answer(reply, Decision.ERROR, f"safe-search {rewrite.provider}: {answer.reason}")
        if resolved.ttl > 0:
            self._resolved[(rewrite.target, q.qtype)] = resolved
        return self._rewritten(q, rewrite, resolved, 0)

    def _rewritten(self, q: wire.Question, rewrite: Rewrite, resolved: _Resolved, age: int) -> Answer:
        cname = wire.rr(wire.NAME_PTR, wire.T_CNAME, max(resolved.ttl - age, 0), wire.encode_name(rewrite.target))
        records = (wire.rr(owner, rtype, max(ttl - age, 0), rdata) for owner, rtype, ttl, rdata in resolved.records)
        return self._reply(q, rewrite, resolved.rcode, (cname, *records))

    def _nodata(self, q: wire.Question, rewrite: Rewrite) -> Answer:
        soa = wire.rr(wire.NAME_PTR, wire.T_SOA, REWRITE_TTL, wire.soa_rdata(_SOA_MNAME, _SOA_RNAME, REWRITE_TTL))
        return self._reply(q, rewrite, wire.NOERROR, (), (soa,))

    @staticmethod
    def _reply(
        q: wire.Question, rewrite: Rewrite, rcode: int, answers: tuple[bytes, ...], authority: tuple[bytes, ...] = ()
    ) -> Answer:
        ede = (EDE_FORGED, f"filterd: safe-search {rewrite.provider}")
        reply = wire.build_reply(q, rcode, answers, authority, ede=ede)
        return Answer(reply, Decision.LOCAL, f"safe-search {rewrite.provider}")


def _question(name: str, qtype: int) -> wire.Question:
    """filterd's own question for a safe host: RD, no EDNS (so no DO: the CNAME made here is unsigned anyway)."""
    question = wire.encode_name(name) + struct.pack("!HH", qtype, wire.C_IN)
    return wire.Question(0, wire.RD, name, qtype, wire.C_IN, question, None, 12 + len(question))


def _read_answer(response: Response, qtype: int, now: float) -> _Resolved | None:
    """The CNAME and `qtype` records of an upstream's answer, names decompressed so they can be copied into
    another message; None for an rcode other than NOERROR or NXDOMAIN, or an unreadable answer."""
    if response.rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return None
    body = response.body
    pos = 12 + response.question_len
    records: list[tuple[bytes, int, int, bytes]] = []
    try:
        for _ in range(response.answer_count):
            labels, pos = wire.read_name(body, pos)
            rtype, _, ttl, rdlength = _RR.unpack_from(body, pos)
            start, pos = pos + 10, pos + 10 + rdlength
            if rtype == wire.T_CNAME:
                rdata = _encode(wire.read_name(body, start)[0])
            elif rtype == qtype:
                rdata = body[start:pos]
            else:
                continue  # RRSIG, DNAME (its CNAME is there too), anything else
            records.append((_encode(labels), rtype, ttl & 0x7FFFFFFF, rdata))
    except (wire.WireError, struct.error):
        return None
    ttl = min(r[2] for r in records) if records else (response.negative_ttl or 0)
    return _Resolved(response.rcode, tuple(records), min(ttl, MAX_KEEP), now)


def _encode(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
