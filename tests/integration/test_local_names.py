"""Names filterd answers itself and never leaks upstream, forward zones, and local records."""

from __future__ import annotations

from collections.abc import Callable

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support import FakeUpstream, RunningFilterd, addresses

Start = Callable[..., RunningFilterd]


@pytest.fixture
def server(start_filterd: Start, fake_upstream: FakeUpstream) -> RunningFilterd:
    return start_filterd(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{fake_upstream.address}"]
metrics:
  listen: 127.0.0.1:0
""")


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [("localhost", "A", ["127.0.0.1"]), ("localhost", "AAAA", ["::1"]), ("app.localhost", "A", ["127.0.0.1"])],
)
def test_localhost(
    server: RunningFilterd, fake_upstream: FakeUpstream, name: str, rdtype: str, expected: list[str]
) -> None:
    reply = server.query(name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == expected
    assert fake_upstream.received == []


@pytest.mark.parametrize(
    ("name", "zone"),
    [
        ("invalid", "invalid."),
        ("test.invalid", "invalid."),
        ("printer.local", "local."),
        ("router.home.arpa", "home.arpa."),
        ("wpad", "wpad."),
        ("printer", "printer."),
        ("1.1.168.192.in-addr.arpa", "168.192.in-addr.arpa."),
        ("5.0.0.10.in-addr.arpa", "10.in-addr.arpa."),
        ("9.1.20.172.in-addr.arpa", "20.172.in-addr.arpa."),
        ("1.0.0.127.in-addr.arpa", "127.in-addr.arpa."),
        ("b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "d.f.ip6.arpa."),
    ],
)
def test_names_that_never_leak(server: RunningFilterd, fake_upstream: FakeUpstream, name: str, zone: str) -> None:
    reply = server.query(name, "PTR" if name.endswith(".arpa") else "A")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA and reply.authority[0].name.to_text() == zone
    assert fake_upstream.received == []
    assert (
        server.metric("filterd_queries_total", protocol="udp", decision="local", qtype="A")
        + server.metric("filterd_queries_total", protocol="udp", decision="local", qtype="PTR")
        == 1
    )


def test_public_names_and_tlds_are_forwarded(server: RunningFilterd, fake_upstream: FakeUpstream) -> None:
    server.query("1.2.0.192.in-addr.arpa.example", "A")
    server.query("8.8.8.8.in-addr.arpa", "PTR")
    server.query("com", "NS")
    server.query(".", "NS")
    assert fake_upstream.received == ["1.2.0.192.in-addr.arpa.example", "8.8.8.8.in-addr.arpa", "com", "."]


def test_forward_zones_and_records(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    router = FakeUpstream()
    router.behaviour = lambda q: FakeUpstream.answer(q, "192.168.1.50")
    router.start()
    try:
        server = start_filterd(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{fake_upstream.address}"]
  forward_zones:
    lan: ["{router.address}"]
    168.192.in-addr.arpa: "{router.address}"
    corp.example: ["{router.address}"]
  records:
    filter.home: 192.168.1.2
    pi.home: [192.168.1.3, "fd00::3"]
""")
        assert addresses(server.query("printer.lan", "A")) == ["192.168.1.50"]
        assert addresses(server.query("dc1.corp.example", "A")) == ["192.168.1.50"]
        assert addresses(server.query("lan", "A")) == ["192.168.1.50"]  # the zone itself, single label or not
        server.query("7.1.168.192.in-addr.arpa", "PTR")
        assert router.received == ["printer.lan", "dc1.corp.example", "lan", "7.1.168.192.in-addr.arpa"]
        assert server.query("1.0.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN  # not covered
        assert addresses(server.query("example.org", "A")) == ["192.0.2.1"]
        assert fake_upstream.received == ["example.org"]

        assert addresses(server.query("filter.home", "A")) == ["192.168.1.2"]
        assert addresses(server.query("pi.home", "AAAA")) == ["fd00::3"]
        nodata = server.query("filter.home", "AAAA")
        assert nodata.rcode() == dns.rcode.NOERROR and nodata.answer == []
        ptr = server.query("3.1.168.192.in-addr.arpa", "PTR")
        assert ptr.answer[0][0].target.to_text() == "pi.home."
        assert len(router.received) == 4
    finally:
        router.stop()


def test_zone_transfers_are_not_implemented(server: RunningFilterd, fake_upstream: FakeUpstream) -> None:
    for rdtype in ("AXFR", "IXFR"):
        reply = server.query("example.org", rdtype, tcp=True)
        assert reply.rcode() == dns.rcode.NOTIMP
    assert fake_upstream.received == []


@pytest.mark.parametrize("label", [b"\xff" * 16, b"\xff" * 63, b"a b", b"a.b", b"a\\b", b"\\255", b"\x00"])
@pytest.mark.parametrize("tcp", [False, True])
def test_odd_single_labels_get_an_nxdomain_owned_by_the_name_itself(
    server: RunningFilterd, fake_upstream: FakeUpstream, label: bytes, tcp: bool
) -> None:
    """Issue 13, defect 1: `dig '\\255\\255...'` got an SOA owned by the escaped text as one label (unparsable
    past 63 bytes of it, the wrong name below)."""
    q = dns.message.make_query(dns.name.Name([label, b""]), "A", use_edns=0)
    send = dns.query.tcp if tcp else dns.query.udp
    reply = send(q, "127.0.0.1", port=server.port, timeout=3)  # dnspython reads the reply, or this raises
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA and reply.authority[0].name.labels == (label, b"")
    assert fake_upstream.received == []
