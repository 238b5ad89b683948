"""Read the configured lists from disk into one compiled snapshot (the I/O shell around parse.py and
compiled.py). A url list is read from its stored copy in `state_dir`: start never waits for the network,
and a url list with no copy yet starts empty.

The snapshot is a file (`<state_dir>/lists.snapshot`, or a private temporary folder without a state_dir),
mapped read-only: a million names cost about 17 MB, and a restart whose lists have not changed (same files,
sizes and times, same list settings) maps the snapshot it left instead of parsing again; a reload whose lists
have not changed keeps the snapshot in use (`current`), the same object. A path list's file is used only once it
passes the checks a download passes (guard.py); until then its last good version stays in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from filterd.blocklists.builtin import builtin_path
from filterd.blocklists.compiled import CompiledMatcher, CompileError, CompileReport, ListFile, compile_and_open
from filterd.blocklists.guard import FileGuard, FileVersion, discard
from filterd.blocklists.state import StateDir, open_state
from filterd.config.schema import Config, ListConfig
from filterd.errors import ListError

log = logging.getLogger(__name__)

SNAPSHOT_NAME = "lists.snapshot"
_FORMAT_VERSION = 4  # 2: brand rules and name patterns in the snapshot; 3: public suffixes refused, file versions;
# 4: exceptions counted per list


@dataclass(frozen=True, slots=True)
class LoadedLists:
    matcher: CompiledMatcher
    #: list name -> number of block entries
    entries: dict[str, int]
    #: list name -> where it was read from (for messages and `filterd check`)
    sources: dict[str, str]
    #: path list name -> why its file is not in use (its last good version, or nothing, is): guard.py
    problems: dict[str, str] = field(default_factory=dict)


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


def list_file(cfg: ListConfig, path: Path) -> ListFile:
    """What the compiler needs to read `path` as list `cfg`."""
    return ListFile(cfg.name, cfg.category, path, cfg.format.value, cfg.subdomains, cfg.allow_suffixes)


def _describe(cfg: ListConfig, state: StateDir | None) -> str:
    if cfg.url:
        return f"{cfg.url} (copy: {state.copy_path(cfg.name) if state else '-'})"
    return str(list_path(cfg, state))


@dataclass(frozen=True, slots=True)
class _Input:
    """One list as it will be compiled: the file read, and the fingerprint's view of which version it is."""

    cfg: ListConfig
    item: ListFile
    key: tuple[object, ...]
    version: FileVersion | None = None  # a path list's


def _inputs(
    configs: Sequence[ListConfig], state: StateDir | None, empty: Path, guard: FileGuard, force: Collection[str]
) -> list[_Input]:
    inputs = []
    for cfg in configs:
        if not cfg.enabled:
            continue
        if cfg.path is not None:
            version = guard.prepare(cfg, force=cfg.name in force)
            inputs.append(_Input(cfg, list_file(cfg, version.path or empty), version.key, version))
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
        try:
            info = path.stat()
        except OSError as exc:
            raise ListError(cfg.name, f"cannot read {path}: {exc.strerror or exc}") from None
        inputs.append(_Input(cfg, list_file(cfg, path), (str(path), info.st_size, info.st_mtime_ns)))
    return inputs


def fingerprint(inputs: Sequence[_Input]) -> str:
    """Changes whenever a list's settings or the version of its file (size, modification time) change."""
    parts: list[object] = [_FORMAT_VERSION]
    for i in inputs:
        item = i.item
        parts.append([item.name, item.category, item.fmt, item.subdomains, item.allow_suffixes, *i.key])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def load_lists(
    configs: Sequence[ListConfig],
    state: StateDir | None,
    snapshot: Path,
    *,
    current: CompiledMatcher | None = None,
    guard: FileGuard | None = None,
    isolated: bool = False,
    parallel: bool | None = None,
    force: Collection[str] = (),
) -> LoadedLists:
    """Compile every enabled list into `snapshot` (or reuse it when nothing changed) and map it.

    `current`: the snapshot in use, returned itself when the lists have not changed. `guard`: the server's
    FileGuard (default: one on `files/` beside the snapshot). `isolated`: compile in a child process (a server
    that is answering); `parallel`: a large list read by two processes (compiled.py's `_Part`; by default only when
    not `isolated`). `force`: path lists whose new version is taken even if it shrank (`lists update --force`).
    Raises ListError naming a list that cannot be read (a path list never does: its last good version serves).
    CPU and I/O for seconds with a million names: call it off the event loop once serving."""
    empty = snapshot.with_name("empty.txt")
    if not empty.exists():
        empty.write_text("")
    guard = guard if guard is not None else FileGuard(snapshot.with_name("files"))
    where = {cfg.name: _describe(cfg, state) for cfg in configs if cfg.enabled}
    inputs = _inputs(configs, state, empty, guard, force)
    # Lists with a new file version are compiled aside, and put in place only once those versions pass: the
    # snapshot on disk only ever holds versions that did (a restart may map it without checking them again).
    pending = snapshot.with_name(f"{snapshot.name}.pending")
    candidates = [i for i in inputs if i.version is not None and i.version.candidate]
    try:
        loaded, report = _load(
            inputs, pending if candidates else snapshot, current, isolated, parallel, where, snapshot
        )
        if report is None:  # the lists in use, or the snapshot on disk: these versions passed once already
            for i in candidates:
                assert i.version is not None
                guard.accept(i.cfg, i.version, loaded.entries.get(i.cfg.name, 0))
            return loaded
        failed = {}
        for i in candidates:
            assert i.version is not None
            name = i.cfg.name
            problem = guard.verify(
                i.cfg, i.version, report.entries[name], report.read[name], report.skipped[name], force=name in force
            )
            if problem is not None:
                failed[name] = guard.reject(i.cfg, i.version, problem)
        if failed:  # compile again, with their last good versions (once: a rejected version is no candidate)
            loaded.matcher.close()
            inputs = [_replaced(i, failed[i.cfg.name], empty) if i.cfg.name in failed else i for i in inputs]
            candidates = [i for i in inputs if i.version is not None and i.version.candidate]
            loaded, report = _load(inputs, snapshot, current, isolated, parallel, where, snapshot)
        elif candidates:
            os.replace(pending, snapshot)  # the mapping stays valid: it follows the file
            loaded.matcher.path = snapshot
        for i in candidates:
            assert i.version is not None
            guard.accept(i.cfg, i.version, report.entries[i.cfg.name] if report else loaded.entries.get(i.cfg.name, 0))
        if report is not None:
            _log_skipped(report, where)
        return loaded
    finally:
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        for i in inputs:
            if i.version is not None:
                discard(i.version)  # a candidate not taken (an accepted one has been moved already)


def _replaced(item: _Input, version: FileVersion, empty: Path) -> _Input:
    return _Input(item.cfg, list_file(item.cfg, version.path or empty), version.key, version)


def _load(
    inputs: Sequence[_Input],
    out: Path,
    current: CompiledMatcher | None,
    isolated: bool,
    parallel: bool | None,
    where: dict[str, str],
    snapshot: Path,
) -> tuple[LoadedLists, CompileReport | None]:
    """Map the lists in use or the `snapshot` on disk if they are `inputs`, else compile them into `out`: the
    lists, and the compile's report (None when nothing was compiled)."""
    mark = fingerprint(inputs)
    problems = {i.cfg.name: i.version.problem.reason for i in inputs if i.version and i.version.problem}
    if current is not None and current.fingerprint == mark:
        return LoadedLists(current, current.entry_counts(), where, problems), None
    if current is None and snapshot.exists():
        try:
            mapped = CompiledMatcher(snapshot)
        except (CompileError, OSError, ValueError) as exc:
            log.warning("lists: ignoring the snapshot %s (%s): compiling again", snapshot, exc)
        else:
            if mapped.fingerprint == mark:
                log.info("lists: the lists have not changed: serving the compiled snapshot %s", snapshot)
                return LoadedLists(mapped, mapped.entry_counts(), where, problems), None
            mapped.close()
    try:
        report, matcher = compile_and_open(
            [i.item for i in inputs], out, fingerprint=mark, isolated=isolated, parallel=parallel
        )
    except (OSError, CompileError) as exc:
        raise ListError("lists", f"cannot compile the lists into {snapshot}: {exc}") from None
    return LoadedLists(matcher, matcher.entry_counts(), where, problems), report


def _log_skipped(report: CompileReport, where: dict[str, str]) -> None:
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


@dataclass(frozen=True, slots=True)
class Prepared:
    """The state_dir (locked) and the lists, loaded before the server is built (`prepare`)."""

    state: StateDir
    guard: FileGuard
    lists: LoadedLists


def prepare(config: Config) -> Prepared | None:
    """What `App.start` loads first, loaded ahead: `filterd serve` runs this in a thread while the rest of filterd is
    imported, and the server takes it over. The compile runs in a child process (and its helper: compiled.py's
    `_Part`), so the importing thread keeps the interpreter. None without a state_dir in use (the server then
    compiles into a private folder itself); raises what `App.start` would (the caller lets the server meet it
    again, and say it)."""
    state = open_state(config)
    if state is None:
        return None
    try:
        snapshot = state.path / SNAPSHOT_NAME
        guard = FileGuard(snapshot.with_name("files"))
        lists = load_lists(config.lists, state, snapshot, guard=guard, isolated=True, parallel=True)
    except BaseException:
        state.close()
        raise
    return Prepared(state, guard, lists)
