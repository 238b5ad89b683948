"""BypassStage: the answers that tell devices to keep using filterd instead of their own encrypted DNS.

A filter that a browser or a phone quietly routes around filters nothing. Three signals, each the one the
vendor or the RFC documents (sources: ../shared/reference/bypass-signals.tsv):

- `use-application-dns.net` and every name under it: NXDOMAIN. Firefox's canary domain: a negative answer
  turns Firefox's default DNS-over-HTTPS off
  (https://support.mozilla.org/en-US/kb/canary-domain-use-application-dnsnet).
- `mask.icloud.com`, `mask-h2.icloud.com` (and names under them): NXDOMAIN. Apple devices then turn iCloud
  Private Relay off on this network and tell the user so (AdGuard Home's `icloud_private_relay` service
  answers the same; nextdns/dns-bypass-methods `apple-private-relay`). Other iCloud names are not touched.
- Discovery of Designated Resolvers (DDR, RFC 9462): a client that knows only filterd's IP address asks SVCB
  `_dns.resolver.arpa` (section 4), and a resolver with no designated encrypted resolver "SHOULD return
  NODATA"; every other type, and every name under `resolver.arpa`, gets NODATA too (section 6.4). A forwarder
  "SHOULD NOT forward" these (section 6.1): the upstream's encrypted resolver, which skips the filter, would
  be designated. A client that knows filterd by a name asks SVCB `_dns.NAME` (section 5; `_PORT._dns.NAME`
  for another port, RFC 9461): for the `dns.records` names of filterd's own listen addresses, SVCB and HTTPS
  get NODATA too. (There is no `_dns.<IP address>` name: the IP is verified in the TLS certificate.)

Every answer carries EDE 15 (Blocked) `filterd: bypass-protection` and an SOA for negative caching (TTL
`blocking.ttl`), in every blocking mode: the signal is the rcode, so it never depends on the mode.

Before local and policy: a local zone, a `dns.records` entry or a list entry (the `doh-bypass` list holds
`mask.icloud.com`) would otherwise give the sinkhole address or the wrong rcode. `decide` is pure and takes no
client, so a per-client setting only has to choose whether to call it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from filterd.dns import wire
from filterd.dns.names import covering
from filterd.groups.model import Group
from filterd.pipeline.base import Answer, Decision, PassThrough, Query

#: The name in answers (EDE text `filterd: bypass-protection`), `filterd check` and logs.
BYPASS_LIST = "bypass-protection"

_SOA_MNAME = wire.encode_name("filterd.invalid")
_SOA_RNAME = wire.encode_name("hostmaster.filterd.invalid")
_DDR_TYPES = frozenset({wire.T_SVCB, wire.T_HTTPS})
_PORT_LABEL = re.compile(r"_[0-9]{1,5}\.")


@dataclass(frozen=True, slots=True)
class Signal:
    """One bypass signal: the name it answers for, the rcode that carries the signal, and why."""

    name: str
    rcode: int
    why: str


CANARY = Signal(
    "use-application-dns.net",
    wire.NXDOMAIN,
    "Firefox's DoH canary: NXDOMAIN turns Firefox's own DNS-over-HTTPS off, so its queries stay with filterd",
)
_RELAY_WHY = (
    "iCloud Private Relay's signal: NXDOMAIN makes Apple devices turn Private Relay off on this network "
    "(and say so), so their queries stay with filterd"
)
DDR = Signal(
    "resolver.arpa",
    wire.NOERROR,
    "Discovery of Designated Resolvers (RFC 9462): NODATA says filterd designates no encrypted resolver, "
    "so clients are never upgraded to one that skips the filter",
)
#: The names answered for every type, each with everything under it.
SIGNALS: tuple[Signal, ...] = (
    CANARY,
    Signal("mask.icloud.com", wire.NXDOMAIN, _RELAY_WHY),
    Signal("mask-h2.icloud.com", wire.NXDOMAIN, _RELAY_WHY),
    DDR,
)


def own_names(
    records: Mapping[str, Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]], listen_hosts: Iterable[str]
) -> list[str]:
    """The `dns.records` names of filterd itself: those with an address it answers DNS on."""
    own = {ipaddress.ip_address(host) for host in listen_hosts}
    return [name for name, addresses in records.items() if own.intersection(addresses)]


class BypassStage(PassThrough):
    name = "bypass"

    def __init__(self, ttl: int, own: Iterable[str] = (), *, enabled: bool = True) -> None:
        #: `bypass_protection`: False passes every query on (the names are then forwarded or listed as any).
        self.enabled = enabled
        self._zones = {s.name: s for s in SIGNALS}
        self._suffixes = tuple(self._zones)
        #: `_dns.NAME` for filterd's own names: SVCB and HTTPS only (DDR by resolver name, RFC 9462 section 5).
        self._own = {
            f"_dns.{name}": Signal(
                f"_dns.{name}",
                wire.NOERROR,
                f"Discovery of Designated Resolvers (RFC 9462) by filterd's own name {name}: SVCB and HTTPS "
                "get NODATA, so clients are never upgraded to an encrypted resolver that skips the filter",
            )
            for name in own
        }
        self._ede = (wire.EDE_BLOCKED, f"filterd: {BYPASS_LIST}")
        soa = wire.soa_rdata(_SOA_MNAME, _SOA_RNAME, ttl)
        self._soa = {s.name: wire.rr(wire.encode_name(s.name), wire.T_SOA, ttl, soa) for s in self.signals()}

    def signals(self) -> list[Signal]:
        return [*self._zones.values(), *self._own.values()]

    def quiet(self, qname: str, qtype: int) -> bool:
        """True when no signal can apply to this name and type (most queries: one `endswith`, a C call, and a set
        check); `decide` looks no further then."""
        return not qname.endswith(self._suffixes) and (qtype not in _DDR_TYPES or not self._own or qname[:1] != "_")

    def decide(self, qname: str, qtype: int) -> Signal | None:
        """The signal a query gets, or None."""
        if self.quiet(qname, qtype):
            return None
        zone = covering(qname, self._zones)
        if zone is not None:
            return self._zones[zone]
        if qtype in _DDR_TYPES and qname.startswith("_"):
            port = _PORT_LABEL.match(qname)
            return self._own.get(qname[port.end() :] if port else qname)
        return None

    def explain(self, name: str) -> Signal | None:
        """The signal for `name` (SVCB included), or None, whether or not protection is on: `filterd check`."""
        return self.decide(name, wire.T_SVCB)

    def enabled_for(self, group: Group | None) -> bool:
        """The client group's own `bypass_protection`, else the top-level one."""
        if group is not None and group.config.bypass_protection is not None:
            return group.config.bypass_protection
        return self.enabled

    def answer_now(self, query: Query) -> Answer | None:
        q = query.question
        signal = self.decide(q.qname, q.qtype)
        if signal is None:
            return None
        if not (self.enabled if query.group is None else self.enabled_for(query.group)):
            return None
        reply = wire.build_reply(q, signal.rcode, authority=(self._soa[signal.name],), ede=self._ede)
        return Answer(reply, Decision.BLOCKED, BYPASS_LIST, category=BYPASS_LIST)
