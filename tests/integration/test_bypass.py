"""Bypass protection as a device meets it: Firefox's canary, iCloud Private Relay and DDR get the answers
that keep them on filterd, in every blocking mode; `bypass_protection: false` forwards them again."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.support import Dnsmasq, FakeUpstream, RunningFilterd, addresses, ede, free_port

Start = Callable[..., RunningFilterd]
FILTERD = [sys.executable, "-m", "filterd"]
BYPASS_EDE = (15, "filterd: bypass-protection")
MODES = ["sinkhole", "null", "nxdomain", "refused"]


def _config(upstream: str, extra: str = "", mode: str = "sinkhole") -> str:
    return f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream}"]
  records:
    filter.home.arpa: 127.0.0.1
    other.home.arpa: 192.0.2.99
blocking: {{mode: '{mode}', ttl: 42}}
metrics:
  listen: 127.0.0.1:0
{extra}
"""


def _negative(reply: dns.message.Message, rcode: dns.rcode.Rcode, soa_owner: str) -> None:
    """A bypass answer: the rcode, no answer, an SOA for negative caching, EDE 15 naming bypass protection."""
    assert reply.rcode() == rcode
    assert reply.answer == []
    assert [(rr.name.to_text(), rr.rdtype, rr.ttl) for rr in reply.authority] == [
        (soa_owner + ".", dns.rdatatype.SOA, 42)
    ]
    assert ede(reply) == [BYPASS_EDE]


@pytest.mark.parametrize("mode", MODES)
def test_every_signal_in_every_blocking_mode(start_filterd: Start, dnsmasq: Dnsmasq, mode: str) -> None:
    # doh-bypass lists mask.icloud.com: the signal must still win over the list's sinkhole answer.
    server = start_filterd(_config(dnsmasq.address, "lists: [{builtin: doh-bypass}]", mode=mode))
    for name in ("use-application-dns.net", "a.b.use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com"):
        for rdtype in ("A", "AAAA", "HTTPS", "SVCB"):
            owner = name.removeprefix("a.b.")
            _negative(server.query(name, rdtype), dns.rcode.NXDOMAIN, owner)
    for rdtype in ("SVCB", "HTTPS", "A", "AAAA", "TXT"):
        _negative(server.query("_dns.resolver.arpa", rdtype), dns.rcode.NOERROR, "resolver.arpa")
    _negative(server.query("resolver.arpa", "SOA"), dns.rcode.NOERROR, "resolver.arpa")
    # DDR by name for filterd's own dns.records name (a local zone, which would otherwise answer NXDOMAIN)
    for name in ("_dns.filter.home.arpa", "_853._dns.filter.home.arpa"):
        for rdtype in ("SVCB", "HTTPS"):
            _negative(server.query(name, rdtype), dns.rcode.NOERROR, name.removeprefix("_853."))
    _negative(server.query("use-application-dns.net", "A", tcp=True), dns.rcode.NXDOMAIN, "use-application-dns.net")


def test_only_the_signals(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = start_filterd(_config(fake_upstream.address))
    for name in ("icloud.com", "www.icloud.com", "mask-api.icloud.com", "use-application-dns.net.example.com"):
        reply = server.query(name, "A")
        assert addresses(reply) == ["192.0.2.1"], name
        assert BYPASS_EDE not in ede(reply), name
    # _dns of a name that is not filterd's own, and the A query for its own: as before this change
    assert addresses(server.query("_dns.example.net", "SVCB")) == []
    assert "_dns.example.net" in fake_upstream.received
    own_a = server.query("_dns.filter.home.arpa", "A")
    assert own_a.rcode() == dns.rcode.NXDOMAIN and BYPASS_EDE not in ede(own_a)  # the local zone's answer
    other = server.query("_dns.other.home.arpa", "SVCB")  # a dns.records name, but not filterd's address
    assert other.rcode() == dns.rcode.NXDOMAIN and BYPASS_EDE not in ede(other)
    assert "use-application-dns.net" not in fake_upstream.received


def test_answers_count_as_blocked(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = start_filterd(_config(fake_upstream.address))
    server.query("_dns.resolver.arpa", "HTTPS")
    server.query("use-application-dns.net", "A")
    server.query("mask.icloud.com", "A", tcp=True)
    assert server.metric("filterd_queries_total", decision="blocked", qtype="HTTPS", protocol="udp") == 1
    assert server.metric("filterd_queries_total", decision="blocked", qtype="A", protocol="udp") == 1
    assert server.metric("filterd_queries_total", decision="blocked", qtype="A", protocol="tcp") == 1
    assert not {"_dns.resolver.arpa", "use-application-dns.net", "mask.icloud.com"} & set(fake_upstream.received)


def test_off_forwards_the_names_again(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = start_filterd(_config(fake_upstream.address, "bypass_protection: false"))
    for name in ("use-application-dns.net", "mask.icloud.com"):
        reply = server.query(name, "A")
        assert reply.rcode() == dns.rcode.NOERROR and addresses(reply) == ["192.0.2.1"], name
        assert BYPASS_EDE not in ede(reply)
    svcb = server.query("_dns.resolver.arpa", "SVCB")
    assert BYPASS_EDE not in ede(svcb)
    assert {"use-application-dns.net", "mask.icloud.com", "_dns.resolver.arpa"} <= set(fake_upstream.received)


def test_off_canary_reaches_dnsmasq(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    """The real upstream (no internet behind it) refuses the name: filterd forwarded it and added no EDE 15."""
    server = start_filterd(_config(dnsmasq.address, "bypass_protection: false"))
    reply = server.query("use-application-dns.net", "A")
    assert reply.rcode() != dns.rcode.NXDOMAIN
    assert all(code != 15 for code, _ in ede(reply))


def test_a_reload_turns_it_off_and_on(start_filterd: Start, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    server = start_filterd(_config(fake_upstream.address))
    assert server.query("use-application-dns.net", "A").rcode() == dns.rcode.NXDOMAIN
    assert server.app is not None
    for off in (True, False):
        server.config_path.write_text(_config(fake_upstream.address, f"bypass_protection: {str(not off).lower()}"))
        result = asyncio.run_coroutine_threadsafe(server.app.reload(), server.loop).result(15)
        assert result["ok"], result
        reply = server.query("use-application-dns.net", "A")
        assert (addresses(reply) == ["192.0.2.1"]) is off
        assert (reply.rcode() == dns.rcode.NXDOMAIN) is not off


# --- filterd check ------------------------------------------------------------------------------------------


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FILTERD, "--config", str(config), *args], capture_output=True, text=True, timeout=60)


def _check_config(tmp_path: Path, upstream: str, extra: str = "") -> Path:
    path = tmp_path / "filterd.yaml"
    path.write_text(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream}"]
state_dir: {tmp_path / "state"}
{extra}
""")
    return path


def test_offline_check_explains_each_signal(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _check_config(tmp_path, dnsmasq.address)
    canary = json.loads(_cli(config, "check", "--offline", "www.use-application-dns.net", "--json").stdout)
    assert canary["decision"] == "blocked" and canary["list"] == "bypass-protection"
    assert canary["entry"] == "use-application-dns.net"
    assert "Firefox's DoH canary: NXDOMAIN turns Firefox's own DNS-over-HTTPS off" in canary["reason"]
    relay = json.loads(_cli(config, "check", "--offline", "mask-h2.icloud.com", "--json").stdout)
    assert relay["decision"] == "blocked" and "iCloud Private Relay" in relay["reason"]
    ddr = _cli(config, "check", "--offline", "_dns.resolver.arpa")
    assert ddr.returncode == 0
    assert ddr.stdout.startswith("_dns.resolver.arpa: blocked: blocked by bypass protection: Discovery of Designated")
    assert "RFC 9462" in ddr.stdout and "bypass_protection: false" in ddr.stdout
    plain = json.loads(_cli(config, "check", "--offline", "icloud.com", "--json").stdout)
    assert plain["decision"] == "forwarded"


def test_offline_check_when_off(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _check_config(tmp_path, dnsmasq.address, "bypass_protection: false")
    out = json.loads(_cli(config, "check", "--offline", "use-application-dns.net", "--json").stdout)
    assert out["decision"] == "forwarded"


def test_check_through_the_admin_api(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _check_config(tmp_path, dnsmasq.address, f"admin:\n  listen: 127.0.0.1:{free_port()}")
    server = RunningFilterd(config)
    server.start()
    try:
        out = json.loads(_cli(config, "check", "mask.icloud.com", "--json").stdout)
        assert out["decision"] == "blocked" and out["list"] == "bypass-protection"
        assert out["entry"] == "mask.icloud.com" and "iCloud Private Relay" in out["reason"]
    finally:
        server.stop()
