"""Test helpers: real servers on loopback, and a client that asks them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import strategies as st

from filterd.app import App
from filterd.config.load import load_config

T = TypeVar("T")

#: Records dnsmasq serves: (dnsmasq option, value).
DNSMASQ_RECORDS = [
    ("host-record", "example.org,192.0.2.10,2001:db8::10"),
    ("host-record", "www.example.org,192.0.2.11"),
    ("host-record", "video.omegle.com,192.0.2.66"),
    ("host-record", "safe.example.net,192.0.2.20"),
    ("host-record", "lists.example.org,127.0.0.1"),  # a list server on loopback, for subscriptions
    ("cname", "mirror.example.org,lists.example.org"),
    ("cname", "alias.example.org,video.omegle.com"),
    ("cname", "okalias.example.org,www.example.org"),
    ("txt-record", "example.org,hello from dnsmasq"),
    ("mx-host", "example.org,mail.example.org,10"),
    ("local", "/example.org/"),
    ("local", "/example.net/"),
] + [("txt-record", f"big.example.org,{'x' * 200} {i}") for i in range(8)]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


class Dnsmasq:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                query("example.org", "A", self.port, timeout=0.2)
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("dnsmasq did not start")

    def command(self) -> list[str]:
        """dnsmasq's command line: foreground, on 127.0.0.1:port, serving DNSMASQ_RECORDS and nothing else."""
        binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        args = [
            binary,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            f"--port={self.port}",
            "--pid-file",
            "--no-dhcp-interface=lo",
            "--log-facility=-",
        ]
        if os.geteuid() == 0:
            args.append("--user=root")
        args += [f"--{opt}={value}" for opt, value in DNSMASQ_RECORDS]
        return args

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(5)


def query(
    name: str,
    rdtype: str = "A",
    port: int = 53,
    *,
    host: str = "127.0.0.1",
    tcp: bool = False,
    timeout: float = 3.0,
    edns: bool = True,
    **kwargs: object,
) -> dns.message.Message:
    """Ask a server one question with dnspython (EDNS on by default, as modern stub resolvers do)."""
    q = dns.message.make_query(name, rdtype, use_edns=0 if edns else False, **kwargs)  # type: ignore[arg-type]
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout)
    return dns.query.udp(q, host, port=port, timeout=timeout)


def udp_raw(port: int, packet: bytes, timeout: float = 1.0) -> bytes | None:
    """Send raw bytes to 127.0.0.1:port over UDP; the reply's bytes, or None when none came in time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def mutated(data: st.DataObject, packet: bytes, rounds: st.SearchStrategy[int]) -> bytes:
    """A packet with `rounds` random edits drawn from `data`: a byte flipped, the rest cut off, or bytes inserted."""
    out = bytearray(packet)
    for _ in range(data.draw(rounds)):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        position = data.draw(st.integers(0, max(len(out) - 1, 0)))
        if op == "flip" and out:
            out[position] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del out[position:]
        else:
            out[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    return bytes(out)


@contextlib.contextmanager
def running(args: list[str], **popen: Any) -> Iterator[subprocess.Popen[str]]:
    """A process (text mode), killed on the way out if it is still running: a failed assertion leaves nothing."""
    proc: subprocess.Popen[str] = subprocess.Popen(args, text=True, **popen)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def wait_for(check: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Poll `check` until it is true; fail the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(int(o.code), o.text or "") for o in msg.options if o.otype == 15]  # type: ignore[attr-defined]


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(
        rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
    )


class RunningFilterd:
    """filterd's App on its own event loop in a thread, from a config file."""

    def __init__(self, config_path: Path, **app_options: Any) -> None:
        self.config_path = config_path
        self.app_options = app_options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app: App | None = None

    def start(self) -> None:
        self.thread.start()
        self.app = App(load_config(self.config_path), **self.app_options)
        try:
            asyncio.run_coroutine_threadsafe(self.app.start(), self.loop).result(15)
        except BaseException:
            self.app = None  # (a failed start stopped itself: nothing is listening)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            raise
        # As `filterd serve` does once started (cli.py): what exists now is kept out of the collector's way. Here
        # that is also every object the earlier tests left in this process (hundreds of MB in the whole suite),
        # whose full collection otherwise stalls the server's loop for 0.2-0.4 s at random. (No gc.collect()
        # first, as serve does: in this heap it cost the suite a minute over its few hundred servers.)
        gc.freeze()

    def stop(self) -> None:
        gc.unfreeze()  # (collectable again, once the server is gone)
        if self.app is not None:
            asyncio.run_coroutine_threadsafe(self.app.stop(), self.loop).result(15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.app.listening.dns[0].port

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop (e.g. `app.reload()`) and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """Call a function on the server's loop (the app's methods are not thread-safe) and wait for its result."""

        async def call() -> T:
            return function(*args)

        return self.run(call())

    @property
    def blockpage_port(self) -> int:
        """The port of the first block page listener (blockpage.listen with port 0 in tests)."""
        assert self.app is not None and self.app.listening.blockpage
        return self.app.listening.blockpage[0].port

    def query(self, name: str, rdtype: str = "A", **kwargs: object) -> dns.message.Message:
        return query(name, rdtype, self.port, **kwargs)  # type: ignore[arg-type]

    def metrics_text(self) -> str:
        assert self.app is not None and self.app.listening.metrics is not None
        url = f"http://127.0.0.1:{self.app.listening.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample on /metrics, 0 when absent."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


Behaviour = Callable[[dns.message.Message], list[tuple[float, bytes]]]


class FakeUpstream:
    """An in-process DNS server (UDP and TCP on one port) for injecting faults. `behaviour(query)` returns
    (delay, packet) pairs to send back over UDP; the default answers A 192.0.2.1 at once. `tcp_behaviour`
    does the same over TCP (default: the same as UDP). Every query received is recorded."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.behaviour: Behaviour = self.answer
        self.tcp_behaviour: Behaviour | None = None
        #: names of the queries received (lower-case, no trailing dot), UDP and TCP
        self.received: list[str] = []
        #: the queries themselves, and (query ID, source port) of each UDP one
        self.queries: list[dns.message.Message] = []
        self.sources: list[tuple[int, int]] = []
        self.tcp_queries = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    @staticmethod
    def answer(q: dns.message.Message, address: str = "192.0.2.1", ttl: int = 60) -> list[tuple[float, bytes]]:
        r = dns.message.make_response(q)
        if q.question[0].rdtype == dns.rdatatype.A:
            r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A", address))
        return [(0.0, r.to_wire())]

    @staticmethod
    def rcode(q: dns.message.Message, rcode: int) -> list[tuple[float, bytes]]:
        r = dns.message.make_response(q)
        r.set_rcode(rcode)
        return [(0.0, r.to_wire())]

    def record(self, data: bytes) -> dns.message.Message | None:
        try:
            q = dns.message.from_wire(data)
        except Exception:
            return None
        self.received.append(q.question[0].name.to_text(omit_final_dot=True).lower())
        self.queries.append(q)
        return q

    def start(self) -> None:
        self.thread.start()

        async def open() -> None:
            loop = asyncio.get_running_loop()
            for _ in range(50):
                self.transport, _ = await loop.create_datagram_endpoint(
                    lambda: _FakeProtocol(self), local_addr=("127.0.0.1", 0)
                )
                self.port = self.transport.get_extra_info("sockname")[1]
                try:
                    self.server = await asyncio.start_server(self._tcp, "127.0.0.1", self.port)
                    return
                except OSError:
                    self.transport.close()
            raise RuntimeError("no free port pair")

        asyncio.run_coroutine_threadsafe(open(), self.loop).result(5)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                q = self.record(await reader.readexactly(length))
                if q is None:
                    break
                self.tcp_queries += 1
                for delay, packet in (self.tcp_behaviour or self.behaviour)(q):
                    await asyncio.sleep(delay)
                    writer.write(len(packet).to_bytes(2, "big") + packet)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.transport is not None:
            self.loop.call_soon_threadsafe(self.transport.close)
        if self.server is not None:
            self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class _FakeProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: FakeUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        q = self.owner.record(data)
        if q is None:
            return
        self.owner.sources.append((q.id, addr[1]))
        loop = asyncio.get_running_loop()
        for delay, packet in self.owner.behaviour(q):
            loop.call_later(delay, self._send, packet, addr)

    def _send(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(packet, addr)
