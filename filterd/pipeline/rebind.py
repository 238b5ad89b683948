"""RebindStage: an upstream answer that puts a public name on a private, loopback or link-local address is
dropped (DNS rebinding protection, as dnsmasq's `stop-dns-rebind` and Pi-hole do).

A web page from the internet can make the browser look up a name its attacker controls and get back the address
of the router, a printer or a NAS on the LAN, and then script it from inside the browser: the same-origin policy
sees one name. So an answer from the upstream whose A or AAAA records (anywhere in the answer section, CNAME
chain included) fall in 10/8, 172.16/12, 192.168/16, 127/8, 169.254/16, 100.64/10, ::1, fc00::/7, fe80::/10 (or
IPv4-mapped ones) is replaced by an empty answer with EDE 15 `filterd: rebind-protection`, counted, and never
cached. Names under `dns.forward_zones` (the LAN's own resolvers answer them), `dns.records` (answered by filterd)
and `dns.rebind_allow` (e.g. plex.direct) are left alone; 0.0.0.0 and :: are not private addresses but the
answer upstream filters give for what they block. `dns.rebind_protection: false` turns it off.

Inside the cache, like the CNAME check, so only answers that passed it are stored.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable

from filterd.dns import wire
from filterd.dns.names import covering
from filterd.dns.response import Response
from filterd.pipeline.base import Answer, CallNext, Decision, PassThrough, Query

REBIND_LIST = "rebind-protection"
_RR = struct.Struct("!HHIH")
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)


def private_address(rdata: bytes) -> bool:
    """Whether an A (4 bytes) or AAAA (16 bytes) rdata is a private, loopback or link-local address."""
    if len(rdata) == 4:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(rdata)
    elif len(rdata) == 16:
        address = ipaddress.IPv6Address(rdata)
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    else:
        return False
    return any(address in network for network in _PRIVATE if network.version == address.version)


def private_answer(response: Response) -> bool:
    """Whether the answer section of `response` holds an A or AAAA record with a private address."""
    data = response.body
    pos = 12 + response.question_len
    for _ in range(response.answer_count):
        _, pos = wire.read_name(data, pos)
        rtype, _, _, rdlength = _RR.unpack_from(data, pos)
        start = pos + 10
        pos = start + rdlength
        if rtype in (wire.T_A, wire.T_AAAA) and private_address(data[start:pos]):
            return True
    return False


class RebindStage(PassThrough):
    name = "rebind"

    def __init__(
        self, exempt: Iterable[str], *, enabled: bool = True, on_drop: Callable[[], None] | None = None
    ) -> None:
        self.enabled = enabled
        self.exempt = frozenset(exempt)
        self.on_drop = on_drop

    async def handle(self, query: Query, call_next: CallNext) -> Answer:
        answer = await call_next(query)
        response = answer.response
        if not self.enabled or answer.decision is not Decision.FORWARDED or response is None:
            return answer
        if response.answer_count == 0 or covering(query.question.qname, self.exempt) is not None:
            return answer
        try:
            private = private_answer(response)
        except (wire.WireError, struct.error, IndexError, ValueError):
            return answer  # the upstream stage already read this response; nothing to judge here
        if not private:
            return answer
        if self.on_drop is not None:
            self.on_drop()
        reply = wire.build_reply(query.question, wire.NOERROR, ede=(wire.EDE_BLOCKED, f"filterd: {REBIND_LIST}"))
        return Answer(reply, Decision.BLOCKED, REBIND_LIST, category=REBIND_LIST)
