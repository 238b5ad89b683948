"""The metrics of several processes as one (`filterd/workers/merge.py`): counters and histograms added, the
per-process gauges added, the others the main process's, label sets only a worker saw kept, `_created` never
added."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from filterd.metrics import Metrics
from filterd.workers.merge import Merged, export


def values(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def process(queries: dict[str, int], cached: int, up: float, latency: list[float]) -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("t_queries", "q", ["decision"], registry=registry)
    for decision, n in queries.items():
        counter.labels(decision=decision).inc(n)
    Gauge("filterd_cache_entries", "per process", registry=registry).set(cached)
    Gauge("t_up", "the main process's word", registry=registry).set(up)
    histogram = Histogram("t_seconds", "h", registry=registry, buckets=(0.01, 0.1))
    for seconds in latency:
        histogram.observe(seconds)
    return registry


def test_counters_histograms_and_per_process_gauges_add_up() -> None:
    main = process({"blocked": 3}, cached=10, up=1, latency=[0.005])
    worker = process({"blocked": 4, "forwarded": 2}, cached=7, up=0, latency=[0.05, 0.5])
    merged = values(generate_latest(Merged(main, [export(worker.collect())])))  # type: ignore[arg-type]
    assert merged[("t_queries_total", (("decision", "blocked"),))] == 7
    assert merged[("t_queries_total", (("decision", "forwarded"),))] == 2  # only the worker saw one
    assert merged[("filterd_cache_entries", ())] == 17
    assert merged[("t_up", ())] == 1  # not added: the main process's
    assert merged[("t_seconds_count", ())] == 3
    assert merged[("t_seconds_bucket", (("le", "0.01"),))] == 1
    assert merged[("t_seconds_bucket", (("le", "0.1"),))] == 2
    assert merged[("t_seconds_bucket", (("le", "+Inf"),))] == 3
    assert abs(merged[("t_seconds_sum", ())] - 0.555) < 1e-9
    alone = values(generate_latest(main))
    created = ("t_queries_created", (("decision", "blocked"),))
    assert merged[created] == alone[created]  # a time, not a count: never added


def test_filterds_own_metrics_merge_into_valid_exposition() -> None:
    main, worker = Metrics(CollectorRegistry(), "1"), Metrics(CollectorRegistry(), "1")
    main.queries.count("udp", 1, "blocked")
    worker.queries.count("udp", 1, "blocked")
    worker.queries.count("tcp", 28, "forwarded")
    worker.upstream_errors.labels(upstream="127.0.0.1:53", kind="timeout").inc()
    text = generate_latest(Merged(main.registry, [export(worker.registry.collect())]))  # type: ignore[arg-type]
    merged = values(text)
    labels = (("decision", "blocked"), ("group", "default"), ("protocol", "udp"), ("qtype", "A"))
    assert merged[("filterd_queries_total", labels)] == 2
    assert merged[("filterd_upstream_errors_total", (("kind", "timeout"), ("upstream", "127.0.0.1:53")))] == 1
    assert merged[("filterd_build_info", (("version", "1"),))] == 1  # a gauge: once, not twice
    assert merged[("filterd_dns_workers", ())] == 1
