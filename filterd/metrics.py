"""All Prometheus collectors, built on a registry passed in (no global registry, no import-time state).

Names follow `filterd_<subsystem>_<name>`; labels are small fixed sets, never a domain or a client address.
Per-query counters are plain integers read by a custom collector at scrape time: a `labels().inc()` per
query would cost more than answering a blocked query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from filterd.dns.wire import qtype_label


class QueryCounter(Collector):
    """filterd_queries_total{protocol,qtype,decision}, counted with one dict update per query."""

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, str, str], int] = defaultdict(int)

    def count(self, protocol: str, qtype: int, decision: str) -> None:
        self.counts[(protocol, qtype_label(qtype), decision)] += 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "filterd_queries",
            "DNS queries answered, by protocol, query type and decision.",
            labels=["protocol", "qtype", "decision"],
        )
        for labels, value in sorted(self.counts.items()):
            family.add_metric(list(labels), value)
        yield family


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self.queries = QueryCounter()
        registry.register(self.queries)
        self.upstream_duration = Histogram(
            "filterd_upstream_request_duration_seconds",
            "Time from sending a query to an upstream to its usable answer.",
            ["upstream"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.upstream_errors = Counter(
            "filterd_upstream_errors",
            "Failed upstream exchanges, by kind.",
            ["upstream", "kind"],
            registry=registry,
        )
        self.blocklist_entries = Gauge(
            "filterd_blocklist_entries",
            "Names blocked by each list, as loaded.",
            ["list"],
            registry=registry,
        )
        self.build_info = Gauge(
            "filterd_build_info", "Always 1; the version is the label.", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)
