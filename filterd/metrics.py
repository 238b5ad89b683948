"""All Prometheus collectors, built on a registry passed in (no global registry, no import-time state).

Names follow `filterd_<subsystem>_<name>`; labels are small fixed sets, never a domain or a client address.
Per-query counters are plain integers read by a custom collector at scrape time: a `labels().inc()` per
query would cost more than answering a blocked query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from filterd.dns.wire import qtype_label


class QueryCounter(Collector):
    """filterd_queries_total{protocol,qtype,decision,group}, counted with one dict update per query. `group` is a
    configured client group's name or "default" (no group): bounded by the config."""

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)

    def count(self, protocol: str, qtype: int, decision: str, group: str = "default") -> None:
        self.counts[(protocol, qtype_label(qtype), decision, group)] += 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "filterd_queries",
            "DNS queries answered, by protocol, query type, decision and client group.",
            labels=["protocol", "qtype", "decision", "group"],
        )
        for labels, value in sorted(self.counts.items()):
            family.add_metric(list(labels), value)
        yield family


class CacheCollector(Collector):
    """filterd_cache_*: read from the cache's own integer counters at scrape time."""

    def __init__(self) -> None:
        self.cache: CacheStats | None = None

    def collect(self) -> Iterator[Metric]:
        cache = self.cache
        if cache is None:
            return
        yield GaugeMetricFamily("filterd_cache_entries", "Answers held in the cache.", value=len(cache))
        yield CounterMetricFamily("filterd_cache_hits", "Queries answered from the cache.", value=cache.hits)
        yield CounterMetricFamily("filterd_cache_misses", "Queries the cache could not answer.", value=cache.misses)
        yield CounterMetricFamily(
            "filterd_cache_stale", "Expired answers served because every upstream failed (RFC 8767).", value=cache.stale
        )


class CacheStats(Protocol):
    hits: int
    misses: int
    stale: int

    def __len__(self) -> int: ...


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self.queries = QueryCounter()
        registry.register(self.queries)
        self._cache = CacheCollector()
        registry.register(self._cache)
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
        self.upstream_up = Gauge(
            "filterd_upstream_up",
            "1 while an upstream answers, 0 while it is skipped as down and probed.",
            ["upstream"],
            registry=registry,
        )
        self.blocklist_entries = Gauge(
            "filterd_blocklist_entries",
            "Names blocked by each list, as loaded.",
            ["list"],
            registry=registry,
        )
        self.list_refresh = Counter(
            "filterd_list_refresh",
            "Refreshes of url lists, by result: updated, not_modified, failed (no complete download), "
            "rejected (downloaded but not used: empty, unparseable, too large, shrank).",
            ["list", "result"],
            registry=registry,
        )
        self.list_last_success = Gauge(
            "filterd_list_last_success_timestamp_seconds",
            "When a url list was last downloaded and accepted, or confirmed unchanged (Unix time).",
            ["list"],
            registry=registry,
        )
        self.blockpage_views = Counter(
            "filterd_blockpage_views",
            "Block pages shown, by the blocked name's category (a described id, other, or none); never the name.",
            ["category"],
            registry=registry,
        )
        self.build_info = Gauge(
            "filterd_build_info", "Always 1; the version is the label.", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)

    def watch_cache(self, cache: CacheStats) -> None:
        """Export this cache's counters (the newest one, after a reload)."""
        self._cache.cache = cache
