"""Read the configured lists from disk and compile them into one Matcher (the I/O shell around
parse.py and matcher.py). A url list is read from its stored copy in `state_dir`: start never waits for
the network, and a url list with no copy yet starts empty."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from filterd.blocklists.builtin import builtin_path
from filterd.blocklists.matcher import ListSource, Matcher
from filterd.blocklists.parse import ParsedList, Skipped, parse_list
from filterd.blocklists.state import StateDir
from filterd.config.schema import ListConfig
from filterd.errors import ListError

log = logging.getLogger(__name__)

#: What a url list blocks before its first download.
EMPTY = ParsedList(entries=(), format="domains", skipped=Skipped(0, None, None))


@dataclass(frozen=True, slots=True)
class LoadedLists:
    matcher: Matcher
    #: list name -> number of block entries
    entries: dict[str, int]
    #: list name -> where it was read from (for messages and `filterd check`)
    sources: dict[str, str]
    #: path and builtin lists as parsed at start: kept, so a refreshed url list never re-reads them
    static: dict[str, ListSource] = field(default_factory=dict)


def read_list(cfg: ListConfig) -> ParsedList:
    """A path or builtin list; raises ListError when it cannot be read."""
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


def parse_copy(cfg: ListConfig, data: bytes) -> ParsedList:
    """A url list's bytes (a download or its stored copy) parsed as the config says."""
    return parse_list(data.decode("utf-8", errors="replace"), fmt=cfg.format.value, subdomains=cfg.subdomains)


def read_copy(cfg: ListConfig, state: StateDir) -> ParsedList:
    """A url list's stored copy, or EMPTY when there is none yet (said once, in the log)."""
    try:
        data = state.read_copy(cfg.name)
    except OSError as exc:
        log.error(
            "list %s: cannot read the stored copy %s (%s): it blocks nothing until a download from %s succeeds",
            cfg.name,
            state.copy_path(cfg.name),
            exc.strerror or exc,
            cfg.url,
        )
        return EMPTY
    if data is None:
        log.warning(
            "list %s: no downloaded copy yet in %s: it blocks nothing until the first download from %s succeeds",
            cfg.name,
            state.path,
            cfg.url,
        )
        return EMPTY
    meta = state.read_meta(cfg.name)
    if meta is not None and meta.url != cfg.url:
        log.warning(
            "list %s: the stored copy was downloaded from %s; using it until %s has been downloaded",
            cfg.name,
            meta.url,
            cfg.url,
        )
    return parse_copy(cfg, data)


def load_lists(configs: Sequence[ListConfig], state: StateDir | None = None) -> LoadedLists:
    """Read every enabled list; raises ListError naming the first list that cannot be read.

    url lists come from their stored copies in `state` (needed when any url list is enabled).
    """
    sources = []
    static: dict[str, ListSource] = {}
    where: dict[str, str] = {}
    for cfg in configs:
        if not cfg.enabled:
            continue
        if cfg.url:
            if state is None:
                raise ListError(cfg.name, "a url list needs a state_dir")
            source = ListSource(cfg.name, cfg.category, read_copy(cfg, state))
            where[cfg.name] = f"{cfg.url} (copy: {state.copy_path(cfg.name)})"
        else:
            source = ListSource(cfg.name, cfg.category, read_list(cfg))
            static[cfg.name] = source
            where[cfg.name] = str(builtin_path(cfg.builtin)) if cfg.builtin else str(cfg.path)
        sources.append(source)
    matcher = Matcher.build(sources)
    return LoadedLists(matcher, matcher.entry_counts(), where, static)


def compile_lists(
    configs: Sequence[ListConfig],
    static: Mapping[str, ListSource],
    state: StateDir,
    fresh: Mapping[str, ParsedList],
) -> Matcher:
    """A new Matcher for every enabled list, in config order: `fresh` parsed lists first, then path and
    builtin lists as parsed at start (`static`), then url lists re-read from their stored copies.

    Blocking I/O and CPU (seconds for a million names): run it off the event loop.
    """
    sources = []
    for cfg in configs:
        if not cfg.enabled:
            continue
        if cfg.name in fresh:
            parsed = fresh[cfg.name]
        elif cfg.name in static:
            sources.append(static[cfg.name])
            continue
        else:
            data = state.read_copy(cfg.name) if cfg.url else None
            parsed = EMPTY if data is None else parse_copy(cfg, data)
        sources.append(ListSource(cfg.name, cfg.category, parsed))
    return Matcher.build(sources)
