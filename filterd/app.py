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
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry

from filterd import __version__, systemd
from filterd.blocklists.load import SNAPSHOT_NAME, LoadedLists, list_path, load_lists
from filterd.blocklists.local import LOCAL_LIST, LocalLists
from filterd.blocklists.matcher import Match
from filterd.blocklists.refresh import ListRefresher, open_state
from filterd.blocklists.sources import UpstreamDnsResolver
from filterd.blocklists.state import StateDir
from filterd.config.load import EMBEDDED_NAME, load_config, load_embedded
from filterd.config.resolvconf import default_upstreams
from filterd.config.schema import Config, Endpoint, SafeSearchConfig
from filterd.errors import ConfigError, FilterdError
from filterd.explain import CheckError, explain
from filterd.groups.clock import ScheduleClock
from filterd.groups.model import Directory, Group, build_groups, find_group
from filterd.groups.sources import DirectoryRefresher, build_directory
from filterd.metrics import Metrics
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Pipeline
from filterd.pipeline.bypass import BypassStage, own_names
from filterd.pipeline.cache import CacheStage, DnsCache
from filterd.pipeline.client import ClientStage
from filterd.pipeline.cname import CnameStage
from filterd.pipeline.local import LocalStage
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.pipeline.safesearch import SafeSearchRules, SafeSearchStage, shipped_rewrites
from filterd.pipeline.upstream import UpstreamResolver, upstreams_for
from filterd.portholder import describe as describe_holders
from filterd.portholder import find_holders
from filterd.sinkhole import BlockedReplies
from filterd.transport.handler import QueryHandler
from filterd.transport.tcp import TcpLimits, TcpServer
from filterd.transport.udp import UdpServer
from filterd.web.admin import AdminRequestError, admin_app
from filterd.web.blockpage import blockpage_app
from filterd.web.metrics import metrics_app

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
    admin: Endpoint | None = None


class App:
    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        tcp: TcpLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.tcp_limits = tcp if tcp is not None else TcpLimits()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, __version__)
        self.listening = Listening()
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self.lists: LoadedLists | None = None
        self.state: StateDir | None = None
        self.refresher: ListRefresher | None = None
        self.policy: PolicyStage | None = None
        self.pipeline: Pipeline | None = None
        self.cache: DnsCache | None = None
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

    def build_pipeline(self, lists: LoadedLists, upstreams: tuple[Endpoint, ...]) -> Pipeline:
        cfg = self.config
        zones = dict(cfg.dns.forward_zones)
        self.policy = PolicyStage(lists.matcher, AllowList(cfg.allow), BlockedReplies(cfg.blocking), self.local_lists)
        self.cache = DnsCache(cfg.cache.size, cfg.cache.min_ttl, cfg.cache.max_ttl, cfg.cache.stale_max)
        self.policy.on_change.append(self.cache.clear)
        self.metrics.watch_cache(self.cache)
        self.local_stage = LocalStage(dict(cfg.dns.records), forward_zones=zones)
        self.groups = build_groups(cfg.groups, cfg.schedules)
        self.client_stage = ClientStage(self.groups, self.client_stage.directory if self.client_stage else None)
        self.schedule_clock = ScheduleClock(self.groups, cfg.schedules, self.policy.changed, self.clock)
        self.schedule_clock.tick()  # the groups' rules as of now, before the first query
        self.bypass = bypass_stage(cfg)
        self.resolver = UpstreamResolver(upstreams, cfg.dns.timeout, self.metrics, zones=zones)
        self.safe_search = SafeSearchStage(cfg.safe_search, self.resolver)
        stages = [
            # First: a client we do not serve learns nothing and costs nothing.
            AccessStage(cfg.dns.allow_clients),
            # Before everything that depends on who is asking: the client's group (one memoised lookup).
            self.client_stage,
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
        ]
        # Last: the only stage that leaves the machine.
        return Pipeline(stages, self.resolver)

    async def start(self) -> None:
        upstreams = resolve_upstreams(self.config)
        self.upstreams = upstreams
        self.state = open_state(self.config)  # created and locked when a url list or the admin API needs it
        try:
            if self.state is not None:
                self.local_lists = LocalLists.load(self.state.path / "local.json")
            # url lists from their stored copies; an unchanged snapshot from the last run is mapped at once
            self.lists = load_lists(self.config.lists, self.state, self._snapshot_path())
        except BaseException:
            await self.stop()
            raise
        for name, count in self.lists.entries.items():
            log.info("list %s: %d names from %s", name, count, self.lists.sources[name])
        self._export_list_counts(self.lists.entries)
        self.pipeline = self.build_pipeline(self.lists, upstreams)
        log.info("pipeline: %s", self.pipeline.describe())
        log.info("upstreams: %s", ", ".join(map(str, upstreams)))
        for zone, zone_upstreams in self.config.dns.forward_zones:
            log.info("forward zone %s: %s", zone, ", ".join(map(str, zone_upstreams)))
        assert self.resolver is not None
        await self.resolver.start()
        handler = self.handler = QueryHandler(self.pipeline, self.metrics)
        try:
            for endpoint in self.config.dns.listen:
                await self._listen_dns(endpoint, handler)
            if self.config.metrics is not None:
                self.listening.metrics = await self._listen_http(
                    self.config.metrics.listen, metrics_app(self.registry), "metrics"
                )
            if self.config.blockpage is not None:
                # After the pipeline: the page asks the policy's decision; outsiders learn nothing, as on DNS.
                allowed = AccessStage(self.config.dns.allow_clients).allowed
                for endpoint in self.config.blockpage.listen:
                    app = blockpage_app(self.config.blockpage, self.decide, self.metrics, allowed=allowed)
                    self.listening.blockpage.append(await self._listen_http(endpoint, app, "blockpage"))
            if self.config.admin is not None:
                token = ensure_token(self.config.admin.token_file)
                self.listening.admin = await self._listen_http(
                    self.config.admin.listen, admin_app(self, token), "admin"
                )
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
        return load_embedded() if source == EMBEDDED_NAME else load_config(source)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config and the lists; swap them in only if all of it is good (SIGHUP, `filterd reload`).

        The lists are read in a worker thread, so the loop keeps answering; the new pipeline replaces the old
        in one assignment: a query in flight finishes on the pipeline it started on. Listeners (addresses and
        ports) and state_dir are not re-bound: changing them needs a restart, and the log says so.
        """
        async with self._reload_lock:
            started = time.monotonic()
            systemd.reloading("reloading the config and the lists")
            try:
                return await self._reload(started)
            finally:
                systemd.ready(f"answering DNS on {', '.join(map(str, self.listening.dns))}")

    async def _reload(self, started: float) -> dict[str, Any]:
        try:
            config = await asyncio.to_thread(self._read_config)
            upstreams = resolve_upstreams(config)
            lists = await asyncio.to_thread(load_lists, config.lists, self.state, self._snapshot_path())
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload: the config has errors; the running config stays in use")
            return {"ok": False, "errors": exc.problems}
        except FilterdError as exc:
            log.error("reload: %s; the running config stays in use", exc)
            return {"ok": False, "errors": [str(exc)]}
        for warning in self._needs_restart(config):
            log.warning("reload: %s", warning)
        old = self.config
        config = replace(  # what is bound stays bound: the running config says what really runs
            config,
            dns=replace(config.dns, listen=old.dns.listen),
            metrics=old.metrics,
            blockpage=old.blockpage,
            admin=old.admin,
            state_dir=old.state_dir,
        )
        old_resolver, old_refresher = self.resolver, self.refresher
        old_clock, old_directory = self.schedule_clock, self.directory_refresher
        self.config, self.upstreams, self.lists = config, upstreams, lists
        pipeline = self.build_pipeline(lists, upstreams)
        assert self.resolver is not None and self.handler is not None
        await self.resolver.start()
        self.pipeline = self.handler.pipeline = pipeline  # the swap
        self.lists_loaded = time.time()
        if old_resolver is not None:
            await old_resolver.stop()
        if old_refresher is not None:
            await old_refresher.stop()
            self.refresher = None
        self._start_refresher()
        await self._stop_group_tasks(old_clock, old_directory)
        self._start_group_tasks()
        self._export_list_counts(lists.entries)
        seconds = time.monotonic() - started
        log.info("reload: done in %.2fs; pipeline: %s", seconds, pipeline.describe())
        return {"ok": True, "seconds": round(seconds, 3), "lists": lists.entries}

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
                ("metrics", old.metrics, new.metrics),
                ("blockpage", old.blockpage, new.blockpage),
                ("admin", old.admin, new.admin),
                ("state_dir", old.state_dir, new.state_dir),
            )
            if a != b
        ]
        return [f"{key} changed: restart filterd to apply it (the running value stays)" for key in changed]

    def _start_refresher(self) -> None:
        has_urls = any(cfg.url and cfg.enabled for cfg in self.config.lists)
        if has_urls and self.state is not None and self.policy is not None and self.lists is not None:
            # Downloads in the background: start serves the stored copies at once and never waits for them.
            self.refresher = ListRefresher.create(
                self.config, self.state, self.lists, self.policy, self.metrics, self.upstreams, self._snapshot_path()
            )
            self.refresher.start()

    def _start_group_tasks(self) -> None:
        """The schedule clock, and the client directory when a group names MACs or hosts (both in the background)."""
        if self.schedule_clock is not None:
            self.schedule_clock.start()
        stage = self.client_stage
        if stage is None or not self.groups:
            self.directory_refresher = None
            return
        resolver = UpstreamDnsResolver(self.upstreams, self.config.dns.timeout) if self.upstreams else None
        refresher = DirectoryRefresher(
            self.groups,
            stage.set_directory,
            lambda: list(stage.seen()),
            records=self.config.dns.records,
            lease_files=self.config.dhcp_leases,
            reverse=(lambda name: resolver.lookup(name, "PTR")) if resolver is not None else None,
        )
        self.directory_refresher = refresher if refresher.needed else None
        if self.directory_refresher is not None:
            stage.on_new_client = self.directory_refresher.poke
            self.directory_refresher.start()

    async def _stop_group_tasks(self, clock: ScheduleClock | None, directory: DirectoryRefresher | None) -> None:
        if clock is not None:
            await clock.stop()
        if directory is not None:
            await directory.stop()

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
        }

    def list_files(self) -> dict[str, Path]:
        """Where each list's text is on disk (for quoting the line that matched)."""
        return {cfg.name: path for cfg in self.config.lists if (path := list_path(cfg, self.state)) is not None}

    def lists_status(self) -> list[dict[str, Any]]:
        counts = self.policy.matcher.entry_counts() if self.policy is not None else {}
        refreshed = {s.name: s for s in self.refresher.status()} if self.refresher is not None else {}
        out: list[dict[str, Any]] = []
        for cfg in self.config.lists:
            row: dict[str, Any] = {
                "name": cfg.name,
                "source": cfg.url or (f"builtin:{cfg.builtin}" if cfg.builtin else str(cfg.path)),
                "enabled": cfg.enabled,
                "entries": counts.get(cfg.name, 0),
                "last_success": self.lists_loaded if cfg.enabled and not cfg.url else None,
                "last_error": None,
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
            outcome = await self.reload()  # a file list is refreshed by reading it again: that is a reload
            for name in files:
                ok = bool(outcome.get("ok"))
                entries = outcome.get("lists", {}).get(name, 0) if ok else None
                message = f"read again: {entries} names" if ok else "; ".join(outcome.get("errors", []))
                results.append(
                    {"list": name, "result": "updated" if ok else "failed", "message": message, "entries": entries}
                )
        if urls and self.refresher is not None:
            for result in await self.refresher.update(urls, force=force):
                results.append(asdict(result) | {"result": str(result.result)})
        return results

    def check(self, name: str, client: str | None = None) -> dict[str, Any]:
        assert self.policy is not None and self.local_stage is not None
        try:
            resolver = self.resolver
            group = self._group_of(client)
            return explain(
                name,
                policy=self.policy,
                local=self.local_stage,
                bypass=self.bypass,
                safe_search=self.safe_search.rewrite_of if self.safe_search is not None else None,
                upstreams_for=resolver.upstreams_for if resolver is not None else lambda _: self.upstreams,
                list_files=self.list_files(),
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

    async def _listen_dns(self, endpoint: Endpoint, handler: QueryHandler) -> None:
        loop = asyncio.get_running_loop()
        tcp = TcpServer(handler, self.tcp_limits)
        for attempt in range(20):
            try:
                udp_sock = bind_socket(endpoint.host, endpoint.port, socket.SOCK_DGRAM)
            except OSError as exc:
                if endpoint.host == "::1" and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    # Only the IPv6 loopback: a LAN address that is missing is a mistake to report, not skip.
                    log.warning("dns: skipping %s: IPv6 is off on this machine (%s)", endpoint, exc.strerror)
                    return
                raise StartupError(_bind_error("dns (udp)", endpoint, exc)) from None
            port = udp_sock.getsockname()[1]
            try:
                tcp_sock = bind_socket(endpoint.host, port, socket.SOCK_STREAM)
            except OSError as exc:
                udp_sock.close()
                if endpoint.port == 0 and exc.errno == errno.EADDRINUSE and attempt < 19:
                    continue  # the ephemeral UDP port is taken for TCP: pick another pair
                raise StartupError(_bind_error("dns (tcp)", endpoint, exc)) from None
            transport, _ = await loop.create_datagram_endpoint(lambda: UdpServer(handler), sock=udp_sock)
            server = await asyncio.start_server(tcp.serve, sock=tcp_sock)
            self._transports.append(transport)
            self._servers.append(server)
            bound = Endpoint(endpoint.host, port)
            self.listening.dns.append(bound)
            log.info("dns: listening on %s (udp, tcp)", bound)
            _warn_if_not_local("dns", endpoint.host)
            return

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
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
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

    async def stop(self) -> None:
        if self.refresher is not None:
            await self.refresher.stop()
            self.refresher = None
        await self._stop_group_tasks(self.schedule_clock, self.directory_refresher)
        self.schedule_clock = self.directory_refresher = None
        if self.resolver is not None:
            await self.resolver.stop()
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        self._transports.clear()
        self._servers.clear()
        self._runners.clear()
        if self.state is not None:
            self.state.close()
            self.state = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


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
        safe_search=lambda qname: safe_search.lookup(qname, _safe_search_of(config, group)),
        upstreams_for=lambda qname: upstreams_for(qname, zones, default),
        list_files=files,
        group=group,
        client=client,
    )


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
    """The admin token: read, or created at the first start (32 random bytes, mode 0600)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"admin.token_file {path}: cannot read it: {exc.strerror or exc}") from None
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


def bind_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket; OSError keeps its errno for the message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if _FREEBIND and not ipaddress.ip_address(host).is_loopback:
            # Bind even before the LAN address exists: at boot filterd may start before DHCP or the interface
            # is up. Loopback is always there, and there a missing address should fail (IPv6 off is skipped).
            with contextlib.suppress(OSError):  # kernels before 4.15 have no IPV6_FREEBIND
                sock.setsockopt(*_FREEBIND[family], 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


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
