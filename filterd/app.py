"""The composition root: config -> lists -> pipeline -> listeners. The only place filterd is assembled."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import secrets
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry

from filterd import __version__, systemd
from filterd.blocklists.compiled import CompiledMatcher
from filterd.blocklists.guard import FileGuard
from filterd.blocklists.load import SNAPSHOT_NAME, LoadedLists, Prepared, list_path, load_lists
from filterd.blocklists.local import LOCAL_LIST, LocalLists
from filterd.blocklists.matcher import Match
from filterd.blocklists.refresh import ListRefresher
from filterd.blocklists.rules import public_suffixes
from filterd.blocklists.sources import UpstreamDnsResolver
from filterd.blocklists.state import StateDir, open_state
from filterd.config.load import EMBEDDED_NAME, load_config, load_embedded
from filterd.config.resolvconf import default_upstreams
from filterd.config.schema import (
    BlockpageConfig,
    BlockpageHttpsConfig,
    BlockpageTexts,
    Config,
    EncryptedUpstream,
    Endpoint,
    SafeSearchConfig,
)
from filterd.errors import ConfigError, FilterdError
from filterd.explain import CheckError, explain
from filterd.groups.clock import ScheduleClock
from filterd.groups.model import Directory, Group, build_groups, find_group
from filterd.groups.sources import DirectoryRefresher, build_directory
from filterd.logs import ClientEvents, printable
from filterd.metrics import Metrics
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Pipeline
from filterd.pipeline.bypass import BypassStage, own_names
from filterd.pipeline.cache import CacheStage, DnsCache
from filterd.pipeline.client import ClientStage
from filterd.pipeline.cname import CnameStage
from filterd.pipeline.ddr import DdrStage, Designation
from filterd.pipeline.local import LocalStage
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.pipeline.ratelimit import RateLimitStage
from filterd.pipeline.rebind import RebindStage
from filterd.pipeline.safesearch import SafeSearchRules, SafeSearchStage, shipped_rewrites
from filterd.pipeline.upstream import UpstreamResolver, upstreams_for
from filterd.portholder import describe as describe_holders
from filterd.portholder import find_holders
from filterd.querylog.events import QueryEvents, Row
from filterd.querylog.record import Privacy
from filterd.querylog.report import Report
from filterd.querylog.report import build as build_report
from filterd.querylog.store import QUERYLOG_NAME, Identity, QueryLog, as_dict, querylog_key
from filterd.querylog.suggest import pattern_words
from filterd.querylog.suggest import suggest as suggest_names
from filterd.safeguarding.engine import Alert, AlertEngine
from filterd.safeguarding.notify import Notifier, compose
from filterd.sinkhole import BlockedReplies
from filterd.transport.handler import QueryHandler
from filterd.transport.tcp import TcpLimits, TcpServer
from filterd.transport.udp import SocketUdpServer, UdpServer, reads_its_own_sockets
from filterd.transport.udp_wildcard import WildcardUdpServer
from filterd.upstreams.bootstrap import bootstrap_lookup, bootstrap_resolvers
from filterd.upstreams.pool import EncryptedUpstreams
from filterd.web.admin import AdminRequestError, admin_app
from filterd.web.blockpage import blockpage_app
from filterd.web.console import Console
from filterd.web.dashboard import devices_by_group
from filterd.web.metrics import metrics_app
from filterd.web.runner import HttpRunner
from filterd.workers.merge import Exported
from filterd.workers.pool import Serve, WorkerError, WorkerPool, worker_config

if TYPE_CHECKING:  # (cryptography and hypercorn cost 12 MB and 0.1 s to import: only when DoT/DoH or HTTPS is on)
    from filterd.tls.leaves import Certificates
    from filterd.transport.certs import LocalCaCertificates, ServedCertificates
    from filterd.transport.encrypted import EncryptedListeners
    from filterd.web.https import HttpsListener

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")

#: Linux's IP_FREEBIND (15) and IPV6_FREEBIND (78), which Python's socket module does not name: bind an address
#: this machine does not have yet. Empty elsewhere.
_FREEBIND: dict[int, tuple[int, int]] = (
    {socket.AF_INET: (socket.IPPROTO_IP, 15), socket.AF_INET6: (socket.IPPROTO_IPV6, 78)}
    if sys.platform == "linux"
    else {}
)


class StartupError(FilterdError):
    """filterd cannot start as configured; the message says why and what to do."""


def resolve_upstreams(config: Config, resolv_conf: Path = RESOLV_CONF) -> tuple[Endpoint, ...]:
    if config.dns.upstreams:
        _check_bootstrap(config, resolv_conf)
        return config.dns.upstreams
    try:
        text = resolv_conf.read_text()
    except OSError as exc:
        raise StartupError(
            f"dns.upstreams is not set and {resolv_conf} cannot be read ({exc.strerror}): "
            "set dns.upstreams, e.g. [192.168.1.1]"
        ) from None
    usable, own = default_upstreams(text, config.dns.listen)
    if own:
        log.warning("upstreams: left out %s from %s: that is filterd itself", ", ".join(map(str, own)), resolv_conf)
    if not usable:
        raise StartupError(
            f"dns.upstreams is not set and {resolv_conf} names no nameserver other than filterd "
            "itself: set dns.upstreams to your router or ISP resolver, e.g. [192.168.1.1]"
        )
    return tuple(usable)


@dataclass
class Listening:
    """What the running server actually bound (ports resolved when the config said 0)."""

    dns: list[Endpoint] = field(default_factory=list)
    metrics: Endpoint | None = None
    blockpage: list[Endpoint] = field(default_factory=list)
    blockpage_https: list[Endpoint] = field(default_factory=list)
    admin: Endpoint | None = None
    #: DNS over TLS and DNS over HTTPS (`dns.tls_listen`, `dns.https_listen`), as bound.
    dot: list[Endpoint] = field(default_factory=list)
    doh: list[Endpoint] = field(default_factory=list)


class App:
    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        tcp: TcpLimits | None = None,
        clock: Callable[[], float] = time.time,
        tls_check_interval: float = 3600.0,
    ) -> None:
        self.config = config
        self.tcp_limits = tcp if tcp is not None else TcpLimits()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, __version__)
        #: Malformed requests, resets, wrong tokens: counted, and logged at most once a minute each.
        self.client_events = ClientEvents(self.metrics.client_events)
        self._asyncio_filter = self.client_events.asyncio_filter()
        self.listening = Listening()
        self._transports: list[asyncio.BaseTransport] = []
        #: UDP sockets read by filterd itself: wildcard addresses, and every address on stock asyncio.
        self._reading_udp: list[SocketUdpServer] = []
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self.lists: LoadedLists | None = None
        #: The path lists' last good versions (set at start, beside the compiled snapshot).
        self.guard: FileGuard | None = None
        self.state: StateDir | None = None
        self.refresher: ListRefresher | None = None
        self.policy: PolicyStage | None = None
        self.pipeline: Pipeline | None = None
        self.cache: DnsCache | None = None
        self.access: AccessStage | None = None
        self.resolver: UpstreamResolver | None = None
        self.local_stage: LocalStage | None = None
        self.bypass: BypassStage | None = None
        self.safe_search: SafeSearchStage | None = None
        self.local_lists = LocalLists(None)
        self.handler: QueryHandler | None = None
        self.upstreams: tuple[Endpoint, ...] = ()
        self.started = time.time()
        self.lists_loaded = time.time()
        self._reload_lock = asyncio.Lock()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        #: Wall clock for schedules (injected by tests).
        self.clock: Callable[[], float] = clock
        self.groups: tuple[Group, ...] = ()
        self.client_stage: ClientStage | None = None
        self.schedule_clock: ScheduleClock | None = None
        self.directory_refresher: DirectoryRefresher | None = None
        self.querylog: QueryLog | None = None
        self.alert_engine: AlertEngine | None = None
        self.notifier: Notifier | None = None
        #: The HTTPS block page's certificates and listeners (`blockpage.https`).
        self.certificates: Certificates | None = None
        self._https: list[HttpsListener] = []
        #: DoT and DoH served to clients (None: neither is configured).
        self.encrypted_listeners: EncryptedListeners | None = None
        #: With `tls: {mode: local-ca}`: the task that makes the DoT/DoH certificate again before it ends.
        self._tls_renewal: asyncio.Task[None] | None = None
        #: How often that task looks (seconds); a renewal is due two days before the end, so hourly is plenty.
        self.tls_check_interval = tls_check_interval
        self.ddr = DdrStage()
        #: `dns.workers` above 1: the other processes answering DNS (started last, stopped first), and the DNS
        #: sockets bound with SO_REUSEPORT so they can share them. A worker's own App joins the main one's.
        self.workers: WorkerPool | None = None
        self.reuse_port = config.dns.workers > 1
        self.join_port = False
        #: The query log and the alerts (also told of the workers' answers).
        self._events: QueryEvents | None = None

    def build_pipeline(
        self,
        lists: LoadedLists,
        upstreams: tuple[Endpoint, ...],
        *,
        cache: DnsCache | None = None,
        resolver: UpstreamResolver | None = None,
    ) -> Pipeline:
        """The stages for the current config; a reload passes the running `cache` and `resolver` when what they
        hold is still right (see `_reload`)."""
        cfg = self.config
        zones = dict(cfg.dns.forward_zones)
        self.policy = PolicyStage(lists.matcher, AllowList(cfg.allow), BlockedReplies(cfg.blocking), self.local_lists)
        self.cache = cache or DnsCache(cfg.cache.size, cfg.cache.min_ttl, cfg.cache.max_ttl, cfg.cache.stale_max)
        self.policy.on_change.append(self.cache.clear)
        self.policy.on_change.append(self._sync_workers)  # the workers' lists and local entries too
        self.metrics.watch_cache(self.cache)
        self.local_stage = LocalStage(dict(cfg.dns.records), forward_zones=zones)
        self.groups = build_groups(cfg.groups, cfg.schedules)
        self.client_stage = ClientStage(self.groups, self.client_stage.directory if self.client_stage else None)
        self.schedule_clock = ScheduleClock(self.groups, cfg.schedules, self.policy.changed, self.clock)
        self.schedule_clock.tick()  # the groups' rules as of now, before the first query
        self.bypass = bypass_stage(cfg)
        self.ddr = DdrStage()
        self._designate()
        self.resolver = resolver or UpstreamResolver(
            upstreams, cfg.dns.timeout, self.metrics, zones=zones, encrypted=encrypted_clients(cfg, upstreams)
        )
        self.safe_search = SafeSearchStage(cfg.safe_search, self.resolver)
        self.access = AccessStage(cfg.dns.allow_clients)
        self.metrics.proxy.configure(cfg.dns.proxy_protocol)  # before access: it says who the client is
        stages = [
            # First: a client we do not serve learns nothing and costs nothing.
            self.access,
            # Right after access: a flood costs one bucket lookup before any group, cache or list work (an outsider
            # is refused first and never fills a bucket). UDP only; left out when `ratelimit: false`.
            *([RateLimitStage(cfg.ratelimit, self.metrics.ratelimited)] if cfg.ratelimit.enabled else []),
            # Before everything that depends on who is asking: the client's group (one memoised lookup).
            self.client_stage,
            # Before bypass, which answers NODATA for resolver.arpa: DDR designating filterd's own DoT/DoH, only
            # when it serves them (so clients that upgrade, upgrade to the filter).
            *([self.ddr] if cfg.dns.tls_listen or cfg.dns.https_listen else []),
            # Before local, cache and policy: the bypass signals (Firefox's canary, iCloud Private Relay, DDR) must
            # get their rcode, never a local zone's NXDOMAIN, a cached upstream answer or a list's sinkhole.
            self.bypass,
            # Before policy: the admin's own names, localhost, and names that must never leak (RFC 6761,
            # RFC 6303) are answered here and never depend on the lists; ANY and AXFR never go out.
            self.local_stage,
            # Before policy: a hit costs no list lookup. Safe: only answers that passed policy are stored, and
            # any change to the lists clears the cache. Serves stale when every upstream fails.
            CacheStage(self.cache),
            # Before the upstream: a blocked name is never sent out.
            self.policy,
            # After policy: a blocked search engine stays blocked. Inside the cache, which never stores its answers
            # (they are local), so no client gets another's safe search setting; asks the resolver for the safe hosts.
            self.safe_search,
            # Inside the cache: only answers whose CNAME chain passed the lists are cached.
            CnameStage(self.policy),
            # Inside the cache: an answer that puts a public name on a LAN address (DNS rebinding) is dropped
            # before it can be cached; the LAN's own zones, records and rebind_allow are exempt.
            RebindStage(
                [zone for zone, _ in cfg.dns.forward_zones]
                + [name for name, _ in cfg.dns.records]
                + list(cfg.dns.rebind_allow),
                enabled=cfg.dns.rebind_protection,
                on_drop=self.metrics.rebind_blocked.inc,
            ),
        ]
        # Last: the only stage that leaves the machine.
        return Pipeline(stages, self.resolver)

    async def start(self, prepared: Prepared | None = None) -> None:
        """`prepared`: the state_dir and lists already loaded for this config (`blocklists.load.prepare`, which
        `filterd serve` runs while the rest of filterd is imported); taken over as they are."""
        logging.getLogger("asyncio").addFilter(self._asyncio_filter)  # its line per write to a reset connection
        try:
            upstreams = resolve_upstreams(self.config)
        except BaseException:
            if prepared is not None:
                prepared.state.close()
            raise
        self.upstreams = upstreams
        if prepared is not None:
            self.state = prepared.state
        else:
            self.state = open_state(self.config)  # created and locked when a url list or the admin API needs it
        try:
            if self.state is not None:
                self.local_lists = LocalLists.load(self.state.path / "local.json")
            # url lists from their stored copies; an unchanged snapshot from the last run is mapped at once; a path
            # list whose file cannot be used starts with its last good version (or nothing), said loudly
            if prepared is not None:
                self.guard, self.lists = prepared.guard, prepared.lists
            else:
                self.guard = FileGuard(self._snapshot_path().with_name("files"))
                self.lists = load_lists(self.config.lists, self.state, self._snapshot_path(), guard=self.guard)
        except BaseException:
            await self.stop()
            raise
        for name, count in self.lists.entries.items():
            log.info("list %s: %d names from %s", name, count, self.lists.sources[name])
        self._export_list_counts(self.lists.entries)
        self._export_list_files(self.lists)
        self.pipeline = self.build_pipeline(self.lists, upstreams)
        log.info("pipeline: %s", self.pipeline.describe())
        log.info("upstreams: %s", ", ".join(map(str, upstreams)))
        for zone, zone_upstreams in self.config.dns.forward_zones:
            log.info("forward zone %s: %s", zone, ", ".join(map(str, zone_upstreams)))
        assert self.resolver is not None
        await self.resolver.start()
        handler = self.handler = QueryHandler(self.pipeline, self.metrics)
        self._configure_events()
        try:
            for endpoint in self.config.dns.listen:
                await self._listen_dns(endpoint, handler)
            await self._listen_encrypted(handler)
            if self.config.metrics is not None:
                self.listening.metrics = await self._listen_http(
                    self.config.metrics.listen, metrics_app(self.registry, self._worker_samples), "metrics"
                )
            if self.config.blockpage is not None:
                # After the pipeline: the page asks the policy's decision; outsiders learn nothing, as on DNS (the
                # allow_clients in force now, asked per request: a reload may change it).
                for endpoint in self.config.blockpage.listen:
                    app = blockpage_app(self.config.blockpage, self.decide, self.metrics, allowed=self.client_allowed)
                    self.listening.blockpage.append(await self._listen_http(endpoint, app, "blockpage"))
                if self.config.blockpage.https is not None:
                    await self._listen_https(self.config.blockpage, self.config.blockpage.https)
            if self.config.admin is not None:
                token = ensure_token(self.config.admin.token_file)
                # The admin page shares the listener, the token and the backend with the API (filterd/web/console.py).
                console = Console(self, token, self.client_events, session_ttl=self.config.admin.session_ttl,
                                  clock=self.clock)  # fmt: skip
                self.listening.admin = await self._listen_http(
                    self.config.admin.listen, admin_app(self, token, self.client_events, pages=console.routes), "admin"
                )
            if self.config.dns.workers > 1 and self.listening.dns:
                await self._start_workers()
        except BaseException:
            await self.stop()
            raise
        if not self.listening.dns:
            await self.stop()
            raise StartupError("no DNS listener could be opened")
        self._start_refresher()
        self._start_group_tasks()
        self._warn_about_sinkhole()

    # --- reload -----------------------------------------------------------------------------------------

    def _read_config(self) -> Config:
        source = self.config.source
        # A list file that cannot be read is no config error here: its last good version stays (guard.py).
        return load_embedded() if source == EMBEDDED_NAME else load_config(source, check_files=False)

    async def reload(self, force: Collection[str] = ()) -> dict[str, Any]:
        """Re-read the config and the lists; swap them in only if all of it is good (SIGHUP, `filterd reload`).

        Nothing the loop runs waits for the disk or a compile: the config is read in a worker thread, the lists
        are compiled in a child process (only when a list changed: the fingerprint says), and the new pipeline
        replaces the old in one assignment, so a query in flight finishes on the pipeline it started on. What did
        not change stays: the compiled lists, and the cache unless the lists or what its answers depend on
        changed (`_cache_view`). Listeners (addresses and ports) and state_dir are not re-bound: changing them
        needs a restart, and the log says so. `force`: path lists whose new version is taken even if it shrank.
        """
        async with self._reload_lock:
            started = time.monotonic()
            systemd.reloading("reloading the config and the lists")
            try:
                return await self._reload(started, force)
            finally:
                systemd.ready(f"answering DNS on {', '.join(map(str, self.listening.dns))}")

    def _load_lists(self, config: Config, current: CompiledMatcher | None, force: Collection[str]) -> LoadedLists:
        return load_lists(
            config.lists,
            self.state,
            self._snapshot_path(),
            current=current,
            guard=self.guard,
            isolated=True,
            force=force,
        )

    async def _reload(self, started: float, force: Collection[str]) -> dict[str, Any]:
        current = self.policy.matcher if self.policy is not None else None
        if not isinstance(current, CompiledMatcher):
            current = None
        try:
            config = await asyncio.to_thread(self._read_config)
            upstreams = resolve_upstreams(config)
            lists = await asyncio.to_thread(self._load_lists, config, current, force)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload: the config has errors; the running config stays in use")
            self._count_reload(ok=False)
            return {"ok": False, "errors": exc.problems}
        except FilterdError as exc:
            log.error("reload: %s; the running config stays in use", exc)
            self._count_reload(ok=False)
            return {"ok": False, "errors": [str(exc)]}
        for warning in self._needs_restart(config):
            log.warning("reload: %s", warning)
        await self._reload_certificates(config)
        old = self.config
        config = replace(  # what is bound stays bound: the running config says what really runs
            config,
            dns=replace(
                config.dns,
                listen=old.dns.listen,
                tls_listen=old.dns.tls_listen,
                https_listen=old.dns.https_listen,
                workers=old.dns.workers,
            ),
            metrics=old.metrics,
            blockpage=old.blockpage,
            admin=old.admin,
            state_dir=old.state_dir,
            tls=old.tls if _tls_mode(old) != _tls_mode(config) else config.tls,
        )
        lists_changed = lists.matcher is not current
        if config == old and upstreams == self.upstreams and self.policy is not None:
            if lists_changed:
                done = self._swap_lists(lists)
            else:
                self.lists = lists  # the same lists; what it says of the files may be news (a file went bad)
                done = "nothing changed: the lists and the cache stay"
        else:
            done = await self._rebuild(config, upstreams, lists, lists_changed)
        self._export_list_files(lists)
        self._count_reload(ok=True)
        await self._reload_ca()
        seconds = time.monotonic() - started
        self._sync_workers()
        log.info("reload: done in %.2fs; %s", seconds, done)
        return {"ok": True, "seconds": round(seconds, 3), "lists": lists.entries, "problems": lists.problems}

    def _swap_lists(self, lists: LoadedLists) -> str:
        """The config is as it was, the lists are not: the new lists in one assignment (the cache is cleared)."""
        assert self.policy is not None
        self.lists = lists
        self.policy.replace_matcher(lists.matcher)
        if self.refresher is not None:
            self.refresher.entries = lists.matcher.entry_counts()
        self.lists_loaded = time.time()
        self._export_list_counts(lists.entries)
        return "the lists changed (the config did not): new lists, cache cleared"

    async def _rebuild(
        self, config: Config, upstreams: tuple[Endpoint, ...], lists: LoadedLists, lists_changed: bool
    ) -> str:
        """The config changed: a new pipeline, keeping the running cache when no answer it holds can be wrong
        now, and the running resolver (its upstreams' health) when the upstreams are the same."""
        old, old_upstreams = self.config, self.upstreams
        keep_cache = not lists_changed and upstreams == old_upstreams and _cache_view(config) == _cache_view(old)
        keep_resolver = upstreams == old_upstreams and (config.dns.forward_zones, config.dns.timeout) == (
            old.dns.forward_zones,
            old.dns.timeout,
        )
        keep_resolver &= (config.dns.bootstrap, config.dns.upstream_ca_file) == (
            old.dns.bootstrap,
            old.dns.upstream_ca_file,
        )
        old_resolver, old_refresher = self.resolver, self.refresher
        old_clock, old_directory = self.schedule_clock, self.directory_refresher
        self.config, self.upstreams, self.lists = config, upstreams, lists
        pipeline = self.build_pipeline(
            lists,
            upstreams,
            cache=self.cache if keep_cache else None,
            resolver=old_resolver if keep_resolver else None,
        )
        assert self.resolver is not None and self.handler is not None
        if self.resolver is not old_resolver:
            await self.resolver.start()
        self.pipeline = self.handler.pipeline = pipeline  # the swap
        self.lists_loaded = time.time()
        if old_resolver is not None and old_resolver is not self.resolver:
            await old_resolver.stop()
            self._forget_upstreams(old_resolver, self.resolver)
        if old_refresher is not None:
            await old_refresher.stop()
            self.refresher = None
        self._start_refresher()
        await self._stop_group_tasks(old_clock, old_directory)
        self._start_group_tasks()
        self._configure_events()
        self._export_list_counts(lists.entries)
        kept = [what for what, kept in (("the lists", not lists_changed), ("the cache", keep_cache)) if kept]
        return f"pipeline: {pipeline.describe()}" + (f"; kept {' and '.join(kept)}" if kept else "")

    def _forget_upstreams(self, old: UpstreamResolver, new: UpstreamResolver) -> None:
        """filterd_upstream_up only for the upstreams in use: a reload that drops one drops its series."""
        for endpoint in set(old.health.states) - set(new.health.states):
            with contextlib.suppress(KeyError):
                self.metrics.upstream_up.remove(str(endpoint))

    def _snapshot_path(self) -> Path:
        """The compiled lists: in state_dir (kept for a fast restart), else in a private temporary folder."""
        if self.state is not None:
            return self.state.path / SNAPSHOT_NAME
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="filterd-")
        return Path(self._scratch.name) / SNAPSHOT_NAME

    def _needs_restart(self, new: Config) -> list[str]:
        old = self.config
        changed = [
            key
            for key, a, b in (
                ("dns.listen", old.dns.listen, new.dns.listen),
                ("dns.tls_listen", old.dns.tls_listen, new.dns.tls_listen),
                ("dns.https_listen", old.dns.https_listen, new.dns.https_listen),
                ("dns.workers", old.dns.workers, new.dns.workers),
                ("metrics", old.metrics, new.metrics),
                ("blockpage", old.blockpage, new.blockpage),
                ("admin", old.admin, new.admin),
                ("state_dir", old.state_dir, new.state_dir),
                ("tls.mode", _tls_mode(old), _tls_mode(new)),
            )
            if a != b
        ]
        return [f"{key} changed: restart filterd to apply it (the running value stays)" for key in changed]

    def _start_refresher(self) -> None:
        has_urls = any(cfg.url and cfg.enabled for cfg in self.config.lists)
        if has_urls and self.state is not None and self.policy is not None and self.lists is not None:
            # Downloads in the background: start serves the stored copies at once and never waits for them.
            self.refresher = ListRefresher.create(
                self.config,
                self.state,
                self.lists,
                self.policy,
                self.metrics,
                self.upstreams,
                self._snapshot_path(),
                guard=self.guard,
                exchange=self.resolver.exchange if self.resolver is not None else None,
            )
            self.refresher.start()

    # --- the query log and safeguarding alerts ----------------------------------------------------------------

    def _configure_events(self) -> None:
        """(Re)build the query log and the alert engine from the config; the log's writer keeps running across
        a reload (its settings are updated in place), the engine starts counting afresh."""
        cfg = self.config
        if self.state is not None and cfg.querylog.privacy != Privacy.OFF:
            if self.querylog is None:
                self.querylog = QueryLog(
                    self.state.path / QUERYLOG_NAME,
                    key=querylog_key(self.state.path),
                    identify=self._identify,
                    clock=self.clock,
                )
            self.metrics.querylog.stats = self.querylog.stats
            self.querylog.privacy = Privacy(cfg.querylog.privacy)
            self.querylog.retention = cfg.querylog.retention
            self.querylog.jsonl = cfg.querylog.jsonl
            self.querylog.start()
        elif self.querylog is not None:
            self.querylog.stop()
            self.querylog = None
        self.alert_engine = AlertEngine(cfg.safeguarding, clock=self.clock) if cfg.safeguarding.alerts else None
        self.notifier = Notifier(cfg.safeguarding.notify, self._count_alert)
        events = self._events = QueryEvents(self.querylog, self.alert_engine, self._alerts, clock=self.clock)
        if self.handler is not None:
            self.handler.events = events if events.enabled else None

    def _identify(self, client_ip: str) -> Identity:
        """A client's MAC and name as the client directory knows them now (for the log and alerts)."""
        stage = self.client_stage
        if stage is None:
            return Identity()
        directory = stage.directory
        names = sorted(directory.names.get(client_ip, ()), key=lambda n: (-n.count("."), n))
        return Identity(mac=directory.macs.get(client_ip, ""), device=names[0] if names else "")

    def _count_alert(self, rule: str, result: str) -> None:
        self.metrics.safeguarding_alerts.labels(rule=rule, result=result).inc()

    def _alerts(self, alerts: list[Alert]) -> None:
        texts = self.config.blockpage.texts if self.config.blockpage is not None else BlockpageTexts()
        for alert in alerts:
            identity = self._identify(alert.client)
            subject, text, payload = compose(alert, identity, categories=dict(texts.categories), help_items=texts.help)
            log.warning("safeguarding: %s", subject)
            if self.querylog is not None:
                self.querylog.record_alert(alert.time, alert.rule.name, alert.client, alert.group, alert.names, "fired")
            if self.notifier is not None:
                self.notifier.send(alert.rule.name, subject, text, payload)

    # --- the admin API's query log, report and suggestions (filterd log / report / lists suggest) -----------

    def _need_querylog(self) -> QueryLog:
        if self.querylog is None:
            raise AdminRequestError(409, "the query log is off (querylog.privacy: off, or no state_dir in use)")
        return self.querylog

    async def log_rows(
        self, client: str | None, group: str | None, blocked: bool, since: float | None, limit: int
    ) -> list[dict[str, Any]]:
        """`since`: seconds back from now (None: all)."""
        querylog = self._need_querylog()
        start = None if since is None else self.clock() - since
        rows = await asyncio.to_thread(
            querylog.rows, client=client, group=group, blocked=blocked, since=start, limit=limit
        )
        return [as_dict(row) for row in rows]

    async def log_delete(self, client: str) -> dict[str, Any]:
        querylog = self._need_querylog()
        deleted = await asyncio.to_thread(querylog.delete_client, client)
        log.warning("querylog: deleted %d rows of client %s (admin request)", deleted, client)
        return {"client": client, "deleted": deleted}

    async def report(self, since: float) -> Report:
        querylog = self._need_querylog()
        now = self.clock()
        rows = await asyncio.to_thread(querylog.rows, since=now - since, limit=None)
        alerts = await asyncio.to_thread(querylog.alerts, now - since)
        return build_report(rows, alerts, now - since, now)

    async def suggest(self, since: float) -> list[dict[str, Any]]:
        querylog = self._need_querylog()
        rows = await asyncio.to_thread(querylog.rows, since=self.clock() - since, limit=None)
        counts: dict[str, int] = {}
        for row in rows:
            if row.decision in ("forwarded", "cached", "error"):  # asked of the upstreams, not blocked
                counts[row.name] = counts.get(row.name, 0) + row.count
        brands: set[str] = set()
        patterns: list[str] = []
        rules = getattr(self.policy.matcher, "rules", None) if self.policy is not None else None
        if rules is not None:
            brands, patterns = rules.brand_labels(), rules.pattern_texts()
        found = suggest_names(counts, brands, pattern_words(patterns), public_suffixes())
        return [{"name": s.name, "lookups": s.count, "reason": s.reason} for s in found]

    def _start_group_tasks(self) -> None:
        """The schedule clock, and the client directory when a group names MACs or hosts (both in the background)."""
        if self.schedule_clock is not None:
            self.schedule_clock.start()
        stage = self.client_stage
        if stage is None or not self.groups:
            self.directory_refresher = None
            return
        exchange = self.resolver.exchange if self.resolver is not None else None
        resolver = UpstreamDnsResolver(self.upstreams, self.config.dns.timeout, exchange) if self.upstreams else None
        refresher = DirectoryRefresher(
            self.groups,
            stage.set_directory,
            lambda: list(stage.seen()),
            records=self.config.dns.records,
            lease_files=self.config.dhcp_leases,
            reverse=(lambda name: resolver.lookup(name, "PTR")) if resolver is not None else None,
        )
        self.directory_refresher = refresher if refresher.needed else None
        if self.directory_refresher is not None and not stage.directory.names and not stage.directory.macs:
            stage.set_directory(refresher.initial())  # names from records and leases before the first query
        if self.directory_refresher is not None:
            stage.on_new_client = self.directory_refresher.poke
            self.directory_refresher.start()

    async def _stop_group_tasks(self, clock: ScheduleClock | None, directory: DirectoryRefresher | None) -> None:
        if clock is not None:
            await clock.stop()
        if directory is not None:
            await directory.stop()

    def _export_list_files(self, lists: LoadedLists) -> None:
        """filterd_list_file_ok for every enabled path list: 0 while its file cannot be used (guard.py)."""
        self.metrics.list_file_ok.clear()
        for cfg in self.config.lists:
            if cfg.path is not None and cfg.enabled and cfg.name in lists.sources:
                self.metrics.list_file_ok.labels(list=cfg.name).set(0 if cfg.name in lists.problems else 1)
        self.metrics.list_refresh_interval.clear()  # and each url list's refresh, for the staleness alert
        for cfg in self.config.lists:
            if cfg.url is not None and cfg.enabled:
                self.metrics.list_refresh_interval.labels(list=cfg.name).set(cfg.refresh)

    def _count_reload(self, *, ok: bool) -> None:
        """filterd_reloads_total{result} and filterd_config_last_reload_successful (the alert rules watch them)."""
        self.metrics.reloads.labels(result="done" if ok else "failed").inc()
        self.metrics.reload_ok.set(1 if ok else 0)

    def _export_list_counts(self, entries: dict[str, int]) -> None:
        """filterd_blocklist_entries for every list, the local entries included (when there is a state_dir)."""
        self.metrics.blocklist_entries.clear()
        for name, count in entries.items():
            self.metrics.blocklist_entries.labels(list=name).set(count)
        if self.state is not None:
            self.metrics.blocklist_entries.labels(list=LOCAL_LIST).set(len(self.local_lists.blocked))

    # --- the admin API's backend (filterd/web/admin.py) ----------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "config": self.config.source,
            "pipeline": self.pipeline.describe() if self.pipeline is not None else None,
            "started": self.started,
            "dns": [str(ep) for ep in self.listening.dns],
            "upstreams": [str(ep) for ep in self.upstreams],
            "workers": [os.getpid(), *self.workers.pids] if self.workers is not None else [os.getpid()],
        }

    def list_files(self) -> dict[str, Path]:
        """Where each list's text is on disk (for quoting the line that matched)."""
        return {cfg.name: path for cfg in self.config.lists if (path := list_path(cfg, self.state)) is not None}

    def lists_status(self) -> list[dict[str, Any]]:
        counts = self.policy.matcher.entry_counts() if self.policy is not None else {}
        refreshed = {s.name: s for s in self.refresher.status()} if self.refresher is not None else {}
        problems = self.lists.problems if self.lists is not None else {}
        out: list[dict[str, Any]] = []
        for cfg in self.config.lists:
            row: dict[str, Any] = {
                "name": cfg.name,
                "source": cfg.url or (f"builtin:{cfg.builtin}" if cfg.builtin else str(cfg.path)),
                "enabled": cfg.enabled,
                "entries": counts.get(cfg.name, 0),
                "last_success": self.lists_loaded if cfg.enabled and not cfg.url else None,
                "last_error": problems.get(cfg.name),
                "next_refresh": None,
            }
            if cfg.name in refreshed:
                status = refreshed[cfg.name]
                row |= {
                    "entries": status.entries,
                    "last_success": status.last_success,
                    "last_error": status.last_error,
                    "next_refresh": status.next_refresh,
                }
            out.append(row)
        local = self.local_lists
        out.append(
            {
                "name": LOCAL_LIST,
                "source": str(local.path) if local.path else "(no state_dir)",
                "enabled": True,
                "entries": len(local.blocked),
                "allowed": len(local.allowed),
                "blocked_names": sorted(local.blocked),
                "allowed_names": sorted(local.allowed),
                "last_success": None,
                "last_error": None,
                "next_refresh": None,
            }
        )
        return out

    async def update_lists(self, names: list[str], force: bool) -> list[dict[str, Any]]:
        known = {cfg.name: cfg for cfg in self.config.lists if cfg.enabled}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise AdminRequestError(404, f"no enabled list named {', '.join(unknown)} (lists: {', '.join(known)})")
        wanted = names or list(known)
        files = [n for n in wanted if not known[n].url]
        urls = [n for n in wanted if known[n].url]
        results: list[dict[str, Any]] = []
        if files:
            # A file list is refreshed by reading it again: that is a reload (`force` takes a file that shrank).
            outcome = await self.reload(force=files if force else ())
            for name in files:
                ok = bool(outcome.get("ok"))
                entries = outcome.get("lists", {}).get(name, 0) if ok else None
                problem = outcome.get("problems", {}).get(name) if ok else None
                if not ok:
                    verdict, message = "failed", "; ".join(outcome.get("errors", []))
                elif problem is not None:
                    verdict, message = "rejected", f"{problem}; the last good version ({entries} names) stays in use"
                else:
                    verdict, message = "updated", f"read again: {entries} names"
                results.append({"list": name, "result": verdict, "message": message, "entries": entries})
        if urls and self.refresher is not None:
            for result in await self.refresher.update(urls, force=force):
                results.append(asdict(result) | {"result": str(result.result)})
        return results

    def check(self, name: str, client: str | None = None, *, quote: bool = True) -> dict[str, Any]:
        """`quote=False`: without reading the matching line from the list file (the admin page, per log row)."""
        assert self.policy is not None and self.local_stage is not None
        try:
            resolver = self.resolver
            group = self._group_of(client)
            return explain(
                name,
                policy=self.policy,
                local=self.local_stage,
                bypass=self.bypass,
                ddr=self.ddr,
                safe_search=self.safe_search.rewrite_of if self.safe_search is not None else None,
                upstreams_for=resolver.upstreams_for if resolver is not None else lambda _: self.upstreams,
                list_files=self.list_files() if quote else {},
                group=group,
                client=client,
            )
        except FilterdError as exc:
            raise AdminRequestError(400, str(exc)) from None

    def _group_of(self, client: str | None) -> Group | None:
        if client is None:
            return None
        try:
            ipaddress.ip_address(client.partition("%")[0])
        except ValueError:
            raise AdminRequestError(400, f"client: {client!r} is not an IP address") from None
        return self.client_stage.group_of(client) if self.client_stage is not None else None

    def local_change(self, action: str, name: str) -> dict[str, Any]:
        if self.state is None:
            raise AdminRequestError(409, "local entries need a state_dir")
        local = self.local_lists
        try:
            if action == "block":
                normal, changed = local.block(name), True
            elif action == "allow":
                normal, changed = local.allow(name), True
            else:
                normal, changed = local.reset(name)
        except FilterdError as exc:
            raise AdminRequestError(400, str(exc)) from None
        if self.policy is not None:
            self.policy.changed()  # flush the cache
        log.info("local: %s %s", action, normal)
        self._export_list_counts(self.policy.matcher.entry_counts() if self.policy is not None else {})
        return {
            "name": normal,
            "action": action,
            "changed": changed,
            "blocked": sorted(local.blocked),
            "allowed": sorted(local.allowed),
        }

    # --- the admin page's view of the running server (filterd/web/console.py) ----------------------------------

    def upstreams_status(self) -> list[dict[str, Any]]:
        states = self.resolver.health.states if self.resolver is not None else {}
        return [
            {"upstream": str(ep), "up": state.up, "latency_ms": round(state.latency * 1000, 1)}
            for ep, state in states.items()
        ]

    def groups_status(self) -> list[dict[str, Any]]:
        """Each group with its schedules (open now or not) and the devices seen in it; "" for no group."""
        stage = self.client_stage
        seen = stage.seen() if stage is not None else []
        group_of = {ip: group.name for ip in seen if stage is not None and (group := stage.group_of(ip)) is not None}
        devices = devices_by_group(seen, group_of, stage.directory.names if stage is not None else {})
        out = [
            {
                "name": group.name,
                "clients": list(group.config.clients),
                "lists": sorted(group.lists) if group.lists is not None else None,
                "schedules": [
                    {"name": s.name, "open": s.name in group.active, "when": [w.text for w in s.when]}
                    for s in group.schedules
                ],
                "devices": devices.get(group.name, []),
            }
            for group in self.groups
        ]
        return [*out, {"name": "", "clients": [], "lists": None, "schedules": [], "devices": devices.get("", [])}]

    async def _listen_dns(self, endpoint: Endpoint, handler: QueryHandler) -> None:
        loop = asyncio.get_running_loop()
        tcp = TcpServer(handler, self.tcp_limits)
        for attempt in range(20):
            try:
                udp_sock = bind_socket(endpoint.host, endpoint.port, socket.SOCK_DGRAM, **self._sharing())
            except OSError as exc:
                if endpoint.host == "::1" and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    # Only the IPv6 loopback: a LAN address that is missing is a mistake to report, not skip.
                    log.warning("dns: skipping %s: IPv6 is off on this machine (%s)", endpoint, exc.strerror)
                    return
                raise StartupError(_bind_error("dns (udp)", endpoint, exc)) from None
            port = udp_sock.getsockname()[1]
            try:
                tcp_sock = bind_socket(endpoint.host, port, socket.SOCK_STREAM, **self._sharing())
            except OSError as exc:
                udp_sock.close()
                if endpoint.port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue  # the ephemeral UDP port is taken for TCP: pick another pair
                raise StartupError(_bind_error("dns (tcp)", endpoint, exc)) from None
            if endpoint.is_wildcard:
                # replies must leave from the address each query came to: IP_PKTINFO, not a datagram transport
                wildcard = WildcardUdpServer(udp_sock, handler)
                try:
                    wildcard.start(loop)
                except OSError as exc:
                    udp_sock.close()
                    tcp_sock.close()
                    raise StartupError(_bind_error("dns (udp)", endpoint, exc)) from None
                self._reading_udp.append(wildcard)
            elif reads_its_own_sockets(loop):  # stock asyncio: its datagram transport reads one packet a wake-up
                reader = SocketUdpServer(udp_sock, handler)
                reader.start(loop)
                self._reading_udp.append(reader)
            else:
                transport, _ = await loop.create_datagram_endpoint(lambda: UdpServer(handler), sock=udp_sock)
                self._transports.append(transport)
            server = await asyncio.start_server(tcp.serve, sock=tcp_sock)
            self._servers.append(server)
            bound = Endpoint(endpoint.host, port)
            self.listening.dns.append(bound)
            log.info("dns: listening on %s (udp, tcp)", bound)
            _warn_if_not_local("dns", endpoint.host)
            return

    def _sharing(self) -> dict[str, bool]:
        return {"reuse_port": self.reuse_port, "join": self.join_port}

    # --- dns.workers: more processes answering DNS (filterd/workers/) ------------------------------------------

    async def _start_workers(self) -> None:
        verbose = logging.getLogger("filterd").isEnabledFor(logging.DEBUG)
        self.workers = WorkerPool(self.config.dns.workers, self._serve_state, self._worker_rows, self.metrics,
                                  verbose=verbose)  # fmt: skip
        try:
            await self.workers.start()
        except WorkerError as exc:
            raise StartupError(str(exc)) from None
        log.info("dns: %d processes answer DNS (dns.workers), pids %s", self.config.dns.workers,
                 ", ".join(map(str, [os.getpid(), *self.workers.pids])))  # fmt: skip

    def _serve_state(self) -> Serve:
        """What the workers serve: this process's config, upstreams, snapshot and local entries, as of now."""
        assert self.lists is not None
        matcher = self.policy.matcher if self.policy is not None else self.lists.matcher
        assert isinstance(matcher, CompiledMatcher)
        ddr = self.ddr.designation
        names = self.encrypted_listeners.certificates.names if self.encrypted_listeners is not None else ()
        return Serve(
            config=worker_config(self.config, self.listening.dns),
            upstreams=self.upstreams,
            snapshot=str(matcher.path),
            fingerprint=matcher.fingerprint,
            blocked=frozenset(self.local_lists.blocked),
            allowed=frozenset(self.local_lists.allowed),
            events=self._events is not None and self._events.enabled,
            ddr=(ddr, tuple(names)) if ddr is not None else None,
        )

    def _sync_workers(self) -> None:
        if self.workers is not None:
            self.workers.sync()

    def _worker_rows(self, rows: list[Row], dropped: int) -> None:
        events = self._events
        if events is not None:
            events.replay(rows)
        if dropped and self.querylog is not None:
            self.querylog.stats.dropped += dropped

    async def _worker_samples(self) -> list[list[Exported]]:
        return await self.workers.samples() if self.workers is not None else []

    async def _listen_encrypted(self, handler: QueryHandler) -> None:
        """DoT and DoH (`transport/encrypted.py`), with the `tls` files' certificate, or one the local CA makes (and
        makes again before it ends: `_renew_tls`); without that CA, filterd does not start (`filterd ca init`)."""
        dns = self.config.dns
        tls = self.config.tls
        if not dns.tls_listen and not dns.https_listen:
            return
        assert tls is not None  # the loader requires it with either listener
        from filterd.tls import ca as tls_ca  # (cryptography and hypercorn: imported only when configured)
        from filterd.transport.certs import CertificateError, LocalCaCertificates, ServerCertificates
        from filterd.transport.encrypted import EncryptedListeners

        certificates: ServedCertificates
        try:
            if tls.local_ca:
                authority = await asyncio.to_thread(tls_ca.load, tls_ca.ca_dir(self.config.state_dir))
                certificates = LocalCaCertificates(tls, authority, clock=self.clock)
            else:
                certificates = ServerCertificates(tls)
        except (CertificateError, tls_ca.CaError) as exc:
            raise StartupError(f"tls: {str(exc).removeprefix('tls: ')}") from None
        if isinstance(certificates, LocalCaCertificates):
            assert certificates.cert is not None and certificates.signer is not None
            log.info(
                "tls: a certificate for %s from the local CA %s, valid until %s",
                ", ".join([*certificates.names, *certificates.addresses]),
                certificates.signer.fingerprint,
                f"{certificates.cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
            )
            self._tls_renewal = asyncio.get_running_loop().create_task(self._renew_tls(certificates))
        listeners = self.encrypted_listeners = EncryptedListeners(handler, certificates, self.tcp_limits)
        for what, endpoints, serve, bound in (
            ("dns.tls_listen", dns.tls_listen, listeners.serve_dot, self.listening.dot),
            ("dns.https_listen", dns.https_listen, listeners.serve_doh, self.listening.doh),
        ):
            for endpoint in endpoints:
                try:
                    sock = bind_socket(endpoint.host, endpoint.port, socket.SOCK_STREAM)
                except OSError as exc:
                    raise StartupError(_bind_error(f"{what} (tcp)", endpoint, exc)) from None
                bound.append(await serve(sock))
                _warn_if_not_local(what, endpoint.host)
        self._designate()

    def _designate(self) -> None:
        """DDR's answers: filterd's own DoT/DoH endpoints, under the certificate's first DNS name."""
        listeners = self.encrypted_listeners
        if listeners is None:
            return
        names = listeners.certificates.names
        if not names:
            log.warning("ddr: the tls certificate names no DNS name; _dns.resolver.arpa keeps its NODATA")
            return
        self.ddr.designate(designation(names, self.listening.dot, self.listening.doh), names)

    async def _reload_certificates(self, config: Config) -> None:
        """A renewed `tls` pair goes live for new DoT/DoH connections; a bad one is logged and the running one stays.
        With a local CA: the CA is read again (`filterd ca rotate`), and a new certificate made if the names changed
        or another CA signs now."""
        listeners = self.encrypted_listeners
        if listeners is None or config.tls is None:
            return
        from filterd.tls import ca as tls_ca
        from filterd.transport.certs import CertificateError, LocalCaCertificates

        certificates = listeners.certificates
        if isinstance(certificates, LocalCaCertificates) != config.tls.local_ca:
            return  # said by _needs_restart
        try:
            if isinstance(certificates, LocalCaCertificates):
                authority = await asyncio.to_thread(tls_ca.load, tls_ca.ca_dir(self.config.state_dir))
                if certificates.update(config.tls, authority):
                    log.info("reload: tls: a new certificate from the local CA")
                if authority.next is not None:
                    log.info(
                        "reload: tls: the new local CA %s signs from %s",
                        authority.next.fingerprint,
                        authority.switch_at,
                    )
            else:
                certificates.reload(config.tls)
                log.info("reload: the tls certificate was read again (%s)", config.tls.cert)
        except (CertificateError, tls_ca.CaError) as exc:
            log.error("reload: tls: %s; the running certificate stays in use", str(exc).removeprefix("tls: "))
            return
        self._designate()

    async def _renew_tls(self, certificates: LocalCaCertificates) -> None:
        """Every `tls_check_interval`: the local CA's certificate made again when it is due (it ends within two days,
        or a rotation's switch date has passed); no restart, no reload needed."""
        from filterd.transport.certs import CertificateError

        while True:
            await asyncio.sleep(self.tls_check_interval)
            try:
                certificates.renew()
            except CertificateError as exc:
                log.error("%s; the running certificate stays in use", exc)

    def client_allowed(self, client_ip: str) -> bool:
        """Whether `dns.allow_clients`, as configured now, serves this client (the block page asks per request)."""
        return self.access is not None and self.access.allowed(client_ip)

    def decide(self, name: str, client_ip: str | None = None) -> Match | None:
        """The block decision for a name now, for a client (its group; the policy's own lookup: the block page
        asks it per request)."""
        if self.policy is None:
            return None
        group = None
        if client_ip is not None and self.client_stage is not None:
            try:
                group = self.client_stage.group_of(client_ip)
            except ValueError:
                group = None
        return self.policy.decide(name, group)

    async def _listen_http(self, endpoint: Endpoint, app: web.Application, what: str) -> Endpoint:
        runner = HttpRunner(app, what, self.client_events)
        await runner.setup()
        self._runners.append(runner)
        try:  # our own socket, not TCPSite's: bind_socket sets IP_FREEBIND, so port 80 opens before the LAN is up
            sock = bind_socket(endpoint.host, endpoint.port, socket.SOCK_STREAM)
        except OSError as exc:
            raise StartupError(_bind_error(what, endpoint, exc)) from None
        await web.SockSite(runner, sock).start()
        bound = Endpoint(endpoint.host, sock.getsockname()[1])
        log.info("%s: listening on http://%s/", what, bound)
        _warn_if_not_local(what, endpoint.host)
        return bound

    async def _listen_https(self, page: BlockpageConfig, https: BlockpageHttpsConfig) -> None:
        """The block page over HTTPS: a certificate per blocked name (for this client, who must be served at all),
        signed by the local CA in `<state_dir>/ca/`; without that CA, filterd does not start (`filterd ca init`)."""
        from filterd.tls import ca as tls_ca  # (cryptography: imported only when configured)
        from filterd.tls.leaves import Certificates
        from filterd.web.https import HttpsListener

        try:
            authority = await asyncio.to_thread(tls_ca.load, tls_ca.ca_dir(self.config.state_dir))
        except tls_ca.CaError as exc:
            raise StartupError(f"blockpage.https: {exc}") from None
        counter = self.metrics.blockpage_certificates

        def blocked(name: str, client_ip: str | None) -> bool:
            allowed = client_ip is not None and self.client_allowed(client_ip)
            return allowed and self.decide(name, client_ip) is not None

        def minting_failed(name: str, exc: Exception) -> None:
            log.error("blockpage https: cannot make a certificate for %s: %s", printable(name), exc)

        self.certificates = Certificates(
            authority, blocked, lambda result: counter.labels(result=result).inc(), on_error=minting_failed
        )
        for endpoint in https.listen:
            app = blockpage_app(page, self.decide, self.metrics, allowed=self.client_allowed)
            runner = HttpRunner(app, "blockpage", self.client_events)
            await runner.setup()
            self._runners.append(runner)
            try:
                sock = bind_socket(endpoint.host, endpoint.port, socket.SOCK_STREAM)
            except OSError as exc:
                raise StartupError(_bind_error("blockpage.https", endpoint, exc)) from None
            listener = HttpsListener(runner, sock, self.certificates)
            await listener.start()
            self._https.append(listener)
            bound = Endpoint(endpoint.host, sock.getsockname()[1])
            self.listening.blockpage_https.append(bound)
            log.info("blockpage: listening on https://%s/ (local CA %s)", bound, authority.current.fingerprint)
            _warn_if_not_local("blockpage", endpoint.host)

    async def _reload_ca(self) -> None:
        """A reload re-reads the local CA: `filterd ca rotate` takes effect without a restart."""
        if self.certificates is None:
            return
        from filterd.tls import ca as tls_ca

        try:
            authority = await asyncio.to_thread(tls_ca.load, tls_ca.ca_dir(self.config.state_dir))
        except tls_ca.CaError as exc:
            log.error("reload: blockpage.https: %s; the CA in use stays", exc)
            return
        if authority.next is not None:  # said at each reload while a rotation is pending
            log.info(
                "reload: blockpage.https: the new local CA %s signs from %s",
                authority.next.fingerprint,
                authority.switch_at,
            )
        self.certificates.authority = authority

    def _warn_about_sinkhole(self) -> None:
        cfg = self.config
        lan = [ep for ep in cfg.dns.listen if not _is_loopback(ep.host)]
        if lan and cfg.blocking.mode.value == "sinkhole" and cfg.blocking.sinkhole.ipv4.is_loopback:
            log.warning(
                "blocking.sinkhole.ipv4 is %s but DNS answers clients on %s: their browsers will not reach "
                "the block page; set it to this machine's LAN address",
                cfg.blocking.sinkhole.ipv4,
                ", ".join(map(str, lan)),
            )
        page = cfg.blockpage
        if page is not None and cfg.blocking.mode.value != "sinkhole":
            log.warning("blockpage: blocking.mode is %s, so no browser is sent to the block page", cfg.blocking.mode)
        elif page is not None and lan:
            sinkhole = str(cfg.blocking.sinkhole.ipv4)
            if not any(ep.port == 80 and ep.host in (sinkhole, "0.0.0.0") for ep in page.listen):
                log.warning(
                    "blockpage: blocked names resolve to %s but the block page does not listen on %s:80, "
                    "where browsers look for it; add it to blockpage.listen",
                    sinkhole,
                    sinkhole,
                )
            https = page.https.listen if page.https is not None else None
            if https is not None and not any(ep.port == 443 and ep.host in (sinkhole, "0.0.0.0") for ep in https):
                log.warning(
                    "blockpage: blocked names resolve to %s but the HTTPS block page does not listen on %s:443; "
                    "add it to blockpage.https.listen",
                    sinkhole,
                    sinkhole,
                )

    async def stop(self) -> None:
        if self.workers is not None:
            await self.workers.stop()
            self.workers = None
        if self.refresher is not None:
            await self.refresher.stop()
            self.refresher = None
        await self._stop_group_tasks(self.schedule_clock, self.directory_refresher)
        if self.querylog is not None:
            await asyncio.to_thread(self.querylog.stop)
            self.querylog = None
        if self.notifier is not None:
            await self.notifier.close()
        self.schedule_clock = self.directory_refresher = None
        if self.resolver is not None:
            await self.resolver.stop()
        if self._tls_renewal is not None:
            self._tls_renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tls_renewal
            self._tls_renewal = None
        if self.encrypted_listeners is not None:
            await self.encrypted_listeners.close()
            self.encrypted_listeners = None
        for transport in self._transports:
            transport.close()
        for reader in self._reading_udp:
            reader.close()
        self._reading_udp.clear()
        for server in self._servers:
            server.close()
        for listener in self._https:
            await listener.close()
        self._https.clear()
        if self.certificates is not None:
            self.certificates.close()
            self.certificates = None
        for runner in self._runners:
            await runner.cleanup()
        logging.getLogger("asyncio").removeFilter(self._asyncio_filter)
        self.client_events.flush()
        self._transports.clear()
        self._servers.clear()
        self._runners.clear()
        if self.state is not None:
            self.state.close()
            self.state = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _check_bootstrap(config: Config, resolv_conf: Path) -> None:
    """An encrypted upstream without a pinned address needs a plain resolver to look its name up."""
    every = [*config.dns.upstreams, *(ep for _, eps in config.dns.forward_zones for ep in eps)]
    unpinned = [ep for ep in every if isinstance(ep, EncryptedUpstream) and not ep.host]
    if unpinned and not bootstrap_resolvers(config.dns, config.dns.upstreams, resolv_conf):
        raise StartupError(
            f"dns.upstreams: {unpinned[0]} has no address and there is no plain resolver to look "
            f"{unpinned[0].server_name} up ({resolv_conf} names none other than filterd): set dns.bootstrap, "
            f"e.g. [9.9.9.9], or pin the address: {unpinned[0]}@ADDRESS"
        )


def encrypted_clients(config: Config, upstreams: tuple[Endpoint, ...]) -> EncryptedUpstreams | None:
    """The DoT/DoH clients for the `tls://` and `https://` upstreams (default and forward zones'); None: none."""
    every = [*upstreams, *(ep for _, eps in config.dns.forward_zones for ep in eps)]
    if not any(isinstance(ep, EncryptedUpstream) for ep in every):
        return None
    resolvers = bootstrap_resolvers(config.dns, upstreams, RESOLV_CONF)
    lookup = bootstrap_lookup(resolvers, config.dns.timeout)
    return EncryptedUpstreams(every, lookup, config.dns.upstream_ca_file)


def _cache_view(config: Config) -> Config:
    """The config as far as an answer in the cache depends on it: a reload that changes only what is blanked here
    (listeners, timeouts, who may ask, the lists' refresh settings: the lists themselves are compared by their
    fingerprint) keeps the cache; any other change clears it."""
    return replace(
        config,
        dns=replace(config.dns, listen=(), timeout=0.0, allow_clients=()),
        lists=(),
        metrics=None,
        blockpage=None,
        admin=None,
        dhcp_leases=(),
        source="",
    )


def offline_check(
    config: Config, name: str, client: str | None = None, clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """`filterd check --offline`: the same decision from the config and the files, without a server (and
    without taking the state_dir lock: the stored copies and local entries are only read)."""
    state = StateDir(config.state_dir)
    needs_state = any(cfg.url and cfg.enabled for cfg in config.lists)
    with tempfile.TemporaryDirectory(prefix="filterd-check-") as scratch:  # never touches the server's snapshot
        lists = load_lists(config.lists, state if needs_state else None, Path(scratch) / SNAPSHOT_NAME)
    local = LocalLists.load(state.path / "local.json")
    policy = PolicyStage(lists.matcher, AllowList(config.allow), BlockedReplies(config.blocking), local)
    zones = dict(config.dns.forward_zones)
    local_stage = LocalStage(dict(config.dns.records), forward_zones=zones)
    files = {cfg.name: path for cfg in config.lists if (path := list_path(cfg, state)) is not None}
    default = config.dns.upstreams
    safe_search = SafeSearchRules(shipped_rewrites())
    groups = build_groups(config.groups, config.schedules)
    ScheduleClock(groups, config.schedules, lambda: None, clock).tick()
    group = None
    if client is not None:
        try:
            group = find_group(groups, client, Directory(names=_record_names(config)))
        except ValueError:
            raise CheckError(f"--client: {client!r} is not an IP address") from None
    return explain(
        name,
        policy=policy,
        local=local_stage,
        bypass=bypass_stage(config),
        ddr=_offline_ddr(config),
        safe_search=lambda qname: safe_search.lookup(qname, _safe_search_of(config, group)),
        upstreams_for=lambda qname: upstreams_for(qname, zones, default),
        list_files=files,
        group=group,
        client=client,
    )


def _tls_mode(config: Config) -> str | None:
    """What makes the DoT/DoH certificate (None: no DoT/DoH); changing it needs a restart."""
    dns = config.dns
    return config.tls.mode if config.tls is not None and (dns.tls_listen or dns.https_listen) else None


def _offline_ddr(config: Config) -> DdrStage | None:
    """DDR as the server would designate, from the config and the certificate's names (`check --offline`)."""
    dns = config.dns
    if config.tls is None or not (dns.tls_listen or dns.https_listen):
        return None
    if config.tls.local_ca:
        names = list(config.tls.names)
    elif config.tls.cert is None:
        return None
    else:
        from filterd.transport.certs import certificate_names

        try:
            names = certificate_names(config.tls.cert)[0]
        except (OSError, ValueError):
            return None
    if not names:
        return None
    ddr = DdrStage()
    ddr.designate(designation(names, dns.tls_listen, dns.https_listen), names)
    return ddr


def designation(names: Sequence[str], dot: Sequence[Endpoint], doh: Sequence[Endpoint]) -> Designation:
    """DDR's answer: the DoT and DoH endpoints under the certificate's first DNS name."""
    hints = sorted({ep.host for ep in (*dot, *doh) if not ep.is_wildcard})
    target = names[0].removeprefix("*.")
    return Designation(target, tuple(ep.port for ep in dot), tuple(ep.port for ep in doh), tuple(hints))


def _safe_search_of(config: Config, group: Group | None) -> SafeSearchConfig:
    """A group's own safe search setting, else the top-level one."""
    if group is not None and group.config.safe_search is not None:
        return group.config.safe_search
    return config.safe_search


def _record_names(config: Config) -> dict[str, frozenset[str]]:
    """Names from dns.records only (offline: no neighbour table, leases or reverse lookups are read)."""
    return dict(build_directory({}, config.dns.records, (), {}).names)


def bypass_stage(config: Config) -> BypassStage:
    """`bypass_protection`, with `_dns.NAME` for the `dns.records` names of filterd's own listen addresses."""
    own = own_names(dict(config.dns.records), (ep.host for ep in config.dns.listen))
    return BypassStage(config.blocking.ttl, own, enabled=config.bypass_protection)


def ensure_token(path: Path) -> str:
    """The admin token: read, or created at the first start (32 random bytes, mode 0600). A token file other
    users can read is set to 0600, with a warning."""
    try:
        with open(path, "rb") as handle:
            _make_private(path, handle.fileno())
            token = handle.read().decode("utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"admin.token_file {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise StartupError(f"admin.token_file {path}: not UTF-8 text (delete it: a new token is made)") from None
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StartupError(f"admin.token_file {path}: cannot create it: {exc.strerror or exc}") from None
    log.info("admin: created the API token in %s (mode 0600)", path)
    return token


def _make_private(path: Path, fd: int) -> None:
    """Set an open token file to 0600 if group or others may read or write it: whoever reads the token can
    change the filter."""
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if not mode & 0o077:
        return
    try:
        os.fchmod(fd, 0o600)
    except OSError as exc:
        log.warning(
            "admin.token_file %s has mode %04o: other users can read the admin token, and setting 0600 failed: %s",
            path,
            mode,
            exc.strerror or exc,
        )
        return
    log.warning("admin.token_file %s had mode %04o: other users could read the admin token; set it to 0600", path, mode)


def bind_socket(
    host: str, port: int, kind: socket.SocketKind, *, reuse_port: bool = False, join: bool = False
) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket; OSError keeps its errno for the message.

    `reuse_port` (dns.workers): SO_REUSEPORT, so the workers' sockets share the address and the kernel spreads
    clients over them. Only sockets of the same user with the option set can share it, and so that a second filterd
    (or an old one still running) is refused as ever rather than silently sharing the port, the main process first
    binds without the option (`join` False): EADDRINUSE if anything holds the address. A worker joins (`join`)."""
    if reuse_port and not join:
        probe = _bind(host, port, kind, reuse_port=False, probe=True)
        port = probe.getsockname()[1]  # (port 0: the one the kernel chose, free of any other socket)
        probe.close()
    return _bind(host, port, kind, reuse_port=reuse_port)


def _bind(host: str, port: int, kind: socket.SocketKind, *, reuse_port: bool, probe: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if _FREEBIND and not ipaddress.ip_address(host).is_loopback:
            # Bind even before the LAN address exists: at boot filterd may start before DHCP or the interface
            # is up. Loopback is always there, and there a missing address should fail (IPv6 off is skipped).
            with contextlib.suppress(OSError):  # kernels before 4.15 have no IPV6_FREEBIND
                sock.setsockopt(*_FREEBIND[family], 1)
        if kind == socket.SOCK_DGRAM and not probe:
            udp_buffer(sock)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM and not probe:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


#: The receive buffer asked for a DNS UDP socket: queries that arrive while the event loop is busy (a reload, a
#: collection, a moment of CPU taken by other processes) wait here instead of being dropped. Linux's default is
#: 208 KiB, about 270 queries: 25 ms at 10,000 queries/s. 4 MiB holds a stall of about half a second.
UDP_RCVBUF = 4 << 20
#: Linux's SO_RCVBUFFORCE (33): the same beyond net.core.rmem_max, allowed with CAP_NET_ADMIN (e.g. as root).
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None)


def udp_buffer(sock: socket.socket, size: int = UDP_RCVBUF) -> int:
    """Ask for a `size` receive buffer (beyond net.core.rmem_max only with CAP_NET_ADMIN, as unbound does); the
    size the kernel granted (it counts its own overhead too, so it reports about twice what was asked). Says so
    when the kernel granted less."""
    for option in (_SO_RCVBUFFORCE, socket.SO_RCVBUF):
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            break
        except OSError:
            continue
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    if granted < size:
        log.warning(
            "dns: the UDP receive buffer is %d KiB, not the %d KiB asked for (net.core.rmem_max): queries that "
            "arrive while filterd is busy for a moment are dropped sooner; raise it, e.g. `sysctl -w "
            "net.core.rmem_max=%d` (and a file in /etc/sysctl.d/ to keep it)",
            granted // 1024,
            size // 1024,
            size,
        )
    return granted


def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _warn_if_not_local(what: str, host: str) -> None:
    """Say so when a listener was bound (with IP_FREEBIND) to an address this machine does not have now:
    normal for a few seconds at boot, a typo in the config if it lasts."""
    if not _FREEBIND or _is_loopback(host):
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                log.warning(
                    "%s: %s is not an address of this machine (yet): listening anyway, it answers once the "
                    "address is up; if it is not this machine's address, correct the config",
                    what,
                    host,
                )


def _bind_error(what: str, endpoint: Endpoint, exc: OSError) -> str:
    message = f"{what}: cannot listen on {endpoint}: {exc.strerror or exc}"
    if exc.errno == errno.EACCES and endpoint.port < 1024:
        message += " (ports below 1024 need root or CAP_NET_BIND_SERVICE; the systemd unit grants it)"
    elif exc.errno == errno.EADDRINUSE:
        protocol: Literal["udp", "tcp"] = "udp" if "udp" in what else "tcp"
        message += ": " + describe_holders(find_holders(endpoint.host, endpoint.port, protocol), endpoint.port)
    elif exc.errno == errno.EADDRNOTAVAIL:
        message += " (this machine has no such address; list one of its own addresses)"
    return message
