"""Packets that try to break filterd: it answers what it can, drops what it must, and never falls over."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.opcode
import dns.rcode

from tests.support import FakeUpstream, RunningFilterd, addresses, free_port, query, udp_raw

Start = Callable[..., RunningFilterd]


def _server(start: Start, upstream: FakeUpstream) -> RunningFilterd:
    return start(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{upstream.address}"]
""")


def test_responses_are_dropped(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    response = dns.message.make_response(dns.message.make_query("example.org", "A")).to_wire()
    assert udp_raw(server.port, response, timeout=0.5) is None
    assert fake_upstream.received == []


def test_short_packets_are_dropped(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    assert udp_raw(server.port, b"\x12\x34\x01", timeout=0.5) is None


def test_unparseable_question_gets_formerr(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    packet = dns.message.make_query("example.org", "A").to_wire()[:-3]
    reply = udp_raw(server.port, packet)
    assert reply is not None and reply[:2] == packet[:2] and reply[3] & 0xF == dns.rcode.FORMERR
    assert reply[2] & 0x80  # QR


def test_two_questions_get_formerr(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    q = dns.message.make_query("example.org", "A").to_wire()
    packet = q[:4] + b"\x00\x02" + q[6:] + q[12:]
    reply = udp_raw(server.port, packet)
    assert reply is not None and reply[3] & 0xF == dns.rcode.FORMERR


def test_other_opcodes_get_notimp(start_filterd: Start, fake_upstream: FakeUpstream) -> None:
    server = _server(start_filterd, fake_upstream)
    for opcode in (dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.IQUERY):
        q = dns.message.make_query("example.org", "SOA")
        q.set_opcode(opcode)
        reply = udp_raw(server.port, q.to_wire())
        assert reply is not None and reply[3] & 0xF == dns.rcode.NOTIMP
    assert fake_upstream.received == []


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


MUTATED_PACKETS = 10_000
RSS_GROWTH_LIMIT_KIB = 40 * 1024  # the cache (10,000 entries) and its index fill up; beyond that is a leak


def test_ten_thousand_mutated_packets(tmp_path: Path, fake_upstream: FakeUpstream) -> None:
    """filterd (its own process) takes 10,000 mutated packets, still answers, and its memory stays bounded."""
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{fake_upstream.address}']\n  timeout: 0.5\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "filterd", "serve", "-c", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                query("example.org", "A", port, timeout=0.2)
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, "filterd did not start"
        before = _rss_kib(proc.pid)
        rng = random.Random(20261128)
        seeds = [
            dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
            for name in ("example.org", "omegle.com", "a.b.c.example.net")
            for rdtype in ("A", "AAAA", "TXT", "HTTPS")
            for edns in (False, 0)
        ]
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            for i in range(MUTATED_PACKETS):
                packet = bytearray(rng.choice(seeds))
                for _ in range(rng.randint(1, 4)):
                    op = rng.random()
                    pos = rng.randrange(len(packet)) if packet else 0
                    if op < 0.6 and packet:
                        packet[pos] = rng.randrange(256)
                    elif op < 0.8:
                        del packet[pos:]
                    else:
                        packet[pos:pos] = rng.randbytes(rng.randint(1, 12))
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(bytes(packet), ("127.0.0.1", port))
                if i % 200 == 199:
                    time.sleep(0.01)  # bounded pace: the kernel buffer, not filterd, would drop the rest
                assert time.monotonic() - started < 120, "the fuzz loop ran out of time"
        time.sleep(1.0)
        assert proc.poll() is None, "filterd died"
        reply = query("omegle.com", "A", port)
        assert addresses(reply) == ["127.0.0.1"]
        assert addresses(query("fresh.example.org", "A", port)) == ["192.0.2.1"]
        growth = _rss_kib(proc.pid) - before
        assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew by {growth} KiB"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in err, err[-2000:]
    assert os.WIFEXITED(0)
