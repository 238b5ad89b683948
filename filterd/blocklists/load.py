"""Read the configured lists from disk and compile them into one Matcher (the I/O shell around
parse.py and matcher.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from filterd.blocklists.builtin import builtin_path
from filterd.blocklists.matcher import ListSource, Matcher
from filterd.blocklists.parse import ParsedList, parse_list
from filterd.config.schema import ListConfig
from filterd.errors import ListError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedLists:
    matcher: Matcher
    #: list name -> number of block entries
    entries: dict[str, int]
    #: list name -> where it was read from (for messages and `filterd check`)
    sources: dict[str, str]


def read_list(cfg: ListConfig) -> ParsedList:
    path = builtin_path(cfg.builtin) if cfg.builtin else cfg.path
    assert path is not None
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ListError(cfg.name, f"cannot read {path}: {exc.strerror or exc}") from None
    parsed = parse_list(text, fmt=cfg.format.value, subdomains=cfg.subdomains)
    skipped = parsed.skipped
    if skipped.count:
        log.warning(
            "list %s: skipped %d unsupported or invalid lines, e.g. %s:%s: %s",
            cfg.name,
            skipped.count,
            path,
            skipped.sample_line,
            skipped.sample_reason,
        )
    return parsed


def load_lists(configs: Sequence[ListConfig]) -> LoadedLists:
    """Read every enabled list; raises ListError naming the first list that cannot be read."""
    sources = []
    where: dict[str, str] = {}
    for cfg in configs:
        if not cfg.enabled:
            continue
        sources.append(ListSource(cfg.name, cfg.category, read_list(cfg)))
        where[cfg.name] = str(builtin_path(cfg.builtin)) if cfg.builtin else str(cfg.path)
    matcher = Matcher.build(sources)
    return LoadedLists(matcher, matcher.entry_counts(), where)
