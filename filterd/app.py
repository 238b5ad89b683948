"""The composition root: config -> lists -> pipeline -> listeners. The only place filterd is assembled."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from filterd import __version__
from filterd.blocklists.load import LoadedLists, load_lists
from filterd.blocklists.matcher import Match
from filterd.blocklists.refresh import ListRefresher, open_state
from filterd.blocklists.state import StateDir
from filterd.config.resolvconf import default_upstreams
from filterd.config.schema import Config, Endpoint
from filterd.errors import FilterdError
from filterd.metrics import Metrics
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Pipeline
from filterd.pipeline.cache import CacheStage, DnsCache
from filterd.pipeline.cname import CnameStage
from filterd.pipeline.local import LocalStage
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.pipeline.upstream import UpstreamResolver
from filterd.sinkhole import BlockedReplies
from filterd.transport.handler import QueryHandler
from filterd.transport.tcp import TcpLimits, TcpServer
from filterd.transport.udp import UdpServer
from filterd.web.blockpage import blockpage_app
from filterd.web.metrics import metrics_app

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")


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


class App:
    def __init__(
        self, config: Config, *, registry: CollectorRegistry | None = None, tcp: TcpLimits | None = None
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

    def build_pipeline(self, lists: LoadedLists, upstreams: tuple[Endpoint, ...]) -> Pipeline:
        cfg = self.config
        zones = dict(cfg.dns.forward_zones)
        self.policy = PolicyStage(lists.matcher, AllowList(cfg.allow), BlockedReplies(cfg.blocking))
        self.cache = DnsCache(cfg.cache.size, cfg.cache.min_ttl, cfg.cache.max_ttl, cfg.cache.stale_max)
        self.metrics.watch_cache(self.cache)
        self.resolver = UpstreamResolver(upstreams, cfg.dns.timeout, self.metrics, zones=zones)
        stages = [
            # First: a client we do not serve learns nothing and costs nothing.
            AccessStage(cfg.dns.allow_clients),
            # Before policy: the admin's own names, localhost, and names that must never leak (RFC 6761,
            # RFC 6303) are answered here and never depend on the lists; ANY and AXFR never go out.
            LocalStage(dict(cfg.dns.records), forward_zones=zones),
            # Before the cache and the upstream: a blocked name is never sent out, nor served from cache.
            self.policy,
            # Before the upstream: repeated questions are answered at once; serves stale when upstreams fail.
            CacheStage(self.cache),
            # Inside the cache: only answers whose CNAME chain passed the lists are cached.
            CnameStage(self.policy),
        ]
        # Last: the only stage that leaves the machine.
        return Pipeline(stages, self.resolver)

    async def start(self) -> None:
        upstreams = resolve_upstreams(self.config)
        self.state = open_state(self.config)  # created and locked when a url list needs it, else None
        try:
            self.lists = load_lists(self.config.lists, self.state)  # url lists from their stored copies
        except BaseException:
            await self.stop()
            raise
        for name, count in self.lists.entries.items():
            self.metrics.blocklist_entries.labels(list=name).set(count)
            log.info("list %s: %d names from %s", name, count, self.lists.sources[name])
        self.pipeline = self.build_pipeline(self.lists, upstreams)
        log.info("pipeline: %s", self.pipeline.describe())
        log.info("upstreams: %s", ", ".join(map(str, upstreams)))
        for zone, zone_upstreams in self.config.dns.forward_zones:
            log.info("forward zone %s: %s", zone, ", ".join(map(str, zone_upstreams)))
        assert self.resolver is not None
        await self.resolver.start()
        handler = QueryHandler(self.pipeline, self.metrics)
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
        except BaseException:
            await self.stop()
            raise
        if not self.listening.dns:
            await self.stop()
            raise StartupError("no DNS listener could be opened")
        if self.state is not None and self.policy is not None:
            # Downloads in the background: start serves the stored copies at once and never waits for them.
            self.refresher = ListRefresher.create(
                self.config, self.state, self.lists, self.policy, self.metrics, upstreams
            )
            self.refresher.start()
        self._warn_about_sinkhole()

    async def _listen_dns(self, endpoint: Endpoint, handler: QueryHandler) -> None:
        loop = asyncio.get_running_loop()
        tcp = TcpServer(handler, self.tcp_limits)
        for attempt in range(20):
            try:
                udp_sock = bind_socket(endpoint.host, endpoint.port, socket.SOCK_DGRAM)
            except OSError as exc:
                if ":" in endpoint.host and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    log.warning("dns: skipping %s: IPv6 is not available here (%s)", endpoint, exc.strerror)
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
            return

    def decide(self, name: str) -> Match | None:
        """The block decision for a name now (the policy's own lookup; the block page asks it per request)."""
        return self.policy.decide(name) if self.policy is not None else None

    async def _listen_http(self, endpoint: Endpoint, app: web.Application, what: str) -> Endpoint:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, endpoint.host, endpoint.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise StartupError(_bind_error(what, endpoint, exc)) from None
        port = runner.addresses[-1][1]
        bound = Endpoint(endpoint.host, port)
        log.info("%s: listening on http://%s/", what, bound)
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


def bind_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A bound (and, for TCP, listening) non-blocking socket; OSError keeps its errno for the message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_loopback(host: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(host).is_loopback


def _bind_error(what: str, endpoint: Endpoint, exc: OSError) -> str:
    message = f"{what}: cannot listen on {endpoint}: {exc.strerror or exc}"
    if exc.errno == errno.EACCES and endpoint.port < 1024:
        message += " (ports below 1024 need root or CAP_NET_BIND_SERVICE; the systemd unit grants it)"
    elif exc.errno == errno.EADDRINUSE:
        message += f" (another program holds this port; `ss -lupnt 'sport = :{endpoint.port}'` shows which)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        message += " (this machine has no such address; list one of its own addresses)"
    return message
