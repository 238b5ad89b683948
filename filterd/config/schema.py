"""The typed, frozen configuration: one dataclass per YAML section.

Every field here is a YAML key of the same name; `docs/config.md` documents each one. The loader
(`filterd.config.load`) is the only place that builds these objects, so a `Config` is always valid.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port a listener binds or an upstream is reached at."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_wildcard(self) -> bool:
        return ipaddress.ip_address(self.host).is_unspecified


#: Who may query by default: loopback, RFC 1918, RFC 6598 (CGNAT), ULA and link-local. Never the world.
DEFAULT_ALLOW_CLIENTS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    listen: tuple[Endpoint, ...]
    #: Empty means "the nameservers of /etc/resolv.conf", resolved when the server starts.
    upstreams: tuple[Endpoint, ...] = ()
    timeout: float = 2.0
    allow_clients: tuple[IPNetwork, ...] = DEFAULT_ALLOW_CLIENTS


class BlockingMode(enum.StrEnum):
    SINKHOLE = "sinkhole"
    NULL = "null"
    NXDOMAIN = "nxdomain"
    REFUSED = "refused"


_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
_LOOPBACK_V6 = ipaddress.IPv6Address("::1")


@dataclass(frozen=True, slots=True)
class SinkholeConfig:
    ipv4: ipaddress.IPv4Address = _LOOPBACK_V4
    ipv6: ipaddress.IPv6Address = _LOOPBACK_V6


@dataclass(frozen=True, slots=True)
class BlockingConfig:
    mode: BlockingMode = BlockingMode.SINKHOLE
    sinkhole: SinkholeConfig = field(default_factory=SinkholeConfig)
    ttl: int = 10


class ListFormat(enum.StrEnum):
    AUTO = "auto"
    HOSTS = "hosts"
    DOMAINS = "domains"
    ADBLOCK = "adblock"


@dataclass(frozen=True, slots=True)
class ListConfig:
    """One blocklist: exactly one of `path` or `builtin` is set (`url` comes with subscriptions)."""

    name: str
    path: Path | None = None
    builtin: str | None = None
    format: ListFormat = ListFormat.AUTO
    #: None: the format's own default (hosts: exact names; domains, adblock and builtin lists: subtrees).
    subdomains: bool | None = None
    category: str = "blocked"
    enabled: bool = True

    @property
    def source(self) -> str:
        return f"builtin:{self.builtin}" if self.builtin else str(self.path)


DEFAULT_LISTS: tuple[ListConfig, ...] = (
    ListConfig(name="chat-roulette", builtin="chat-roulette", category="chat-roulette"),
)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: Endpoint


@dataclass(frozen=True, slots=True)
class Config:
    dns: DnsConfig
    blocking: BlockingConfig = field(default_factory=BlockingConfig)
    lists: tuple[ListConfig, ...] = DEFAULT_LISTS
    #: Names never blocked, with everything under them (the only exception across lists).
    allow: tuple[str, ...] = ()
    #: None: the listener is off.
    metrics: MetricsConfig | None = None
    #: Where the config came from ("<embedded default>" or a path), for messages.
    source: str = "<embedded default>"
