"""YAML text -> `Config`, reporting every problem as `PATH:LINE: dotted.key: what is wrong`.

The YAML is composed to nodes first, so every value keeps its line number; unknown keys are errors
(a typo must never silently turn a feature off).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import string
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import yaml

from filterd.blocklists.parse import normalize_name
from filterd.config.schema import (
    DEFAULT_ALLOW_CLIENTS,
    DEFAULT_LISTS,
    DEFAULT_STATE_DIR,
    AdminConfig,
    AlertRule,
    BlockingConfig,
    BlockingMode,
    BlockpageConfig,
    BlockpageHttpsConfig,
    BlockpageTexts,
    CacheConfig,
    Config,
    DnsConfig,
    EmailConfig,
    Endpoint,
    GroupConfig,
    HelpItem,
    IPAddress,
    IPNetwork,
    ListConfig,
    ListFormat,
    MetricsConfig,
    NotifyConfig,
    QueryLogConfig,
    RateLimitConfig,
    SafeguardingConfig,
    SafeSearchConfig,
    ScheduleConfig,
    SinkholeConfig,
    TlsConfig,
    Window,
    YoutubeRestriction,
)
from filterd.config.units import format_size, parse_size
from filterd.dns.names import is_address
from filterd.errors import ConfigError

EMBEDDED_NAME = "<embedded default>"
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Node:
    """A YAML value with the line it starts on (1-based)."""

    value: Any  # dict[str, _Node] | list[_Node] | scalar
    line: int


class _Problems:
    def __init__(self, source: str, check_files: bool = True) -> None:
        self.source = source
        self.items: list[str] = []
        #: Whether a list file that cannot be read is a problem (`config check`), or left to the server, which
        #: starts without it and keeps trying (blocklists/guard.py).
        self.check_files = check_files
        self._lines: list[int] = []

    def add(self, line: int, key: str, message: str) -> None:
        self.items.append(f"{self.source}:{line}: {key}: {message}")
        self._lines.append(line)

    def in_line_order(self) -> list[str]:
        """The problems as the file reads, top to bottom (sections are checked in their own order); those on
        one line keep the order they were found in."""
        order = sorted(range(len(self.items)), key=self._lines.__getitem__)
        return [self.items[i] for i in order]


def _compose(text: str, source: str) -> _Node | None:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        return None if root is None else _located(loader, root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError([f"{source}:{line}: invalid YAML: {exc.problem or exc}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}:1: invalid YAML: {exc}"]) from None
    finally:
        loader.dispose()


def _located(loader: yaml.SafeLoader, node: yaml.Node) -> _Node:
    line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, _Node] = {}
        for key_node, value_node in node.value:
            key = str(loader.construct_object(key_node))
            if key in out:
                raise ConfigError([f"<yaml>:{key_node.start_mark.line + 1}: {key}: duplicate key"])
            out[key] = _located(loader, value_node)
        return _Node(out, line)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_located(loader, item) for item in node.value], line)
    return _Node(loader.construct_object(node), line)


# --- scalar readers: each returns the value or None after recording a problem -------------------------


def _mapping(node: _Node, key: str, allowed: set[str], p: _Problems) -> dict[str, _Node] | None:
    if node.value is None:
        return {}
    if not isinstance(node.value, dict):
        p.add(node.line, key or "(top level)", "must be a mapping of keys to values")
        return None
    for name, child in node.value.items():
        if name not in allowed:
            p.add(
                child.line,
                f"{key}.{name}" if key else name,
                f"unknown key (expected one of: {', '.join(sorted(allowed))})",
            )
    return dict(node.value)


def _sequence(node: _Node, key: str, p: _Problems) -> list[_Node] | None:
    if isinstance(node.value, list):
        return list(node.value)
    p.add(node.line, key, "must be a list")
    return None


def _string(node: _Node, key: str, p: _Problems) -> str | None:
    if isinstance(node.value, str) and node.value.strip():
        return node.value.strip()
    p.add(node.line, key, f"must be a non-empty string, not {node.value!r}")
    return None


def _boolean(node: _Node, key: str, p: _Problems) -> bool | None:
    if isinstance(node.value, bool):
        return node.value
    p.add(node.line, key, f"must be true or false, not {node.value!r}")
    return None


def _number(node: _Node, key: str, p: _Problems, low: float, high: float, kind: type = float) -> Any:
    value = node.value
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and kind is int and not isinstance(value, int):
        ok = False
    if ok and low <= value <= high:
        return kind(value)
    what = "a whole number" if kind is int else "a number"
    p.add(node.line, key, f"must be {what} from {low:g} to {high:g}, not {value!r}")
    return None


def _choice(node: _Node, key: str, p: _Problems, enum_type: type[T]) -> T | None:
    try:
        return enum_type(node.value)  # type: ignore[call-arg]
    except ValueError:
        options = ", ".join(m.value for m in enum_type)  # type: ignore[attr-defined]
        p.add(node.line, key, f"{node.value!r} is not one of: {options}")
        return None


_ENDPOINT_RE = re.compile(
    r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)|(?P<bare6>[0-9a-fA-F:.]*:[0-9a-fA-F:.]*))"
    r"(?::(?P<port>\d+))?$"
)


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """`1.2.3.4`, `1.2.3.4:53`, `[::1]:53` or a bare `::1` -> Endpoint; ValueError says what is wrong."""
    text = text.strip()
    m = _ENDPOINT_RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not host[:port] (write IPv6 as [::1]:53)")
    if m.group("bare6") is not None:
        host, port_text = m.group("bare6"), None  # a bare IPv6 address takes no port
    else:
        host, port_text = m.group("v6") or m.group("host"), m.group("port")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    port = default_port if port_text is None else int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return Endpoint(str(address), port)


def _endpoint(node: _Node, key: str, p: _Problems, default_port: int) -> Endpoint | None:
    if isinstance(node.value, int) and not isinstance(node.value, bool):
        p.add(node.line, key, f"{node.value!r} is not host[:port]")
        return None
    text = _string(node, key, p)
    if text is None:
        return None
    try:
        return parse_endpoint(text, default_port)
    except ValueError as exc:
        p.add(node.line, key, str(exc))
        return None


def _items(node: _Node, key: str, p: _Problems, read: Callable[[_Node, str], T | None]) -> tuple[T, ...] | None:
    items = _sequence(node, key, p)
    if items is None:
        return None
    out = [read(item, f"{key}[{i}]") for i, item in enumerate(items)]
    if any(v is None for v in out):
        return None
    return tuple(v for v in out if v is not None)


def _network(node: _Node, key: str, p: _Problems, example: str = "192.168.0.0/16") -> IPNetwork | None:
    text = _string(node, key, p)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        p.add(node.line, key, f"{text!r} is not an IP network in CIDR form (e.g. {example})")
        return None


def _proxy_network(node: _Node, key: str, p: _Problems) -> IPNetwork | None:
    """A load balancer's address: a network too wide would let any client name itself (groups, the log, access)."""
    net = _network(node, key, p, "10.0.0.5/32")
    if net is not None and net.prefixlen < (16 if net.version == 4 else 48):
        p.add(
            node.line,
            key,
            f"{net} would let any client there choose the address it is seen as: list the proxies' own "
            "addresses (e.g. 10.0.0.5/32)",
        )
        return None
    return net


def _names_list(node: _Node, key: str, p: _Problems) -> tuple[str, ...] | None:
    """A list of domain names (each with everything under it; `*.name` means the same), normalised."""

    def name(n: _Node, k: str) -> str | None:
        text = _string(n, k, p)
        return None if text is None else _zone_name(n, k, text.removeprefix("*."), p)

    return _items(node, key, p, name)


def _windows(node: _Node, key: str, p: _Problems) -> tuple[Window, ...]:
    """`when:` of a schedule or an alert rule: "DAYS HH:MM-HH:MM" strings; each bad one reported."""
    from filterd.groups.schedule import parse_window

    windows = []
    for i, item in enumerate(_sequence(node, key, p) or []):
        text = _string(item, f"{key}[{i}]", p)
        if text is None:
            continue
        try:
            windows.append(parse_window(text))
        except ValueError as exc:
            p.add(item.line, f"{key}[{i}]", str(exc))
    return tuple(windows)


def _timezone(node: _Node, key: str, p: _Problems) -> str | None:
    """An IANA time zone name that this machine knows (else reported, and None)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    timezone = _string(node, key, p)
    if timezone is None:
        return None
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        p.add(node.line, key, f"{timezone!r} is not a time zone (e.g. Europe/London)")
        return None
    return timezone


# --- sections ---------------------------------------------------------------------------------------


def _dns(node: _Node, p: _Problems, base_dir: Path) -> DnsConfig | None:
    dns_keys = {"listen", "upstreams", "timeout", "allow_clients", "forward_zones", "records"}
    keys = _mapping(
        node,
        "dns",
        dns_keys | {"rebind_protection", "rebind_allow", "proxy_protocol", "workers"} | _ENCRYPTED_DNS_KEYS,
        p,
    )
    if keys is None:
        return None
    if "listen" not in keys:
        p.add(node.line, "dns.listen", "is required (for example [127.0.0.1:53])")
        return None

    def listen_item(n: _Node, k: str) -> Endpoint | None:
        return _endpoint(n, k, p, 53)  # a wildcard address is fine: replies leave from the query's address

    listen = _items(keys["listen"], "dns.listen", p, listen_item)
    if listen is not None and not listen:
        p.add(keys["listen"].line, "dns.listen", "must list at least one address")
        listen = None
    upstreams: tuple[Endpoint, ...] | None = ()
    if "upstreams" in keys:
        upstreams = _items(keys["upstreams"], "dns.upstreams", p, lambda n, k: _upstream(n, k, p))
    encrypted = _encrypted_dns(keys, p, base_dir, listen or ())
    timeout = 2.0
    if "timeout" in keys:
        timeout = _number(keys["timeout"], "dns.timeout", p, 0.1, 60)
    allow_clients: tuple[IPNetwork, ...] | None = DEFAULT_ALLOW_CLIENTS
    if "allow_clients" in keys:
        allow_clients = _items(keys["allow_clients"], "dns.allow_clients", p, lambda n, k: _network(n, k, p))
    zones = _forward_zones(keys["forward_zones"], p) if "forward_zones" in keys else ()
    records = _records(keys["records"], p) if "records" in keys else ()
    rebind = _boolean(keys["rebind_protection"], "dns.rebind_protection", p) if "rebind_protection" in keys else True
    rebind_allow = _names_list(keys["rebind_allow"], "dns.rebind_allow", p) if "rebind_allow" in keys else ()
    proxies: tuple[IPNetwork, ...] | None = ()
    if "proxy_protocol" in keys:
        proxies = _items(keys["proxy_protocol"], "dns.proxy_protocol", p, lambda n, k: _proxy_network(n, k, p))
    workers: int | None = 1
    if "workers" in keys:
        workers = _workers(keys["workers"], p)
    if listen is None or upstreams is None or timeout is None or allow_clients is None:
        return None
    if (
        zones is None
        or records is None
        or rebind is None
        or rebind_allow is None
        or proxies is None
        or encrypted is None
        or workers is None
    ):
        return None
    return DnsConfig(
        listen=listen,
        upstreams=upstreams,
        timeout=timeout,
        allow_clients=allow_clients,
        forward_zones=zones,
        records=records,
        rebind_protection=rebind,
        rebind_allow=rebind_allow,
        proxy_protocol=proxies,
        workers=workers,
        **encrypted,
    )


#: More processes than this would each hold a cache and upstream sockets for little gain (dnsdist and unbound
#: advise one per core).
MAX_WORKERS = 64


def _workers(node: _Node, p: _Problems) -> int | None:
    """`dns.workers`: a count from 1 to MAX_WORKERS, or `auto` (this machine's CPUs, within that range)."""
    if node.value == "auto":
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    value = node.value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    p.add(node.line, "dns.workers", f"must be a whole number from 1 to {MAX_WORKERS} or auto, not {value!r}")
    return None


def _zone_name(node: _Node, key: str, text: str, p: _Problems) -> str | None:
    name = normalize_name(text)
    if name is None:
        p.add(node.line, key, f"{text!r} is not a valid domain name")
    return name


def _forward_zones(node: _Node, p: _Problems) -> tuple[tuple[str, tuple[Endpoint, ...]], ...] | None:
    if not isinstance(node.value, dict):
        p.add(node.line, "dns.forward_zones", "must map zones to lists of upstreams, e.g. {lan: [192.168.1.1]}")
        return None
    out = []
    for zone_text, child in node.value.items():
        key = f"dns.forward_zones.{zone_text}"
        zone = _zone_name(child, key, zone_text, p)
        items = child if isinstance(child.value, list) else _Node([child], child.line)
        upstreams = _items(items, key, p, lambda n, k: _upstream(n, k, p))
        if zone is not None and upstreams:
            out.append((zone, upstreams))
        elif upstreams is not None and not upstreams:
            p.add(child.line, key, "needs at least one upstream")
    return tuple(out)


def _records(node: _Node, p: _Problems) -> tuple[tuple[str, tuple[IPAddress, ...]], ...] | None:
    if not isinstance(node.value, dict):
        p.add(node.line, "dns.records", "must map names to addresses, e.g. {filter.lan: 192.168.1.2}")
        return None
    out = []
    for name_text, child in node.value.items():
        key = f"dns.records.{name_text}"
        name = _zone_name(child, key, name_text, p)
        values = child.value if isinstance(child.value, list) else [child]
        addresses: list[IPAddress] = []
        for index, item in enumerate(values):
            try:
                addresses.append(ipaddress.ip_address(str(item.value).strip()))
            except ValueError:
                where = key if len(values) == 1 and not isinstance(child.value, list) else f"{key}[{index}]"
                p.add(item.line, where, f"{item.value!r} is not an IP address")
        if name is not None and addresses and len(addresses) == len(values):
            out.append((name, tuple(addresses)))
    return tuple(out)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> int:
    """Seconds from `90`, `90s`, `30m`, `6h` or `1d`; ValueError saying which forms are accepted."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text = str(value).strip().lower()
    if text[:-1].isdigit() and text[-1:] in _DURATION_UNITS:
        return int(text[:-1]) * _DURATION_UNITS[text[-1]]
    raise ValueError(f"{value!r} is not a duration: write seconds (90) or 90s, 30m, 6h, 1d")


def _duration(node: _Node, key: str, p: _Problems, low: int, high: int) -> int | None:
    try:
        seconds = parse_duration(node.value)
    except ValueError as exc:
        p.add(node.line, key, str(exc))
        return None
    if not low <= seconds <= high:
        p.add(node.line, key, f"must be from {low} to {high} seconds, not {seconds}")
        return None
    return seconds


def _cache(node: _Node, p: _Problems) -> CacheConfig | None:
    keys = _mapping(node, "cache", {"size", "min_ttl", "max_ttl", "stale_max"}, p)
    if keys is None:
        return None
    default = CacheConfig()
    size = _number(keys["size"], "cache.size", p, 0, 10_000_000, int) if "size" in keys else default.size
    min_ttl = _duration(keys["min_ttl"], "cache.min_ttl", p, 0, 86400) if "min_ttl" in keys else default.min_ttl
    max_ttl = _duration(keys["max_ttl"], "cache.max_ttl", p, 0, 604800) if "max_ttl" in keys else default.max_ttl
    stale = _duration(keys["stale_max"], "cache.stale_max", p, 0, 604800) if "stale_max" in keys else default.stale_max
    if size is None or min_ttl is None or max_ttl is None or stale is None:
        return None
    if min_ttl > max_ttl:
        p.add(keys["min_ttl"].line, "cache.min_ttl", f"{min_ttl} is larger than cache.max_ttl ({max_ttl})")
        return None
    return CacheConfig(size=size, min_ttl=min_ttl, max_ttl=max_ttl, stale_max=stale)


_RATELIMIT_KEYS = {f.name for f in dataclasses.fields(RateLimitConfig)}


def _ratelimit(node: _Node, p: _Problems) -> RateLimitConfig | None:
    """`false` (off), `true` or empty (the defaults), or a mapping: on unless it says `enabled: false`."""
    if node.value is None or isinstance(node.value, bool):
        return RateLimitConfig(enabled=node.value is not False)
    if not isinstance(node.value, dict):
        p.add(node.line, "ratelimit", f"must be true, false or a mapping such as {{qps: 1000}}, not {node.value!r}")
        return None
    before = len(p.items)
    keys = _mapping(node, "ratelimit", _RATELIMIT_KEYS, p) or {}
    values: dict[str, Any] = {}
    if "enabled" in keys:
        values["enabled"] = _boolean(keys["enabled"], "ratelimit.enabled", p)
    if "qps" in keys:
        values["qps"] = _number(keys["qps"], "ratelimit.qps", p, 1, 1_000_000)
    if "burst" in keys:
        values["burst"] = _number(keys["burst"], "ratelimit.burst", p, 1, 10_000_000, int)
    if "slip" in keys:
        values["slip"] = _number(keys["slip"], "ratelimit.slip", p, 0, 10, int)
    if "exempt" in keys:
        exempt = keys["exempt"]
        values["exempt"] = (
            ()
            if exempt.value is None
            else _items(exempt, "ratelimit.exempt", p, lambda n, k: _network(n, k, p, "10.1.0.0/16"))
        )
    return None if len(p.items) > before else RateLimitConfig(**values)


def _blocking(node: _Node, p: _Problems) -> BlockingConfig | None:
    keys = _mapping(node, "blocking", {"mode", "sinkhole", "ttl"}, p)
    if keys is None:
        return None
    default = BlockingConfig()
    mode: BlockingMode | None = default.mode
    if "mode" in keys:
        # YAML reads `mode: null` unquoted as no value at all: the null mode is what was meant
        mode = (
            BlockingMode.NULL if keys["mode"].value is None else _choice(keys["mode"], "blocking.mode", p, BlockingMode)
        )
    ttl = _number(keys["ttl"], "blocking.ttl", p, 0, 86400, int) if "ttl" in keys else default.ttl
    sinkhole: SinkholeConfig | None = default.sinkhole
    if "sinkhole" in keys:
        sinkhole = _sinkhole(keys["sinkhole"], p)
    if mode is None or ttl is None or sinkhole is None:
        return None
    return BlockingConfig(mode=mode, sinkhole=sinkhole, ttl=ttl)


def _sinkhole(node: _Node, p: _Problems) -> SinkholeConfig | None:
    keys = _mapping(node, "blocking.sinkhole", {"ipv4", "ipv6"}, p)
    if keys is None:
        return None
    default = SinkholeConfig()
    ipv4: ipaddress.IPv4Address | None = default.ipv4
    ipv6: ipaddress.IPv6Address | None = default.ipv6
    if "ipv4" in keys:
        try:
            ipv4 = ipaddress.IPv4Address(str(keys["ipv4"].value).strip())
        except ValueError:
            p.add(keys["ipv4"].line, "blocking.sinkhole.ipv4", f"{keys['ipv4'].value!r} is not an IPv4 address")
            ipv4 = None
    if "ipv6" in keys:
        try:
            ipv6 = ipaddress.IPv6Address(str(keys["ipv6"].value).strip())
        except ValueError:
            p.add(keys["ipv6"].line, "blocking.sinkhole.ipv6", f"{keys['ipv6'].value!r} is not an IPv6 address")
            ipv6 = None
    if ipv4 is None or ipv6 is None:
        return None
    return SinkholeConfig(ipv4=ipv4, ipv6=ipv6)


_LIST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SUBSCRIPTION_KEYS = ("refresh", "max_bytes", "shrink_guard", "timeout", "fallback")
#: Of those, the ones a path list takes too (its file is checked like a download: blocklists/guard.py).
_FILE_KEYS = ("max_bytes", "shrink_guard")
_LIST_KEYS = {
    "name",
    "path",
    "builtin",
    "url",
    "format",
    "subdomains",
    "category",
    "enabled",
    "allow_suffixes",
    *_SUBSCRIPTION_KEYS,
}


def _list_entry(node: _Node, key: str, p: _Problems, base_dir: Path) -> ListConfig | None:
    keys = _mapping(node, key, _LIST_KEYS, p)
    if keys is None:
        return None
    before = len(p.items)
    sources = [k for k in ("path", "builtin", "url") if k in keys]
    if len(sources) != 1:
        p.add(node.line, key, "needs exactly one of: path, builtin, url")
        return None
    subscription = _subscription(keys, key, p)
    builtin = _string(keys["builtin"], f"{key}.builtin", p) if "builtin" in keys else None
    path: Path | None = None
    if "path" in keys:
        text = _string(keys["path"], f"{key}.path", p)
        path = None if text is None else (base_dir / Path(text).expanduser())
        problem = _file_problem(path) if path is not None and p.check_files else None
        if problem is not None:
            p.add(keys["path"].line, f"{key}.path", problem)
    if builtin is not None and builtin not in builtin_list_names():
        p.add(
            keys["builtin"].line,
            f"{key}.builtin",
            f"no built-in list {builtin!r} (available: {', '.join(builtin_list_names())})",
        )
    default_name = builtin or (path.stem if path else None) or url_list_name(subscription.get("url")) or "list"
    name = _string(keys["name"], f"{key}.name", p) if "name" in keys else default_name
    if name is not None and not _LIST_NAME_RE.match(name):
        p.add(
            keys["name"].line if "name" in keys else node.line,
            f"{key}.name",
            f"{name!r} must be letters, digits, '-', '_' or '.' (at most 64)",
        )
    fmt = _choice(keys["format"], f"{key}.format", p, ListFormat) if "format" in keys else ListFormat.AUTO
    subdomains = _boolean(keys["subdomains"], f"{key}.subdomains", p) if "subdomains" in keys else None
    if builtin is not None and "subdomains" not in keys:
        subdomains = True  # the shipped lists are curated so that each name stands for its subtree
    category = _string(keys["category"], f"{key}.category", p) if "category" in keys else (name or "blocked")
    enabled = _boolean(keys["enabled"], f"{key}.enabled", p) if "enabled" in keys else True
    allow_suffixes = _boolean(keys["allow_suffixes"], f"{key}.allow_suffixes", p) if "allow_suffixes" in keys else False
    if len(p.items) > before or name is None or fmt is None or category is None or enabled is None:
        return None
    return ListConfig(
        name=name,
        path=path,
        builtin=builtin,
        format=fmt,
        subdomains=subdomains,
        category=category,
        enabled=enabled,
        allow_suffixes=bool(allow_suffixes),
        **subscription,
    )


def _file_problem(path: Path, what: str = "a list file") -> str | None:
    """Why a file (a list, a certificate) cannot be read now, or None."""
    if path.is_dir():
        return f"{path} is a directory, not {what}"
    if not path.is_file():
        return f"no such file: {path}"
    if not os.access(path, os.R_OK):
        return f"cannot read {path}: permission denied"
    return None


def _subscription(keys: dict[str, _Node], key: str, p: _Problems) -> dict[str, Any]:
    """`url` and the keys that only a url list takes (a path list: max_bytes and shrink_guard), as ListConfig
    arguments ({} for other lists)."""
    out: dict[str, Any] = {}
    if "url" not in keys:
        for extra in _SUBSCRIPTION_KEYS:
            if extra in keys and not (extra in _FILE_KEYS and "path" in keys):
                p.add(keys[extra].line, f"{key}.{extra}", "applies only to a list with a url (or, this one, a path)")
        if "path" in keys:
            _size_keys(keys, key, p, out)
        return out
    url = _string(keys["url"], f"{key}.url", p)
    if url is not None:
        problem = url_problem(url)
        if problem is not None:
            p.add(keys["url"].line, f"{key}.url", problem)
        out["url"] = url
    if "refresh" in keys:
        out["refresh"] = _duration(keys["refresh"], f"{key}.refresh", p, 1, 30 * 86400)
    if "timeout" in keys:
        out["timeout"] = _duration(keys["timeout"], f"{key}.timeout", p, 1, 3600)
    _size_keys(keys, key, p, out)
    if "fallback" in keys:
        fallback = _string(keys["fallback"], f"{key}.fallback", p)
        if fallback is not None and fallback not in builtin_list_names():
            p.add(
                keys["fallback"].line,
                f"{key}.fallback",
                f"no built-in list {fallback!r} (available: {', '.join(builtin_list_names())})",
            )
        out["fallback"] = fallback
    return out


def _size_keys(keys: dict[str, _Node], key: str, p: _Problems, out: dict[str, Any]) -> None:
    if "max_bytes" in keys:
        out["max_bytes"] = _size(keys["max_bytes"], f"{key}.max_bytes", p)
    if "shrink_guard" in keys:
        out["shrink_guard"] = _number(keys["shrink_guard"], f"{key}.shrink_guard", p, 0, 1)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be subscribed to, or None: http or https, with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError as exc:
        return f"{url!r} is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return f"{url!r}: only http:// and https:// URLs can be subscribed to"
    if not parts.hostname:
        return f"{url!r} has no host name"
    return None


def url_list_name(url: str | None) -> str | None:
    """A url list's default name: the last path segment without its extension (`.../pro.txt` -> `pro`)."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    segment = urllib.parse.unquote(parts.path.rstrip("/").rpartition("/")[2])
    return PurePosixPath(segment).stem or parts.hostname


def _size(node: _Node, key: str, p: _Problems) -> int | None:
    try:
        size = parse_size(node.value)
    except ValueError as exc:
        p.add(node.line, key, str(exc))
        return None
    if not 1 <= size <= MAX_LIST_BYTES:
        p.add(node.line, key, f"must be from 1 byte to {format_size(MAX_LIST_BYTES)}, not {size}")
        return None
    return size


#: The largest `max_bytes`: a download is held in memory while it is checked.
MAX_LIST_BYTES = 1024**3
_XDG_STATE_DEFAULT = "~/.local/state"


def state_dir_path(text: str, base_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """`state_dir` as a path: `~` expanded, relative to the config file's folder, and a path under
    `~/.local/state` moved under `$XDG_STATE_HOME` when that is set (the XDG Base Directory rule)."""
    xdg = environ.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg) and (text == _XDG_STATE_DEFAULT or text.startswith(_XDG_STATE_DEFAULT + "/")):
        text = xdg + text[len(_XDG_STATE_DEFAULT) :]
    return base_dir / Path(text).expanduser()


def _state_dir(node: _Node, p: _Problems, base_dir: Path) -> Path | None:
    text = _string(node, "state_dir", p)
    return None if text is None else state_dir_path(text, base_dir)


def _lists(node: _Node, p: _Problems, base_dir: Path) -> tuple[ListConfig, ...] | None:
    lists = _items(node, "lists", p, lambda n, k: _list_entry(n, k, p, base_dir))
    if lists is None:
        return None
    seen: set[str] = set()
    for i, item in enumerate(lists):
        if item.name in seen:
            p.add(node.value[i].line, f"lists[{i}].name", f"{item.name!r} is used by another list already")
        seen.add(item.name)
    return lists


def _allow(node: _Node, p: _Problems) -> tuple[str, ...] | None:
    return _names_list(node, "allow", p)


def _metrics(node: _Node, p: _Problems) -> MetricsConfig | None:
    keys = _mapping(node, "metrics", {"listen"}, p)
    if keys is None:
        return None
    if "listen" not in keys:
        p.add(node.line, "metrics.listen", "is required when the metrics section is present")
        return None
    listen = _endpoint(keys["listen"], "metrics.listen", p, 9153)
    return None if listen is None else MetricsConfig(listen=listen)


#: What `$name` in a block-page text may refer to (filled in by filterd/web/blockpage.py).
BLOCKPAGE_PLACEHOLDERS = ("site", "category", "category_id", "list", "entry", "contact")
_BLOCKPAGE_TEXT_KEYS = {f.name for f in dataclasses.fields(BlockpageTexts)}
_LANG_RE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*$")


def _blockpage(node: _Node, p: _Problems) -> BlockpageConfig | None:
    keys = _mapping(node, "blockpage", {"listen", "contact", "unblock_url", "texts", "https"}, p)
    if keys is None:
        return None
    if "listen" not in keys:
        p.add(node.line, "blockpage.listen", "is required when the section is present (e.g. [192.168.1.2:80])")
        return None
    before = len(p.items)
    listen = _items(keys["listen"], "blockpage.listen", p, lambda n, k: _endpoint(n, k, p, 80))
    if listen is not None and not listen:
        p.add(keys["listen"].line, "blockpage.listen", "must list at least one address")
    contact = _string(keys["contact"], "blockpage.contact", p) if "contact" in keys else None
    unblock_url = _url(keys["unblock_url"], "blockpage.unblock_url", p) if "unblock_url" in keys else None
    texts = _blockpage_texts(keys["texts"], p) if "texts" in keys else BlockpageTexts()
    https = _blockpage_https(keys["https"], p) if "https" in keys else None
    if len(p.items) > before or not listen or texts is None:
        return None
    return BlockpageConfig(listen=listen, contact=contact, unblock_url=unblock_url, texts=texts, https=https)


#: The `blockpage.https` modes (only one so far).
BLOCKPAGE_HTTPS_MODES = ("local-ca",)


def _blockpage_https(node: _Node, p: _Problems) -> BlockpageHttpsConfig | None:
    """`false` (the default: nothing on 443) or `{mode: local-ca, listen: [...]}`."""
    key = "blockpage.https"
    if node.value is False:
        return None
    if not isinstance(node.value, dict):
        p.add(
            node.line,
            key,
            f"must be false or a mapping like {{mode: local-ca, listen: [192.168.1.2:443]}}, not {node.value!r}",
        )
        return None
    keys = _mapping(node, key, {"mode", "listen"}, p)
    if keys is None:
        return None
    for required, example in (("mode", "local-ca"), ("listen", "[192.168.1.2:443]")):
        if required not in keys:
            p.add(node.line, f"{key}.{required}", f"is required (e.g. {example})")
    if "mode" in keys and keys["mode"].value not in BLOCKPAGE_HTTPS_MODES:
        p.add(keys["mode"].line, f"{key}.mode", f"{keys['mode'].value!r} is not one of: local-ca")
    listen = None
    if "listen" in keys:
        listen = _items(keys["listen"], f"{key}.listen", p, lambda n, k: _endpoint(n, k, p, 443))
        if listen is not None and not listen:
            p.add(keys["listen"].line, f"{key}.listen", "must list at least one address")
    if not listen or "mode" not in keys or keys["mode"].value not in BLOCKPAGE_HTTPS_MODES:
        return None
    return BlockpageHttpsConfig(listen=listen, mode=str(keys["mode"].value))


def _url(node: _Node, key: str, p: _Problems) -> str | None:
    text = _string(node, key, p)
    if text is None:
        return None
    parts = urllib.parse.urlsplit(text)
    scheme = parts.scheme.lower()
    clean = text.isprintable() and not any(c.isspace() for c in text)
    if clean and ((scheme in ("http", "https") and parts.netloc) or (scheme in ("mailto", "tel") and parts.path)):
        return text
    p.add(node.line, key, f"{text!r} is not an http(s), mailto: or tel: URL (e.g. https://school.example/unblock)")
    return None


def _text(node: _Node, key: str, p: _Problems) -> str | None:
    text = _string(node, key, p)
    if text is None:
        return None
    template = string.Template(text)
    available = ", ".join(f"${name}" for name in BLOCKPAGE_PLACEHOLDERS)
    if not template.is_valid():
        p.add(node.line, key, f"a '$' starts no placeholder (write $$ for a dollar sign; placeholders: {available})")
        return None
    unknown = [name for name in template.get_identifiers() if name not in BLOCKPAGE_PLACEHOLDERS]
    if unknown:
        p.add(node.line, key, f"unknown placeholder ${unknown[0]} (available: {available})")
        return None
    return text


def _help_item(node: _Node, key: str, p: _Problems) -> HelpItem | None:
    if isinstance(node.value, str):
        text = _text(node, key, p)
        return None if text is None else HelpItem(text)
    keys = _mapping(node, key, {"text", "url", "link"}, p)
    if keys is None:
        return None
    if "text" not in keys:
        p.add(node.line, f"{key}.text", "is required")
        return None
    before = len(p.items)
    text = _text(keys["text"], f"{key}.text", p)
    url = _url(keys["url"], f"{key}.url", p) if "url" in keys else None
    link = _string(keys["link"], f"{key}.link", p) if "link" in keys else None
    if link is not None and "url" not in keys:
        p.add(keys["link"].line, f"{key}.link", "needs a url to link to")
    if len(p.items) > before or text is None:
        return None
    return HelpItem(text, url, link)


def _blockpage_texts(node: _Node, p: _Problems) -> BlockpageTexts | None:
    keys = _mapping(node, "blockpage.texts", _BLOCKPAGE_TEXT_KEYS, p)
    if keys is None:
        return None
    before = len(p.items)
    values: dict[str, Any] = {}
    for name, child in keys.items():
        key = f"blockpage.texts.{name}"
        if name not in _BLOCKPAGE_TEXT_KEYS:
            continue  # reported by _mapping
        if name == "help":
            values[name] = _items(child, key, p, lambda n, k: _help_item(n, k, p))
        elif name == "categories":
            values[name] = _categories(child, key, p)
        elif name == "lang":
            lang = _string(child, key, p)
            if lang is not None and not _LANG_RE.match(lang):
                p.add(child.line, key, f"{lang!r} is not a language tag (e.g. en, en-GB, cy, de)")
            values[name] = lang
        else:
            values[name] = _text(child, key, p)
    if len(p.items) > before:
        return None
    return BlockpageTexts(**values)


def _categories(node: _Node, key: str, p: _Problems) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(node.value, dict):
        p.add(node.line, key, "must map category ids to descriptions, e.g. {gambling: betting and gambling}")
        return None
    merged = dict(BlockpageTexts().categories)  # configured descriptions add to the shipped ones, or replace them
    for category, child in node.value.items():
        description = _string(child, f"{key}.{category}", p)
        if description is not None:
            merged[category] = description
    return tuple(merged.items())


def _admin(node: _Node, p: _Problems, base_dir: Path, state_dir: Path | None) -> AdminConfig | None:
    keys = _mapping(node, "admin", {"listen", "token_file", "allow_remote", "session_ttl"}, p)
    if keys is None:
        return None
    if "listen" not in keys:
        p.add(node.line, "admin.listen", "is required when the admin section is present (e.g. 127.0.0.1:8053)")
        return None
    listen = _endpoint(keys["listen"], "admin.listen", p, 8053)
    allow_remote = _boolean(keys["allow_remote"], "admin.allow_remote", p) if "allow_remote" in keys else False
    token_file: Path | None = None
    if "token_file" in keys:
        text = _string(keys["token_file"], "admin.token_file", p)
        token_file = None if text is None else base_dir / Path(text).expanduser()
    elif state_dir is not None:
        token_file = state_dir / "admin.token"
    session_ttl = (
        _duration(keys["session_ttl"], "admin.session_ttl", p, 60, 30 * 86400) if "session_ttl" in keys else 12 * 3600
    )
    if listen is None or allow_remote is None or token_file is None or session_ttl is None:
        return None
    if not ipaddress.ip_address(listen.host).is_loopback and not allow_remote:
        p.add(
            keys["listen"].line,
            "admin.listen",
            f"{listen.host} is not a loopback address: the admin API changes what is blocked, so it listens on "
            "loopback unless you also set admin.allow_remote: true (and firewall it)",
        )
        return None
    return AdminConfig(listen=listen, token_file=token_file, allow_remote=allow_remote, session_ttl=session_ttl)


_SAFE_SEARCH_KEYS = {f.name for f in dataclasses.fields(SafeSearchConfig)}


def _safe_search(node: _Node, key: str, p: _Problems) -> SafeSearchConfig | None:
    """`true`, `false`, or a mapping of switches (`{youtube: moderate, bing: false}`): a mapping turns safe search
    on unless it says `enabled: false`. Empty (`safe_search:`) is off. `key` is the dotted key for messages."""
    if node.value is None or isinstance(node.value, bool):
        return SafeSearchConfig(enabled=bool(node.value))
    if not isinstance(node.value, dict):
        p.add(node.line, key, f"must be true, false or a mapping such as {{youtube: moderate}}, not {node.value!r}")
        return None
    before = len(p.items)
    keys = _mapping(node, key, _SAFE_SEARCH_KEYS, p) or {}
    values: dict[str, Any] = {"enabled": True}
    for name, child in keys.items():
        if name == "youtube" and isinstance(child.value, bool):  # `youtube: true` is strict; false (or off) is off
            values[name] = YoutubeRestriction.STRICT if child.value else YoutubeRestriction.OFF
        elif name == "youtube":
            values[name] = _choice(child, f"{key}.youtube", p, YoutubeRestriction)
        elif name in _SAFE_SEARCH_KEYS:
            values[name] = _boolean(child, f"{key}.{name}", p)
    return None if len(p.items) > before else SafeSearchConfig(**values)


_TOP_KEYS = {
    "dns",
    "blocking",
    "cache",
    "lists",
    "allow",
    "bypass_protection",
    "safe_search",
    "ratelimit",
    "metrics",
    "blockpage",
    "admin",
    "state_dir",
    "groups",
    "schedules",
    "dhcp_leases",
    "querylog",
    "safeguarding",
    "tls",
}


def parse_config(text: str, source: str, base_dir: Path | None = None, *, check_files: bool = True) -> Config:
    """Validate YAML text; raise ConfigError listing every problem found. `check_files`: a list file that cannot
    be read is one (`config check`); the server passes False: it starts without that list and keeps trying."""
    p = _Problems(source, check_files)
    try:
        root = _compose(text, source)
    except ConfigError as exc:
        raise ConfigError([e.replace("<yaml>", source, 1) for e in exc.problems]) from None
    if root is None:
        raise ConfigError([f"{source}:1: the file is empty (a config needs at least a dns section)"])
    keys = _mapping(root, "", _TOP_KEYS, p)
    if keys is None:
        raise ConfigError(p.in_line_order())
    base = base_dir if base_dir is not None else Path.cwd()
    dns = None
    if "dns" not in keys:
        p.add(root.line, "dns", "is required (at least dns.listen)")
    else:
        dns = _dns(keys["dns"], p, base)
    blocking = _blocking(keys["blocking"], p) if "blocking" in keys else BlockingConfig()
    cache = _cache(keys["cache"], p) if "cache" in keys else CacheConfig()
    lists = _lists(keys["lists"], p, base) if "lists" in keys else DEFAULT_LISTS
    allow = _allow(keys["allow"], p) if "allow" in keys else ()
    bypass: bool | None = True
    if "bypass_protection" in keys:
        bypass = _boolean(keys["bypass_protection"], "bypass_protection", p)
    safe_search = _safe_search(keys["safe_search"], "safe_search", p) if "safe_search" in keys else SafeSearchConfig()
    ratelimit = _ratelimit(keys["ratelimit"], p) if "ratelimit" in keys else RateLimitConfig()
    metrics = _metrics(keys["metrics"], p) if "metrics" in keys and keys["metrics"].value is not None else None
    blockpage = None
    if "blockpage" in keys and keys["blockpage"].value is not None:
        blockpage = _blockpage(keys["blockpage"], p)
    state_dir = _state_dir(keys["state_dir"], p, base) if "state_dir" in keys else DEFAULT_STATE_DIR
    admin = None
    if "admin" in keys and keys["admin"].value is not None:
        admin = _admin(keys["admin"], p, base, state_dir)
    schedules = _schedules(keys["schedules"], p) if "schedules" in keys else ()
    groups = _groups(keys["groups"], p) if "groups" in keys and keys["groups"].value is not None else ()
    dhcp_leases = _dhcp_leases(keys["dhcp_leases"], p, base) if "dhcp_leases" in keys else ()
    querylog = _querylog(keys["querylog"], p, base) if "querylog" in keys else QueryLogConfig()
    safeguarding = (
        _safeguarding(keys["safeguarding"], p, base)
        if "safeguarding" in keys and keys["safeguarding"].value is not None
        else SafeguardingConfig()
    )
    if groups is not None and schedules is not None and lists is not None:
        _check_groups(keys, groups, schedules, lists, p)
    tls = _tls(keys["tls"], p, base) if "tls" in keys and keys["tls"].value is not None else None
    if dns is not None and ("tls" not in keys or keys["tls"].value is None):
        _check_served_tls(keys["dns"], dns, p)
    if dns is not None and blockpage is not None and blockpage.https is not None:
        _check_https_ports(keys["blockpage"], dns, blockpage.https.listen, p)
    if dns is not None:
        _check_encrypted_ports(keys["dns"], dns, blockpage, metrics, admin, p)
    if p.items or dns is None or blocking is None or cache is None or lists is None or allow is None:
        raise ConfigError(p.in_line_order())
    assert groups is not None and schedules is not None and dhcp_leases is not None  # else p.items
    assert state_dir is not None and bypass is not None  # a bad one is in p.items
    assert safe_search is not None and ratelimit is not None  # likewise
    return Config(
        dns=dns,
        blocking=blocking,
        cache=cache,
        lists=lists,
        allow=allow,
        bypass_protection=bypass,
        safe_search=safe_search,
        ratelimit=ratelimit,
        metrics=metrics,
        blockpage=blockpage,
        admin=admin,
        state_dir=state_dir,
        groups=groups,
        schedules=schedules,
        dhcp_leases=dhcp_leases,
        querylog=querylog or QueryLogConfig(),
        safeguarding=safeguarding or SafeguardingConfig(),
        tls=tls,
        source=source,
    )


def load_config(path: Path | str, *, check_files: bool = True) -> Config:
    """Read and validate a config file; relative list paths resolve against the file's folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    return parse_config(text, str(path), base_dir=path.resolve().parent, check_files=check_files)


def embedded_config_text() -> str:
    return resources.files("filterd.config").joinpath("default.yaml").read_text(encoding="utf-8")


def load_embedded() -> Config:
    return parse_config(embedded_config_text(), EMBEDDED_NAME)


def builtin_list_names() -> list[str]:
    from filterd.blocklists.builtin import builtin_names

    return builtin_names()


# --- client groups and schedules ------------------------------------------------------------------------

_GROUP_KEYS = {"name", "clients", "lists", "block", "allow", "safe_search", "schedules", "bypass_protection"}
_SCHEDULE_KEYS = {"when", "block", "timezone"}


def _schedules(node: _Node, p: _Problems) -> tuple[ScheduleConfig, ...] | None:
    if not isinstance(node.value, dict):
        p.add(node.line, "schedules", "must map schedule names to {when: [...], block: ...}")
        return None
    out: list[ScheduleConfig] = []
    for name, child in node.value.items():
        key = f"schedules.{name}"
        if not _LIST_NAME_RE.match(str(name)):
            p.add(child.line, key, "a schedule's name must be letters, digits, '-', '_' or '.'")
            continue
        keys = _mapping(child, key, _SCHEDULE_KEYS, p)
        if keys is None:
            continue
        if "when" not in keys:
            p.add(child.line, key, "needs when: a list of windows like 'mon-fri 21:00-07:00'")
            continue
        items = keys["when"].value if isinstance(keys["when"].value, list) else []
        windows = _windows(keys["when"], f"{key}.when", p)
        block_all, lists = True, tuple[str, ...]()
        if "block" in keys:
            block = keys["block"]
            if block.value == "all":
                block_all = True
            else:
                names = _items(block, f"{key}.block", p, lambda n, k: _string(n, k, p))
                block_all, lists = False, names or ()
        timezone = _timezone(keys["timezone"], f"{key}.timezone", p) if "timezone" in keys else None
        if not items:
            p.add(keys["when"].line, f"{key}.when", "needs at least one window")
        out.append(ScheduleConfig(str(name), windows, block_all, tuple(lists), timezone))
    return tuple(out)


def _client_item(node: _Node, key: str, p: _Problems) -> str | None:
    from filterd.groups.model import parse_client

    text = node.value if isinstance(node.value, str) else None
    if text is None and node.value is not None and not isinstance(node.value, (dict, list)):
        text = str(node.value)  # a bare YAML number would not be a client, but say so below
    if text is None:
        p.add(node.line, key, "must be an IP address, a network, a MAC address or a host name")
        return None
    try:
        parse_client(text)
    except ValueError as exc:
        p.add(node.line, key, str(exc))
        return None
    return text.strip()


def _group(node: _Node, key: str, p: _Problems) -> GroupConfig | None:
    keys = _mapping(node, key, _GROUP_KEYS, p)
    if keys is None:
        return None
    before = len(p.items)
    name = _string(keys["name"], f"{key}.name", p) if "name" in keys else None
    if "name" not in keys:
        p.add(node.line, f"{key}.name", "is required")
    elif name is not None and not _LIST_NAME_RE.match(name):
        p.add(keys["name"].line, f"{key}.name", f"{name!r} must be letters, digits, '-', '_' or '.' (at most 64)")
    clients: tuple[str, ...] | None = ()
    if "clients" not in keys:
        p.add(node.line, f"{key}.clients", "is required: the IP addresses, networks, MACs or names in this group")
    else:
        clients = _items(keys["clients"], f"{key}.clients", p, lambda n, k: _client_item(n, k, p))
    lists = _items(keys["lists"], f"{key}.lists", p, lambda n, k: _string(n, k, p)) if "lists" in keys else None
    block = _names_list(keys["block"], f"{key}.block", p) if "block" in keys else ()
    allow = _names_list(keys["allow"], f"{key}.allow", p) if "allow" in keys else ()
    schedules = (
        _items(keys["schedules"], f"{key}.schedules", p, lambda n, k: _string(n, k, p)) if "schedules" in keys else ()
    )
    bypass = _boolean(keys["bypass_protection"], f"{key}.bypass_protection", p) if "bypass_protection" in keys else None
    safe_search = _safe_search(keys["safe_search"], f"{key}.safe_search", p) if "safe_search" in keys else None
    if len(p.items) > before or name is None or clients is None or block is None or allow is None:
        return None
    return GroupConfig(
        name=name,
        clients=clients,
        lists=lists,
        block=block,
        allow=allow,
        schedules=schedules or (),
        bypass_protection=bypass,
        safe_search=safe_search,
    )


def _groups(node: _Node, p: _Problems) -> tuple[GroupConfig, ...] | None:
    return _items(node, "groups", p, lambda n, k: _group(n, k, p))


def _check_groups(
    keys: dict[str, _Node],
    groups: tuple[GroupConfig, ...],
    schedules: tuple[ScheduleConfig, ...],
    lists: tuple[ListConfig, ...],
    p: _Problems,
) -> None:
    """What a group or schedule names must exist: lists, schedules; names unique."""
    list_names = {cfg.name for cfg in lists}
    schedule_names = {s.name for s in schedules}
    seen: set[str] = set()
    group_nodes = keys["groups"].value if "groups" in keys and isinstance(keys["groups"].value, list) else []
    for i, group in enumerate(groups):
        line = group_nodes[i].line if i < len(group_nodes) else 1
        if group.name in seen:
            p.add(line, f"groups[{i}].name", f"{group.name!r} is used by another group already")
        seen.add(group.name)
        for name in group.lists or ():
            if name not in list_names:
                p.add(
                    line, f"groups[{i}].lists", f"no list named {name!r} (configured: {', '.join(sorted(list_names))})"
                )
        for name in group.schedules:
            if name not in schedule_names:
                known = ", ".join(sorted(schedule_names)) or "none"
                p.add(line, f"groups[{i}].schedules", f"no schedule named {name!r} (defined: {known})")
    schedule_node = keys.get("schedules")
    for schedule in schedules:
        for name in schedule.lists:
            if name not in list_names:
                where = schedule_node.value[schedule.name].line if schedule_node is not None else 1
                p.add(
                    where,
                    f"schedules.{schedule.name}.block",
                    f"no list named {name!r} (configured: {', '.join(sorted(list_names))}); or write block: all",
                )


def _dhcp_leases(node: _Node, p: _Problems, base_dir: Path) -> tuple[Path, ...] | None:
    items = node if isinstance(node.value, list) else _Node([node], node.line)
    paths = _items(items, "dhcp_leases", p, lambda n, k: _string(n, k, p))
    return None if paths is None else tuple(base_dir / Path(text).expanduser() for text in paths)


# --- query log and safeguarding ------------------------------------------------------------------------------

_PRIVACY = ("full", "hash-clients", "blocked-only", "off")


def _querylog(node: _Node, p: _Problems, base_dir: Path) -> QueryLogConfig | None:
    if node.value is False or node.value == "off":
        return QueryLogConfig(privacy="off", configured=True)
    keys = _mapping(node, "querylog", {"retention", "privacy", "jsonl"}, p)
    if keys is None:
        return None
    retention = (
        _duration(keys["retention"], "querylog.retention", p, 3600, 3 * 366 * 86400)
        if "retention" in keys
        else 14 * 86400
    )
    privacy = "full"
    if "privacy" in keys:
        node_value = keys["privacy"].value
        text = (
            "off" if node_value is False else _string(keys["privacy"], "querylog.privacy", p)
        )  # YAML reads off as false
        if text is not None and text not in _PRIVACY:
            p.add(keys["privacy"].line, "querylog.privacy", f"{text!r} is not one of: {', '.join(_PRIVACY)}")
            text = None
        privacy = text or "full"
    jsonl = None
    if "jsonl" in keys:
        text = _string(keys["jsonl"], "querylog.jsonl", p)
        jsonl = None if text is None else base_dir / Path(text).expanduser()
    if retention is None:
        return None
    return QueryLogConfig(retention=retention, privacy=privacy, jsonl=jsonl, configured=True)


def _alert_rule(node: _Node, key: str, p: _Problems) -> AlertRule | None:
    keys = _mapping(node, key, {"name", "categories", "attempts", "within", "when", "timezone"}, p)
    if keys is None:
        return None
    before = len(p.items)
    name = _string(keys["name"], f"{key}.name", p) if "name" in keys else None
    if "name" not in keys:
        p.add(node.line, f"{key}.name", "is required")
    categories: tuple[str, ...] | None = ()
    if "categories" not in keys:
        p.add(node.line, f"{key}.categories", "is required: the categories or list names the rule watches")
    else:
        categories = _items(keys["categories"], f"{key}.categories", p, lambda n, k: _string(n, k, p))
    attempts = _number(keys["attempts"], f"{key}.attempts", p, 1, 10000, int) if "attempts" in keys else 1
    within = _duration(keys["within"], f"{key}.within", p, 1, 31 * 86400) if "within" in keys else 600
    windows = _windows(keys["when"], f"{key}.when", p) if "when" in keys else ()
    timezone = _timezone(keys["timezone"], f"{key}.timezone", p) if "timezone" in keys else None
    if len(p.items) > before or name is None or categories is None or attempts is None or within is None:
        return None
    return AlertRule(name, categories, attempts, within, windows, timezone)


def _email(node: _Node, p: _Problems, base_dir: Path) -> EmailConfig | None:
    keys = _mapping(
        node, "safeguarding.notify.email", {"smtp", "starttls", "from", "to", "username", "password_file"}, p
    )
    if keys is None:
        return None
    where = "safeguarding.notify.email"
    missing = [k for k in ("smtp", "from", "to") if k not in keys]
    if missing:
        p.add(node.line, where, f"needs {', '.join(missing)}")
        return None
    smtp = _string(keys["smtp"], f"{where}.smtp", p)
    sender = _string(keys["from"], f"{where}.from", p)
    to_node = keys["to"]
    to = (
        (_string(to_node, f"{where}.to", p),)
        if isinstance(to_node.value, str)
        else _items(to_node, f"{where}.to", p, lambda n, k: _string(n, k, p))
    )
    starttls = _boolean(keys["starttls"], f"{where}.starttls", p) if "starttls" in keys else True
    username = _string(keys["username"], f"{where}.username", p) if "username" in keys else None
    password_file = None
    if "password_file" in keys:
        text = _string(keys["password_file"], f"{where}.password_file", p)
        password_file = None if text is None else base_dir / Path(text).expanduser()
    if smtp is not None and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", smtp):
        p.add(keys["smtp"].line, f"{where}.smtp", f"{smtp!r} is not host:port (e.g. mail.example:587)")
        return None
    if smtp is None or sender is None or to is None or None in to or starttls is None:
        return None
    return EmailConfig(smtp, sender, tuple(t for t in to if t), starttls, username, password_file)


def _safeguarding(node: _Node, p: _Problems, base_dir: Path) -> SafeguardingConfig | None:
    keys = _mapping(node, "safeguarding", {"alerts", "notify", "quiet"}, p)
    if keys is None:
        return None
    rules = (
        _items(keys["alerts"], "safeguarding.alerts", p, lambda n, k: _alert_rule(n, k, p)) if "alerts" in keys else ()
    )
    notify = NotifyConfig()
    if "notify" in keys:
        nkeys = _mapping(keys["notify"], "safeguarding.notify", {"webhook", "email"}, p) or {}
        webhook = _url(nkeys["webhook"], "safeguarding.notify.webhook", p) if "webhook" in nkeys else None
        email = _email(nkeys["email"], p, base_dir) if "email" in nkeys else None
        notify = NotifyConfig(webhook, email)
    quiet = _duration(keys["quiet"], "safeguarding.quiet", p, 0, 31 * 86400) if "quiet" in keys else 3600
    if rules is None or quiet is None:
        return None
    names = [r.name for r in rules]
    for i, rule in enumerate(rules):
        if rule.name in names[:i]:
            p.add(keys["alerts"].line, f"safeguarding.alerts[{i}].name", f"{rule.name!r} is used by another rule")
    return SafeguardingConfig(rules, notify, quiet)


# --- encrypted DNS (issue 18): tls:// and https:// upstreams, DoT and DoH served, the tls certificate --------

_ENCRYPTED_DNS_KEYS = {"bootstrap", "upstream_ca_file", "tls_listen", "https_listen"}


def _upstream(node: _Node, key: str, p: _Problems) -> Endpoint | None:
    """A plain `host[:port]`, or a `tls://` / `https://` URL (`config/upstream_url.py`)."""
    from filterd.config.upstream_url import is_encrypted_url, parse_upstream_url

    if isinstance(node.value, str) and is_encrypted_url(node.value):
        try:
            return parse_upstream_url(node.value)
        except ValueError as exc:
            p.add(node.line, key, str(exc))
            return None
    if isinstance(node.value, str) and "://" in node.value:
        p.add(node.line, key, f"{node.value!r}: the scheme must be tls:// or https:// (or none: host[:port])")
        return None
    return _endpoint(node, key, p, 53)


def _encrypted_dns(
    keys: dict[str, _Node], p: _Problems, base_dir: Path, listen: tuple[Endpoint, ...]
) -> dict[str, Any] | None:
    """dns.bootstrap, dns.upstream_ca_file, dns.tls_listen and dns.https_listen, as DnsConfig's keyword arguments."""
    out: dict[str, Any] = {}
    before = len(p.items)
    if "bootstrap" in keys:
        bootstrap = _items(keys["bootstrap"], "dns.bootstrap", p, lambda n, k: _endpoint(n, k, p, 53))
        out["bootstrap"] = bootstrap
        for ep in bootstrap or ():
            if ep in listen:
                p.add(keys["bootstrap"].line, "dns.bootstrap", f"{ep} is filterd itself: list plain resolvers")
    if "upstream_ca_file" in keys and keys["upstream_ca_file"].value is not None:
        node = keys["upstream_ca_file"]
        text = _string(node, "dns.upstream_ca_file", p)
        if text is not None:
            path = base_dir / Path(text).expanduser()
            problem = _file_problem(path, "a PEM file") if p.check_files else None
            if problem is not None:
                p.add(node.line, "dns.upstream_ca_file", problem)
            out["upstream_ca_file"] = path
    if "tls_listen" in keys:
        out["tls_listen"] = _items(keys["tls_listen"], "dns.tls_listen", p, lambda n, k: _endpoint(n, k, p, 853))
    if "https_listen" in keys:
        out["https_listen"] = _items(keys["https_listen"], "dns.https_listen", p, lambda n, k: _endpoint(n, k, p, 443))
    return None if len(p.items) > before else out


TLS_MODES = ("files", "local-ca")


def _tls(node: _Node, p: _Problems, base_dir: Path) -> TlsConfig | None:
    """`{cert: PATH, key: PATH}` (PEM files), or `{mode: local-ca, names: [...], addresses: [...]}`."""
    keys = _mapping(node, "tls", {"cert", "key", "mode", "names", "addresses"}, p)
    if keys is None:
        return None
    mode = "files"
    if "mode" in keys:
        text = _string(keys["mode"], "tls.mode", p)
        if text is None:
            return None
        if text not in TLS_MODES:
            p.add(keys["mode"].line, "tls.mode", f"{text!r} is not one of: {', '.join(TLS_MODES)}")
            return None
        mode = text
    if mode == "local-ca":
        return _tls_local_ca(node, keys, p)
    for name in ("names", "addresses"):
        if name in keys:
            p.add(
                keys[name].line,
                f"tls.{name}",
                "only with mode: local-ca (a certificate file names its own names and addresses)",
            )
    if not keys.keys() & {"cert", "key"}:
        p.add(
            node.line,
            "tls",
            "needs cert and key (PEM files), or mode: local-ca and the names clients use, "
            "e.g. {mode: local-ca, names: [filter.school.example]}",
        )
        return None
    paths: dict[str, Path] = {}
    for name in ("cert", "key"):
        if name not in keys:
            p.add(node.line, f"tls.{name}", f"is required (a PEM file), e.g. /etc/filterd/tls/{name}.pem")
            continue
        text = _string(keys[name], f"tls.{name}", p)
        if text is None:
            continue
        path = base_dir / Path(text).expanduser()
        problem = _file_problem(path, "a PEM file") if p.check_files else None
        if problem is not None:
            p.add(keys[name].line, f"tls.{name}", problem)
            continue
        paths[name] = path
    if len(paths) < 2:
        return None
    tls = TlsConfig(cert=paths["cert"], key=paths["key"])
    if p.check_files:  # `config check` before a reload: a renewed pair that does not match is caught here
        from filterd.transport.certs import CertificateError, check_pair

        try:
            check_pair(tls)
        except CertificateError as exc:
            p.add(keys["cert"].line, "tls.cert", str(exc).removeprefix("tls: "))
    return tls


def _tls_local_ca(node: _Node, keys: dict[str, _Node], p: _Problems) -> TlsConfig | None:
    """`tls: {mode: local-ca, ...}`: the names and addresses of a certificate the local CA signs (made at start)."""
    before = len(p.items)
    for name in ("cert", "key"):
        if name in keys:
            p.add(
                keys[name].line,
                f"tls.{name}",
                "not with mode: local-ca (the local CA makes the certificate): remove it, or remove mode",
            )

    def host_name(n: _Node, k: str) -> str | None:
        text = _string(n, k, p)
        if text is None:
            return None
        if text.startswith("*") or is_address(text):
            p.add(n.line, k, f"{text!r} is not a host name (addresses go in tls.addresses; no wildcards)")
            return None
        return _zone_name(n, k, text, p)

    def address(n: _Node, k: str) -> IPAddress | None:
        try:
            return ipaddress.ip_address(str(n.value).strip())
        except ValueError:
            p.add(n.line, k, f"{n.value!r} is not an IP address")
            return None

    names = _items(keys["names"], "tls.names", p, host_name) if "names" in keys else ()
    addresses: tuple[IPAddress, ...] | None = (
        _items(keys["addresses"], "tls.addresses", p, address) if "addresses" in keys else ()
    )
    if names == () and addresses == ():
        p.add(
            keys["names"].line if "names" in keys else node.line,
            "tls.names",
            "is required with mode: local-ca: the names clients use for filterd (e.g. [filter.school.example]), "
            "and/or tls.addresses",
        )
    if len(p.items) > before or names is None or addresses is None:
        return None
    return TlsConfig(mode="local-ca", names=tuple(dict.fromkeys(names)), addresses=tuple(dict.fromkeys(addresses)))


def _check_https_ports(page_node: _Node, dns: DnsConfig, https: tuple[Endpoint, ...], p: _Problems) -> None:
    """The HTTPS block page and DoH cannot share an address and port: one socket, one TLS server."""
    https_node = page_node.value["https"]
    line = https_node.value["listen"].line if isinstance(https_node.value, dict) else https_node.line
    for page in https:
        for doh in dns.https_listen:
            if page.port != doh.port or page.port == 0 or (":" in page.host) != (":" in doh.host):
                continue
            if page.host == doh.host or page.is_wildcard or doh.is_wildcard:
                p.add(
                    line,
                    "blockpage.https.listen",
                    f"{page} overlaps dns.https_listen {doh}: the block page and DNS over HTTPS need an address or "
                    "port each (e.g. DoH on the filter's own address, the page on the sinkhole address)",
                )


def _check_encrypted_ports(
    dns_node: _Node,
    dns: DnsConfig,
    blockpage: BlockpageConfig | None,
    metrics: MetricsConfig | None,
    admin: AdminConfig | None,
    p: _Problems,
) -> None:
    """DoT and DoH may not share an address and port with each other or another TCP listener: said here, not at
    start as a port 'held by filterd'. (DoH and the HTTPS block page: `_check_https_ports`, at the page's key.)"""
    others: list[tuple[str, Endpoint]] = [("dns.listen", ep) for ep in dns.listen]
    if blockpage is not None:
        others += [("blockpage.listen", ep) for ep in blockpage.listen]
        if blockpage.https is not None:
            others += [("blockpage.https.listen", ep) for ep in blockpage.https.listen]
    if metrics is not None:
        others.append(("metrics.listen", metrics.listen))
    if admin is not None:
        others.append(("admin.listen", admin.listen))
    keys = dns_node.value if isinstance(dns_node.value, dict) else {}
    for name in ("tls_listen", "https_listen"):
        for ep in getattr(dns, name):
            clash = next(
                (
                    key
                    for key, other in others
                    if _same_socket(ep, other) and not (name == "https_listen" and key == "blockpage.https.listen")
                ),
                None,
            )
            if clash is not None:
                p.add(keys[name].line, f"dns.{name}", f"{ep} is also {clash}: one port, one listener")
            others.append((f"dns.{name}", ep))


def _same_socket(a: Endpoint, b: Endpoint) -> bool:
    """Whether two TCP listeners would ask for the same port: one address, or a wildcard of the same family."""
    if a.port != b.port or a.port == 0:
        return False
    x, y = ipaddress.ip_address(a.host), ipaddress.ip_address(b.host)
    return x == y or (x.version == y.version and (x.is_unspecified or y.is_unspecified))


def _check_served_tls(dns_node: _Node, dns: DnsConfig, p: _Problems) -> None:
    """DoT and DoH need a certificate: `tls: {cert, key}`, or `tls: {mode: local-ca, names: [...]}`."""
    keys = dns_node.value if isinstance(dns_node.value, dict) else {}
    for name in ("tls_listen", "https_listen"):
        if getattr(dns, name):
            p.add(
                keys[name].line,
                f"dns.{name}",
                "needs a certificate: set tls.cert and tls.key (PEM files), or tls.mode: local-ca and tls.names",
            )
