"""The PROXY protocol v2 header (`transport/proxyproto.py`) and who may send it (`transport/proxy.py`): headers
written out byte by byte from the specification, every truncation, fuzzing, and the config key."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.config.load import parse_config
from filterd.errors import ConfigError
from filterd.transport import proxyproto
from filterd.transport.proxy import ProxyGate

SIG = bytes.fromhex("0d0a0d0a000d0a515549540a")  # "\r\n\r\n\0\r\nQUIT\n", section 2.2
DNS = bytes.fromhex("abcd01000001000000000000") + b"\x07example\x03org\x00\x00\x01\x00\x01"

# PROXY, INET over DGRAM, 12 bytes: 192.0.2.7:5353 -> 198.51.100.1:53 (what dnsdist sends before a UDP query)
V4_UDP = SIG + bytes([0x21, 0x12, 0, 12]) + bytes([192, 0, 2, 7, 198, 51, 100, 1]) + (5353).to_bytes(2) + b"\x00\x35"
# PROXY, INET6 over STREAM, 36 bytes plus a 7-byte TLV (type 0x04 NOOP, length 4): 2001:db8::9 -> ::1
V6_TCP = (
    SIG
    + bytes([0x21, 0x21, 0, 43])
    + ipaddress.IPv6Address("2001:db8::9").packed
    + ipaddress.IPv6Address("::1").packed
    + (40000).to_bytes(2)
    + (53).to_bytes(2)
    + bytes([0x04, 0, 4, 1, 2, 3, 4])
)
LOCAL = SIG + bytes([0x20, 0x00, 0, 0])


@pytest.mark.parametrize(
    ("header", "source", "port", "length"),
    [
        (V4_UDP, "192.0.2.7", 5353, 28),
        (V6_TCP, "2001:db8::9", 40000, 59),
        (LOCAL, None, 0, 16),
        (SIG + bytes([0x21, 0x00, 0, 0]), None, 0, 16),  # PROXY with UNSPEC: no address, use the peer's
        (SIG + bytes([0x21, 0x31, 0, 216]) + bytes(216), None, 0, 232),  # AF_UNIX: no IP address either
    ],
)
def test_headers_from_the_specification(header: bytes, source: str | None, port: int, length: int) -> None:
    parsed = proxyproto.parse(header + DNS)
    assert (parsed.source, parsed.source_port, parsed.length) == (source, port, length)
    assert (header + DNS)[parsed.length :] == DNS


def test_destination_is_read_too() -> None:
    parsed = proxyproto.parse(V4_UDP)
    assert (parsed.destination, parsed.destination_port) == ("198.51.100.1", 53)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "shorter than the 16-byte header"),
        (DNS, "no PROXY v2 signature"),
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 5353 53\r\n", "no PROXY v2 signature"),  # version 1 (text)
        (SIG + bytes([0x11, 0x12, 0, 12]) + bytes(12), "version 1, not 2"),
        (SIG + bytes([0x22, 0x12, 0, 12]) + bytes(12), "unknown command 2"),
        (SIG + bytes([0x21, 0x13, 0, 12]) + bytes(12), "unknown transport 3"),
        (SIG + bytes([0x21, 0x42, 0, 12]) + bytes(12), "unknown address family 4"),
        (SIG + bytes([0x21, 0x12, 0, 8]) + bytes(8), "8 bytes cannot hold the addresses (12 needed)"),
        (SIG + bytes([0x21, 0x22, 0, 12]) + bytes(12), "12 bytes cannot hold the addresses (36 needed)"),
        (V4_UDP[:-1], "the header says 12 bytes follow, 11 do"),
        (SIG + bytes([0x21, 0x12, 0xFF, 0xFF]) + bytes(100), "the header says 65535 bytes follow, 100 do"),
    ],
)
def test_bad_headers_say_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(proxyproto.ProxyError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        proxyproto.parse(data)


def test_every_truncation_of_a_valid_header_is_refused() -> None:
    for header in (V4_UDP, V6_TCP):
        for cut in range(len(header)):
            with pytest.raises(proxyproto.ProxyError):
                proxyproto.parse(header[:cut])


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 255), st.integers(0, 255), st.integers(0, 0xFFFF))
def test_fuzz_never_raises_anything_else_and_never_reads_past_the_data(
    tail: bytes, command: int, family: int, length: int
) -> None:
    for data in (tail, SIG + bytes([command, family]) + length.to_bytes(2) + tail):
        try:
            header = proxyproto.parse(data)
        except proxyproto.ProxyError:
            continue
        assert proxyproto.FIXED <= header.length <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.ip_addresses(), st.integers(0, 0xFFFF), st.booleans(), st.binary(max_size=40))
def test_build_and_parse_agree(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, stream: bool, tlvs: bytes
) -> None:
    header = proxyproto.build(str(address), port, stream=stream, tlvs=tlvs)
    parsed = proxyproto.parse(header + DNS)
    assert (parsed.source, parsed.source_port, parsed.length) == (str(address), port, len(header))


def test_the_builder_writes_what_the_specification_says() -> None:
    assert proxyproto.build("192.0.2.7", 5353, "198.51.100.1", 53) == V4_UDP
    assert proxyproto.build(None) == LOCAL


# --- the gate ---------------------------------------------------------------------------------------


def gate() -> ProxyGate:
    return ProxyGate((ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("fd00::/64")))


def test_a_proxys_packet_names_the_client() -> None:
    g = gate()
    assert g.unwrap(V4_UDP + DNS, "127.0.0.1") == (DNS, "192.0.2.7", True)
    assert g.unwrap(V6_TCP + DNS, "fd00::5") == (DNS, "2001:db8::9", True)
    assert g.unwrap(V4_UDP + DNS, "::ffff:127.0.0.1") == (DNS, "192.0.2.7", True)  # a dual-stack socket's peer
    # a health check: the proxy itself, and no client's query (kept out of the query log)
    assert g.unwrap(LOCAL + DNS, "127.0.0.1") == (DNS, "127.0.0.1", False)
    assert g.counts == {"accepted": 4, "untrusted": 0, "invalid": 0}


def test_a_proxys_packet_without_a_header_is_dropped_and_counted() -> None:
    g = gate()
    assert g.unwrap(DNS, "127.0.0.1") is None
    assert g.unwrap(V4_UDP[:-2], "127.0.0.1") is None
    assert g.counts == {"accepted": 0, "untrusted": 0, "invalid": 2}


def test_a_header_from_anyone_else_is_dropped_and_counted() -> None:
    g = gate()
    assert g.unwrap(V4_UDP + DNS, "127.0.0.2") is None
    assert g.unwrap(V4_UDP + DNS, "192.168.1.20") is None
    assert g.unwrap(DNS, "127.0.0.2") == (DNS, "127.0.0.2", True)  # an ordinary client is untouched
    assert g.counts == {"accepted": 0, "untrusted": 2, "invalid": 0}


def test_off_by_default_and_a_new_list_takes_effect() -> None:
    g = ProxyGate()
    assert not g.active
    g.configure((ipaddress.ip_network("10.0.0.5/32"),))
    assert g.active and g.from_proxy("10.0.0.5") and not g.from_proxy("10.0.0.6")
    g.configure(())
    assert not g.active and not g.from_proxy("10.0.0.5")


def test_the_config_key() -> None:
    cfg = parse_config("dns:\n  listen: [127.0.0.1]\n  proxy_protocol: [10.0.0.5, 'fd00::/64']\n", "f.yaml")
    assert cfg.dns.proxy_protocol == (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/64"))
    assert parse_config("dns:\n  listen: [127.0.0.1]\n", "f.yaml").dns.proxy_protocol == ()
    with pytest.raises(ConfigError) as info:
        parse_config("dns:\n  listen: [127.0.0.1]\n  proxy_protocol: [dnsdist]\n", "f.yaml")
    assert info.value.problems == [
        "f.yaml:3: dns.proxy_protocol[0]: 'dnsdist' is not an IP network in CIDR form (e.g. 10.0.0.5/32)"
    ]


@pytest.mark.parametrize("wide", ["0.0.0.0/0", "10.0.0.0/8", "::/0"])
def test_a_proxy_network_that_lets_anyone_choose_its_address_is_refused(wide: str) -> None:
    text = f"dns:\n  listen: ['127.0.0.1:5353']\n  proxy_protocol: ['{wide}']\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    assert err.value.problems == [
        f"c.yaml:3: dns.proxy_protocol[0]: {ipaddress.ip_network(wide)} would let any client there choose the "
        "address it is seen as: list the proxies' own addresses (e.g. 10.0.0.5/32)"
    ]
