"""All Prometheus collectors, built on a registry passed in (no global registry, no import-time state).

Names follow `filterd_<subsystem>_<name>`; labels are small fixed sets, never a domain or a client address.
Per-query counters are plain integers read by a custom collector at scrape time: a `labels().inc()` per
query would cost more than answering a blocked query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from filterd.dns.wire import qtype_label
from filterd.transport.proxy import ProxyGate


class QueryCounter(Collector):
    """filterd_queries_total{protocol,qtype,decision,group}, counted with one dict update per query. `group` is a
    configured client group's name or "default" (no group): bounded by the config."""

    def __init__(self) -> None:
        self.counts: defaultdict[tuple[str, str, str, str], int] = defaultdict(int)

    def count(self, protocol: str, qtype: int, decision: str, group: str = "default") -> None:
        self.counts[(protocol, qtype_label(qtype), decision, group)] += 1

    @staticmethod
    def key(protocol: str, qtype: int, decision: str, group: str = "default") -> tuple[str, str, str, str]:
        """`count`'s key, for a caller that counts the same answer often (`counts[key] += 1`: a packet-cache hit)."""
        return (protocol, qtype_label(qtype), decision, group)

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


class QueryLogCollector(Collector):
    """filterd_querylog_rows_total{result}: rows written, dropped (queue full) and failed (the database refused)."""

    def __init__(self) -> None:
        self.stats: Any = None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        family = CounterMetricFamily(
            "filterd_querylog_rows", "Query log rows, by what became of them.", labels=["result"]
        )
        for result in ("written", "dropped", "failed", "pruned"):
            family.add_metric([result], getattr(stats, result))
        yield family


class CacheStats(Protocol):
    hits: int
    misses: int
    stale: int

    def __len__(self) -> int: ...


class RateLimitCounter(Collector):
    """filterd_ratelimited_total{action}: queries over their network's rate (`pipeline/ratelimit.py`): UDP answered
    with TC=1 (slip) or dropped, DoT and DoH refused. No client label: the bounded label set stays small under a
    flood."""

    def __init__(self) -> None:
        self.slipped = 0
        self.dropped = 0
        self.refused = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "filterd_ratelimited",
            "Queries over their client network's rate limit: UDP answered TC=1 (slip) or not at all (drop), DNS "
            "over TLS and HTTPS answered REFUSED (refused).",
            labels=["action"],
        )
        family.add_metric(["slip"], self.slipped)
        family.add_metric(["drop"], self.dropped)
        family.add_metric(["refused"], self.refused)
        yield family


class TcpStats(Protocol):
    def open_connections(self) -> int: ...

    def unsent_bytes(self) -> int: ...


class TcpCollector(Collector):
    """filterd_tcp_*: read from the TCP listeners at scrape time, plus the connections they closed to protect the
    others (`transport/tcp.py`)."""

    REASONS = ("refused", "evicted", "stuck")

    def __init__(self) -> None:
        self.listeners: list[TcpStats] = []
        self.closed = dict.fromkeys(self.REASONS, 0)

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "filterd_tcp_connections",
            "DNS over TCP connections open.",
            value=sum(listener.open_connections() for listener in self.listeners),
        )
        yield GaugeMetricFamily(
            "filterd_tcp_unsent_bytes",
            "Reply bytes written for TCP clients and not yet taken by the kernel (bounded per connection).",
            value=sum(listener.unsent_bytes() for listener in self.listeners),
        )
        closed = CounterMetricFamily(
            "filterd_tcp_closed",
            "TCP connections filterd closed to protect other clients: refused (its client, or the server, at the "
            "connection limit with none idle), evicted (the oldest idle, for a new one), stuck (replies unread, or a "
            "DNS over HTTPS request left unfinished, for the idle timeout).",
            labels=["reason"],
        )
        for reason in self.REASONS:
            closed.add_metric([reason], self.closed[reason])
        yield closed


class Metrics:
    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self.queries = QueryCounter()
        registry.register(self.queries)
        self._cache = CacheCollector()
        registry.register(self._cache)
        self.querylog = QueryLogCollector()
        registry.register(self.querylog)
        self.ratelimited = RateLimitCounter()
        registry.register(self.ratelimited)
        self.tcp = TcpCollector()
        registry.register(self.tcp)
        #: PROXY protocol v2 from `dns.proxy_protocol` (the transports ask it; App.build_pipeline configures it).
        self.proxy = ProxyGate()
        registry.register(self.proxy)
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
        self.safeguarding_alerts = Counter(
            "filterd_safeguarding_alerts",
            "Safeguarding alerts, by rule and what became of them (sent, failed, no-channel).",
            ["rule", "result"],
            registry=registry,
        )
        self.rebind_blocked = Counter(
            "filterd_rebind_blocked",
            "Upstream answers dropped because they put a public name on a private address (DNS rebinding).",
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
        self.list_file_ok = Gauge(
            "filterd_list_file_ok",
            "Path lists: 1 when the list's file was used at the last (re)load, 0 when it could not be read or was "
            "rejected (empty, binary, mostly invalid, shrank...) and its last good version, or nothing, is in use.",
            ["list"],
            registry=registry,
        )
        self.list_refresh_interval = Gauge(
            "filterd_list_refresh_interval_seconds",
            "url lists: the configured time between refreshes (alert when the last success is twice this old).",
            ["list"],
            registry=registry,
        )
        self.reloads = Counter(
            "filterd_reloads",
            "Config reloads (SIGHUP, filterd reload), by result: done, or failed (the running config stays).",
            ["result"],
            registry=registry,
        )
        self.reload_ok = Gauge(
            "filterd_config_last_reload_successful",
            "1 unless the last reload failed (the running config stays in use until one succeeds).",
            registry=registry,
        )
        self.reload_ok.set(1)
        for result in ("done", "failed"):
            self.reloads.labels(result=result)
        self.blockpage_views = Counter(
            "filterd_blockpage_views",
            "Block pages shown, by the blocked name's category (a described id, other, or none) and `scheme` (http or "
            "https); never the name.",
            ["category", "scheme"],
            registry=registry,
        )
        self.blockpage_certificates = Counter(
            "filterd_blockpage_certificates",
            "TLS handshakes on the HTTPS block page, by `result`: minted or cached (a certificate for a blocked name), "
            "not_blocked or no_sni (a TLS alert, no certificate), ratelimited (a new certificate refused), error.",
            ["result"],
            registry=registry,
        )
        self.client_events = Counter(
            "filterd_client_events",
            "Events a client caused, logged at most once a minute each (`event`: logs.CLIENT_EVENTS).",
            ["event"],
            registry=registry,
        )
        self.dns_workers = Gauge(
            "filterd_dns_workers",
            "Processes answering DNS now: the main one and its running workers (dns.workers).",
            registry=registry,
        )
        self.dns_workers.set(1)
        self.dns_worker_restarts = Counter(
            "filterd_dns_worker_restarts",
            "Worker processes (dns.workers) that exited and were started again.",
            registry=registry,
        )
        self.build_info = Gauge(
            "filterd_build_info", "Always 1; the version is the label.", ["version"], registry=registry
        )
        self.build_info.labels(version=version).set(1)

    def watch_cache(self, cache: CacheStats) -> None:
        """Export this cache's counters (the newest one, after a reload)."""
        self._cache.cache = cache
