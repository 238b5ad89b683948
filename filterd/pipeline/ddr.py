"""DdrStage: Discovery of Designated Resolvers (RFC 9462) pointing at filterd's own DoT and DoH.

When filterd serves DNS over TLS or HTTPS, a client that knows only its IP address asks SVCB `_dns.resolver.arpa`
(section 4) and gets filterd's own encrypted endpoints, so a client that upgrades (Windows 11, Chrome, Android,
Apple) upgrades to the filter, not around it. `_dns.NAME` for the certificate's names (section 5) gets the same.
One SVCB record per endpoint kind (RFC 9461): priority 1 DoT (`alpn=dot`, its port), priority 2 DoH
(`alpn=h2,http/1.1`, its port, `dohpath=/dns-query{?dns}`), with `ipv4hint`/`ipv6hint` for listeners on a
specific address; the target is the certificate's first DNS name.

Before bypass, which otherwise answers NODATA for all of `resolver.arpa`; only added to the chain when filterd
serves DoT or DoH. Other types and names under `resolver.arpa` still get bypass's NODATA. Clients verify the
designation (section 4.2): the certificate must also hold the IP address they asked, as an IP address SAN.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from filterd.dns import wire
from filterd.pipeline.base import Answer, Decision, PassThrough, Query

DDR_NAME = "_dns.resolver.arpa"
DOH_PATH = "/dns-query{?dns}"
TTL = 300
_ALPN, _PORT, _IPV4HINT, _IPV6HINT, _DOHPATH = 1, 3, 4, 6, 7


@dataclass(frozen=True, slots=True)
class Designation:
    """filterd's encrypted endpoints as clients reach them."""

    target: str  # a name on filterd's certificate
    dot_ports: tuple[int, ...] = ()
    doh_ports: tuple[int, ...] = ()
    hints: tuple[str, ...] = ()  # specific listen addresses (no wildcard)


def _param(key: int, value: bytes) -> bytes:
    return struct.pack("!HH", key, len(value)) + value


def svcb_rdata(
    priority: int, target: str, alpn: Sequence[str], port: int, hints: Iterable[str], dohpath: str = ""
) -> bytes:
    """SVCB RDATA (RFC 9460 2.2): SvcPriority, TargetName (uncompressed), SvcParams in key order."""
    alpn_value = b"".join(bytes([len(a)]) + a.encode() for a in alpn)
    params = [_param(_ALPN, alpn_value), _param(_PORT, struct.pack("!H", port))]
    addresses = [ipaddress.ip_address(h) for h in hints]
    v4 = b"".join(a.packed for a in addresses if a.version == 4)
    v6 = b"".join(a.packed for a in addresses if a.version == 6)
    if v4:
        params.append(_param(_IPV4HINT, v4))
    if v6:
        params.append(_param(_IPV6HINT, v6))
    if dohpath:
        params.append(_param(_DOHPATH, dohpath.encode()))
    return struct.pack("!H", priority) + wire.encode_name(target) + b"".join(params)


def designation_records(owner: str, d: Designation) -> tuple[bytes, ...]:
    """The SVCB answer records for `owner`: DoT first (priority 1), then DoH, one per port."""
    owner_wire = wire.encode_name(owner)
    rdatas = [svcb_rdata(1, d.target, ["dot"], port, d.hints) for port in d.dot_ports]
    rdatas += [svcb_rdata(2, d.target, ["h2", "http/1.1"], port, d.hints, DOH_PATH) for port in d.doh_ports]
    return tuple(wire.rr(owner_wire, wire.T_SVCB, TTL, rdata) for rdata in rdatas)


class DdrStage(PassThrough):
    name = "ddr"

    def __init__(self) -> None:
        self.designation: Designation | None = None
        self._answers: dict[str, tuple[bytes, ...]] = {}

    def designate(self, designation: Designation, names: Iterable[str] = ()) -> None:
        """Answer for `_dns.resolver.arpa` and `_dns.NAME` of `names` (the certificate's) from now on."""
        self.designation = designation
        owners = [DDR_NAME, *(f"_dns.{n.lower().rstrip('.')}" for n in names if not n.startswith("*"))]
        self._answers = {owner: designation_records(owner, designation) for owner in owners}

    def explain(self, name: str) -> str | None:
        """What SVCB `name` is answered with, in words, or None when this stage does not answer it: `filterd check`."""
        d = self.designation
        if d is None or name not in self._answers:
            return None
        ends = [f"DNS over TLS on port {port}" for port in d.dot_ports]
        ends += [f"DNS over HTTPS on port {port}" for port in d.doh_ports]
        return (
            f"answered by filterd itself: Discovery of Designated Resolvers (RFC 9462): SVCB names filterd's own "
            f"{' and '.join(ends)} at {d.target}, so clients that upgrade, upgrade to the filter (other types: "
            f"bypass protection's NODATA)"
        )

    def quiet(self, qname: str, qtype: int) -> bool:
        return qtype != wire.T_SVCB or qname not in self._answers

    def answer_now(self, query: Query) -> Answer | None:
        q = query.question
        if self.quiet(q.qname, q.qtype):
            return None
        records = self._answers.get(q.qname) if q.qtype == wire.T_SVCB else None
        if records is None:
            return None
        return Answer(wire.build_reply(q, wire.NOERROR, answers=records), Decision.LOCAL, "ddr")
