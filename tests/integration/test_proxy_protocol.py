"""`dns.proxy_protocol` on a running filterd: a listed proxy (127.0.0.1) sends queries with a PROXY v2 header naming
a client (127.0.0.50 is in the group `kids`), over UDP and TCP; the group, the query log and the metrics see that
client. A header from anyone else, or a proxy's query without one, gets no answer and is counted. dnsdist itself
in front of two filterd is tests/deploy/test_dnsdist.py."""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import pytest

from filterd.transport import proxyproto
from tests.support import Dnsmasq, RunningFilterd, addresses

KIDS = "127.0.0.50"  # in the group kids: www.example.org blocked
OTHER = "127.0.0.60"  # in no group: www.example.org forwarded (dnsmasq: 192.0.2.11)


@pytest.fixture
def server(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path) -> RunningFilterd:
    return start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          proxy_protocol: [127.0.0.1/32]
        metrics:
          listen: 127.0.0.1:0
        state_dir: {tmp_path / "state"}
        querylog:
          jsonl: {tmp_path / "log.jsonl"}
        groups:
          - name: kids
            clients: [{KIDS}]
            block: [www.example.org]
    """)


def udp(port: int, packet: bytes, source: str = "127.0.0.1") -> dns.message.Message | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(1.0)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return dns.message.from_wire(sock.recv(65535))
        except TimeoutError:
            return None


def tcp(port: int, stream: bytes, source: str = "127.0.0.1") -> dns.message.Message | None:
    with socket.create_connection(("127.0.0.1", port), timeout=2.0, source_address=(source, 0)) as sock:
        sock.sendall(stream)
        try:
            length = struct.unpack("!H", sock.recv(2, socket.MSG_WAITALL))[0]
        except (TimeoutError, struct.error, ConnectionError):
            return None
        return dns.message.from_wire(sock.recv(length, socket.MSG_WAITALL))


def wire(name: str) -> bytes:
    return dns.message.make_query(name, "A", use_edns=0).to_wire()


def framed(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def test_the_header_names_the_client_for_groups_and_the_query_log(server: RunningFilterd, tmp_path: Path) -> None:
    port = server.port
    kids = udp(port, proxyproto.build(KIDS, 40000, "127.0.0.1", port) + wire("www.example.org"))
    other = udp(port, proxyproto.build(OTHER, 40001, "127.0.0.1", port) + wire("www.example.org"))
    assert kids is not None and other is not None
    assert addresses(kids) == ["127.0.0.1"]  # blocked for the group: the sinkhole
    assert addresses(other) == ["192.0.2.11"]  # forwarded
    header = proxyproto.build(KIDS, 40002, "127.0.0.1", port, stream=True)
    over_tcp = tcp(port, header + framed(wire("www.example.org")) + framed(wire("example.org")))
    assert over_tcp is not None and addresses(over_tcp) == ["127.0.0.1"]
    for protocol in ("udp", "tcp"):
        assert server.metric("filterd_queries_total", protocol=protocol, group="kids", decision="blocked") == 1
    assert server.metric("filterd_proxy_protocol_total", result="accepted") == 3
    log = tmp_path / "log.jsonl"
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(rows) < 3:
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        time.sleep(0.1)
    seen = {(row["client"], row["name"], row["decision"]) for row in rows}
    assert (KIDS, "www.example.org", "blocked") in seen
    assert (OTHER, "www.example.org", "forwarded") in seen
    assert not any(row["client"] == "127.0.0.1" for row in rows)  # never the proxy's own address


def test_a_health_check_with_a_local_header_is_answered_and_not_logged(server: RunningFilterd, tmp_path: Path) -> None:
    """dnsdist's health check (a LOCAL header, every second): answered as the proxy's own query, counted, but no
    row in the query log (86,400 a day per instance, burying the devices' rows) and no safeguarding attempt."""
    port = server.port
    for _ in range(2):  # the second from the packet cache
        reply = udp(port, proxyproto.build(None) + wire("localhost"))
        assert reply is not None and addresses(reply) == ["127.0.0.1"]
    reply = udp(port, proxyproto.build(None) + wire("example.org"))
    assert reply is not None and addresses(reply) == ["192.0.2.10"]
    over_tcp = tcp(port, proxyproto.build(None) + framed(wire("localhost")))
    assert over_tcp is not None and addresses(over_tcp) == ["127.0.0.1"]
    assert server.metric("filterd_queries_total", protocol="udp", decision="local") == 2
    kids = udp(port, proxyproto.build(KIDS, 40000, "127.0.0.1", port) + wire("www.example.org"))
    assert kids is not None  # a client's query, written after the health checks
    log = tmp_path / "log.jsonl"
    rows: list[dict[str, object]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not rows:
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        time.sleep(0.1)
    assert [(row["client"], row["name"]) for row in rows] == [(KIDS, "www.example.org")]


def test_a_proxys_query_without_a_header_is_dropped_and_counted(server: RunningFilterd) -> None:
    assert udp(server.port, wire("example.org")) is None
    assert tcp(server.port, framed(wire("example.org"))) is None
    assert server.metric("filterd_proxy_protocol_total", result="invalid") == 2


def test_a_header_from_anyone_else_is_dropped_and_counted(server: RunningFilterd) -> None:
    port = server.port
    spoofed = proxyproto.build(KIDS, 1, "127.0.0.1", port)
    assert udp(port, spoofed + wire("example.org"), source="127.0.0.2") is None
    stream = proxyproto.build(KIDS, 1, "127.0.0.1", port, stream=True)
    assert tcp(port, stream + framed(wire("example.org")), source="127.0.0.2") is None
    assert server.metric("filterd_proxy_protocol_total", result="untrusted") == 2
    # the same address, asking as itself, is answered as usual, over UDP and TCP
    plain = udp(port, wire("example.org"), source="127.0.0.2")
    assert plain is not None and addresses(plain) == ["192.0.2.10"]
    plain = tcp(port, framed(wire("example.org")), source="127.0.0.2")
    assert plain is not None and addresses(plain) == ["192.0.2.10"]
