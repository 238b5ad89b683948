"""LocalStage: queries filterd answers itself and never forwards.

- AXFR / IXFR: NOTIMP (a proxy has no zones to transfer).
- ANY: the RFC 8482 minimal answer (one synthesized HINFO "RFC8482").
- `dns.records`: the admin's own names (A / AAAA, and PTR for their addresses).
- `localhost` and names under it: 127.0.0.1 / ::1 (RFC 6761 6.3).
- Names that must never leak to the internet's DNS: `invalid` (RFC 6761), `local` (mDNS, RFC 6762),
  `home.arpa` (RFC 8375), single-label names (`wpad`, `printer`), and the private reverse zones of RFC 6303:
  NXDOMAIN with an SOA, unless a `dns.forward_zones` zone covers the name.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence

from filterd.dns import wire
from filterd.dns.names import covering
from filterd.pipeline.base import Answer, Decision, PassThrough, Query

_HINFO_RFC8482 = b"\x07RFC8482\x00"
_ANY_TTL = 3600
LOCAL_TTL = 300
_SOA_MNAME = wire.encode_name("filterd.invalid")
_SOA_RNAME = wire.encode_name("hostmaster.filterd.invalid")
_LOCALHOST_V4 = ipaddress.IPv4Address("127.0.0.1").packed
_LOCALHOST_V6 = ipaddress.IPv6Address("::1").packed
#: Single-label queries of these types are about top-level domains, not local hosts: forwarded.
_TLD_TYPES = frozenset({wire.T_NS, wire.T_SOA, 43, 48})  # NS, SOA, DS, DNSKEY


def _rfc6303_zones() -> list[str]:
    v4 = [
        "10",
        "16-31.172",
        "168.192",
        "0",
        "127",
        "254.169",
        "2.0.192",
        "100.51.198",
        "113.0.203",
        "255.255.255.255",
        "64-127.100",
    ]
    zones: list[str] = []
    for zone in v4:
        if "-" in zone.split(".")[0]:
            low, high = (int(x) for x in zone.split(".")[0].split("-"))
            rest = zone.split(".", 1)[1]
            zones += [f"{n}.{rest}.in-addr.arpa" for n in range(low, high + 1)]
        else:
            zones.append(f"{zone}.in-addr.arpa")
    zones += [
        ".".join(["0"] * 32) + ".ip6.arpa",  # ::
        "1." + ".".join(["0"] * 31) + ".ip6.arpa",  # ::1
        "d.f.ip6.arpa",  # fd00::/8 (ULA)
        "8.e.f.ip6.arpa",
        "9.e.f.ip6.arpa",
        "a.e.f.ip6.arpa",
        "b.e.f.ip6.arpa",  # fe80::/10 link-local
        "8.b.d.0.1.0.0.2.ip6.arpa",  # 2001:db8::/32 (documentation)
    ]
    return zones


#: Zones answered NXDOMAIN here unless forwarded on purpose.
NEVER_LEAKED = frozenset(["invalid", "local", "home.arpa", *_rfc6303_zones()])
_NEVER_LEAKED_TLDS = frozenset(zone.rsplit(".", 1)[-1] for zone in NEVER_LEAKED)  # invalid, local, arpa
#: The last labels of every name this stage answers for without a record of its own: a name of two labels or more
#: under none of them, of a type not in `_OWN_TYPES`, and not in `dns.records`, is `quiet`.
_OWN_TLDS = _NEVER_LEAKED_TLDS | {"localhost"}
_OWN_ENDINGS = tuple(f".{tld}" for tld in sorted(_OWN_TLDS))  # (a name's last label is one of them: one C call)
#: Answered here whatever the name: AXFR and IXFR (NOTIMP), ANY (RFC 8482).
_OWN_TYPES = frozenset({wire.T_AXFR, wire.T_IXFR, wire.T_ANY})
#: Each zone's name in wire format: the owner of its SOA.
_ZONE_OWNERS = {zone: wire.encode_name(zone) for zone in NEVER_LEAKED}
_SOA_RDATA = wire.soa_rdata(_SOA_MNAME, _SOA_RNAME, LOCAL_TTL)


def reverse_name(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return address.reverse_pointer.lower()


class LocalStage(PassThrough):
    name = "local"

    def __init__(
        self,
        records: Mapping[str, Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address]] | None = None,
        forward_zones: Iterable[str] = (),
    ) -> None:
        self.records = {name: tuple(addrs) for name, addrs in (records or {}).items()}
        self.forward_zones = frozenset(forward_zones)
        self.ptr: dict[str, list[str]] = {}
        for name, addrs in self.records.items():
            for address in addrs:
                self.ptr.setdefault(reverse_name(address), []).append(name)

    def quiet(self, qname: str, qtype: int) -> bool:
        """Most names: two labels or more, under no top-level label this stage answers for, not in `dns.records`
        (nor the PTR name of one), of a type it does not answer for every name: one `endswith` and a few set lookups."""
        return (
            qname.rfind(".") > 0
            and not qname.endswith(_OWN_ENDINGS)
            and qtype not in _OWN_TYPES
            and qname not in self.records
            and not (qtype == wire.T_PTR and qname in self.ptr)
        )

    def answer_now(self, query: Query) -> Answer | None:
        q = query.question
        name = q.qname
        qtype = q.qtype
        if self.quiet(name, qtype):
            return None
        if qtype in _OWN_TYPES:
            if qtype == wire.T_ANY:
                hinfo = wire.rr(wire.NAME_PTR, wire.T_HINFO, _ANY_TTL, _HINFO_RFC8482, q.qclass)
                return Answer(wire.build_reply(q, answers=(hinfo,)), Decision.LOCAL, "RFC 8482 ANY")
            return Answer(wire.build_reply(q, wire.NOTIMP), Decision.LOCAL, "zone transfer")
        if name in self.records:
            return self._records(query, name)
        if qtype == wire.T_PTR and name in self.ptr:
            answers = tuple(wire.rr(wire.NAME_PTR, wire.T_PTR, LOCAL_TTL, wire.encode_name(n)) for n in self.ptr[name])
            return Answer(wire.build_reply(q, answers=answers), Decision.LOCAL, "dns.records")
        dot = name.rfind(".")
        tld = name[dot + 1 :]
        if dot > 0 and tld not in _OWN_TLDS:
            return None  # (what `quiet` said at once, for the rest of these names)
        if tld == "localhost":  # localhost itself, or a name under it
            return self._localhost(query)
        if not name or self._forwarded(name):
            return None
        zone = self._never_leaked(name)
        if zone is not None:
            owner = _ZONE_OWNERS[zone]
        elif "." not in name and qtype not in _TLD_TYPES:
            zone, owner = name, wire.NAME_PTR  # a single label is its own zone: the question's own bytes
        else:
            return None
        soa = wire.rr(owner, wire.T_SOA, LOCAL_TTL, _SOA_RDATA)
        return Answer(wire.build_reply(q, wire.NXDOMAIN, authority=(soa,)), Decision.LOCAL, f"local zone {zone}")

    def explain(self, name: str) -> str | None:
        """Why filterd answers an A query for `name` itself, or None when it does not (for `filterd check`)."""
        if name in self.records:
            return f"answered by filterd from dns.records: {', '.join(map(str, self.records[name]))}"
        if name == "localhost" or name.endswith(".localhost"):
            return "answered by filterd: localhost is 127.0.0.1 / ::1 (RFC 6761)"
        if not name or self._forwarded(name):
            return None
        zone = self._never_leaked(name)
        if zone is not None:
            return f"answered by filterd with NXDOMAIN: {zone} is a local zone that must never leak"
        if "." not in name:
            return "answered by filterd with NXDOMAIN: a single-label name must never leak"
        return None

    def _records(self, query: Query, name: str) -> Answer:
        q = query.question
        wanted = 4 if q.qtype == wire.T_A else 16 if q.qtype == wire.T_AAAA else 0
        answers = tuple(
            wire.rr(wire.NAME_PTR, q.qtype, LOCAL_TTL, a.packed) for a in self.records[name] if len(a.packed) == wanted
        )
        authority: tuple[bytes, ...] = ()
        if not answers:
            authority = (wire.rr(wire.NAME_PTR, wire.T_SOA, LOCAL_TTL, _SOA_RDATA),)  # owner: the query name
        return Answer(wire.build_reply(q, answers=answers, authority=authority), Decision.LOCAL, "dns.records")

    def _localhost(self, query: Query) -> Answer:
        q = query.question
        answers: tuple[bytes, ...] = ()
        if q.qtype == wire.T_A:
            answers = (wire.rr(wire.NAME_PTR, wire.T_A, LOCAL_TTL, _LOCALHOST_V4),)
        elif q.qtype == wire.T_AAAA:
            answers = (wire.rr(wire.NAME_PTR, wire.T_AAAA, LOCAL_TTL, _LOCALHOST_V6),)
        return Answer(wire.build_reply(q, answers=answers), Decision.LOCAL, "localhost")

    def _forwarded(self, name: str) -> bool:
        return bool(self.forward_zones) and covering(name, self.forward_zones) is not None

    @staticmethod
    def _never_leaked(name: str) -> str | None:
        if name[name.rfind(".") + 1 :] not in _NEVER_LEAKED_TLDS:
            return None  # (most names: one slice and one lookup, not one lookup per label)
        return covering(name, NEVER_LEAKED)
