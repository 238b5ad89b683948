"""filterd's own DNS over TLS and DNS over HTTPS (dns.tls_listen, dns.https_listen), asked by dnspython (DoT),
kdig (knot-dnsutils: DoT, and DoH over HTTP/2) and httpx (DoH over HTTP/2 and HTTP/1.1; dnspython 2.9's DoH needs
the httpx2 fork): forwarded and blocked names, the client is the TLS peer,
malformed DoH gets 400 and never stops the server, and a renewed certificate is served after a reload."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses
from tests.support_tls import Pki, client_context, make_pki

NAME = "filter.test"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", (NAME,))


@pytest.fixture
def served(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, pki: Pki) -> RunningFilterd:
    return start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          tls_listen: ["127.0.0.1:0"]
          https_listen: ["127.0.0.1:0"]
        tls:
          cert: {pki.cert}
          key: {pki.key}
        metrics:
          listen: 127.0.0.1:0
    """)


def _ports(server: RunningFilterd) -> tuple[int, int]:
    assert server.app is not None
    return server.app.listening.dot[0].port, server.app.listening.doh[0].port


def _dot(server: RunningFilterd, pki: Pki, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    port = _ports(server)[0]
    return dns.query.tls(q, "127.0.0.1", port=port, ssl_context=client_context(pki.ca), server_hostname=NAME, timeout=5)


def _client(pki: Pki, *, http2: bool = True) -> httpx.Client:
    return httpx.Client(http2=http2, http1=not http2, verify=client_context(pki.ca), timeout=5)


def _doh_url(server: RunningFilterd) -> str:
    return f"https://127.0.0.1:{_ports(server)[1]}/dns-query"


def _sni() -> dict[str, str]:
    return {"sni_hostname": NAME}


def test_dot_forwards_and_blocks(served: RunningFilterd, pki: Pki) -> None:
    assert addresses(_dot(served, pki, "example.org")) == ["192.0.2.10"]
    blocked = _dot(served, pki, "video.omegle.com")
    assert addresses(blocked) != ["192.0.2.66"] and blocked.rcode() == dns.rcode.NOERROR
    assert served.metric("filterd_queries_total", protocol="tls", decision="forwarded") == 1
    assert served.metric("filterd_queries_total", protocol="tls", decision="blocked") == 1


def test_doh_over_http2_and_http1(served: RunningFilterd, pki: Pki) -> None:
    q = dns.message.make_query("www.example.org", "A")
    q.id = 0
    with _client(pki) as h2:
        post = h2.post(
            _doh_url(served),
            content=q.to_wire(),
            headers={"content-type": "application/dns-message", "accept": "application/dns-message"},
            extensions=_sni(),
        )
        assert (post.status_code, post.http_version) == (200, "HTTP/2")
        assert post.headers["content-type"] == "application/dns-message"
        assert addresses(dns.message.from_wire(post.content)) == ["192.0.2.11"]
        assert post.headers["cache-control"].startswith("max-age=")
    encoded = base64.urlsafe_b64encode(dns.message.make_query("video.omegle.com", "A").to_wire()).rstrip(b"=")
    with _client(pki, http2=False) as h1:
        get = h1.get(_doh_url(served), params={"dns": encoded.decode()}, extensions=_sni())
        assert (get.status_code, get.http_version) == (200, "HTTP/1.1")
        assert addresses(dns.message.from_wire(get.content)) != ["192.0.2.66"]  # blocked
    assert served.metric("filterd_queries_total", protocol="https", decision="forwarded") == 1
    assert served.metric("filterd_queries_total", protocol="https", decision="blocked") == 1


@pytest.mark.parametrize("transport", ["+tls", "+https"])
def test_kdig(served: RunningFilterd, pki: Pki, transport: str) -> None:
    kdig = shutil.which("kdig")
    if kdig is None:
        pytest.fail("kdig is not installed: `apt-get install knot-dnsutils` (scripts/test.sh does it)")
    dot, doh = _ports(served)
    port = dot if transport == "+tls" else doh
    args = [kdig, "@127.0.0.1", "-p", str(port), transport, f"+tls-ca={pki.ca}", f"+tls-hostname={NAME}"]
    out = subprocess.run([*args, "+short", "example.org", "A"], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["192.0.2.10"]
    # the wrong name for the certificate: kdig refuses it (the certificate is checked, not just present)
    bad = subprocess.run(
        [*args[:-1], "+tls-hostname=other.test", "+short", "example.org", "A"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "192.0.2.10" not in bad.stdout


def test_malformed_doh_gets_400_and_the_server_keeps_answering(served: RunningFilterd, pki: Pki) -> None:
    url = _doh_url(served)
    good = dns.message.make_query("example.org", "A").to_wire()
    dns_type = {"content-type": "application/dns-message"}
    with _client(pki) as h2:
        cases = [
            h2.get(url, params={"dns": "%%%not-base64!!"}, extensions=_sni()),
            h2.get(url, params={"dns": "AAAA"}, extensions=_sni()),  # 3 bytes: no DNS header
            h2.get(url, extensions=_sni()),  # no dns= at all
            h2.post(url, content=good, headers={"content-type": "text/plain"}, extensions=_sni()),
            h2.post(url, content=good, extensions=_sni()),  # no content type
            h2.post(url, content=b"\x00" * 70000, headers=dns_type, extensions=_sni()),  # oversized
            h2.post(url, content=b"\x12\x34\x81\x80" + b"\x00" * 8, headers=dns_type, extensions=_sni()),  # a response
        ]
        assert [r.status_code for r in cases] == [400] * len(cases)
        assert h2.get(url.replace("/dns-query", "/other"), extensions=_sni()).status_code == 404
        assert h2.put(url, content=good, headers=dns_type, extensions=_sni()).status_code == 405
        garbage = h2.post(url, content=b"\x00\x01" + b"\xff" * 40, headers=dns_type, extensions=_sni())
        assert garbage.status_code in (200, 400)  # a FORMERR reply or a refusal, never a hang
        ok = h2.post(url, content=good, headers=dns_type, extensions=_sni())
        assert ok.status_code == 200 and addresses(dns.message.from_wire(ok.content)) == ["192.0.2.10"]
    # raw garbage instead of a TLS handshake, then a normal query still works
    with socket.create_connection(("127.0.0.1", _ports(served)[1]), timeout=5) as raw:
        raw.sendall(b"GET /dns-query HTTP/1.1\r\n\r\n" * 10)
        raw.settimeout(5)
        with contextlib.suppress(TimeoutError, ConnectionError):
            raw.recv(100)
    assert addresses(_dot(served, pki, "example.org")) == ["192.0.2.10"]


def test_client_is_the_tls_peer(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, pki: Pki) -> None:
    """dns.allow_clients is checked against the TLS peer's address: loopback left out, DoT and DoH are refused."""
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          allow_clients: [192.0.2.0/24]
          tls_listen: ["127.0.0.1:0"]
          https_listen: ["127.0.0.1:0"]
        tls: {{cert: {pki.cert}, key: {pki.key}}}
    """)
    assert _dot(server, pki, "example.org").rcode() == dns.rcode.REFUSED
    q = dns.message.make_query("example.org", "A").to_wire()
    with _client(pki) as h2:
        r = h2.post(_doh_url(server), content=q, headers={"content-type": "application/dns-message"}, extensions=_sni())
    assert r.status_code == 200 and dns.message.from_wire(r.content).rcode() == dns.rcode.REFUSED


def test_renewed_certificate_served_after_reload(served: RunningFilterd, pki: Pki, tmp_path: Path) -> None:
    import asyncio

    renewed = make_pki(tmp_path / "renewed", (NAME,), label="renewed")
    pki.cert.write_bytes(renewed.cert.read_bytes())
    pki.key.write_bytes(renewed.key.read_bytes())
    assert served.app is not None
    outcome = asyncio.run_coroutine_threadsafe(served.app.reload(), served.loop).result(15)
    assert outcome["ok"]
    assert addresses(_dot(served, renewed, "example.org")) == ["192.0.2.10"]  # the new CA's certificate now
    with pytest.raises(ssl.SSLCertVerificationError):
        _dot(served, pki, "example.org")  # pki.ca (the old CA) no longer verifies it
    # a broken pair on reload: logged, and the running certificate stays
    pki.key.write_text("not a key")
    outcome = asyncio.run_coroutine_threadsafe(served.app.reload(), served.loop).result(15)
    time.sleep(0.1)
    assert addresses(_dot(served, renewed, "example.org")) == ["192.0.2.10"]


def test_connections_per_client_are_bounded(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, pki: Pki
) -> None:
    from filterd.transport.tcp import TcpLimits

    server = start_filterd(
        f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          https_listen: ["127.0.0.1:0"]
        tls: {{cert: {pki.cert}, key: {pki.key}}}
    """,
        tcp=TcpLimits(max_connections_per_client=2),
    )
    assert server.app is not None
    port = server.app.listening.doh[0].port
    context = client_context(pki.ca)
    held = [context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=NAME)]
    held.append(context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=NAME))
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            third = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=NAME)
            third.sendall(b"GET /dns-query HTTP/1.1\r\nhost: x\r\n\r\n")
            if not third.recv(100):
                raise ConnectionError("closed by filterd")
    finally:
        for sock in held:
            sock.close()


def test_ddr_designates_filterds_own_endpoints(served: RunningFilterd) -> None:
    """RFC 9462: a client that knows only filterd's address asks SVCB _dns.resolver.arpa and is pointed at
    filterd's own DoT and DoH (names on its certificate), never at an upstream's."""
    import dns.rdtypes.svcbbase as svcb

    dot, doh = _ports(served)
    for ask in (served.query, lambda n, t: served.query(n, t, tcp=True)):
        reply = ask("_dns.resolver.arpa", "SVCB")
        assert reply.rcode() == dns.rcode.NOERROR
        records = sorted((rd for rrset in reply.answer for rd in rrset), key=lambda rd: rd.priority)
        assert [(rd.priority, rd.target.to_text()) for rd in records] == [(1, f"{NAME}."), (2, f"{NAME}.")]
        dot_rd, doh_rd = records
        assert [a.decode() for a in dot_rd.params[svcb.ParamKey.ALPN].ids] == ["dot"]
        assert dot_rd.params[svcb.ParamKey.PORT].port == dot
        assert [a.decode() for a in doh_rd.params[svcb.ParamKey.ALPN].ids] == ["h2", "http/1.1"]
        assert doh_rd.params[svcb.ParamKey.PORT].port == doh
        assert doh_rd.params[svcb.ParamKey.DOHPATH].value == b"/dns-query{?dns}"
        assert [str(a) for a in dot_rd.params[svcb.ParamKey.IPV4HINT].addresses] == ["127.0.0.1"]
    by_name = served.query(f"_dns.{NAME}", "SVCB")
    assert len(by_name.answer[0]) == 2
    # other types and names under resolver.arpa keep bypass protection's NODATA
    other = served.query("_dns.resolver.arpa", "A")
    assert other.rcode() == dns.rcode.NOERROR and not other.answer and other.authority


def test_no_ddr_without_encrypted_listeners(filterd: RunningFilterd) -> None:
    reply = filterd.query("_dns.resolver.arpa", "SVCB")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer  # bypass protection's NODATA


def test_check_explains_ddr_when_it_answers(served: RunningFilterd, filterd: RunningFilterd) -> None:
    """`filterd check _dns.resolver.arpa` says what a client gets: filterd's own endpoints while it serves DoT/DoH
    (live and --offline), bypass protection's NODATA otherwise."""
    from filterd.app import offline_check

    assert served.app is not None and filterd.app is not None
    dot, doh = _ports(served)
    for result in (served.app.check("_dns.resolver.arpa"), served.app.check(f"_dns.{NAME}")):
        assert result["decision"] == "local", result
        assert "RFC 9462" in result["reason"] and NAME in result["reason"]
        assert f"DNS over TLS on port {dot}" in result["reason"] and f"DNS over HTTPS on port {doh}" in result["reason"]
    offline = offline_check(served.app.config, "_dns.resolver.arpa")
    assert offline["decision"] == "local" and NAME in offline["reason"], offline
    plain = filterd.app.check("_dns.resolver.arpa")
    assert plain["decision"] == "blocked" and "NODATA" in plain["reason"]


def test_connections_that_never_start_tls_are_bounded_per_client(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, pki: Pki
) -> None:
    """A client that opens connections and never sends a ClientHello holds at most its share of DoT and DoH, as on
    TCP; before, each was held for the whole handshake timeout, without bound (500 from one address)."""
    from filterd.transport.tcp import TcpLimits

    server = start_filterd(
        f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          tls_listen: ["127.0.0.1:0"]
          https_listen: ["127.0.0.1:0"]
        tls: {{cert: {pki.cert}, key: {pki.key}}}
    """,
        tcp=TcpLimits(max_connections_per_client=3, idle_timeout=5),
    )
    for port in _ports(server):
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(12)]
        try:
            time.sleep(0.5)
            assert sum(_still_open(sock) for sock in held) == 3, port
            # another client address is served meanwhile
            other = client_context(pki.ca).wrap_socket(
                socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0)),
                server_hostname=NAME,
            )
            other.close()
        finally:
            for sock in held:
                sock.close()
    # once they are gone, the client is served again
    assert addresses(_dot(server, pki, "example.org")) == ["192.0.2.10"]


def _still_open(sock: socket.socket) -> bool:
    """Not closed by filterd (which sends nothing before the client's hello)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize("alpn", ["http/1.1", "h2"])
def test_a_request_sent_a_byte_at_a_time_does_not_hold_a_doh_connection(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, pki: Pki, alpn: str
) -> None:
    """Slowloris: a request trickled in (a byte a second, each read well within hypercorn's read timeout) is closed
    once its connection has answered nothing for the idle timeout; before, such connections were held for ever and
    a few addresses' worth took every DoH connection slot."""
    from filterd.transport.tcp import TcpLimits

    server = start_filterd(
        f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          https_listen: ["127.0.0.1:0"]
        tls: {{cert: {pki.cert}, key: {pki.key}}}
        metrics: {{listen: "127.0.0.1:0"}}
    """,
        tcp=TcpLimits(idle_timeout=2),
    )
    port = _ports_doh(server)
    context = client_context(pki.ca)
    context.set_alpn_protocols([alpn])
    sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=NAME)
    if alpn == "h2":
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # preface, SETTINGS
        trickle = b"\x00\x40\x00\x01\x04\x00\x00\x00\x01" + b"\x00" * 64  # HEADERS of 16 KiB, never all sent
    else:
        trickle = b"GET /dns-query?dns=AAABAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaa"
    started = time.monotonic()
    closed_after = None
    try:
        for byte in trickle:
            sock.sendall(bytes([byte]))
            time.sleep(0.25)
            sock.settimeout(0.01)
            try:
                while sock.recv(4096):  # the h2 server's SETTINGS and ACK
                    pass
                closed_after = time.monotonic() - started
                break
            except (TimeoutError, ssl.SSLWantReadError):
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
    finally:
        sock.close()
    assert closed_after is not None and closed_after < 6, closed_after
    assert server.metric("filterd_tcp_closed_total", reason="stuck") == 1


def _ports_doh(server: RunningFilterd) -> int:
    assert server.app is not None
    return server.app.listening.doh[0].port


def test_dot_and_doh_are_rate_limited_like_udp(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, pki: Pki
) -> None:
    """A flood over DoT or DoH (blocked names: the packet cache's path; forwarded names: the stages') gets REFUSED
    past its network's burst, counted as `refused`; before, DoT and DoH were never rate limited."""
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          tls_listen: ["127.0.0.1:0"]
          https_listen: ["127.0.0.1:0"]
        tls: {{cert: {pki.cert}, key: {pki.key}}}
        ratelimit: {{qps: 1, burst: 6, exempt: []}}
        metrics: {{listen: "127.0.0.1:0"}}
    """)
    rcodes = [_dot(server, pki, name).rcode() for name in ["omegle.com", "example.org"] * 2]
    with _client(pki) as client:
        for name in ("omegle.com", "example.org") * 3:
            q = dns.message.make_query(name, "A")
            q.id = 0
            got = client.post(
                _doh_url(server),
                content=q.to_wire(),
                headers={"content-type": "application/dns-message"},
                extensions=_sni(),
            )
            assert got.status_code == 200
            rcodes.append(dns.message.from_wire(got.content).rcode())
    assert rcodes[:6] == [dns.rcode.NOERROR] * 6, rcodes  # the burst
    refused = rcodes.count(dns.rcode.REFUSED)
    assert refused >= 2 and set(rcodes[6:]) <= {dns.rcode.NOERROR, dns.rcode.REFUSED}, rcodes  # 1 token a second
    assert server.metric("filterd_ratelimited_total", action="refused") == refused
    assert server.metric("filterd_queries_total", protocol="https", decision="ratelimited", qtype="A") == refused
