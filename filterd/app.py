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
from filterd.config.resolvconf import default_upstreams
from filterd.config.schema import Config, Endpoint
from filterd.errors import FilterdError
from filterd.metrics import Metrics
from filterd.pipeline.access import AccessStage
from filterd.pipeline.base import Pipeline
from filterd.pipeline.local import LocalStage
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.pipeline.upstream import UpstreamResolver
from filterd.sinkhole import BlockedReplies
from filterd.transport.handler import QueryHandler
from filterd.transport.tcp import TcpServer
from filterd.transport.udp import UdpServer
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


class App:
    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry, __version__)
        self.listening = Listening()
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []
        self._runners: list[web.AppRunner] = []
        self.lists: LoadedLists | None = None
        self.policy: PolicyStage | None = None
        self.pipeline: Pipeline | None = None

    def build_pipeline(self, lists: LoadedLists, upstreams: tuple[Endpoint, ...]) -> Pipeline:
        cfg = self.config
        self.policy = PolicyStage(lists.matcher, AllowList(cfg.allow), BlockedReplies(cfg.blocking))
        stages = [
            # First: a client we do not serve learns nothing and costs nothing.
            AccessStage(cfg.dns.allow_clients),
            # Before policy: names filterd answers itself (ANY) never depend on the lists.
            LocalStage(),
            # Before the upstream: a blocked name is never sent out; after it: CNAME chains are checked.
            self.policy,
        ]
        # Last: the only stage that leaves the machine.
        return Pipeline(stages, UpstreamResolver(upstreams, cfg.dns.timeout, self.metrics))

    async def start(self) -> None:
        upstreams = resolve_upstreams(self.config)
        self.lists = load_lists(self.config.lists)
        for name, count in self.lists.entries.items():
            self.metrics.blocklist_entries.labels(list=name).set(count)
            log.info("list %s: %d names from %s", name, count, self.lists.sources[name])
        self.pipeline = self.build_pipeline(self.lists, upstreams)
        log.info("pipeline: %s", self.pipeline.describe())
        log.info("upstreams: %s", ", ".join(map(str, upstreams)))
        handler = QueryHandler(self.pipeline, self.metrics)
        try:
            for endpoint in self.config.dns.listen:
                await self._listen_dns(endpoint, handler)
            if self.config.metrics is not None:
                self.listening.metrics = await self._listen_http(
                    self.config.metrics.listen, metrics_app(self.registry), "metrics"
                )
        except BaseException:
            await self.stop()
            raise
        if not self.listening.dns:
            await self.stop()
            raise StartupError("no DNS listener could be opened")
        self._warn_about_sinkhole()

    async def _listen_dns(self, endpoint: Endpoint, handler: QueryHandler) -> None:
        loop = asyncio.get_running_loop()
        tcp = TcpServer(handler)
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

    async def stop(self) -> None:
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for runner in self._runners:
            await runner.cleanup()
        self._transports.clear()
        self._servers.clear()
        self._runners.clear()


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
