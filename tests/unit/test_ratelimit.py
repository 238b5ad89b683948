"""Rate limiting (pipeline/ratelimit.py): the token bucket, the per-network key, slip and drop, and its config."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
from prometheus_client import CollectorRegistry

from filterd.config.load import parse_config
from filterd.config.schema import DEFAULT_RATELIMIT_EXEMPT, RateLimitConfig
from filterd.dns import wire
from filterd.errors import ConfigError
from filterd.metrics import Metrics, RateLimitCounter
from filterd.pipeline.base import Answer, Decision, PassThrough, Pipeline, Query
from filterd.pipeline.ratelimit import RateLimitStage, TokenBuckets, network_key
from filterd.transport.handler import QueryHandler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    buckets = TokenBuckets(qps=10, burst=5, clock=clock)
    assert [buckets.take(1) is None for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1  # one token back
    assert buckets.take(1) is None
    assert buckets.take(1) is not None
    clock.now += 100  # never more than the burst
    assert sum(buckets.take(1) is None for _ in range(20)) == 5


def test_a_slow_rate_refills_by_fractions() -> None:
    clock = Clock()
    buckets = TokenBuckets(qps=0.5, burst=1, clock=clock)
    assert buckets.take(7) is None and buckets.take(7) is not None
    clock.now += 1.0  # half a token, and a refused query does not spend it
    assert buckets.take(7) is not None
    clock.now += 1.0
    assert buckets.take(7) is None


def test_keys_have_their_own_buckets_and_count_their_excess() -> None:
    buckets = TokenBuckets(qps=1, burst=1, clock=Clock())
    assert buckets.take(1) is None and buckets.take(2) is None
    excess = []
    for _ in range(3):
        bucket = buckets.take(1)
        assert bucket is not None
        excess.append(bucket.excess)
    assert excess == [1, 2, 3]


def test_the_table_of_buckets_is_bounded() -> None:
    clock = Clock()
    buckets = TokenBuckets(qps=1, burst=2, clock=clock, limit=100)
    for key in range(1000):
        buckets.take(key)
        assert len(buckets.buckets) <= 100
    clock.now += 10  # all full again: the next newcomer sweeps them out
    buckets.take(5000)
    assert len(buckets.buckets) == 1


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("192.168.1.10", "192.168.1.250", True),
        ("192.168.1.10", "192.168.2.10", False),
        ("10.0.0.1", "::ffff:10.0.0.99", True),  # IPv4-mapped IPv6 is the IPv4 network
        ("2001:db8:0:ab00::1", "2001:db8:0:abff:1::2", True),  # one /56
        ("2001:db8:0:ab00::1", "2001:db8:0:ac00::1", False),
        ("fe80::1%eth0", "fe80::2%eth1", True),
        ("0.0.0.1", "::1", False),  # families never share a bucket
    ],
)
def test_a_bucket_is_a_24_or_a_56(a: str, b: str, same: bool) -> None:
    assert (network_key(a, ()) == network_key(b, ())) is same


def test_loopback_and_configured_prefixes_are_exempt() -> None:
    exempt = (*DEFAULT_RATELIMIT_EXEMPT, ipaddress.ip_network("10.9.0.0/16"))
    assert network_key("127.0.0.1", exempt) == network_key("::1", exempt) == network_key("10.9.200.1", exempt) == -1
    assert network_key("10.8.0.1", exempt) >= 0


def _query(protocol: str = "udp", client: str = "192.168.1.20", edns: bool = True) -> Query:
    raw = dns.message.make_query("example.com", "A", use_edns=0 if edns else False).to_wire()
    return Query(raw, wire.parse_query(raw), client, protocol)


def _stage(clock: Clock, **options: object) -> RateLimitStage:
    config = RateLimitConfig(**{"qps": 1, "burst": 2, "slip": 2, **options})  # type: ignore[arg-type]
    return RateLimitStage(config, RateLimitCounter(), clock)


def test_over_the_rate_every_second_query_slips_the_rest_are_dropped() -> None:
    stage = _stage(Clock())
    answers = [stage.answer_now(_query()) for _ in range(8)]
    assert answers[:2] == [None, None]
    decisions = [a.decision for a in answers[2:] if a is not None]
    assert decisions == [Decision.DROPPED, Decision.RATELIMITED] * 3
    assert (stage.counts.slipped, stage.counts.dropped) == (3, 3)
    slip = answers[3]
    assert slip is not None
    reply = dns.message.from_wire(slip.wire)
    assert reply.flags & dns.flags.TC and reply.flags & dns.flags.QR and not reply.answer
    assert str(reply.question[0].name) == "example.com." and reply.edns == 0


@pytest.mark.parametrize(("slip", "decisions"), [(0, {Decision.DROPPED}), (1, {Decision.RATELIMITED})])
def test_slip_0_drops_all_slip_1_slips_all(slip: int, decisions: set[Decision]) -> None:
    stage = _stage(Clock(), slip=slip)
    answers = [stage.answer_now(_query(edns=False)) for _ in range(10)]
    assert {a.decision for a in answers if a is not None} == decisions


def test_tcp_exempt_clients_and_other_networks_pass() -> None:
    clock = Clock()
    stage = _stage(clock)
    for _ in range(5):
        assert stage.answer_now(_query("tcp")) is None
        assert stage.answer_now(_query(client="127.0.0.1")) is None
    assert stage.answer_now(_query()) is None and stage.answer_now(_query()) is None
    assert stage.answer_now(_query()) is not None
    assert stage.answer_now(_query(client="192.168.7.1")) is None  # another /24
    clock.now += 1
    assert stage.answer_now(_query()) is None


class _Forward(PassThrough):
    name = "upstream"

    async def resolve(self, query: Query) -> Answer:
        raise AssertionError("not reached")


def test_a_dropped_query_is_counted_and_gets_no_reply() -> None:
    metrics = Metrics(CollectorRegistry(), "test")
    stage = RateLimitStage(RateLimitConfig(qps=1, burst=1, slip=2), metrics.ratelimited, Clock())
    handler = QueryHandler(Pipeline([stage], _Forward()), metrics)
    raw = _query().raw
    pending = handler.handle(raw, "192.168.1.20", "udp")  # the bucket's one token: on to be resolved
    assert pending is not None and not isinstance(pending, bytes)
    pending.close()  # type: ignore[attr-defined]
    assert handler.handle(raw, "192.168.1.20", "udp") is None  # dropped
    assert isinstance(handler.handle(raw, "192.168.1.20", "udp"), bytes)  # slipped
    registry = metrics.registry
    assert registry.get_sample_value("filterd_ratelimited_total", {"action": "drop"}) == 1
    assert registry.get_sample_value("filterd_ratelimited_total", {"action": "slip"}) == 1
    labels = {"protocol": "udp", "qtype": "A", "group": "default"}
    assert registry.get_sample_value("filterd_queries_total", {**labels, "decision": "dropped"}) == 1
    assert registry.get_sample_value("filterd_queries_total", {**labels, "decision": "ratelimited"}) == 1


# --- config ---------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
DNS = "dns:\n  listen: [127.0.0.1]\n"


def _load(text: str) -> RateLimitConfig:
    return parse_config(DNS + textwrap.dedent(text), "f.yaml", base_dir=ROOT).ratelimit


def test_on_by_default_false_turns_it_off() -> None:
    assert _load("") == RateLimitConfig() and RateLimitConfig().enabled
    assert _load("ratelimit: false\n").enabled is False
    assert _load("ratelimit: true\n") == RateLimitConfig()
    assert _load("ratelimit: {enabled: false, qps: 5}\n") == RateLimitConfig(enabled=False, qps=5)


def test_every_key() -> None:
    config = _load("ratelimit:\n  qps: 250.5\n  burst: 900\n  slip: 3\n  exempt: [10.1.0.0/16, 'fd00::/8']\n")
    assert config == RateLimitConfig(
        qps=250.5,
        burst=900,
        slip=3,
        exempt=(ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd00::/8")),
    )
    assert _load("ratelimit: {exempt: []}\n").exempt == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ratelimit: 5\n", "f.yaml:3: ratelimit: must be true, false or a mapping"),
        ("ratelimit:\n  qps: 0\n", "f.yaml:4: ratelimit.qps: must be a number from 1 to"),
        ("ratelimit:\n  burst: 1.5\n", "f.yaml:4: ratelimit.burst: must be a whole number from 1 to"),
        ("ratelimit:\n  slip: 11\n", "f.yaml:4: ratelimit.slip: must be a whole number from 0 to 10"),
        ("ratelimit:\n  exempt: [10.1.0.0/33]\n", "f.yaml:4: ratelimit.exempt[0]: '10.1.0.0/33' is not an IP network"),
        ("ratelimit:\n  rate: 5\n", "f.yaml:4: ratelimit.rate: unknown key"),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(DNS + text, "f.yaml", base_dir=ROOT)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("protocol", ["tls", "https"])
def test_dot_and_doh_take_from_the_bucket_and_are_refused_over_it(protocol: str) -> None:
    """Issue 18's "same limits (per-client connections, rate limits)": DoT and DoH share the client network's
    bucket with UDP; over it they get REFUSED (no TC=1: nothing cheaper to retry over; a DoH stream needs an answer)."""
    clock = Clock()
    stage = _stage(clock)
    assert stage.answer_now(_query(protocol)) is None and stage.answer_now(_query()) is None  # the burst of 2
    over = stage.answer_now(_query(protocol))
    assert over is not None and over.decision is Decision.RATELIMITED
    reply = dns.message.from_wire(over.wire)
    assert reply.rcode() == dns.rcode.REFUSED and str(reply.question[0].name) == "example.com."
    assert stage.counts.refused == 1 and (stage.counts.slipped, stage.counts.dropped) == (0, 0)
    assert stage.answer_now(_query("tcp")) is None  # plain TCP stays unlimited: where slipped UDP clients retry
    clock.now += 1
    assert stage.answer_now(_query(protocol)) is None
