"""DoT and DoH served with a certificate from the local CA (`tls: {mode: local-ca}`), as a school sets it up:
`filterd ca init`, then filterd makes a certificate for the configured names and addresses. Clients trust only the
generated CA (`state_dir/ca/ca.pem`): dnspython (DoT), httpx (DoH over HTTP/2) and kdig; one that does not trust it
fails verification; DDR names the first configured name; without the CA, filterd says how to make one."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from filterd.app import App, StartupError
from filterd.config.load import load_config
from filterd.tls import ca
from tests.support import Dnsmasq, RunningFilterd, addresses

NAME = "filter.school.test"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    ca.init(ca.ca_dir(state), "Test School filter", dt.datetime.now(dt.UTC))
    return state


def config_text(dnsmasq: Dnsmasq, state: Path, names: str = f"[{NAME}, dns.school.test]") -> str:
    return f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          tls_listen: ["127.0.0.1:0"]
          https_listen: ["127.0.0.1:0"]
        state_dir: {state}
        tls:
          mode: local-ca
          names: {names}
          addresses: [127.0.0.1]
        metrics:
          listen: 127.0.0.1:0
    """


@pytest.fixture
def served(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, state_dir: Path) -> RunningFilterd:
    return start_filterd(config_text(dnsmasq, state_dir))


def trusting(state: Path) -> ssl.SSLContext:
    """A client that trusts the local CA and nothing else."""
    return ssl.create_default_context(cafile=str(ca.ca_dir(state) / "ca.pem"))


def _ports(server: RunningFilterd) -> tuple[int, int]:
    assert server.app is not None
    return server.app.listening.dot[0].port, server.app.listening.doh[0].port


def _dot(server: RunningFilterd, context: ssl.SSLContext, name: str, hostname: str = NAME) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    port = _ports(server)[0]
    return dns.query.tls(q, "127.0.0.1", port=port, ssl_context=context, server_hostname=hostname, timeout=5)


def _served_cert(server: RunningFilterd, context: ssl.SSLContext, hostname: str = NAME) -> x509.Certificate:
    import socket

    with (
        socket.create_connection(("127.0.0.1", _ports(server)[0]), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=hostname) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_dot_and_doh_with_the_local_ca(served: RunningFilterd, state_dir: Path) -> None:
    context = trusting(state_dir)
    assert addresses(_dot(served, context, "example.org")) == ["192.0.2.10"]
    blocked = _dot(served, context, "video.omegle.com")
    assert blocked.rcode() == dns.rcode.NOERROR and addresses(blocked) != ["192.0.2.66"]
    assert addresses(_dot(served, context, "example.org", hostname="dns.school.test")) == ["192.0.2.10"]
    url = f"https://127.0.0.1:{_ports(served)[1]}/dns-query"
    q = dns.message.make_query("www.example.org", "A").to_wire()
    with httpx.Client(http2=True, verify=context, timeout=5) as h2:  # verified for 127.0.0.1: the SAN's address
        r = h2.post(url, content=q, headers={"content-type": "application/dns-message"})
        assert (r.status_code, r.http_version) == (200, "HTTP/2")
        assert addresses(dns.message.from_wire(r.content)) == ["192.0.2.11"]
        q = dns.message.make_query("omegle.com", "A").to_wire()
        r = h2.post(
            url, content=q, headers={"content-type": "application/dns-message"}, extensions={"sni_hostname": NAME}
        )
        assert r.status_code == 200 and addresses(dns.message.from_wire(r.content)) != ["192.0.2.66"]
    assert served.metric("filterd_queries_total", protocol="tls", decision="blocked") == 1
    assert served.metric("filterd_queries_total", protocol="https", decision="forwarded") == 1


def test_the_certificate_holds_exactly_the_configured_names(served: RunningFilterd, state_dir: Path) -> None:
    cert = _served_cert(served, trusting(state_dir))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME, "dns.school.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert len(list(san)) == 3
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=7, hours=1)
    assert "Test School filter" in cert.issuer.rfc4514_string()


def test_a_client_that_does_not_trust_the_ca_fails(served: RunningFilterd, tmp_path: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        _dot(served, ssl.create_default_context(), "example.org")  # the system store only
    other = tmp_path / "other"
    ca.init(ca.ca_dir(other), "Another filter", dt.datetime.now(dt.UTC))
    with pytest.raises(ssl.SSLCertVerificationError):
        _dot(served, trusting(other), "example.org")
    url = f"https://127.0.0.1:{_ports(served)[1]}/dns-query"
    with httpx.Client(verify=trusting(other), timeout=5) as client, pytest.raises(httpx.ConnectError):
        client.post(url, content=b"", headers={"content-type": "application/dns-message"})


def test_kdig_trusting_the_local_ca(served: RunningFilterd, state_dir: Path) -> None:
    kdig = shutil.which("kdig")
    if kdig is None:
        pytest.fail("kdig is not installed: `apt-get install knot-dnsutils` (scripts/test.sh does it)")
    cafile = ca.ca_dir(state_dir) / "ca.pem"
    for transport, port in zip(("+tls", "+https"), _ports(served), strict=True):
        args = [kdig, "@127.0.0.1", "-p", str(port), transport, f"+tls-ca={cafile}", f"+tls-hostname={NAME}"]
        out = subprocess.run([*args, "+short", "example.org", "A"], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["192.0.2.10"]


def test_ddr_names_the_first_configured_name(served: RunningFilterd) -> None:
    reply = served.query("_dns.resolver.arpa", "SVCB")
    assert reply.rcode() == dns.rcode.NOERROR
    targets = {rd.target.to_text() for rrset in reply.answer for rd in rrset}
    assert targets == {f"{NAME}."}


def test_a_reload_with_new_names_serves_a_new_certificate(
    served: RunningFilterd, state_dir: Path, dnsmasq: Dnsmasq
) -> None:
    import textwrap

    assert served.app is not None
    before = _served_cert(served, trusting(state_dir))
    served.config_path.write_text(textwrap.dedent(config_text(dnsmasq, state_dir, names="[doh.school.test]")))
    result = asyncio.run_coroutine_threadsafe(served.app.reload(), served.loop).result(30)
    assert result["ok"], result
    with pytest.raises(ssl.SSLCertVerificationError):  # the old name is on it no more
        _served_cert(served, trusting(state_dir))
    after = _served_cert(served, trusting(state_dir), "doh.school.test")
    assert after.serial_number != before.serial_number
    san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["doh.school.test"]
    reply = served.query("_dns.resolver.arpa", "SVCB")
    assert {rd.target.to_text() for rrset in reply.answer for rd in rrset} == {"doh.school.test."}


def test_the_timer_makes_a_new_certificate_before_the_old_one_ends(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, state_dir: Path
) -> None:
    """No reload, no restart: the running server's check (every 50 ms here) re-makes it once under 2 days are left."""
    import time

    from filterd.transport.certs import LocalCaCertificates

    now = [time.time()]
    server = start_filterd(config_text(dnsmasq, state_dir), clock=lambda: now[0], tls_check_interval=0.05)
    assert server.app is not None and server.app.encrypted_listeners is not None
    certificates = server.app.encrypted_listeners.certificates
    assert isinstance(certificates, LocalCaCertificates)
    first = certificates.cert
    assert first is not None
    time.sleep(0.3)
    assert certificates.cert is first  # 7 days left: kept
    now[0] += 5.5 * 86400
    deadline = time.monotonic() + 5
    while certificates.cert is first and time.monotonic() < deadline:
        time.sleep(0.05)
    second = certificates.cert
    assert second is not None and second is not first
    assert second.not_valid_after_utc > first.not_valid_after_utc
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    assert _served_cert(server, unverified).serial_number == second.serial_number  # what new connections get


def test_without_a_ca_filterd_says_how_to_make_one(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    path = tmp_path / "filterd.yaml"
    path.write_text(config_text(dnsmasq, tmp_path / "empty-state").replace("\n        ", "\n"))
    app = App(load_config(path))
    with pytest.raises(StartupError, match=r"^tls: no local CA in .*: create one with `filterd ca init`"):
        asyncio.run(app.start())
