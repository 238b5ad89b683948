"""blocking.mode, custom lists and formats, and the global allow list, as a user configures them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.rcode
import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses, ede

Start = Callable[[str], RunningFilterd]


def _config(dnsmasq: Dnsmasq, extra: str) -> str:
    return f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{dnsmasq.address}"]
{extra}
"""


def test_null_mode(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = start_filterd(_config(dnsmasq, "blocking: {mode: 'null'}"))
    assert addresses(server.query("omegle.com", "A")) == ["0.0.0.0"]
    assert addresses(server.query("omegle.com", "AAAA")) == ["::"]


def test_nxdomain_mode(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = start_filterd(_config(dnsmasq, "blocking: {mode: nxdomain, ttl: 30}"))
    for rdtype in ("A", "AAAA", "HTTPS"):
        reply = server.query("omegle.com", rdtype)
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert reply.authority[0].ttl == 30
        assert ede(reply) == [(15, "filterd: chat-roulette")]


def test_refused_mode(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = start_filterd(_config(dnsmasq, "blocking: {mode: refused}"))
    reply = server.query("omegle.com", "A")
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.RA  # a REFUSED never offers recursion


def test_custom_sinkhole_addresses(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = start_filterd(
        _config(
            dnsmasq,
            """
blocking:
  sinkhole: {ipv4: 192.168.1.2, ipv6: "fd00::2"}
""",
        )
    )
    assert addresses(server.query("omegle.com", "A")) == ["192.168.1.2"]
    assert addresses(server.query("omegle.com", "AAAA")) == ["fd00::2"]


def test_lists_of_every_format_and_allow(start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    (tmp_path / "hosts.txt").write_text("0.0.0.0 ads.example.net tracker.example.net\n127.0.0.1 localhost\n")
    (tmp_path / "domains.txt").write_text("# category: games\ngames.example.net\n*.wild.example.net\n")
    (tmp_path / "adblock.txt").write_text("||ads2.example.net^\n@@||ok.ads2.example.net^\n||x.net^$third-party\n")
    server = start_filterd(
        _config(
            dnsmasq,
            f"""
lists:
  - {{name: myhosts, path: {tmp_path / "hosts.txt"}}}
  - {{name: mydomains, path: {tmp_path / "domains.txt"}, category: misc}}
  - {{name: myadblock, path: {tmp_path / "adblock.txt"}, format: adblock}}
allow: [safe.example.net]
""",
        )
    )
    blocked = {
        "ads.example.net": "myhosts",
        "games.example.net": "mydomains",
        "sub.games.example.net": "mydomains",
        "a.wild.example.net": "mydomains",
        "ads2.example.net": "myadblock",
        "x.ads2.example.net": "myadblock",
    }
    for name, list_name in blocked.items():
        reply = server.query(name, "A")
        assert addresses(reply) == ["127.0.0.1"], name
        assert ede(reply) == [(15, f"filterd: {list_name}")], name
    # hosts entries are exact names; @@ exceptions and allow let names through; the builtin list is replaced
    for name in ("sub.ads.example.net", "ok.ads2.example.net", "omegle.com"):
        assert addresses(server.query(name, "A")) != ["127.0.0.1"], name
    assert server.app is not None and server.app.lists is not None
    assert server.app.lists.entries == {"myhosts": 2, "mydomains": 2, "myadblock": 1}


def test_allow_beats_every_list(start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_text("example.org\n")
    server = start_filterd(
        _config(
            dnsmasq,
            f"""
lists:
  - builtin: chat-roulette
  - {{name: mine, path: {tmp_path / "d.txt"}}}
allow: [www.example.org, video.omegle.com]
""",
        )
    )
    assert addresses(server.query("example.org", "A")) == ["127.0.0.1"]
    assert addresses(server.query("www.example.org", "A")) == ["192.0.2.11"]
    assert addresses(server.query("video.omegle.com", "A")) == ["192.0.2.66"]
    assert addresses(server.query("omegle.com", "A")) == ["127.0.0.1"]


@pytest.mark.parametrize("mode", ["sinkhole", "nxdomain"])
def test_disabled_list_blocks_nothing(start_filterd: Start, dnsmasq: Dnsmasq, mode: str) -> None:
    server = start_filterd(
        _config(
            dnsmasq,
            f"""
blocking: {{mode: {mode}}}
lists: [{{builtin: chat-roulette, enabled: false}}]
""",
        )
    )
    assert server.query("omegle.com", "A").rcode() != dns.rcode.NXDOMAIN
    assert addresses(server.query("omegle.com", "A")) != ["127.0.0.1"]


def test_clients_outside_allow_clients_are_refused(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = start_filterd(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{dnsmasq.address}"]
  allow_clients: [10.0.0.0/8]
""")
    for name in ("example.org", "omegle.com"):
        reply = server.query(name, "A")
        assert reply.rcode() == dns.rcode.REFUSED and reply.answer == []
        assert ede(reply)[0][0] == 18
        assert not reply.flags & dns.flags.RA and reply.flags & dns.flags.RD  # no recursion for this client
    tcp = server.query("example.org", "A", tcp=True)
    assert tcp.rcode() == dns.rcode.REFUSED and not tcp.flags & dns.flags.RA
