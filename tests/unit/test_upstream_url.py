"""tls:// and https:// upstreams in the config: what they parse to, and the FILE:LINE errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from filterd.config.load import parse_config
from filterd.config.schema import EncryptedUpstream
from filterd.config.upstream_url import parse_upstream_url
from filterd.errors import ConfigError
from tests.support_tls import make_pki


@pytest.mark.parametrize(
    ("text", "host", "port", "scheme", "name", "path", "label"),
    [
        ("tls://dns.quad9.net@9.9.9.9", "9.9.9.9", 853, "tls", "dns.quad9.net", "", "tls://dns.quad9.net@9.9.9.9"),
        ("tls://dns.quad9.net", "", 853, "tls", "dns.quad9.net", "", "tls://dns.quad9.net"),
        ("TLS://Dns.Example:8853", "", 8853, "tls", "dns.example", "", "tls://dns.example:8853"),
        ("tls://1.1.1.1", "1.1.1.1", 853, "tls", "1.1.1.1", "", "tls://1.1.1.1"),
        (
            "tls://dns.example@[2001:db8::1]",
            "2001:db8::1",
            853,
            "tls",
            "dns.example",
            "",
            "tls://dns.example@2001:db8::1",
        ),
        (
            "https://dns.quad9.net/dns-query@9.9.9.9",
            "9.9.9.9",
            443,
            "https",
            "dns.quad9.net",
            "/dns-query",
            "https://dns.quad9.net/dns-query@9.9.9.9",
        ),
        ("https://doh.example:8443/q", "", 8443, "https", "doh.example", "/q", "https://doh.example:8443/q"),
    ],
)
def test_parses(text: str, host: str, port: int, scheme: str, name: str, path: str, label: str) -> None:
    up = parse_upstream_url(text)
    assert (up.host, up.port, up.scheme, up.server_name, up.path) == (host, port, scheme, name, path)
    assert str(up) == label  # the metrics' `upstream` label


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("tls://", "needs a server name"),
        ("tls://dns.example/dns-query", "a tls:// upstream has no path"),
        ("https://dns.example", "needs its path"),
        ("https://dns.example/", "needs its path"),
        ("https://dns.example/q?x=1", "not a plain URL path"),
        ("tls://dns.example@dns.other", "after @ is not an IP address"),
        ("tls://dns.example:0", "is not a number in 1-65535"),
        ("tls://dns.example:99999", "is not a number in 1-65535"),
        ("tls://bad_name!", "is not a host name"),
    ],
)
def test_rejects(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_upstream_url(text)


def test_config_errors_name_file_line_and_key(tmp_path: Path) -> None:
    text = """dns:
  listen: [127.0.0.1]
  upstreams:
    - 192.0.2.1
    - quic://dns.example
    - https://dns.example
  tls_listen: [127.0.0.1]
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "filterd.yaml")
    assert info.value.problems == [
        "filterd.yaml:5: dns.upstreams[1]: 'quic://dns.example': the scheme must be tls:// or https:// "
        "(or none: host[:port])",
        "filterd.yaml:6: dns.upstreams[2]: 'https://dns.example': an https:// upstream needs its path, usually "
        "/dns-query (e.g. https://dns.quad9.net/dns-query@9.9.9.9)",
    ]


NEEDS = "needs a certificate: set tls.cert and tls.key (PEM files), or tls.mode: local-ca and tls.names"


def test_served_encrypted_dns_needs_a_certificate(tmp_path: Path) -> None:
    text = "dns:\n  listen: [127.0.0.1]\n  upstreams: [192.0.2.1]\n  tls_listen: [127.0.0.1]\n"
    text += "  https_listen: [127.0.0.1:8443]\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert info.value.problems == [
        f"f.yaml:4: dns.tls_listen: {NEEDS}",
        f"f.yaml:5: dns.https_listen: {NEEDS}",
    ]
    missing = text + f"tls:\n  cert: {tmp_path / 'cert.pem'}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(missing, "f.yaml")
    assert info.value.problems == [
        f"f.yaml:7: tls.cert: no such file: {tmp_path / 'cert.pem'}",
        "f.yaml:7: tls.key: is required (a PEM file), e.g. /etc/filterd/tls/key.pem",
    ]


def test_full_encrypted_config(tmp_path: Path) -> None:
    make_pki(tmp_path)  # ca.pem, cert.pem, key.pem
    config = parse_config(
        """dns:
  listen: [127.0.0.1]
  upstreams: ["tls://dns.quad9.net@9.9.9.9", "https://dns.google/dns-query"]
  bootstrap: [192.0.2.53]
  upstream_ca_file: ca.pem
  tls_listen: [127.0.0.1]
  https_listen: ["[::1]"]
tls: {cert: cert.pem, key: key.pem}
""",
        "f.yaml",
        base_dir=tmp_path,
    )
    assert all(isinstance(u, EncryptedUpstream) for u in config.dns.upstreams)
    assert [str(e) for e in config.dns.bootstrap] == ["192.0.2.53:53"]
    assert config.dns.upstream_ca_file == tmp_path / "ca.pem"
    assert [str(e) for e in config.dns.tls_listen] == ["127.0.0.1:853"]
    assert [str(e) for e in config.dns.https_listen] == ["[::1]:443"]
    assert config.tls is not None and config.tls.key == tmp_path / "key.pem"


def test_bootstrap_is_never_filterd_itself() -> None:
    text = "dns:\n  listen: [127.0.0.1]\n  upstreams: [tls://dns.example]\n  bootstrap: [127.0.0.1, 192.0.2.53]\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert info.value.problems == ["f.yaml:4: dns.bootstrap: 127.0.0.1:53 is filterd itself: list plain resolvers"]


def test_an_unpinned_name_needs_a_plain_resolver(tmp_path: Path) -> None:
    from filterd.app import StartupError, resolve_upstreams

    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")  # only filterd itself
    lone = parse_config("dns:\n  listen: [127.0.0.1]\n  upstreams: [tls://dns.example]\n", "f.yaml")
    with pytest.raises(StartupError, match=r"set dns.bootstrap, e.g. \[9.9.9.9\], or pin the address"):
        resolve_upstreams(lone, resolv)
    pinned = parse_config("dns:\n  listen: [127.0.0.1]\n  upstreams: [tls://dns.example@192.0.2.1]\n", "f.yaml")
    assert [str(u) for u in resolve_upstreams(pinned, resolv)] == ["tls://dns.example@192.0.2.1"]
    resolv.write_text("nameserver 192.0.2.53\n")
    assert resolve_upstreams(lone, resolv) == lone.dns.upstreams  # resolv.conf's resolver is the bootstrap


def test_doh_and_dot_may_not_share_a_port_with_another_listener(tmp_path: Path) -> None:
    """The HTTPS block page's 443 and DoH's default 443 on one address (or a wildcard) is a config error naming both
    keys, not a start that fails with the port 'held by filterd'."""
    make_pki(tmp_path)
    text = """dns:
  listen: [10.0.0.53]
  tls_listen: [10.0.0.53]
  https_listen: [10.0.0.53, "10.0.0.53:853", "[::1]:8443"]
tls: {cert: cert.pem, key: key.pem}
metrics: {listen: "[::]:8443"}
blockpage:
  listen: [10.0.0.53]
  https: {mode: local-ca, listen: ["0.0.0.0:443"]}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", base_dir=tmp_path)
    problems = info.value.problems
    assert problems[:2] == [
        "f.yaml:4: dns.https_listen: 10.0.0.53:853 is also dns.tls_listen: one port, one listener",
        "f.yaml:4: dns.https_listen: [::1]:8443 is also metrics.listen: one port, one listener",
    ]
    assert len(problems) == 3 and "blockpage.https.listen" in problems[2] and "overlaps dns.https_listen" in problems[2]
    fine = text.replace('[10.0.0.53, "10.0.0.53:853", "[::1]:8443"]', '["10.0.0.53:8443"]')
    assert [str(e) for e in parse_config(fine, "f.yaml", base_dir=tmp_path).dns.https_listen] == ["10.0.0.53:8443"]


def test_config_check_loads_the_tls_pair(tmp_path: Path) -> None:
    """`filterd config check` before `systemctl reload`: a renewed certificate that is not the key's, or files given
    the wrong way round, are FILE:LINE errors, not an `ok` and a reload that keeps the old pair."""
    pki = make_pki(tmp_path / "a")
    other = make_pki(tmp_path / "b")
    text = (
        "dns:\n  listen: [127.0.0.1]\n  upstreams: [192.0.2.1]\n  tls_listen: [127.0.0.1]\ntls: {{cert: {}, key: {}}}\n"
    )
    assert parse_config(text.format(pki.cert, pki.key), "f.yaml").tls is not None
    for cert, key, why in ((other.cert, pki.key, "KEY_VALUES_MISMATCH"), (pki.key, pki.cert, "PEM")):
        with pytest.raises(ConfigError) as info:
            parse_config(text.format(cert, key), "f.yaml")
        [problem] = info.value.problems
        assert problem.startswith(f"f.yaml:5: tls.cert: {cert} and {key} are not a certificate and its key: ")
        assert why in problem
    assert parse_config(text.format(other.cert, pki.key), "f.yaml", check_files=False).tls is not None  # the server


def test_a_missing_certificate_is_named_at_start(tmp_path: Path) -> None:
    """The server loads the config without checking files; OpenSSL's error names none (it said "cannot read None")."""
    from filterd.config.schema import TlsConfig
    from filterd.transport.certs import CertificateError, ServerCertificates

    pki = make_pki(tmp_path)
    with pytest.raises(CertificateError, match=f"tls: cannot read {tmp_path / 'gone.pem'}: no such file"):
        ServerCertificates(TlsConfig(cert=tmp_path / "gone.pem", key=pki.key))
    with pytest.raises(CertificateError, match=f"tls: cannot read {tmp_path / 'gone.key'}: no such file"):
        ServerCertificates(TlsConfig(cert=pki.cert, key=tmp_path / "gone.key"))
