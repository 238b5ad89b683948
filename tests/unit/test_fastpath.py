"""The packet cache in front of the pipeline (`transport/fastpath.py`), in process with the real stages and a
clock the test moves: it must give exactly what the slow path gives, and never an answer the slow path would
no longer give (a name blocked or allowed since, another group's answer, an answer past its TTL)."""

from __future__ import annotations

import inspect
import struct
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry

from filterd.blocklists.local import LocalLists
from filterd.blocklists.matcher import ListSource, Matcher
from filterd.blocklists.parse import parse_list
from filterd.config.load import parse_config
from filterd.config.schema import BlockingConfig, RateLimitConfig
from filterd.dns import wire
from filterd.dns.response import parse_response
from filterd.groups.model import build_groups
from filterd.metrics import Metrics
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Answer, Decision, Pipeline, Query
from filterd.pipeline.cache import CacheStage, DnsCache
from filterd.pipeline.client import ClientStage
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.pipeline.ratelimit import RateLimitStage
from filterd.sinkhole import BlockedReplies
from filterd.transport.fastpath import packet_key
from filterd.transport.handler import QueryHandler

CONFIG = """
dns: {listen: ["127.0.0.1:5353"], allow_clients: [127.0.0.0/8]}
lists:
  - {name: chat, path: chat.txt}
groups:
  - name: children
    clients: [127.0.0.2]
    lists: [chat]
    block: [games.example]
  - name: adults
    clients: [127.0.0.3]
    lists: []
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """The end of the chain: every name has one A record, TTL `ttl`; counts what it was asked."""

    name = "fake"

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.ttl = 300
        self.address = bytes([192, 0, 2, 1])

    async def resolve(self, query: Query) -> Answer:
        q = query.question
        self.asked.append(q.qname)
        plain = wire.Question(q.id, q.flags, q.qname, q.qtype, q.qclass, q.question, None, q.end)
        body = wire.build_reply(plain, answers=(wire.rr(wire.NAME_PTR, wire.T_A, self.ttl, self.address),))
        response = parse_response(body, len(q.question))
        return Answer(body, Decision.FORWARDED, "fake", response)


class Server:
    def __init__(self, tmp_path: Path, ratelimit: RateLimitConfig | None = None) -> None:
        (tmp_path / "chat.txt").write_text("chat.example\n")
        config = parse_config(CONFIG, "f.yaml", base_dir=tmp_path)
        sources = [ListSource(c.name, c.name, parse_list(c.path.read_text())) for c in config.lists]
        self.clock = Clock()
        self.local = LocalLists(tmp_path / "local.json")
        self.policy = PolicyStage(
            Matcher.build(sources), AllowList(config.allow), BlockedReplies(BlockingConfig()), self.local
        )
        self.cache = DnsCache(100, 0, 86400, 0, clock=self.clock)
        self.policy.on_change.append(self.cache.clear)
        self.upstream = Upstream()
        self.groups = build_groups(config.groups, config.schedules)
        stages = [
            AccessStage(config.dns.allow_clients),
            *([RateLimitStage(ratelimit, clock=self.clock)] if ratelimit else []),
            ClientStage(self.groups),
            CacheStage(self.cache),
            self.policy,
        ]
        self.pipeline = Pipeline(stages, self.upstream)
        self.metrics = Metrics(CollectorRegistry(), "test")
        self.handler = QueryHandler(self.pipeline, self.metrics)
        assert self.handler.fast is not None
        self.fast = self.handler.fast

    async def ask_raw(self, packet: bytes, client: str = "127.0.0.1") -> bytes | None:
        result = self.handler.handle(packet, client, "udp")
        if inspect.isawaitable(result):
            return await result
        return result

    async def ask(
        self, name: str, rdtype: str = "A", client: str = "127.0.0.1", qid: int = 4660, **kw: object
    ) -> dns.message.Message:
        kw.setdefault("use_edns", 0)  # so a blocked answer carries its EDE
        q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
        q.id = qid
        reply = await self.ask_raw(q.to_wire(), client)
        assert reply is not None
        return dns.message.from_wire(reply)

    def hits(self) -> int:
        return self.fast.hits

    def counted(self, decision: str, group: str = "default") -> int:
        return sum(v for k, v in self.metrics.queries.counts.items() if k[2] == decision and k[3] == group)


def blocked(msg: dns.message.Message) -> bool:
    return any(o.otype == dns.edns.OptionType.EDE and o.code == wire.EDE_BLOCKED for o in msg.options)  # type: ignore[attr-defined]


def ttl(msg: dns.message.Message) -> int:
    return int(msg.answer[0].ttl)


@pytest.fixture
def server(tmp_path: Path) -> Server:
    return Server(tmp_path)


# --- the key -------------------------------------------------------------------------------------------------


def _wire(name: str, rdtype: str = "A", qid: int = 1, **kw: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    q.id = qid
    return q.to_wire()


def test_the_key_folds_case_and_ignores_the_id_and_the_edns_options() -> None:
    key = packet_key(_wire("www.Example.com", qid=1), b"\0\0")
    assert key is not None and key == packet_key(_wire("WWW.example.COM", qid=2), b"\0\0")
    padded = _wire("www.example.com", use_edns=0, options=[dns.edns.GenericOption(12, b"\0" * 40)])
    assert packet_key(padded, b"\0\0") == packet_key(_wire("www.example.com", use_edns=0), b"\0\0")


def test_the_key_keeps_what_changes_the_answer() -> None:
    base = packet_key(_wire("www.example.com"), b"\0\0")
    others = [
        packet_key(_wire("www.example.com"), b"\0\1"),  # another group
        packet_key(_wire("www.example.com", "AAAA"), b"\0\0"),
        packet_key(_wire("www.example.com", "HTTPS"), b"\0\0"),  # type 65 is b"A": never case-folded
        packet_key(_wire("www.example.com", use_edns=0), b"\0\0"),
        packet_key(_wire("www.example.com", want_dnssec=True), b"\0\0"),  # DO
        packet_key(_wire("www.example.com", use_edns=0, payload=512), b"\0\0"),  # the UDP size
        packet_key(_wire("www.example.com", flags=0), b"\0\0"),  # RD off
        packet_key(_wire("www.example.com", flags=dns.flags.RD | dns.flags.CD), b"\0\0"),
    ]
    assert base is not None and None not in others
    assert len({base, *others}) == len(others) + 1


def test_no_key_for_what_the_slow_path_must_judge() -> None:
    assert packet_key(b"\0" * 11, b"\0\0") is None
    assert packet_key(_wire("example.com")[:-3], b"\0\0") is None  # truncated question
    compressed = _wire("example.com")[:12] + b"\xc0\x0c" + b"\0\1\0\1"
    assert packet_key(compressed, b"\0\0") is None


# --- the answers -------------------------------------------------------------------------------------------------


async def test_a_hit_has_the_clients_id_and_question_case(server: Server) -> None:
    await server.ask("www.example.com", qid=1)  # forwarded
    await server.ask("www.example.com", qid=2)  # a hit in the answer cache: now in the packet cache
    reply = await server.ask("wWw.ExAmPlE.cOm", qid=0xBEEF)
    assert server.hits() == 1
    assert reply.id == 0xBEEF and reply.question[0].name.to_text() == "wWw.ExAmPlE.cOm."
    blocked_first = await server.ask("x.chat.example", qid=7)
    await server.ask("x.chat.example", qid=8)  # a blocked name is kept at its second answer
    again = await server.ask("X.CHAT.example", qid=8)
    assert server.hits() == 2 and again.id == 8 and again.question[0].name.to_text() == "X.CHAT.example."
    assert again.to_wire()[2:12] == blocked_first.to_wire()[2:12] and blocked(again)
    assert server.upstream.asked == ["www.example.com"]


async def test_a_blocked_name_is_kept_at_its_second_answer_so_a_flood_of_new_names_evicts_nothing(
    tmp_path: Path,
) -> None:
    server = Server(tmp_path)
    server.fast.size = 4
    for _ in range(3):
        await server.ask("www.example.com")  # forwarded, cached, then kept
        await server.ask("x.chat.example")  # blocked, blocked and kept, then a hit
    assert server.hits() == 2 and len(server.fast.entries) == 2
    for i in range(20):  # a random-subdomain flood: each name once
        reply = await server.ask(f"r{i}.chat.example")
        assert blocked(reply) and reply.id == 4660
    assert len(server.fast.entries) == 2 and len(server.fast.once) <= 4  # (the seen keys are bounded too)
    assert not blocked(await server.ask("www.example.com")) and blocked(await server.ask("x.chat.example"))
    assert server.hits() == 4
    assert server.upstream.asked == ["www.example.com"]


async def test_a_cached_answer_is_not_served_once_the_name_is_blocked(server: Server) -> None:
    await server.ask("video.example.org")
    await server.ask("video.example.org")
    assert not blocked(await server.ask("video.example.org")) and server.hits() == 1
    server.local.block("example.org")  # `filterd block example.org`: the admin path calls policy.changed()
    server.policy.changed()
    assert blocked(await server.ask("video.example.org"))
    assert blocked(await server.ask("video.example.org"))
    assert blocked(await server.ask("video.example.org")) and server.hits() == 2  # now the block is the hit


async def test_a_list_swap_blocks_a_cached_name(server: Server) -> None:
    for _ in range(3):
        await server.ask("news.example")
    assert server.hits() == 1
    server.policy.replace_matcher(Matcher.build([ListSource("news", "news", parse_list("news.example\n"))]))
    assert blocked(await server.ask("news.example"))


async def test_a_name_blocked_then_allowed_is_answered_fresh(server: Server) -> None:
    assert blocked(await server.ask("x.chat.example"))
    assert blocked(await server.ask("x.chat.example"))
    server.local.allow("x.chat.example")
    server.policy.changed()
    reply = await server.ask("x.chat.example")
    assert not blocked(reply) and [a.to_text() for a in reply.answer[0]] == ["192.0.2.1"]
    assert server.upstream.asked == ["x.chat.example"]


async def test_groups_get_their_own_answers(server: Server) -> None:
    # chat.example is on the children's list, not the adults'; games.example is the children's own block
    for _ in range(3):
        assert blocked(await server.ask("x.chat.example", client="127.0.0.2"))
        assert not blocked(await server.ask("x.chat.example", client="127.0.0.3"))
        assert blocked(await server.ask("games.example", client="127.0.0.2"))
        assert not blocked(await server.ask("games.example", client="127.0.0.3"))
    assert server.hits() == 2 + 2  # blocked: the 3rd (kept at the 2nd); forwarded, cached, then from here
    assert server.counted("blocked", "children") == 6 and server.counted("cached", "adults") == 4
    assert server.counted("forwarded", "adults") == 2


async def test_an_expired_entry_is_judged_for_its_own_clients_group(server: Server) -> None:
    """The adults' kept answer for x.chat.example expires just after a child's query missed: the adult's query is
    judged under the adults' rules (not blocked), never under the group of the query before it."""
    server.upstream.ttl = 10
    for _ in range(3):  # forwarded, an answer-cache hit (kept then), a packet-cache hit
        assert not blocked(await server.ask("x.chat.example", client="127.0.0.3"))
    assert server.hits() == 1
    server.clock.now += 10.0  # the adults' entry expires
    assert blocked(await server.ask("y.chat.example", client="127.0.0.2"))  # a child's miss, just before
    reply = await server.ask("x.chat.example", client="127.0.0.3")
    assert not blocked(reply) and reply.answer
    assert server.counted("forwarded", "adults") == 2 and server.counted("blocked", "adults") == 0


async def test_ttl_counts_down_and_nothing_is_served_past_it(server: Server) -> None:
    server.upstream.ttl = 10
    assert ttl(await server.ask("tick.example")) == 10
    server.clock.now += 0.4
    assert ttl(await server.ask("tick.example")) == 10  # from the answer cache
    assert ttl(await server.ask("tick.example")) == 10  # from the packet cache
    server.clock.now += 0.7  # 1.1 s
    assert ttl(await server.ask("tick.example")) == 9
    server.clock.now += 7.0  # 8.1 s
    assert ttl(await server.ask("tick.example")) == 2
    assert server.hits() == 3
    server.clock.now += 1.8  # 9.9 s
    assert ttl(await server.ask("tick.example")) == 1
    server.clock.now += 0.1  # 10.0 s: expired
    server.upstream.ttl = 60
    assert ttl(await server.ask("tick.example")) == 60  # fetched again, not the old entry at TTL 0
    assert server.upstream.asked == ["tick.example", "tick.example"]


async def test_metrics_count_every_hit(server: Server) -> None:
    for _ in range(3):
        await server.ask("www.example.com")
        await server.ask("x.chat.example")
    assert server.counted("forwarded") == 1 and server.counted("cached") == 2
    assert server.counted("blocked") == 3
    assert server.cache.hits == 2 and server.fast.hits == 1 + 1  # one cache hit and the third block from the bytes


async def test_a_hit_is_counted_under_its_own_protocol(server: Server) -> None:
    packet = dns.message.make_query("x.chat.example", "A").to_wire()
    for protocol in ("udp", "udp", "udp", "tcp", "udp", "tcp", "tls"):  # blocked twice, then kept: five hits
        assert server.handler.handle(packet, "127.0.0.1", protocol) is not None
    assert server.fast.hits == 5
    counts = {k[0]: v for k, v in server.metrics.queries.counts.items() if k[1:] == ("A", "blocked", "default")}
    assert counts == {"udp": 4, "tcp": 2, "tls": 1}


async def test_outsiders_and_odd_packets_take_the_slow_path(server: Server) -> None:
    await server.ask("x.chat.example")
    refused = await server.ask("x.chat.example", client="192.0.2.99")
    assert refused.rcode() == dns.rcode.REFUSED
    packet = bytearray(_wire("x.chat.example", qid=9))
    packet[2] |= 0x80  # a response: dropped, never answered from the cache
    assert await server.ask_raw(bytes(packet)) is None
    assert server.hits() == 0


async def test_a_reply_too_big_for_the_client_is_never_kept(server: Server) -> None:
    server.upstream.address = bytes(4)
    name = "a" * 60 + "." + "b" * 60 + "." + "c" * 60 + "." + "d" * 60 + ".example"
    # 250-byte name: question + answer pointer fits 512; a blocked reply with EDE and SOA for a long entry does too
    for _ in range(3):
        await server.ask(name)
    assert server.hits() == 1
    big = "x" * 60 + ".example"
    server.upstream.asked.clear()
    for _ in range(3):
        await server.ask(big, "A", use_edns=0, payload=512)
    assert server.hits() == 2


async def test_a_rate_limited_client_is_limited_on_the_fast_path_too(tmp_path: Path) -> None:
    server = Server(tmp_path, RateLimitConfig(qps=1, burst=3, slip=2))
    answered = 0
    for _ in range(10):
        reply = await server.ask_raw(_wire("x.chat.example"), client="10.0.0.5")
        assert reply is not None and reply[3] & 0xF == wire.REFUSED
        answered += 1
    assert answered == 10 and server.hits() == 0  # not in allow_clients: refused every time, never from the cache


async def test_the_limiter_runs_before_a_hit(tmp_path: Path) -> None:
    server = Server(tmp_path, RateLimitConfig(qps=1, burst=3, slip=2, exempt=[]))
    outcomes = []
    for _ in range(8):
        reply = await server.ask_raw(_wire("x.chat.example"), client="127.0.0.9")
        if reply is None:
            outcomes.append("dropped")
        elif struct.unpack("!H", reply[2:4])[0] & wire.TC:
            outcomes.append("slip")
        else:
            outcomes.append("answer")
    assert outcomes == ["answer"] * 3 + ["dropped", "slip"] * 2 + ["dropped"]
    assert server.hits() == 1  # the third answer (a blocked reply is kept at its second)
    server.clock.now += 1.0  # one token back: one more answer, from the cache
    assert await server.ask_raw(_wire("x.chat.example"), client="127.0.0.9") is not None
    assert server.hits() == 2
