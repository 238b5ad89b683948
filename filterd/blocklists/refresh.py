"""Keeping url lists current without ever losing a good one.

Each enabled url list has a task that downloads it every `refresh` (jittered), checks the download and,
only if it passes, stores it as the new good copy, compiles the lists into a new snapshot and swaps it into the
running PolicyStage (one reference assignment: a query sees the old lists or the new, never a mix). Anything
else (a failed, truncated, empty, oversized, unparseable or much smaller download) leaves the last good
copy in use, and is reported in the log as `NAME:LINE: reason` and in `filterd_list_refresh_total`.

The checks (`examine`, `shrink_problem`: the rules are in checks.py, shared with file lists) and the schedule
(`first_delay`, `next_delay`) are pure functions. Downloads are counted and the lists compiled in a child process
(compiled.py), so a million names never hold up the event loop's thread.
`ListRefresher.update()` is the entry point for an admin's "refresh now" (`filterd lists update`).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from filterd.blocklists.checks import Problem, TextCheck, count_problem, shrink_problem
from filterd.blocklists.compiled import compile_lists
from filterd.blocklists.guard import FileGuard
from filterd.blocklists.load import SNAPSHOT_NAME, LoadedLists, list_file, load_lists
from filterd.blocklists.matcher import BlockIndex
from filterd.blocklists.parse import Skipped
from filterd.blocklists.sources import Exchange, FetchError, ListFetcher, RetryPolicy, UpstreamDnsResolver
from filterd.blocklists.state import ListMeta, StateDir
from filterd.config.schema import Config, Endpoint, ListConfig
from filterd.config.units import format_duration, format_size
from filterd.errors import FilterdError
from filterd.metrics import Metrics
from filterd.pipeline.policy import PolicyStage
from filterd.tasks import cancel

log = logging.getLogger(__name__)

__all__ = [
    "ListRefresher",
    "ListStatus",
    "ListSummary",
    "Problem",
    "RefreshResult",
    "Result",
    "UnknownList",
    "examine",
    "first_delay",
    "next_delay",
    "shrink_problem",
]

T = TypeVar("T")

#: How a failed refresh is retried: soon, but never more often than the list's own refresh.
FAILED_RETRY = 3600.0
#: Each wait is its nominal length times a random factor in [1 - JITTER, 1 + JITTER].
JITTER = 0.1


class Result(enum.StrEnum):
    """The `result` label of filterd_list_refresh_total."""

    UPDATED = "updated"
    NOT_MODIFIED = "not_modified"
    #: No complete download: HTTP error, timeout, network or DNS error, truncated body.
    FAILED = "failed"
    #: Downloaded but not used: empty, unparseable, over max_bytes, or shrank below shrink_guard.
    REJECTED = "rejected"


class UnknownList(FilterdError):
    """update() was asked for a list that is not an enabled url list."""


@dataclass(frozen=True, slots=True)
class RefreshResult:
    """What one refresh of one list did (returned by update() for the admin API, and logged)."""

    list: str
    result: Result
    #: One line for an admin: what happened and what is in use now.
    message: str
    #: Names the list blocks after this refresh (the new copy's, or the last good copy's).
    entries: int


@dataclass(frozen=True, slots=True)
class ListStatus:
    """One url list as the refresher knows it (for `filterd lists show`)."""

    name: str
    url: str
    entries: int
    last_success: float | None
    last_attempt: float | None
    last_error: str | None
    next_refresh: float | None


# --- pure: checking a download ---------------------------------------------------------------------------


def examine(data: bytes, cfg: ListConfig, *, isolated: bool = False) -> tuple[ListSummary | None, Problem | None]:
    """Parse a download, or say why it is not a list (the rules are checks.py's, but the shrink guard, which
    needs the last good copy). `isolated`: count it in a child process (see compiled.py), off this one's GIL."""
    if len(data) > cfg.max_bytes:
        return None, Problem(f"{len(data)} bytes, over max_bytes ({format_size(cfg.max_bytes)})")
    check = TextCheck(cfg.max_bytes)
    problem = check.feed(data) or check.finish()
    if problem is not None:
        return None, problem
    summary = summarize(data, cfg, isolated=isolated)
    problem = count_problem(summary.read, summary.skipped)
    return (None, problem) if problem is not None else (summary, None)


@dataclass(frozen=True, slots=True)
class ListSummary:
    """What a download holds, counted the way the compiled lists count it, without keeping the entries."""

    #: distinct block entries (the unit of shrink_guard and of filterd_blocklist_entries)
    entries: int
    #: rules read, repeats and exceptions included
    read: int
    skipped: Skipped
    format: str


def summarize(data: bytes, cfg: ListConfig, *, isolated: bool = False) -> ListSummary:
    """Count a download by compiling it alone into a scratch snapshot: memory stays at the table's size
    (12 bytes a slot, in a file) instead of an object per entry, whatever the list's size."""
    with tempfile.TemporaryDirectory(prefix="filterd-check-") as scratch:
        path = Path(scratch) / "download.txt"
        path.write_bytes(data)
        item = list_file(cfg, path)
        report = compile_lists([item], Path(scratch) / "check.snapshot", isolated=isolated)
    return ListSummary(
        report.entries[cfg.name], report.read[cfg.name], report.skipped[cfg.name], report.formats[cfg.name]
    )


# --- pure: when to refresh ---------------------------------------------------------------------------------


def jittered(seconds: float, rng: random.Random) -> float:
    return seconds * rng.uniform(1 - JITTER, 1 + JITTER)


def first_delay(meta: ListMeta | None, has_copy: bool, refresh: float, now: float, rng: random.Random) -> float:
    """Seconds until the first refresh after start: at once without a usable copy, else when it falls due."""
    if not has_copy or meta is None or meta.last_success is None:
        return 0.0
    due = meta.last_success + jittered(refresh, rng) - now
    return min(max(due, 0.0), refresh * (1 + JITTER))  # a clock set back must not postpone it for ever


def next_delay(result: Result, refresh: float, rng: random.Random) -> float:
    """Seconds until the next refresh: `refresh`, or at most FAILED_RETRY after a failed download."""
    if result is Result.FAILED:
        return jittered(min(refresh, FAILED_RETRY), rng)
    return jittered(refresh, rng)


def retry_policy(refresh: float) -> RetryPolicy:
    """3 attempts; the first retry after refresh/20 (at most 30 s), so short refreshes retry quickly."""
    return RetryPolicy(attempts=3, first_delay=min(30.0, refresh / 20))


# --- the I/O shell -------------------------------------------------------------------------------------------


async def off_loop(func: Callable[..., T], *args: object) -> T:
    """Run blocking work (parsing, compiling, fsync) off the event loop: the one place that decides where.

    A worker thread for now; a child process would keep a million-name parse off the GIL entirely.
    """
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


class ListRefresher:
    """Refreshes every enabled url list in the background and swaps the result into `policy`.

    `update(names, force)` refreshes now (the admin API's entry point); `status()` reports each list.
    """

    def __init__(
        self,
        config: Config,
        state: StateDir,
        lists: LoadedLists,
        policy: PolicyStage,
        metrics: Metrics,
        fetcher: ListFetcher,
        *,
        snapshot: Path | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        guard: FileGuard | None = None,
    ) -> None:
        self.configs = tuple(config.lists)
        self.urls = {cfg.name: cfg for cfg in self.configs if cfg.url and cfg.enabled}
        self.state = state
        #: Where the lists are compiled after a download (the same snapshot the server maps).
        self.snapshot = snapshot if snapshot is not None else state.path / SNAPSHOT_NAME
        #: The server's keeper of the path lists' last good versions (they are compiled too).
        self.guard = guard
        self.policy = policy
        self.metrics = metrics
        self.fetcher = fetcher
        self.clock = clock
        self.rng = rng or random.Random()
        self.entries = dict(lists.entries)
        self._locks = {name: asyncio.Lock() for name in self.urls}
        self._build_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._next: dict[str, float] = {}
        for name in self.urls:
            for result in Result:
                metrics.list_refresh.labels(list=name, result=result.value)  # export zeros from the start
            meta = state.read_meta(name)
            if meta is not None and meta.last_success is not None and state.copy_path(name).exists():
                metrics.list_last_success.labels(list=name).set(meta.last_success)

    @classmethod
    def create(
        cls,
        config: Config,
        state: StateDir,
        lists: LoadedLists,
        policy: PolicyStage,
        metrics: Metrics,
        upstreams: Sequence[Endpoint],
        snapshot: Path | None = None,
        guard: FileGuard | None = None,
        exchange: Exchange | None = None,
    ) -> ListRefresher:
        """The refresher as filterd runs it: list hosts resolved by asking `upstreams` directly (through
        `exchange`, the running resolver's, when given: it speaks DoT and DoH)."""
        resolver = UpstreamDnsResolver(upstreams, timeout=max(config.dns.timeout, 2.0), exchange=exchange)
        return cls(config, state, lists, policy, metrics, ListFetcher(resolver), snapshot=snapshot, guard=guard)

    def start(self) -> None:
        """One task per url list; the first refresh runs at once for a list with no copy (or an old one)."""
        now = self.clock()
        for name, cfg in self.urls.items():
            meta = self.state.read_meta(name)
            has_copy = self.state.copy_path(name).exists() and (meta is None or meta.url == cfg.url)
            delay = first_delay(meta, has_copy, cfg.refresh, now, self.rng)
            self._tasks.append(asyncio.create_task(self._run(cfg, delay), name=f"refresh {name}"))

    async def stop(self) -> None:
        """Cancel the tasks (an unfinished download is dropped; the stored copy is untouched) and close."""
        await cancel(self._tasks)
        self._tasks.clear()
        await self.fetcher.close()

    async def update(self, names: Sequence[str] | None = None, force: bool = False) -> list[RefreshResult]:
        """Refresh the named url lists now (all of them when None or empty), one after another.

        `force`: download unconditionally (no If-None-Match) and accept a copy that shrank below
        shrink_guard; every other check still applies, so force never installs an empty or broken list.
        Raises UnknownList for a name that is not an enabled url list.
        """
        wanted = list(dict.fromkeys(names)) if names else list(self.urls)
        unknown = [name for name in wanted if name not in self.urls]
        if unknown:
            known = ", ".join(self.urls) or "none"
            raise UnknownList(f"not a url list: {', '.join(unknown)} (url lists: {known})")
        return [await self.refresh(self.urls[name], force=force) for name in wanted]

    def status(self) -> list[ListStatus]:
        out = []
        for name, cfg in self.urls.items():
            meta = self.state.read_meta(name) or ListMeta(url=cfg.url or "")
            out.append(
                ListStatus(
                    name=name,
                    url=cfg.url or "",
                    entries=self.entries.get(name, 0),
                    last_success=meta.last_success,
                    last_attempt=meta.last_attempt,
                    last_error=meta.last_error,
                    next_refresh=self._next.get(name),
                )
            )
        return out

    async def _run(self, cfg: ListConfig, delay: float) -> None:
        while True:
            self._next[cfg.name] = self.clock() + delay
            await asyncio.sleep(delay)
            try:
                outcome = await self.refresh(cfg)
            except Exception:  # a bug must not end the refreshes of this list for good
                log.exception("list %s: refresh crashed; the last good copy stays in use", cfg.name)
                outcome = RefreshResult(cfg.name, Result.FAILED, "crashed", self.entries.get(cfg.name, 0))
            delay = next_delay(outcome.result, cfg.refresh, self.rng)

    async def refresh(self, cfg: ListConfig, *, force: bool = False) -> RefreshResult:
        """Download, check and (if good) install one list; report and count the result."""
        async with self._locks[cfg.name]:
            result = await self._refresh(cfg, force)
        self.metrics.list_refresh.labels(list=cfg.name, result=result.result.value).inc()
        return result

    async def _refresh(self, cfg: ListConfig, force: bool) -> RefreshResult:
        name, url = cfg.name, cfg.url or ""
        now = self.clock()
        stored = self.state.read_meta(name)
        has_copy = self.state.copy_path(name).exists()
        same = has_copy and (stored is None or stored.url == url)  # the copy in use is of this url
        meta = stored if stored is not None and stored.url == url else ListMeta(url=url)
        conditional = same and not force
        try:
            download = await self.fetcher.fetch(
                url,
                timeout=cfg.timeout,
                max_bytes=cfg.max_bytes,
                etag=meta.etag if conditional else None,
                last_modified=meta.last_modified if conditional else None,
                retry=retry_policy(cfg.refresh),
            )
        except FetchError as exc:
            if exc.kind == "too_large":
                return await self._not_used(cfg, meta, Result.REJECTED, Problem(str(exc)), now)
            return await self._not_used(cfg, meta, Result.FAILED, Problem(f"download from {url} failed: {exc}"), now)
        if download.body is None:
            return await self._unchanged(name, meta, now)
        body = download.body
        if same and await off_loop(_same_bytes, self.state, name, body):
            # A server without ETag / Last-Modified support sent the same file again: nothing to rebuild.
            meta = replace(meta, etag=download.etag, last_modified=download.last_modified)
            return await self._unchanged(name, meta, now)
        summary, problem, entries = await off_loop(_check, body, cfg)
        last_good = self.entries.get(name, 0) if same else 0
        if summary is not None and problem is None:
            problem = shrink_problem(entries, last_good, cfg.shrink_guard, force=force, name=name)
        if problem is not None or summary is None:
            return await self._not_used(cfg, meta, Result.REJECTED, problem or Problem("unusable"), now)
        try:
            async with self._build_lock:
                await off_loop(self.state.write_copy, name, body)
                rebuilt = await off_loop(self._load)
                self._install(rebuilt.matcher)
        except (OSError, ValueError) as exc:
            return await self._not_used(cfg, meta, Result.FAILED, Problem(f"cannot install the download: {exc}"), now)
        meta = ListMeta(
            url=url,
            etag=download.etag,
            last_modified=download.last_modified,
            last_success=now,
            last_attempt=now,
            last_error=None,
            size=len(body),
            entries=self.entries.get(name, 0),
        )
        await self._save_meta(name, meta)
        self.metrics.list_last_success.labels(list=name).set(now)
        entries = self.entries.get(name, 0)
        was = f"was {last_good}" if same else "first download" if not has_copy else "new url"
        if force:
            was += ", forced"
        log.info("list %s: updated from %s: %d names (%s), %s", name, url, entries, was, format_size(len(body)))
        skipped = summary.skipped
        if skipped.count:
            log.warning(
                "%s:%s: %s (%d unsupported or invalid lines skipped in all)",
                name,
                skipped.sample_line,
                skipped.sample_reason,
                skipped.count,
            )
        return RefreshResult(name, Result.UPDATED, f"updated: {entries} names ({was})", entries)

    async def _unchanged(self, name: str, meta: ListMeta, now: float) -> RefreshResult:
        """The stored copy is current (HTTP 304, or the same bytes again): a success with nothing to do."""
        await self._save_meta(name, replace(meta, last_success=now, last_attempt=now, last_error=None))
        self.metrics.list_last_success.labels(list=name).set(now)
        entries = self.entries.get(name, 0)
        log.info("list %s: not modified since the last download (%d names)", name, entries)
        return RefreshResult(name, Result.NOT_MODIFIED, f"not modified ({entries} names)", entries)

    def _load(self) -> LoadedLists:
        """The lists compiled again (in a child process: the server is answering) with the new download."""
        return load_lists(self.configs, self.state, self.snapshot, guard=self.guard, isolated=True)

    def _install(self, matcher: BlockIndex) -> None:
        """Swap the new matcher in (on the loop thread: one reference assignment) and export its counts."""
        self.policy.replace_matcher(matcher)
        self.entries = matcher.entry_counts()
        for list_name, count in self.entries.items():
            self.metrics.blocklist_entries.labels(list=list_name).set(count)

    async def _not_used(
        self, cfg: ListConfig, meta: ListMeta, result: Result, problem: Problem, now: float
    ) -> RefreshResult:
        """Report a download that is not used; the last good copy (if any) stays in use."""
        name = cfg.name
        entries = self.entries.get(name, 0)
        if self.state.copy_path(name).exists():
            since = f", from {_when(meta.last_success)}" if meta.last_success else ""
            keeps = f"the last good copy ({entries} names{since}) stays in use"
        else:
            keeps = "there is no good copy yet: the list blocks nothing until a download succeeds"
        retry = min(cfg.refresh, FAILED_RETRY) if result is Result.FAILED else cfg.refresh
        rejected = f"; rejected the download from {cfg.url}" if result is Result.REJECTED else ""
        hint = f"; {problem.hint}" if problem.hint else ""
        message = f"{problem.where(name)}: {problem.reason}{rejected}; {keeps}{hint}"
        log.warning("%s; next try in about %s", message, format_duration(round(retry)))
        await self._save_meta(name, replace(meta, last_attempt=now, last_error=problem.reason))
        return RefreshResult(name, result, message, entries)

    async def _save_meta(self, name: str, meta: ListMeta) -> None:
        try:
            await off_loop(self.state.write_meta, name, meta)  # fsync: slow on an SD card
        except OSError as exc:
            log.error("list %s: cannot write %s: %s", name, self.state.meta_path(name), exc.strerror or exc)


def _same_bytes(state: StateDir, name: str, body: bytes) -> bool:
    try:
        return state.read_copy(name) == body
    except OSError:
        return False


def _check(body: bytes, cfg: ListConfig) -> tuple[ListSummary | None, Problem | None, int]:
    """examine(), with the entry count, in one call for off_loop (counted in a child process: see examine)."""
    summary, problem = examine(body, cfg, isolated=True)
    return summary, problem, 0 if summary is None else summary.entries


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(timestamp))
