"""Groups at run time: which group a client is in, and what a group's rules are right now.

`parse_client` reads one `groups[].clients` item; `Group` is a configured group with its names as sets and its
schedule state; `Directory` is a snapshot of who is who on the network (MAC and names per IP address), made in
the background by `sources.py`; `find_group` picks the first group that matches a client. All pure.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from filterd.config.schema import GroupConfig, IPNetwork, ScheduleConfig
from filterd.dns.names import covering

__all__ = ["Directory", "Group", "find_group", "normalize_mac", "parse_client", "stay_healthy_names"]

_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(?:\1[0-9a-f]{2}){4}")


def normalize_mac(text: str) -> str | None:
    """`AA-BB-CC-DD-EE-FF` -> `aa:bb:cc:dd:ee:ff`; None when `text` is not a MAC address."""
    text = text.strip().lower()
    return text.replace("-", ":") if _MAC.fullmatch(text) else None


@dataclass(frozen=True, slots=True)
class ClientSpec:
    kind: str  # "net" (an address is a /32 or /128), "mac" or "name"
    value: str
    network: IPNetwork | None = None


def parse_client(text: str) -> ClientSpec:
    """One `clients` item: an IP address, a CIDR network, a MAC address or a host name; ValueError if none."""
    text = text.strip()
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        pass
    else:
        return ClientSpec("net", str(network), network)
    mac = normalize_mac(text)
    if mac is not None:
        return ClientSpec("mac", mac)
    name = text.lower().rstrip(".")
    if not name or not re.fullmatch(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9_])?", name) or ".." in name:
        raise ValueError(f"{text!r} is not an IP address, a network (CIDR), a MAC address or a host name")
    return ClientSpec("name", name)


def stay_healthy_names() -> frozenset[str]:
    """The shipped names a device needs to stay healthy (connectivity checks, time, OS updates)."""
    text = resources.files("filterd.data").joinpath("stay-healthy.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


@dataclass(frozen=True, slots=True)
class Directory:
    """Who is who, as last read: an IP address's MAC (neighbour table, DHCP leases) and names (dns.records,
    DHCP leases, reverse lookups). Replaced whole by the background refresh."""

    macs: Mapping[str, str] = field(default_factory=dict)
    names: Mapping[str, frozenset[str]] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class Group:
    """A configured group, ready for the query path. The schedule fields change while running (the schedule
    clock sets them as windows open and close); everything else is fixed."""

    index: int  # 1-based position in `groups`; 0 is reserved for "no group"
    config: GroupConfig
    schedules: tuple[ScheduleConfig, ...]
    networks: tuple[IPNetwork, ...]
    macs: frozenset[str]
    names: frozenset[str]
    allow: frozenset[str]
    block: frozenset[str]
    #: Names of the schedules open now.
    active: frozenset[str] = frozenset()
    #: An open schedule blocks everything but allow entries and the stay-healthy names.
    block_all: bool = False
    #: The lists this group's queries are checked against now (None: every list).
    lists: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @classmethod
    def build(cls, index: int, config: GroupConfig, schedules: Mapping[str, ScheduleConfig]) -> Group:
        specs = [parse_client(text) for text in config.clients]
        group = cls(
            index=index,
            config=config,
            schedules=tuple(schedules[name] for name in config.schedules),
            networks=tuple(s.network for s in specs if s.network is not None),
            macs=frozenset(s.value for s in specs if s.kind == "mac"),
            names=frozenset(s.value for s in specs if s.kind == "name"),
            allow=frozenset(config.allow),
            block=frozenset(config.block),
        )
        group.set_active(frozenset())
        return group

    def set_active(self, active: frozenset[str]) -> bool:
        """Apply the set of open schedules (of all configured ones); True when this group's rules changed."""
        mine = frozenset(s.name for s in self.schedules if s.name in active)
        if mine == self.active and self.lists == self._lists(mine):
            return False
        self.active = mine
        self.block_all = any(s.block_all for s in self.schedules if s.name in mine)
        self.lists = self._lists(mine)
        return True

    def _lists(self, active: frozenset[str]) -> frozenset[str] | None:
        base = self.config.lists
        extra = {name for s in self.schedules if s.name in active for name in s.lists}
        if base is None:
            return None  # every list already
        return frozenset(base) | extra

    def allows(self, qname: str) -> str | None:
        return covering(qname, self.allow) if self.allow else None

    def blocks(self, qname: str) -> str | None:
        return covering(qname, self.block) if self.block else None

    def matches(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, ip: str, directory: Directory) -> bool:
        if any(address in network for network in self.networks if network.version == address.version):
            return True
        if self.macs and directory.macs.get(ip) in self.macs:
            return True
        return bool(self.names and directory.names.get(ip, frozenset()) & self.names)


def client_address(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a client's query came from (scope id dropped, IPv4-mapped IPv6 as IPv4)."""
    address = ipaddress.ip_address(client_ip.partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def find_group(groups: Sequence[Group], client_ip: str, directory: Directory) -> Group | None:
    """The first group whose clients match `client_ip` (in config order), or None: the top-level rules."""
    if not groups:
        return None
    address = client_address(client_ip)
    ip = str(address)
    for group in groups:
        if group.matches(address, ip, directory):
            return group
    return None


def build_groups(configs: Iterable[GroupConfig], schedules: Iterable[ScheduleConfig]) -> tuple[Group, ...]:
    by_name = {s.name: s for s in schedules}
    return tuple(Group.build(i, cfg, by_name) for i, cfg in enumerate(configs, 1))
