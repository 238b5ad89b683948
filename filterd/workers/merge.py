"""The metrics of several processes as one: a worker's counters, added to the main process's at scrape time.

A worker exports what adds up across processes (counters, histograms, and the gauges in SUMMED_GAUGES: what each
process holds); the main process's other gauges (list sizes, upstream health, build info) stand for all of them.
Pure: samples in, metric families out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.samples import Sample

#: Gauges that are a sum over processes: each worker holds its own cache and TCP connections.
SUMMED_GAUGES = frozenset({"filterd_cache_entries", "filterd_tcp_connections", "filterd_tcp_unsent_bytes"})
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary"})

Labels = tuple[tuple[str, str], ...]
#: One family as a worker sends it: its name, and its samples as (sample name, labels, value).
Exported = tuple[str, list[tuple[str, Labels, float]]]


def export(families: Iterable[Metric]) -> list[Exported]:
    """What a worker sends: the families that add up, without `_created` (a time, not a count)."""
    out = []
    for family in families:
        if family.type not in _SUMMED_TYPES and family.name not in SUMMED_GAUGES:
            continue
        samples = [
            (s.name, tuple(sorted(s.labels.items())), float(s.value))
            for s in family.samples
            if not s.name.endswith("_created")
        ]
        out.append((family.name, samples))
    return out


class Merged:
    """A registry's families with the workers' exports added in (what `generate_latest` is given)."""

    def __init__(self, registry: Any, parts: Iterable[list[Exported]]) -> None:
        self.registry = registry
        self.parts = list(parts)

    def collect(self) -> Iterator[Metric]:
        extra: dict[str, dict[tuple[str, Labels], float]] = {}
        for part in self.parts:
            for name, samples in part:
                into = extra.setdefault(name, {})
                for sample_name, labels, value in samples:
                    into[(sample_name, labels)] = into.get((sample_name, labels), 0.0) + value
        for family in self.registry.collect():
            add = extra.pop(family.name, None)
            if not add:
                yield family
                continue
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                merged.samples.append(sample._replace(value=sample.value + add.pop(key, 0.0)))
            # label sets only the workers have seen (a query type the main process was never asked)
            merged.samples.extend(Sample(name, dict(labels), value) for (name, labels), value in add.items())
            yield merged
