#!/usr/bin/env python3
"""What DoT and DoH upstreams cost on a cache miss, against the plain path (issue 18: <= 1.5x once connected).

    python bench/encrypted.py [--queries N] [--concurrency C] [--reps R] [--python PY]

dnsmasq answers every name under `miss.bench.test` (so each query is a miss); dnsdist (Debian) serves it as plain
DNS, DoT and DoH on loopback with a certificate made here. filterd (`PY -m filterd serve`) forwards to one of them:
`plain` (dnsdist's UDP port), `tls://` or `https://`; the same dnsdist in every case, so only filterd's transport
differs. For each, N distinct names are sent over UDP with C outstanding at once (after a warm-up that opens the
connection); reported: queries/s, and filterd's CPU time per query (user+system from /proc), median of R runs.

`--clients` also times the DoH clients alone against dnsdist (N POSTs, C at once): httpx with HTTP/2, and
filterd's own (`filterd/upstreams/doh.py`, the h2 library under a thin asyncio shell), which it uses because of this;
and the h2 library's own work a query with no I/O at all (N streams), the floor of a DoH upstream built on it.

Bounded and local: every server listens on 127.0.0.1 on a free port, every query goes to loopback with a 2 s
timeout, every process started here is stopped by its PID. Needs dnsmasq and dnsdist (apt-get install
dnsmasq-base dnsdist) and the test extra (cryptography, dnspython).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import free_port  # noqa: E402
from tests.support_tls import Dnsdist, make_pki, wait_for_tls  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def query_packet(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


class _Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[None]] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        future = self.waiting.pop(struct.unpack_from("!H", data)[0], None)
        if future is not None and not future.done():
            future.set_result(None)


async def blast(port: int, names: list[str], concurrency: int) -> tuple[float, int]:
    """Send every name (C outstanding); (seconds, lost)."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(_Client, remote_addr=("127.0.0.1", port))
    lost = 0
    window = asyncio.Semaphore(concurrency)

    async def one(i: int, name: str) -> None:
        nonlocal lost
        async with window:
            qid = i % 65536
            future = loop.create_future()
            client.waiting[qid] = future
            transport.sendto(query_packet(qid, name))
            try:
                await asyncio.wait_for(future, 2.0)
            except TimeoutError:
                lost += 1
                client.waiting.pop(qid, None)

    started = time.perf_counter()
    await asyncio.gather(*(one(i, n) for i, n in enumerate(names)))
    seconds = time.perf_counter() - started
    transport.close()
    return seconds, lost


def start_filterd(python: str, work: Path, upstream: str, ca: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = work / "filterd.yaml"
    config.write_text(
        textwrap.dedent(f"""
        dns:
          listen: ["127.0.0.1:{port}"]
          upstreams: ["{upstream}"]
          upstream_ca_file: "{ca}"
          timeout: 2
        ratelimit: false
        cache: {{size: 10000}}
        lists: []
        state_dir: {work / "state"}
        """)
    )
    proc = subprocess.Popen(
        [python, "-m", "filterd", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 20
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"filterd exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            sock.sendto(query_packet(1, "warm.miss.bench.test"), ("127.0.0.1", port))
            try:
                sock.recv(512)
                return proc, port
            except TimeoutError:
                continue
    proc.terminate()
    raise RuntimeError("filterd did not answer")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure(args: argparse.Namespace, work: Path, dnsdist: Dnsdist, ca: Path) -> dict[str, tuple[float, float, int]]:
    upstreams = {
        "plain": f"127.0.0.1:{dnsdist.plain_port}",
        "tls": f"tls://dns.test:{dnsdist.dot_port}@127.0.0.1",
        "https": f"https://dns.test:{dnsdist.doh_port}/dns-query@127.0.0.1",
    }
    results: dict[str, tuple[float, float, int]] = {}
    for label, upstream in upstreams.items():
        proc, port = start_filterd(args.python, work, upstream, ca)
        try:
            rates, cpus, lost = [], [], 0
            asyncio.run(blast(port, [f"w{i}.{label}.miss.bench.test" for i in range(200)], args.concurrency))
            for rep in range(args.reps):
                names = [f"q{i}.r{rep}.{label}.miss.bench.test" for i in range(args.queries)]
                cpu0 = cpu_seconds(proc.pid)
                seconds, missing = asyncio.run(blast(port, names, args.concurrency))
                cpus.append((cpu_seconds(proc.pid) - cpu0) / len(names) * 1e6)
                rates.append(len(names) / seconds)
                lost += missing
            results[label] = (statistics.median(rates), statistics.median(cpus), lost)
        finally:
            stop(proc)
    return results


async def doh_clients(dnsdist: Dnsdist, ca: Path, queries: int, concurrency: int) -> dict[str, tuple[float, int]]:
    """queries/s and failed requests of each DoH client library, N POSTs with C at once (after a warm-up)."""
    import ssl

    import httpx

    url = f"https://127.0.0.1:{dnsdist.doh_port}/dns-query"
    context = ssl.create_default_context(cafile=str(ca))
    headers = {"content-type": "application/dns-message"}
    out: dict[str, tuple[float, int]] = {}

    async def run(post: Callable[[bytes], Awaitable[None]], label: str) -> None:
        window = asyncio.Semaphore(concurrency)
        failed = 0

        async def one(i: int) -> None:
            nonlocal failed
            async with window:
                try:
                    await asyncio.wait_for(post(query_packet(0, f"c{i}.{label}.miss.bench.test")), 5.0)
                except Exception:
                    failed += 1

        await asyncio.gather(*(one(i) for i in range(50)))  # connect and warm up
        failed = 0
        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(queries)))
        out[label] = (queries / (time.perf_counter() - started), failed)

    async with httpx.AsyncClient(http2=True, verify=context) as h2:

        async def post_h2(body: bytes) -> None:
            r = await h2.post(url, content=body, headers=headers, extensions={"sni_hostname": "dns.test"})
            r.raise_for_status()

        await run(post_h2, "httpx, HTTP/2")
    from filterd.config.upstream_url import parse_upstream_url
    from filterd.upstreams.doh import DohUpstream
    from filterd.upstreams.tls import client_context

    async def no_lookup(name: str) -> list[str]:
        raise OSError("pinned")

    upstream = parse_upstream_url(f"https://dns.test:{dnsdist.doh_port}/dns-query@127.0.0.1")
    own = DohUpstream(upstream, client_context(ca, alpn=("h2",)), no_lookup)

    async def post_own(body: bytes) -> None:
        await own.exchange(body, body[12:], 5.0)

    await run(post_own, "filterd's (h2), HTTP/2")
    await own.close()
    return out


def h2_alone(streams: int) -> tuple[float, float]:
    """The h2 library's own client-side work a DoH query, in us (send, receive), with no socket, TLS or event loop:
    filterd's request (its connection and headers) against an h2 server connection answering as dnsdist does.
    The floor of any DoH upstream built on h2."""
    import h2.config
    import h2.connection
    import h2.events
    import hpack

    from filterd.config.upstream_url import parse_upstream_url
    from filterd.upstreams.doh import client_connection, request_headers

    c = client_connection()
    s = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding=None))
    s.initiate_connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    headers = request_headers(parse_upstream_url("https://dns.test:8443/dns-query@127.0.0.1"))
    body, reply = query_packet(0, "q.miss.bench.test"), b"\x80" * 51
    answer = [  # dnsdist 1.x's reply headers
        (b":status", b"200"),
        (b"server", b"h2o/dnsdist"),
        (b"date", b"Tue, 01 Dec 2026 20:56:08 GMT"),
        (b"content-type", b"application/dns-message"),
        (b"cache-control", b"max-age=0"),
        (b"content-length", b"51"),
    ]
    sent = received = 0.0
    for _ in range(streams):
        started = time.perf_counter()
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [*headers, hpack.NeverIndexedHeaderTuple(b"content-length", b"%d" % len(body))])
        c.send_data(sid, body, end_stream=True)
        out = c.data_to_send()
        sent += time.perf_counter() - started
        for event in s.receive_data(out):
            if isinstance(event, h2.events.DataReceived):
                s.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        s.send_headers(sid, answer)
        s.send_data(sid, reply, end_stream=True)
        back = s.data_to_send()
        started = time.perf_counter()
        c.receive_data(back)  # (filterd acknowledges received data in bulk: doh.CONNECTION_WINDOW)
        update = c.data_to_send()
        received += time.perf_counter() - started
        if update:
            s.receive_data(update)
    return sent / streams * 1e6, received / streams * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--clients", action="store_true", help="also time the DoH client libraries alone")
    args = parser.parse_args()
    from tests.support import Dnsmasq

    with tempfile.TemporaryDirectory(prefix="filterd-bench-enc-") as tmp:
        work = Path(tmp)
        backend = Dnsmasq(work)
        backend.command = lambda base=backend.command: [*base(), "--address=/miss.bench.test/127.10.255.1"]  # type: ignore[method-assign,misc]
        backend.start()
        pki = make_pki(work / "pki", ("dns.test",))
        dnsdist = Dnsdist(work, pki, backend.address)
        try:
            dnsdist.start()
            wait_for_tls(dnsdist.dot_port)
            results = measure(args, work, dnsdist, pki.ca)
            clients = asyncio.run(doh_clients(dnsdist, pki.ca, args.queries, args.concurrency)) if args.clients else {}
        finally:
            dnsdist.stop()
            backend.stop()
    plain_cpu = results["plain"][1]
    print(f"misses through filterd: {args.queries} names x {args.reps} runs, {args.concurrency} outstanding (median)")
    print("| upstream | queries/s | filterd CPU us/query | x plain (CPU) | lost |")
    print("|---|---:|---:|---:|---:|")
    for label, (rate, cpu, lost) in results.items():
        print(f"| {label} | {rate:,.0f} | {cpu:.0f} | {cpu / plain_cpu:.2f} | {lost} |")
    if clients:
        print("\nDoH client libraries alone against dnsdist:")
        for label, (rate, failed) in clients.items():
            print(f"- {label}: {rate:,.0f} queries/s ({failed} failed)")
        sent, received = h2_alone(args.queries)
        print(f"- the h2 library's own work a query (no socket, TLS or loop): {sent + received:.0f} us")
        print(f"  ({sent:.0f} sending, {received:.0f} reading the reply; plain's whole miss: {plain_cpu:.0f} us)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
