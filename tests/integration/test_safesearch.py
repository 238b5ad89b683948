"""Safe search end to end: a real filterd, a real upstream (dnsmasq) that serves the safe hosts' addresses, and
dnspython as the client. The answers are checked record by record: the CNAME, the safe host's own records as
dnsmasq serves them, and their TTLs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from filterd.app import offline_check
from filterd.config.load import load_config
from tests.support import Dnsmasq, FakeUpstream, RunningFilterd, addresses, ede

Start = Callable[..., RunningFilterd]

#: dnsmasq's TTL for its own records (--local-ttl); the CNAME in strict.bing.com's chain has its own, smaller one.
TTL = 123
BING_CNAME_TTL = 60

#: What the safe-search upstream serves, besides the shared records (tests/support.py), as dnsmasq options.
RECORDS = [
    ("host-record", "forcesafesearch.google.com,192.0.2.120,2001:db8::120"),
    ("host-record", "restrict.youtube.com,192.0.2.121,2001:db8::121"),
    ("host-record", "restrictmoderate.youtube.com,192.0.2.122,2001:db8::122"),
    # strict.bing.com is itself an alias, as on the internet: the chain must reach the client whole
    ("cname", f"strict.bing.com,strict.edge.example,{BING_CNAME_TTL}"),
    ("host-record", "strict.edge.example,192.0.2.123,2001:db8::123"),
    ("host-record", "safe.duckduckgo.com,192.0.2.124"),  # no AAAA
    # the real names, which only a client without safe search may get
    ("host-record", "www.google.com,192.0.2.200,2001:db8::200"),
    ("host-record", "www.google.co.uk,192.0.2.201"),
    ("host-record", "www.youtube.com,192.0.2.202"),
    ("txt-record", "www.google.com,the real www.google.com"),
    ("mx-host", "www.google.com,mail.google.example,10"),
    ("local", "/google.com/"),
    ("local", "/youtube.com/"),
    ("local", "/bing.com/"),
    ("local", "/duckduckgo.com/"),
]


class SafeSearchDnsmasq(Dnsmasq):
    def command(self) -> list[str]:
        return [*super().command(), f"--local-ttl={TTL}", *(f"--{opt}={value}" for opt, value in RECORDS)]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SafeSearchDnsmasq]:
    server = SafeSearchDnsmasq(tmp_path_factory.mktemp("dnsmasq-safesearch"))
    server.start()
    yield server
    server.stop()


def config(upstream: str, safe_search: str = "true", extra: str = "") -> str:
    return f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{upstream}"]
        safe_search: {safe_search}
        metrics:
          listen: 127.0.0.1:0
        {extra}
    """


@pytest.fixture
def filterd(start_filterd: Start, upstream: SafeSearchDnsmasq) -> RunningFilterd:
    return start_filterd(config(upstream.address))


def records(reply: dns.message.Message) -> list[tuple[str, str, int, str]]:
    """(owner, type, TTL, data) of every answer record, in order."""
    return [
        (rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype), rrset.ttl, rd.to_text())
        for rrset in reply.answer
        for rd in rrset
    ]


@pytest.mark.parametrize(
    ("name", "rdtype", "address"),
    [
        ("www.google.co.uk", "A", "192.0.2.120"),
        ("www.google.co.uk", "AAAA", "2001:db8::120"),
        ("www.google.com", "A", "192.0.2.120"),
        ("google.de", "A", "192.0.2.120"),  # the bare country domain too
        ("www.google.com.br", "AAAA", "2001:db8::120"),
    ],
)
def test_google_gets_forcesafesearch_with_the_upstreams_ttl(
    filterd: RunningFilterd, name: str, rdtype: str, address: str
) -> None:
    reply = filterd.query(name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert records(reply) == [
        (f"{name}.", "CNAME", TTL, "forcesafesearch.google.com."),
        ("forcesafesearch.google.com.", rdtype, TTL, address),
    ]
    assert ede(reply) == [(4, "filterd: safe-search google")]


@pytest.mark.parametrize(
    ("youtube", "target", "address"),
    [("strict", "restrict.youtube.com", "192.0.2.121"), ("moderate", "restrictmoderate.youtube.com", "192.0.2.122")],
)
@pytest.mark.parametrize("name", ["www.youtube.com", "m.youtube.com", "youtubei.googleapis.com"])
def test_youtube_restricted_mode_strict_and_moderate(
    start_filterd: Start, upstream: SafeSearchDnsmasq, youtube: str, target: str, address: str, name: str
) -> None:
    server = start_filterd(config(upstream.address, f"{{youtube: {youtube}}}"))
    reply = server.query(name, "A")
    assert records(reply) == [(f"{name}.", "CNAME", TTL, f"{target}."), (f"{target}.", "A", TTL, address)]
    assert addresses(server.query(name, "AAAA")) == [address.replace("192.0.2.", "2001:db8::")]


def test_youtube_com_itself_is_not_rewritten(filterd: RunningFilterd) -> None:
    """Google warns that rewriting other YouTube names (youtube.com, youtu.be, ...) may break YouTube."""
    reply = filterd.query("youtube.com", "A")
    assert all(rrset.rdtype != dns.rdatatype.CNAME for rrset in reply.answer)


def test_bing_gets_strict_bing_com_with_its_own_chain(filterd: RunningFilterd) -> None:
    reply = filterd.query("www.bing.com", "A")
    assert records(reply) == [
        ("www.bing.com.", "CNAME", BING_CNAME_TTL, "strict.bing.com."),  # the smallest TTL of the answer
        ("strict.bing.com.", "CNAME", BING_CNAME_TTL, "strict.edge.example."),
        ("strict.edge.example.", "A", TTL, "192.0.2.123"),
    ]


def test_duckduckgo_gets_safe_duckduckgo_com(filterd: RunningFilterd) -> None:
    for name in ("duckduckgo.com", "www.duckduckgo.com"):
        reply = filterd.query(name, "A")
        assert records(reply) == [
            (f"{name}.", "CNAME", TTL, "safe.duckduckgo.com."),
            ("safe.duckduckgo.com.", "A", TTL, "192.0.2.124"),
        ]
    # the safe host has no AAAA: the CNAME alone, so the client uses IPv4 to reach the safe host, not the real one
    reply = filterd.query("duckduckgo.com", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert [rrset.rdtype for rrset in reply.answer] == [dns.rdatatype.CNAME]


def test_yandex_gets_the_fixed_address_of_its_family_search(filterd: RunningFilterd) -> None:
    reply = filterd.query("yandex.ru", "A")
    assert records(reply) == [("yandex.ru.", "A", 300, "213.180.193.56")]
    reply = filterd.query("www.yandex.com", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
@pytest.mark.parametrize("name", ["www.google.com", "www.youtube.com", "www.bing.com", "duckduckgo.com", "ya.ru"])
def test_https_and_svcb_get_nodata_so_browsers_use_the_rewritten_addresses(
    filterd: RunningFilterd, name: str, rdtype: str
) -> None:
    reply = filterd.query(name, rdtype)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
    assert reply.authority[0].name.to_text() == f"{name}."


def test_other_types_are_forwarded_unchanged(filterd: RunningFilterd) -> None:
    reply = filterd.query("www.google.com", "MX")
    assert records(reply) == [("www.google.com.", "MX", TTL, "10 mail.google.example.")]
    assert ede(reply) == []
    reply = filterd.query("www.google.com", "TXT")
    assert records(reply) == [("www.google.com.", "TXT", TTL, '"the real www.google.com"')]


def test_off_by_default_and_when_false(start_filterd: Start, upstream: SafeSearchDnsmasq) -> None:
    for setting in ("false", "{enabled: false}"):
        server = start_filterd(config(upstream.address, setting))
        assert records(server.query("www.google.com", "A")) == [("www.google.com.", "A", TTL, "192.0.2.200")]
        assert records(server.query("www.google.co.uk", "A")) == [("www.google.co.uk.", "A", TTL, "192.0.2.201")]
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{upstream.address}"]
    """)
    assert records(server.query("www.google.com", "AAAA")) == [("www.google.com.", "AAAA", TTL, "2001:db8::200")]


def test_a_provider_switched_off_is_forwarded(start_filterd: Start, upstream: SafeSearchDnsmasq) -> None:
    server = start_filterd(config(upstream.address, "{youtube: false}"))
    assert records(server.query("www.youtube.com", "A")) == [("www.youtube.com.", "A", TTL, "192.0.2.202")]
    assert records(server.query("www.google.com", "A"))[0][1] == "CNAME"


def test_a_blocked_search_engine_stays_blocked(
    start_filterd: Start, upstream: SafeSearchDnsmasq, tmp_path: Path
) -> None:
    (tmp_path / "search.txt").write_text("bing.com\n")
    lists = f"lists:\n          - path: {tmp_path / 'search.txt'}\n            format: domains"
    server = start_filterd(config(upstream.address, extra=lists))
    reply = server.query("www.bing.com", "A")
    assert addresses(reply) == ["127.0.0.1"]
    assert ede(reply) == [(15, "filterd: search")]
    assert records(server.query("www.google.com", "A"))[0][1] == "CNAME"


def test_counted_as_local_and_never_cached(filterd: RunningFilterd) -> None:
    for _ in range(3):
        filterd.query("www.google.com", "A")
    assert filterd.metric("filterd_queries_total", decision="local", qtype="A") == 3
    assert filterd.metric("filterd_queries_total", decision="cached", qtype="A") == 0
    assert filterd.app is not None and filterd.app.cache is not None
    assert len(filterd.app.cache) == 0


def test_the_safe_host_is_asked_once_and_the_real_name_never(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = start_filterd(config(fake_upstream.address))
    first = server.query("www.google.com", "A")
    assert records(first) == [
        ("www.google.com.", "CNAME", 60, "forcesafesearch.google.com."),
        ("forcesafesearch.google.com.", "A", 60, "192.0.2.1"),
    ]
    time.sleep(1.1)
    second = server.query("www.google.co.uk", "A")  # the same safe host, from what the stage kept, counted down
    ttls = [r[2] for r in records(second)]
    assert ttls[0] == ttls[1] and 55 <= ttls[0] <= 59
    assert fake_upstream.received == ["forcesafesearch.google.com"]


def test_servfail_when_the_safe_host_cannot_be_resolved(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    fake_upstream.behaviour = lambda q: FakeUpstream.rcode(q, dns.rcode.SERVFAIL)
    server = start_filterd(config(fake_upstream.address))
    reply = server.query("www.google.com", "A")
    assert reply.rcode() == dns.rcode.SERVFAIL and reply.answer == []
    assert fake_upstream.received and set(fake_upstream.received) == {"forcesafesearch.google.com"}


def test_pipeline_order(filterd: RunningFilterd) -> None:
    assert filterd.app is not None and filterd.app.pipeline is not None
    assert "→ policy → safesearch → cname → rebind → upstream" in filterd.app.pipeline.describe()


def test_filterd_check_explains_the_rewrite(
    filterd: RunningFilterd, upstream: SafeSearchDnsmasq, tmp_path: Path
) -> None:
    assert filterd.app is not None
    result = filterd.app.check("WWW.Google.co.uk.")
    assert result["decision"] == "rewritten"
    assert result["provider"] == "google" and result["target"] == "forcesafesearch.google.com"
    assert "CNAME to forcesafesearch.google.com" in result["reason"]
    assert filterd.app.check("www.google.com")["decision"] == "rewritten"
    assert filterd.app.check("example.org")["decision"] == "forwarded"
    path = tmp_path / "offline.yaml"
    path.write_text(config(upstream.address, "{youtube: moderate}").replace("\n        ", "\n"))
    offline = offline_check(load_config(path), "m.youtube.com")
    assert offline["decision"] == "rewritten" and offline["target"] == "restrictmoderate.youtube.com"
    assert offline_check(load_config(path), "omegle.com")["decision"] == "blocked"


def test_a_reload_that_turns_it_on_never_serves_the_cached_real_answer(
    start_filterd: Start, upstream: SafeSearchDnsmasq
) -> None:
    server = start_filterd(config(upstream.address, "false"))
    assert records(server.query("www.google.com", "A")) == [("www.google.com.", "A", TTL, "192.0.2.200")]
    assert server.query("www.google.com", "A").answer  # now a cache hit
    server.config_path.write_text(config(upstream.address, "true").replace("\n        ", "\n"))
    assert server.app is not None
    assert asyncio.run_coroutine_threadsafe(server.app.reload(), server.loop).result(15)["ok"]
    assert records(server.query("www.google.com", "A"))[0] == (
        "www.google.com.",
        "CNAME",
        TTL,
        "forcesafesearch.google.com.",
    )


def test_safe_search_and_bypass_protection_per_client_group(start_filterd: Start, upstream: SafeSearchDnsmasq) -> None:
    """Children (127.0.0.2) get safe search; parents (127.0.0.3) have neither it nor bypass protection; a client
    in no group (127.0.0.1) gets the top level: no safe search, bypass protection on."""
    extra = """groups:
          - {name: children, clients: [127.0.0.2], safe_search: {youtube: moderate}}
          - {name: parents, clients: [127.0.0.3], bypass_protection: false}"""
    server = start_filterd(config(upstream.address, safe_search="false", extra=extra))

    def ask(name: str, source: str) -> dns.message.Message:
        q = dns.message.make_query(name, "A", use_edns=0)
        return dns.query.udp(q, "127.0.0.1", port=server.port, source=source, timeout=3)

    children = ask("www.youtube.com", "127.0.0.2")
    assert records(children)[0][:2] == ("www.youtube.com.", "CNAME")
    assert "restrictmoderate.youtube.com." in [r[3] for r in records(children)]
    for source in ("127.0.0.3", "127.0.0.1"):  # asked after the children: their answer was not cached for others
        plain = ask("www.youtube.com", source)
        assert all(r[1] != "CNAME" for r in records(plain)), source
    assert ask("use-application-dns.net", "127.0.0.2").rcode() == dns.rcode.NXDOMAIN
    assert ask("use-application-dns.net", "127.0.0.1").rcode() == dns.rcode.NXDOMAIN
    parents = ask("use-application-dns.net", "127.0.0.3")  # forwarded: dnsmasq does not know it
    assert not any(code == 15 for code, _ in ede(parents))
