"""Read the configured lists from disk into one compiled snapshot (the I/O shell around parse.py and
compiled.py). A url list is read from its stored copy in `state_dir`: start never waits for the network,
and a url list with no copy yet starts empty.

The snapshot is a file (`<state_dir>/lists.snapshot`, or a private temporary folder without a state_dir),
mapped read-only: a million names cost about 17 MB, and a restart whose lists have not changed (same files,
sizes and times, same list settings) maps the snapshot it left instead of parsing again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from filterd.blocklists.builtin import builtin_path
from filterd.blocklists.compiled import CompiledMatcher, CompileError, ListFile, compile_and_open
from filterd.blocklists.state import StateDir
from filterd.config.schema import ListConfig
from filterd.errors import ListError

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "lists.snapshot"
_FORMAT_VERSION = 2  # 2: brand rules and name patterns in the snapshot


@dataclass(frozen=True, slots=True)
class LoadedLists:
    matcher: CompiledMatcher
    #: list name -> number of block entries
    entries: dict[str, int]
    #: list name -> where it was read from (for messages and `filterd check`)
    sources: dict[str, str]


def list_path(cfg: ListConfig, state: StateDir | None) -> Path | None:
    """The file a list is read from: the builtin or path file, or a url list's stored copy (its `fallback`
    built-in list while it has none)."""
    if cfg.builtin:
        return builtin_path(cfg.builtin)
    if cfg.path is not None:
        return cfg.path
    copy = state.copy_path(cfg.name) if state is not None else None
    if cfg.fallback and (copy is None or not copy.exists()):
        return builtin_path(cfg.fallback)  # until the first download succeeds
    return copy


def _describe(cfg: ListConfig, state: StateDir | None) -> str:
    if cfg.url:
        return f"{cfg.url} (copy: {state.copy_path(cfg.name) if state else '-'})"
    return str(list_path(cfg, state))


def _inputs(configs: Sequence[ListConfig], state: StateDir | None, empty: Path) -> list[ListFile]:
    files = []
    for cfg in configs:
        if not cfg.enabled:
            continue
        path = list_path(cfg, state)
        if cfg.url:
            if state is None:
                raise ListError(cfg.name, "a url list needs a state_dir")
            assert path is not None
            if cfg.fallback and path == builtin_path(cfg.fallback):
                log.warning(
                    "list %s: no downloaded copy yet in %s: serving the built-in list %s until the first download "
                    "from %s succeeds",
                    cfg.name,
                    state.path,
                    cfg.fallback,
                    cfg.url,
                )
            elif not path.exists():
                log.warning(
                    "list %s: no downloaded copy yet in %s: it blocks nothing until the first download from %s "
                    "succeeds",
                    cfg.name,
                    state.path,
                    cfg.url,
                )
                path = empty
            else:
                meta = state.read_meta(cfg.name)
                if meta is not None and meta.url != cfg.url:
                    log.warning(
                        "list %s: the stored copy was downloaded from %s; using it until %s has been downloaded",
                        cfg.name,
                        meta.url,
                        cfg.url,
                    )
        assert path is not None
        if not path.is_file():
            raise ListError(cfg.name, f"cannot read {path}: no such file")
        files.append(ListFile(cfg.name, cfg.category, path, cfg.format.value, cfg.subdomains))
    return files


def fingerprint(files: Sequence[ListFile]) -> str:
    """Changes whenever a list's settings or its file (size, modification time) change."""
    parts: list[object] = [_FORMAT_VERSION]
    for item in files:
        stat = item.path.stat()
        parts.append(
            [item.name, item.category, str(item.path), item.fmt, item.subdomains, stat.st_size, stat.st_mtime_ns]
        )
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def load_lists(configs: Sequence[ListConfig], state: StateDir | None, snapshot: Path) -> LoadedLists:
    """Compile every enabled list into `snapshot` (or reuse it when nothing changed) and map it.

    Raises ListError naming a list that cannot be read. CPU and I/O for seconds with a million names:
    call it off the event loop once serving."""
    empty = snapshot.with_name("empty.txt")
    if not empty.exists():
        empty.write_text("")
    files = _inputs(configs, state, empty)
    where = {cfg.name: _describe(cfg, state) for cfg in configs if cfg.enabled}
    try:
        mark = fingerprint(files)
    except OSError as exc:
        raise ListError("lists", f"cannot read a list file: {exc}") from None
    if snapshot.exists():
        try:
            current = CompiledMatcher(snapshot)
        except (CompileError, OSError, ValueError) as exc:
            log.warning("lists: ignoring the snapshot %s (%s): compiling again", snapshot, exc)
        else:
            if current.fingerprint == mark:
                log.info("lists: the lists have not changed: serving the compiled snapshot %s", snapshot)
                return LoadedLists(current, current.entry_counts(), where)
    try:
        report, matcher = compile_and_open(files, snapshot, fingerprint=mark)
    except (OSError, CompileError) as exc:
        raise ListError("lists", f"cannot compile the lists into {snapshot}: {exc}") from None
    for name, skipped in report.skipped.items():
        if skipped.count:
            log.warning(
                "list %s: skipped %d unsupported or invalid lines, e.g. %s:%s: %s",
                name,
                skipped.count,
                where.get(name, name),
                skipped.sample_line,
                skipped.sample_reason,
            )
    return LoadedLists(matcher, matcher.entry_counts(), where)
