"""tls:// and https:// upstreams: filterd behind a real DoT and DoH server (dnsdist from Debian, with a certificate
made here) in front of dnsmasq, all on loopback; a wrong certificate and a dead upstream fail, never in clear text."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.support import Dnsmasq, FakeUpstream, RunningFilterd, addresses, ede, free_port
from tests.support_tls import Dnsdist, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), ("dns.test",))


@pytest.fixture(scope="module")
def dnsdist(tmp_path_factory: pytest.TempPathFactory, pki: Pki, dnsmasq: Dnsmasq) -> Iterator[Dnsdist]:
    if shutil.which("dnsdist") is None:
        pytest.fail("dnsdist is not installed: `apt-get install dnsdist` (scripts/test.sh does it)")
    server = Dnsdist(tmp_path_factory.mktemp("dnsdist"), pki, dnsmasq.address)
    server.start()
    yield server
    server.stop()


def _start(
    start_filterd: Callable[..., RunningFilterd], upstreams: list[str], ca: Path, extra: str = ""
) -> RunningFilterd:
    listed = ", ".join(f'"{u}"' for u in upstreams)
    return start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: [{listed}]
          upstream_ca_file: "{ca}"
          timeout: 2
{extra}
        metrics:
          listen: 127.0.0.1:0
    """)


def _ask_many(server: RunningFilterd, names: list[str]) -> list[dns.message.Message]:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda n: server.query(n, timeout=5), names))


@pytest.mark.parametrize("scheme", ["tls", "https"])
def test_forwards_over_one_kept_connection(
    start_filterd: Callable[..., RunningFilterd], dnsdist: Dnsdist, pki: Pki, scheme: str
) -> None:
    url = (
        f"tls://dns.test:{dnsdist.dot_port}@127.0.0.1"
        if scheme == "tls"
        else f"https://dns.test:{dnsdist.doh_port}/dns-query@127.0.0.1"
    )
    server = _start(start_filterd, [url], pki.ca)
    first = server.query("example.org")
    assert addresses(first) == ["192.0.2.10"]
    # many at once, cache misses all (a TXT, an MX, the AAAA...), then the block list still applies
    replies = _ask_many(server, ["www.example.org", "safe.example.net", "example.org"])
    assert [addresses(r) for r in replies] == [["192.0.2.11"], ["192.0.2.20"], ["192.0.2.10"]]
    assert server.query("example.org", "MX").answer[0][0].exchange.to_text() == "mail.example.org."
    assert addresses(server.query("video.omegle.com")) != ["192.0.2.66"]  # blocked: never asked upstream
    assert server.metric("filterd_upstream_request_duration_seconds_count", upstream=url) >= 5
    assert server.metric("filterd_upstream_up", upstream=url) == 1
    assert server.app is not None and server.app.resolver is not None and server.app.resolver.encrypted is not None
    client = next(iter(server.app.resolver.encrypted.clients.values()))
    assert client.connects == 1  # one kept connection for all (DoT: pipelined by ID; DoH: HTTP/2 streams)


def test_name_looked_up_through_bootstrap_only(
    start_filterd: Callable[..., RunningFilterd], dnsdist: Dnsdist, pki: Pki, fake_upstream: FakeUpstream
) -> None:
    """Without @ADDRESS the name is asked of dns.bootstrap (plain), and that is all the bootstrap ever sees."""
    fake_upstream.behaviour = lambda q: FakeUpstream.answer(q, "127.0.0.1")
    server = _start(
        start_filterd,
        [f"tls://dns.test:{dnsdist.dot_port}"],
        pki.ca,
        f'          bootstrap: ["{fake_upstream.address}"]',
    )
    assert addresses(server.query("example.org")) == ["192.0.2.10"]
    assert addresses(server.query("www.example.org")) == ["192.0.2.11"]
    assert set(fake_upstream.received) == {"dns.test"}


def test_wrong_certificate_fails_and_is_never_sent_in_clear(
    start_filterd: Callable[..., RunningFilterd],
    dnsdist: Dnsdist,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stranger = make_pki(tmp_path / "other", ("dns.test",), label="other")  # a CA filterd does not trust
    # a clear-text fallback would go to the same address and port over UDP: listen there, and expect nothing
    clear = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clear.bind(("127.0.0.1", dnsdist.dot_port))
    clear.settimeout(0.2)
    cases = [
        (f"tls://dns.test:{dnsdist.dot_port}@127.0.0.1", stranger.ca),  # signed by an unknown CA
        (f"tls://wrong.test:{dnsdist.dot_port}@127.0.0.1", pki.ca),  # trusted CA, another name
        (f"https://wrong.test:{dnsdist.doh_port}/dns-query@127.0.0.1", pki.ca),
    ]
    for url, ca in cases:
        server = _start(start_filterd, [url], ca)
        reply = server.query("example.org", timeout=5)
        assert reply.rcode() == dns.rcode.SERVFAIL, url
        assert ede(reply) and "no upstream answered (tls)" in ede(reply)[0][1], url
        assert server.metric("filterd_upstream_errors_total", upstream=url, kind="tls") >= 1
    assert "certificate verification failed" in caplog.text
    with pytest.raises(TimeoutError):
        clear.recv(512)
    clear.close()


def test_reload_moves_from_plain_to_encrypted_upstreams(
    start_filterd: Callable[..., RunningFilterd], dnsdist: Dnsdist, dnsmasq: Dnsmasq, pki: Pki
) -> None:
    server = _start(start_filterd, [dnsmasq.address], pki.ca)
    assert addresses(server.query("example.org")) == ["192.0.2.10"]
    url = f"tls://dns.test:{dnsdist.dot_port}@127.0.0.1"
    text = server.config_path.read_text().replace(f'"{dnsmasq.address}"', f'"{url}"')
    server.config_path.write_text(text)
    assert server.app is not None
    outcome = asyncio.run_coroutine_threadsafe(server.app.reload(), server.loop).result(15)
    assert outcome["ok"], outcome
    assert addresses(server.query("www.example.org")) == ["192.0.2.11"]
    assert server.metric("filterd_upstream_request_duration_seconds_count", upstream=url) == 1


def test_dead_upstream_fails_over_and_is_marked_down(
    start_filterd: Callable[..., RunningFilterd], dnsdist: Dnsdist, pki: Pki
) -> None:
    dead = f"tls://dns.test:{free_port()}@127.0.0.1"  # nothing listens there
    good = f"https://dns.test:{dnsdist.doh_port}/dns-query@127.0.0.1"
    server = _start(start_filterd, [dead, good], pki.ca)
    for name in ("example.org", "www.example.org", "safe.example.net"):
        assert server.query(name, timeout=5).rcode() == dns.rcode.NOERROR
    assert server.metric("filterd_upstream_errors_total", upstream=dead, kind="network") >= 1
    assert server.metric("filterd_upstream_up", upstream=dead) == 0
    assert server.metric("filterd_upstream_request_duration_seconds_count", upstream=good) == 3


class _ReversingTls:
    """A DoT server that holds the first `batch` queries of a connection and answers them in reverse order, then
    closes the connection after `close_after` answers (0: never)."""

    def __init__(self, pki: Pki, batch: int, close_after: int = 0) -> None:
        import ssl

        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.cert, pki.key)
        self.batch = batch
        self.close_after = close_after
        self.connections = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.context)
        self.port = self.server.sockets[0].getsockname()[1]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                held = []
                for _ in range(self.batch):
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    held.append(dns.message.from_wire(await reader.readexactly(length)))
                for q in reversed(held):
                    r = dns.message.make_response(q)
                    octet = len(q.question[0].name.labels[0])
                    r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", f"192.0.2.{octet}"))
                    wire = r.to_wire()
                    writer.write(len(wire).to_bytes(2, "big") + wire)
                    answered += 1
                await writer.drain()
                if self.close_after and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _dot_client(pki: Pki, port: int, idle: float = 30.0):  # type: ignore[no-untyped-def]
    from filterd.config.upstream_url import parse_upstream_url
    from filterd.upstreams.dot import DotUpstream
    from filterd.upstreams.tls import client_context

    async def no_lookup(name: str) -> list[str]:
        raise OSError("pinned: never looked up")

    upstream = parse_upstream_url(f"tls://dns.test:{port}@127.0.0.1")
    return DotUpstream(upstream, client_context(pki.ca), no_lookup, idle_timeout=idle)


def _question(name: str) -> tuple[bytes, bytes]:
    packet = dns.message.make_query(name, "A", use_edns=False).to_wire()
    return packet, packet[12:]


async def test_dot_matches_out_of_order_replies_by_id(pki: Pki) -> None:
    server = _ReversingTls(pki, batch=3)
    await server.start()
    client = _dot_client(pki, server.port)
    names = ["a.example", "bb.example", "ccc.example"]
    replies = await asyncio.gather(*(client.exchange(*_question(n), 3.0) for n in names))
    got = [dns.message.from_wire(r).answer[0][0].address for r in replies]
    assert got == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]  # each its own answer although sent back reversed
    assert client.connects == 1 and server.connections == 1
    await client.close()
    assert server.server is not None
    server.server.close()


async def test_dot_reconnects_after_the_server_closes_and_when_idle(pki: Pki) -> None:
    server = _ReversingTls(pki, batch=1, close_after=1)  # one answer per connection, then it hangs up
    await server.start()
    client = _dot_client(pki, server.port, idle=0.3)
    for name in ("a.example", "bb.example", "ccc.example"):
        reply = dns.message.from_wire(await client.exchange(*_question(name), 3.0))
        assert reply.answer[0][0].address == f"192.0.2.{len(name.split('.')[0])}"
    assert client.connects == 3
    server.close_after = 0
    await client.exchange(*_question("a.example"), 3.0)
    await asyncio.sleep(0.6)  # past the idle timeout: closed by filterd
    assert client._session is None
    await client.exchange(*_question("a.example"), 3.0)
    assert client.connects == 5
    await client.close()
    assert server.server is not None
    server.server.close()


async def test_dot_backs_off_after_a_failed_connect(pki: Pki) -> None:
    from filterd.upstreams.errors import UpstreamError

    port = free_port()
    client = _dot_client(pki, port)
    loop = asyncio.get_running_loop()
    with pytest.raises(UpstreamError) as first:
        await client.exchange(*_question("a.example"), 1.0)
    assert first.value.kind == "network"
    started = loop.time()
    with pytest.raises(UpstreamError, match="next attempt in"):
        await client.exchange(*_question("a.example"), 1.0)
    assert loop.time() - started < 0.1  # failed at once: the resolver moves on instead of waiting
    await client.close()


class _DohServer:
    """An HTTP/2 DoH server (hypercorn) whose answers the test chooses: `mode` "ok" (answers after a delay that
    shrinks with the name's first label, so replies come out of order), "500" or "text" (a wrong content type)."""

    def __init__(self, pki: Pki) -> None:
        from hypercorn.config import Config

        self.port = free_port()
        self.config = Config()
        self.config.bind = [f"127.0.0.1:{self.port}"]
        self.config.certfile, self.config.keyfile = str(pki.cert), str(pki.key)
        self.config.alpn_protocols = ["h2"]
        self.config.errorlog = None
        self.config.graceful_timeout = 0.5
        self.mode = "ok"
        self.requests = 0
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def app(self, scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def,type-arg]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        q = dns.message.from_wire(body)
        if self.mode == "500":
            await send({"type": "http.response.start", "status": 500, "headers": []})
            await send({"type": "http.response.body", "body": b"oops"})
            return
        r = dns.message.make_response(q)
        octets = len(q.question[0].name.labels[0])
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", f"192.0.2.{octets}"))
        await asyncio.sleep(0.3 / octets)
        ctype = b"text/plain" if self.mode == "text" else b"application/dns-message"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", ctype)]})
        await send({"type": "http.response.body", "body": r.to_wire()})

    async def start(self) -> None:
        from hypercorn.asyncio import serve

        self.task = asyncio.get_running_loop().create_task(
            serve(self.app, self.config, shutdown_trigger=self.stop.wait)  # type: ignore[arg-type]
        )
        for _ in range(100):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("the DoH test server did not start")

    async def close(self) -> None:
        self.stop.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)


async def test_doh_streams_answer_out_of_order_and_bad_answers_fail(pki: Pki) -> None:
    from filterd.config.upstream_url import parse_upstream_url
    from filterd.upstreams.doh import DohUpstream
    from filterd.upstreams.errors import UpstreamError
    from filterd.upstreams.tls import client_context

    server = _DohServer(pki)
    await server.start()

    async def no_lookup(name: str) -> list[str]:
        raise OSError("pinned: never looked up")

    upstream = parse_upstream_url(f"https://dns.test:{server.port}/dns-query@127.0.0.1")
    client = DohUpstream(upstream, client_context(pki.ca, alpn=("h2",)), no_lookup)
    try:
        names = ["a.example", "bb.example", "ccc.example"]  # a.example is answered last
        packets = [_question(n) for n in names]
        replies = await asyncio.gather(*(client.exchange(p, q, 3.0) for p, q in packets))
        got = [dns.message.from_wire(r) for r in replies]
        assert [m.answer[0][0].address for m in got] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
        assert [m.id for m in got] == [dns.message.from_wire(p).id for p, _ in packets]  # the client's IDs back
        assert client.connects == 1 and server.requests == 3
        server.mode = "500"
        with pytest.raises(UpstreamError, match="HTTP 500") as failed:
            await client.exchange(*_question("a.example"), 3.0)
        assert failed.value.kind == "network"
        server.mode = "text"
        with pytest.raises(UpstreamError, match="content type") as wrong:
            await client.exchange(*_question("a.example"), 3.0)
        assert wrong.value.kind == "mismatch"
        server.mode = "ok"
        with pytest.raises(UpstreamError) as late:
            await client.exchange(*_question("a.example"), 0.1)  # answered after 0.3 s: a timeout, stream reset
        assert late.value.kind == "timeout"
        reply = await client.exchange(*_question("bb.example"), 3.0)  # the connection is still good
        assert dns.message.from_wire(reply).answer[0][0].address == "192.0.2.2"
        assert client.connects == 1
        session = client._session
        assert session is not None and not session.streams  # answered, failed and reset streams all left the table
    finally:
        await client.close()
        await server.close()


async def test_doh_acknowledges_received_data_in_bulk(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    """No WINDOW_UPDATE a reply: the streams' windows outlast any reply, and the connection's is topped up when half
    used (here a 64 KiB window, used up many times over by 1,500 replies of about 60 bytes)."""
    from filterd.config.upstream_url import parse_upstream_url
    from filterd.upstreams import doh
    from filterd.upstreams.tls import client_context

    monkeypatch.setattr(doh, "CONNECTION_WINDOW", 1 << 16)
    server = _DohServer(pki)
    server.config.keep_alive_max_requests = 10_000  # (hypercorn's GOAWAY after 1,000 would open a new connection)
    await server.start()

    async def no_lookup(name: str) -> list[str]:
        raise OSError("pinned: never looked up")

    upstream = parse_upstream_url(f"https://dns.test:{server.port}/dns-query@127.0.0.1")
    client = doh.DohUpstream(upstream, client_context(pki.ca, alpn=("h2",)), no_lookup)
    label = "x" * 60  # answered after 5 ms
    try:
        for batch in range(15):
            packets = [_question(f"{label}.n{batch}-{i}.example") for i in range(100)]
            replies = await asyncio.gather(*(client.exchange(p, q, 5.0) for p, q in packets))
            assert all(dns.message.from_wire(r).answer for r in replies)
        session = client._session
        assert session is not None and client.connects == 1 and server.requests == 1500
        assert session.h2.local_settings.initial_window_size == doh.STREAM_WINDOW
        assert session.h2.inbound_flow_control_window >= (1 << 15)
    finally:
        await client.close()
        await server.close()
