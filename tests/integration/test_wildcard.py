"""Listening on 0.0.0.0 and [::]: each UDP reply leaves from the address its query came to (IP_PKTINFO), so a
client that asked 127.0.0.2 accepts it (dnspython, like stub resolvers, drops a reply from another address)."""

from __future__ import annotations

from collections.abc import Callable

import dns.message
import dns.query
import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses, ede


@pytest.fixture
def server(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq) -> RunningFilterd:
    return start_filterd(f"""
        dns:
          listen: ["0.0.0.0:0", "[::]:0"]
          upstreams: ["{dnsmasq.address}"]
    """)


def _port(server: RunningFilterd, v6: bool) -> int:
    assert server.app is not None
    return next(ep.port for ep in server.app.listening.dns if (":" in ep.host) == v6)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "127.0.0.53", "::1"])
def test_udp_replies_come_from_the_address_asked(server: RunningFilterd, address: str) -> None:
    port = _port(server, ":" in address)
    blocked = dns.query.udp(dns.message.make_query("omegle.com", "A", use_edns=0), address, port=port, timeout=3)
    assert addresses(blocked) == ["127.0.0.1"] and ede(blocked) == [(15, "filterd: chat-roulette")]
    forwarded = dns.query.udp(dns.message.make_query("example.org", "A"), address, port=port, timeout=3)
    assert addresses(forwarded) == ["192.0.2.10"]  # an answer that took the async path, too


@pytest.mark.parametrize("address", ["127.0.0.2", "::1"])
def test_tcp_on_a_wildcard_address(server: RunningFilterd, address: str) -> None:
    port = _port(server, ":" in address)
    reply = dns.query.tcp(dns.message.make_query("omegle.com", "A"), address, port=port, timeout=3)
    assert addresses(reply) == ["127.0.0.1"]
