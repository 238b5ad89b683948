"""Blocked names get the sinkhole with the reason; everything else resolves through the upstream."""

from __future__ import annotations

import shutil
import subprocess

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.support import FakeUpstream, RunningFilterd, addresses, ede


def test_blocked_name_gets_sinkhole_and_reason(filterd: RunningFilterd) -> None:
    reply = filterd.query("omegle.com", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["127.0.0.1"]
    assert ede(reply) == [(15, "filterd: chat-roulette")]
    assert reply.answer[0].ttl == 10


def test_subdomain_of_listed_name_is_blocked_aaaa(filterd: RunningFilterd) -> None:
    reply = filterd.query("front7.omegle.com", "AAAA")
    assert addresses(reply) == ["::1"]


def test_case_and_trailing_dot_do_not_matter(filterd: RunningFilterd) -> None:
    reply = filterd.query("WwW.OmEgLe.CoM.", "A")
    assert addresses(reply) == ["127.0.0.1"]
    assert reply.question[0].name.to_text() == "WwW.OmEgLe.CoM."  # the client's question echoed as sent


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB", "MX", "TXT"])
def test_other_types_get_nodata_with_soa(filterd: RunningFilterd, rdtype: str) -> None:
    reply = filterd.query("chatroulette.com", rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    soa = reply.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == "chatroulette.com."
    assert soa.ttl == 10 and soa[0].minimum == 10
    assert ede(reply) == [(15, "filterd: chat-roulette")]


def test_synthesized_flags(filterd: RunningFilterd) -> None:
    reply = filterd.query("ome.tv", "A")
    flags = reply.flags
    assert flags & dns.flags.RA and flags & dns.flags.RD
    assert not flags & dns.flags.AA and not flags & dns.flags.AD


def test_no_edns_means_no_opt(filterd: RunningFilterd) -> None:
    reply = filterd.query("ome.tv", "A", edns=False)
    assert reply.edns < 0 and addresses(reply) == ["127.0.0.1"]


def test_forwarded_name_resolves_through_upstream(filterd: RunningFilterd) -> None:
    assert addresses(filterd.query("example.org", "A")) == ["192.0.2.10"]
    assert addresses(filterd.query("example.org", "AAAA")) == ["2001:db8::10"]
    txt = filterd.query("example.org", "TXT")
    assert b"hello from dnsmasq" in txt.answer[0][0].strings[0]


def test_forwarded_over_tcp(filterd: RunningFilterd) -> None:
    assert addresses(filterd.query("example.org", "A", tcp=True)) == ["192.0.2.10"]
    assert addresses(filterd.query("omegle.com", "A", tcp=True)) == ["127.0.0.1"]


def test_cname_chain_to_listed_name_is_blocked(filterd: RunningFilterd) -> None:
    reply = filterd.query("alias.example.org", "A")
    assert addresses(reply) == ["127.0.0.1"]
    assert ede(reply) == [(15, "filterd: chat-roulette")]
    ok = filterd.query("okalias.example.org", "A")
    assert "192.0.2.11" in addresses(ok)


def test_any_gets_rfc8482_answer_never_forwarded(start_filterd, fake_upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{fake_upstream.address}"]
    """)
    reply = server.query("example.org", "ANY")
    assert reply.answer[0].rdtype == dns.rdatatype.HINFO
    assert b"RFC8482" in reply.answer[0][0].cpu
    assert fake_upstream.received == []


def test_blocked_name_is_never_sent_upstream(start_filterd, fake_upstream: FakeUpstream) -> None:  # type: ignore[no-untyped-def]
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{fake_upstream.address}"]
    """)
    for rdtype in ("A", "AAAA", "HTTPS", "TXT"):
        server.query("www.omegle.com", rdtype)
    server.query("example.com", "A")
    assert fake_upstream.received == ["example.com"]


def test_dig_shows_the_reason(filterd: RunningFilterd) -> None:
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is not installed: `apt-get install bind9-dnsutils` (the README's test command does it)")
    out = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(filterd.port), "omegle.com", "+tries=1", "+time=3"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    assert "EDE: 15 (Blocked): (filterd: chat-roulette)" in out
    assert "127.0.0.1" in out.split("ANSWER SECTION:")[1]


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(filterd: RunningFilterd) -> None:
    udp = filterd.query("big.example.org", "TXT", payload=1232)
    assert udp.flags & dns.flags.TC and udp.answer == []
    tcp = filterd.query("big.example.org", "TXT", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(tcp.answer[0]) == 8


def test_client_without_edns_gets_at_most_512_bytes(filterd: RunningFilterd) -> None:
    q = dns.message.make_query("big.example.org", "TXT")
    wire_reply = dns.query.udp(q, "127.0.0.1", port=filterd.port, timeout=3, ignore_trailing=True)
    assert wire_reply.flags & dns.flags.TC
    assert len(wire_reply.to_wire()) <= 512
