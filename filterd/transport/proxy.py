"""Who may say who the client is: the PROXY protocol v2 header (`proxyproto.py`), from `dns.proxy_protocol` only.

A packet from a listed proxy must start with a valid header, and the address in it becomes the query's client
(access, rate limits, groups, the query log and alerts all see it); one without is dropped. A packet from any
other address that starts with the header's signature is dropped too: nobody else may choose its client
address. A LOCAL header (the proxy's own health check, every second from dnsdist) is answered as the proxy's
query and kept out of the query log and the safeguarding alerts. Each drop is counted
(`filterd_proxy_protocol_total{result}`), never logged per packet (a flood would fill the log). With no proxies
listed the transports never ask (`active` is False) and nothing is checked.

One gate serves every listener; a reload hands it the new list (`configure`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from filterd.config.schema import IPNetwork
from filterd.transport import proxyproto

RESULTS = ("accepted", "untrusted", "invalid")
#: Peer addresses whose verdict is remembered; past this the memo starts again (a flood of spoofed sources).
_MEMO = 65536


class ProxyGate(Collector):
    """filterd_proxy_protocol_total{result}: accepted (a proxy's packet or connection with a valid header),
    untrusted (a header from an address not in `dns.proxy_protocol`), invalid (a proxy's, without a valid one)."""

    def __init__(self, proxies: tuple[IPNetwork, ...] = ()) -> None:
        self.counts = dict.fromkeys(RESULTS, 0)
        self.proxies: tuple[IPNetwork, ...] = ()
        self.active = False
        self._memo: dict[str, bool] = {}
        self.configure(proxies)

    def configure(self, proxies: tuple[IPNetwork, ...]) -> None:
        self.proxies = proxies
        self.active = bool(proxies)
        self._memo = {}

    def from_proxy(self, peer: str) -> bool:
        """Whether this peer address is a listed proxy (an IPv4-mapped IPv6 peer as its IPv4 address)."""
        verdict = self._memo.get(peer)
        if verdict is None:
            try:
                address = ipaddress.ip_address(peer.split("%", 1)[0])
            except ValueError:
                address = None
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            verdict = address is not None and any(address in net for net in self.proxies)
            if len(self._memo) >= _MEMO:
                self._memo = {}
            self._memo[peer] = verdict
        return verdict

    def unwrap(self, data: bytes, peer: str) -> tuple[bytes, str, bool] | None:
        """A datagram's DNS message, its real client and whether it is a client's query (False: the proxy's own
        health check, a LOCAL header, not logged), or None: drop it (counted)."""
        if self.from_proxy(peer):
            try:
                header = proxyproto.parse(data)
            except proxyproto.ProxyError:
                self.counts["invalid"] += 1
                return None
            self.counts["accepted"] += 1
            return data[header.length :], header.source or peer, not header.local
        if data.startswith(proxyproto.SIGNATURE):
            self.counts["untrusted"] += 1
            return None
        return data, peer, True

    def untrusted_header(self, first: bytes) -> bool:
        """Whether a non-proxy's stream starts with the header's signature (counted: the caller closes it)."""
        if first.startswith(proxyproto.SIGNATURE):
            self.counts["untrusted"] += 1
            return True
        return False

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "filterd_proxy_protocol",
            "Packets (UDP) and connections (TCP) by what became of their PROXY v2 header: accepted, untrusted (a "
            "header from an address not in dns.proxy_protocol, dropped), invalid (a listed proxy's without a valid "
            "header, dropped).",
            labels=["result"],
        )
        for result in RESULTS:
            family.add_metric([result], self.counts[result])
        yield family
