"""DNS rebinding protection against a real upstream (dnsmasq): a public name answered with a LAN or loopback
address is dropped, CNAME chains included; the LAN's own zones, filterd's records and rebind_allow pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses, ede

REBIND = (15, "filterd: rebind-protection")


def _server(start: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, extra: str = "") -> RunningFilterd:
    return start(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          {extra}
        metrics:
          listen: 127.0.0.1:0
    """)


@pytest.mark.parametrize("name", ["lists.example.org", "mirror.example.org"])  # 127.0.0.1; and via a CNAME
def test_a_public_name_on_a_loopback_address_is_dropped(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, name: str
) -> None:
    server = _server(start_filterd, dnsmasq)
    reply = server.query(name, "A")
    assert addresses(reply) == [] and ede(reply) == [REBIND]
    assert server.metric("filterd_rebind_blocked_total") == 1
    assert addresses(server.query("example.org", "A")) == ["192.0.2.10"]  # public addresses pass


@pytest.mark.parametrize(
    "extra",
    [
        "rebind_protection: false",
        "rebind_allow: [example.org]",
        'forward_zones: {{example.org: ["{upstream}"]}}',
    ],
)
def test_exemptions(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, extra: str) -> None:
    server = _server(start_filterd, dnsmasq, extra.format(upstream=dnsmasq.address).replace("{{", "{"))
    reply = server.query("lists.example.org", "A")
    assert addresses(reply) == ["127.0.0.1"] and REBIND not in ede(reply)
