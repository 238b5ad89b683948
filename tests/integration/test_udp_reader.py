"""DNS over UDP on stock asyncio (32-bit ARM and anywhere uvloop has no wheel): filterd reads its UDP sockets
itself (`SocketUdpServer`), a batch of datagrams a wake-up from one kept buffer, instead of asyncio's datagram
transport, which reads one datagram a wake-up into a new 256 KiB buffer."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.message

from tests.support import Dnsmasq, RunningFilterd, addresses, free_port, query, running, wait_for

#: `filterd serve` with the uvloop import blocked: what a machine without uvloop runs.
NO_UVLOOP = [sys.executable, "-c", "import sys; sys.modules['uvloop'] = None; from filterd.cli import main; main()"]


def _burst(port: int, names: list[str]) -> dict[int, dns.message.Message]:
    """Send every query at once from one socket, then read the replies: {query ID: reply}."""
    sent = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = i
            sent[i] = q
            sock.sendto(q.to_wire(), ("127.0.0.1", port))
        replies: dict[int, dns.message.Message] = {}
        deadline = time.monotonic() + 10
        while len(replies) < len(sent) and time.monotonic() < deadline:
            if select.select([sock], [], [], 0.5)[0]:
                reply = dns.message.from_wire(sock.recv(4096))
                assert reply.question == sent[reply.id].question
                replies[reply.id] = reply
    return replies


def test_a_burst_is_answered_in_full_on_stock_asyncio(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq
) -> None:
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
    """)
    assert server.app is not None and server.app._reading_udp  # (the test's loop is stock asyncio's)
    names = [f"n{i}.omegle.com" if i % 2 else "www.example.org" for i in range(400)]
    replies = _burst(server.port, names)
    assert len(replies) == 400
    assert all(addresses(replies[i]) == ["127.0.0.1"] for i in range(1, 400, 2))  # blocked, each a new name
    assert all(addresses(replies[i]) == ["192.0.2.11"] for i in range(0, 400, 2))  # forwarded, then cached


def test_filterd_serve_without_uvloop(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """The command a 32-bit Raspberry Pi runs: UDP and TCP answered, and it stops cleanly."""
    port = free_port()
    config = tmp_path / "filterd.yaml"
    config.write_text(f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{dnsmasq.address}']\n")
    with running([*NO_UVLOOP, "serve", "-c", str(config)], stderr=subprocess.PIPE) as proc:
        wait_for(lambda: _answers(port), "filterd without uvloop to answer", timeout=30)
        assert addresses(query("www.OmeTV.com", "A", port)) == ["127.0.0.1"]
        assert addresses(query("omegle.com", "A", port, tcp=True)) == ["127.0.0.1"]
        assert len(_burst(port, [f"x{i}.chatroulette.com" for i in range(200)])) == 200
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "ready (event loop: asyncio)" in err


def _answers(port: int) -> bool:
    try:
        return addresses(query("omegle.com", "A", port, timeout=0.5)) == ["127.0.0.1"]
    except Exception:
        return False
