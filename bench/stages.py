#!/usr/bin/env python3
"""The cost of each step of a query, in process (no sockets): microseconds a query, best of 5 runs.

    python3 bench/stages.py [--n 100000] [--names 200000]

Builds the real stages (access, client with two groups, cache, policy with a 3-name list) around a resolver that
answers every name, warms the answer cache and the packet cache, then times `QueryHandler.handle` for a blocked
name and a cache hit with the packet cache on and off, and each step the slow path takes on its own
(`wire.parse_query`, each stage's `answer_now`, the metrics count); and the compiled list store (the one a server
maps) with `--names` of bench/gen.py's names, a listed and an unlisted name. docs/pipeline.md keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import itertools
import random
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dns.message
import gen
from prometheus_client import CollectorRegistry

from filterd.blocklists.compiled import CompiledMatcher, ListFile, compile_lists
from filterd.blocklists.local import LocalLists
from filterd.blocklists.matcher import ListSource, Matcher
from filterd.blocklists.parse import parse_list
from filterd.config.load import parse_config
from filterd.config.schema import BlockingConfig
from filterd.dns import wire
from filterd.dns.response import parse_response
from filterd.groups.model import build_groups
from filterd.metrics import Metrics
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Answer, Decision, Pipeline, Query
from filterd.pipeline.cache import CacheStage, DnsCache
from filterd.pipeline.client import ClientStage
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.querylog.events import QueryEvents
from filterd.querylog.store import QueryLog
from filterd.sinkhole import BlockedReplies
from filterd.transport.fastpath import packet_key, quick_question
from filterd.transport.handler import QueryHandler

CONFIG = """
dns: {listen: ["127.0.0.1:5353"], allow_clients: [127.0.0.0/8]}
lists: [{name: chat, path: chat.txt}]
groups:
  - {name: children, clients: [127.0.0.2], lists: [chat]}
  - {name: adults, clients: [127.0.0.3], lists: []}
"""


class Resolver:
    name = "fake"

    async def resolve(self, query: Query) -> Answer:
        q = query.question
        plain = wire.Question(q.id, q.flags, q.qname, q.qtype, q.qclass, q.question, None, q.end)
        body = wire.build_reply(plain, answers=(wire.rr(wire.NAME_PTR, wire.T_A, 3600, bytes([192, 0, 2, 1])),))
        return Answer(body, Decision.FORWARDED, "fake", parse_response(body, len(q.question)))


def build_handler(config: Any, lists: Any) -> QueryHandler:
    """The stages this file times (access, client, cache, policy on `lists`) around `Resolver`, in a handler."""
    policy = PolicyStage(lists, AllowList([]), BlockedReplies(BlockingConfig()), LocalLists(None))
    cache = DnsCache(10000, 0, 86400, 0)
    policy.on_change.append(cache.clear)
    access, client = AccessStage(config.dns.allow_clients), ClientStage(build_groups(config.groups, {}))
    pipeline = Pipeline([access, client, CacheStage(cache), policy], Resolver())
    return QueryHandler(pipeline, Metrics(CollectorRegistry(), "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000, help="queries a timing run")
    ap.add_argument("--names", type=int, default=200000, help="names in the compiled list (bench/gen.py's)")
    args = ap.parse_args()
    n, names = args.n, args.names
    tmp = Path(tempfile.mkdtemp())
    (tmp / "chat.txt").write_text("chat.example\nomegle.com\nchatroulette.com\n")
    config = parse_config(CONFIG, "s.yaml", base_dir=tmp)
    sources = []
    for c in config.lists:
        assert c.path is not None  # (CONFIG names a file for its list)
        sources.append(ListSource(c.name, c.name, parse_list(c.path.read_text())))
    handler = build_handler(config, Matcher.build(sources))
    pipeline = handler.pipeline
    access, client, cache_stage, policy = pipeline.stages
    fast = handler.fast
    blocked = dns.message.make_query("front7.omegle.com", "A", use_edns=0).to_wire()
    hit = dns.message.make_query("www.example.com", "A", use_edns=0).to_wire()
    ip = "127.0.0.1"

    def run(packet: bytes) -> None:
        result = handler.handle(packet, ip, "udp")
        if inspect.isawaitable(result):
            asyncio.run(_await(result))

    for _ in range(3):
        run(blocked)
        run(hit)
    q_blocked, q_hit = wire.parse_query(blocked), wire.parse_query(hit)
    query_b, query_h = Query(blocked, q_blocked, ip, "udp"), Query(hit, q_hit, ip, "udp")

    def without_fast(packet: bytes, handler: QueryHandler = handler) -> Callable[[], object]:
        fast = handler.fast

        def call() -> object:
            handler.fast = None
            handler._fast_for = pipeline  # keep it off for this call
            try:
                return handler.handle(packet, ip, "udp")
            finally:
                handler.fast = fast

        return call

    # names under a listed one, each new to the packet cache (100,000 in turn: ten times what it remembers)
    new_names = itertools.cycle(
        [dns.message.make_query(f"n{i}.omegle.com", "A", use_edns=0).to_wire() for i in range(100000)]
    )
    steps: list[tuple[str, Callable[[], object]]] = [
        ("handle, blocked name, packet cache hit", lambda: handler.handle(blocked, ip, "udp")),
        ("handle, a new blocked name each query", lambda: handler.handle(next(new_names), ip, "udp")),
        ("handle, cache hit, packet cache hit", lambda: handler.handle(hit, ip, "udp")),
        ("handle, blocked name, no packet cache", without_fast(blocked)),
        ("handle, cache hit, no packet cache", without_fast(hit)),
        ("  wire.parse_query (EDNS)", lambda: wire.parse_query(blocked)),
        ("  Query(...)", lambda: Query(blocked, q_blocked, ip, "udp")),
        ("  access.answer_now", lambda: access.answer_now(query_b)),
        ("  client.answer_now (groups on)", lambda: client.answer_now(query_b)),
        ("  cache.answer_now, a miss (blocked name)", lambda: cache_stage.answer_now(query_b)),
        ("  cache.answer_now, a hit (render)", lambda: cache_stage.answer_now(query_h)),
        ("  policy.answer_now, blocked (match + reply)", lambda: policy.answer_now(query_b)),
        ("  metrics count", lambda: handler.metrics.queries.count("udp", 1, Decision.BLOCKED, "default")),
    ]
    if fast is not None:
        steps.append(("  packet_key + lookup (fast path alone)", lambda: fast.lookup(blocked, ip, "udp")))
        keyed = packet_key(blocked, b"\x00\x00")
        assert keyed is not None
        steps.append(("  quick_question (the quick check's read)", lambda: quick_question(blocked, *keyed)))

    # The same two hits with the query log on (privacy: full; its pages never written here, only noted)
    querylog = QueryLog(tmp / "q.sqlite", max_queue=10**9)
    logged = QueryHandler(pipeline, Metrics(CollectorRegistry(), "bench"))
    logged.events = QueryEvents(querylog, None, lambda alerts: None)
    for packet in (blocked, hit):
        logged.handle(packet, ip, "udp")
    steps += [
        ("handle, a new blocked name each query, query log on", lambda: logged.handle(next(new_names), ip, "udp")),
        ("handle, blocked name, packet cache hit, query log on", lambda: logged.handle(blocked, ip, "udp")),
        ("handle, cache hit, packet cache hit, query log on", lambda: logged.handle(hit, ip, "udp")),
        ("handle, blocked name, no packet cache, query log on", without_fast(blocked, logged)),
    ]
    steps += compiled_steps(tmp, names, config)
    width = max(len(name) for name, _ in steps)
    for name, call in steps:
        best = min(timeit.repeat(call, number=n, repeat=5)) / n * 1e6
        print(f"{name:<{width}}  {best:6.2f} us")


def compiled_steps(tmp: Path, count: int, config: Any) -> list[tuple[str, Callable[[], object]]]:
    """The compiled list store (`blocklists/compiled.py`) with bench/gen.py's names: a lookup of a listed name
    and of a name under no listed one, each a different name every call (as file a's mostly new names are); and
    file a's case through `QueryHandler.handle`: the same stages as above, the policy on this store, a listed name
    new to the packet cache each query (100,000 in turn)."""
    listed = gen.blocklist_names(random.Random(20261128), count)
    (tmp / "big.txt").write_text("\n".join(listed) + "\n")
    compile_lists([ListFile("big", "big", tmp / "big.txt", "domains")], tmp / "big.snapshot")
    store = CompiledMatcher(tmp / "big.snapshot")
    hits = itertools.cycle(listed)
    misses = itertools.cycle([f"www.{name}x" for name in listed])
    handler = build_handler(config, store)
    packets = itertools.cycle([dns.message.make_query(name, "A").to_wire() for name in listed[:100000]])
    return [
        (f"compiled store ({count:,} names): match, a listed name", lambda: store.match(next(hits))),
        (f"compiled store ({count:,} names): match, an unlisted name", lambda: store.match(next(misses))),
        (
            f"handle, a new listed name each query ({count:,} names compiled: file a's case)",
            lambda: handler.handle(next(packets), "127.0.0.1", "udp"),
        ),
    ]


async def _await(result: object) -> object:
    return await result  # type: ignore[misc]


if __name__ == "__main__":
    main()
