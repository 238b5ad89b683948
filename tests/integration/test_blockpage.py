"""The block page over real HTTP: filterd started as for a network, asked with http.client and raw sockets."""

from __future__ import annotations

import asyncio
import http.client
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from filterd.config.schema import BlockpageConfig, Endpoint
from filterd.logs import ClientEvents
from filterd.metrics import Metrics
from filterd.web.blockpage import HEALTH_PATH, Limits, blockpage_app
from filterd.web.runner import HttpRunner
from tests.support import Dnsmasq, RunningFilterd

Start = Callable[..., RunningFilterd]


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self.body = status, headers, body


def get(server: RunningFilterd, host: str | None, path: str = "/", method: str = "GET", **headers: str) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", server.blockpage_port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        for name, value in headers.items():
            conn.putheader(name.replace("_", "-"), value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read().decode("utf-8")
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


def raw(port: int, request: bytes, timeout: float = 5) -> bytes:
    """Send bytes as they are (no client-side checks) and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def server(start_filterd: Start, dnsmasq: Dnsmasq) -> RunningFilterd:
    return start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        metrics:
          listen: 127.0.0.1:0
        blockpage:
          listen: ["127.0.0.1:0"]
          contact: "Ms Patel, safeguarding lead"
    """)


def test_blocked_name_gets_the_page_with_403_and_no_store(server: RunningFilterd) -> None:
    reply = get(server, "omegle.com")
    assert reply.status == 403
    assert reply.headers["cache-control"] == "no-store"
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["content-security-policy"].startswith("default-src 'none'; style-src 'sha256-")
    assert reply.headers["server"] == "filterd"
    assert "<title>Blocked: omegle.com</title>" in reply.body
    assert "This filter is run by Ms Patel, safeguarding lead." in reply.body


@pytest.mark.parametrize(
    ("host", "description", "category"),
    [
        ("omegle.com", "random video chat with strangers", "chat-roulette-video"),
        ("www.ome.tv:80", "random video chat with strangers", "chat-roulette-video"),
        ("flingster.com", "adult video chat with strangers", "adult-cam-roulette"),
        ("chatiw.me", "anonymous chat with strangers", "anonymous-text-chat"),
        ("TinyChat.com.", "video chat rooms open to strangers", "video-chat-rooms"),
    ],
)
def test_the_kind_of_site_comes_from_filterds_decision(
    server: RunningFilterd, host: str, description: str, category: str
) -> None:
    reply = get(server, host)
    assert reply.status == 403
    assert f"It is a site for {description}, and it is blocked on this network." in reply.body
    assert f"is on the list chat-roulette (category {category})." in reply.body
    assert server.metric("filterd_blockpage_views_total", category=category) >= 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/video/start?lang=en&x=<b>"),
        ("GET", "//double//slashes/../.."),
        ("POST", "/login"),
        ("PUT", "/"),
        ("DELETE", "/anything"),
        ("OPTIONS", "*"),
        ("GET", "http://omegle.com/absolute-form"),
        ("GET", "/.well-known/filterd/healthz"),
        ("POST", HEALTH_PATH),
    ],
)
def test_any_method_and_path_gets_the_page(server: RunningFilterd, method: str, path: str) -> None:
    reply = get(server, "omegle.com", path, method)
    assert reply.status == 403
    assert "<title>Blocked: omegle.com</title>" in reply.body
    assert "<b>" not in reply.body and "absolute-form" not in reply.body and "login" not in reply.body


def test_head_gets_the_headers_only(server: RunningFilterd) -> None:
    reply = get(server, "omegle.com", "/", "HEAD")
    assert reply.status == 403 and reply.body == ""
    assert reply.headers["cache-control"] == "no-store"


def test_health(server: RunningFilterd) -> None:
    for host in ("omegle.com", "192.168.1.2", ""):
        reply = get(server, host, HEALTH_PATH)
        assert (reply.status, reply.body) == (200, "ok\n")
        assert reply.headers["cache-control"] == "no-store"
    assert get(server, "omegle.com", HEALTH_PATH, "HEAD").status == 200
    assert server.metric("filterd_blockpage_views_total", category="none") == 0  # health is not a view


@pytest.mark.parametrize(
    "host",
    [
        "<script>alert(1)</script>",
        "omegle.com<script>",
        '"><img src=x onerror=alert(1)>',
        "omegle.com/<x>",
        "a" * 300,
        "a" * 64 + ".com",
        "%3Cscript%3E.example",
        "",
        "192.168.1.2",
        "[::1]:80",
    ],
)
def test_a_host_that_is_not_a_hostname_shows_as_this_site(server: RunningFilterd, host: str) -> None:
    reply = get(server, host)
    assert reply.status == 403
    assert "<title>Blocked: this site</title>" in reply.body
    assert "<script" not in reply.body and "<img" not in reply.body and "onerror" not in reply.body
    assert "a" * 63 not in reply.body and "%3C" not in reply.body
    assert 'class="name"' not in reply.body


def test_no_host_header_at_all(server: RunningFilterd) -> None:
    """HTTP/1.0 may leave Host out (HTTP/1.1 must not: aiohttp answers 400); never a name made up instead."""
    response = raw(server.blockpage_port, b"GET / HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 403 ")
    assert b"<title>Blocked: this site</title>" in response


def test_non_ascii_host(server: RunningFilterd) -> None:
    """Browsers send A-labels; a raw UTF-8 name is turned into one (and matched as one), never echoed raw."""
    response = raw(server.blockpage_port, "GET / HTTP/1.1\r\nHost: ömegle.com\r\nConnection: close\r\n\r\n".encode())
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    assert "ömegle".encode() not in body
    assert b"<title>Blocked: this site</title>" in body  # xn--megle-iua.com is on no list: the neutral page


def test_a_name_filterd_does_not_block_gets_the_neutral_page(server: RunningFilterd) -> None:
    reply = get(server, "example.org")
    assert reply.status == 403
    assert "example.org" not in reply.body
    assert "the one you tried to open is one of them" in reply.body
    assert server.metric("filterd_blockpage_views_total", category="none") == 1


def test_views_are_counted_by_category_never_by_name(server: RunningFilterd) -> None:
    get(server, "omegle.com")
    get(server, "omegle.com", Sec_Fetch_Dest="document")
    get(server, "omegle.com", Sec_Fetch_Dest="image")  # a subresource of another page: served, not a view
    get(server, "omegle.com", method="HEAD")
    get(server, "omegle.com", HEALTH_PATH)
    assert server.metric("filterd_blockpage_views_total", category="chat-roulette-video") == 2
    text = server.metrics_text()
    assert "omegle" not in text
    assert 'filterd_blockpage_views_total{category="chat-roulette-video",scheme="http"} 2.0' in text


def test_keep_alive_serves_several_requests_on_one_connection(server: RunningFilterd) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.blockpage_port, timeout=5)
    try:
        for host in ("omegle.com", "chatiw.me", "example.org"):
            conn.request("GET", "/", headers={"Host": host})
            response = conn.getresponse()
            assert response.status == 403
            response.read()
    finally:
        conn.close()


def test_a_request_body_is_never_read_and_the_connection_closes(server: RunningFilterd) -> None:
    body = b"x" * 100_000
    request = b"POST /upload HTTP/1.1\r\nHost: omegle.com\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    response = raw(server.blockpage_port, request)
    assert response.startswith(b"HTTP/1.1 403 ")
    assert b"Connection: close" in response.partition(b"\r\n\r\n")[0]


def test_oversized_request_line_and_headers_are_refused(server: RunningFilterd) -> None:
    long_path = raw(server.blockpage_port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: omegle.com\r\n\r\n")
    assert long_path.split(b" ", 2)[1] in (b"400", b"414")
    long_header = raw(server.blockpage_port, b"GET / HTTP/1.1\r\nHost: omegle.com\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n")
    assert long_header.split(b" ", 2)[1] in (b"400", b"431")
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(100))
    too_many = raw(server.blockpage_port, b"GET / HTTP/1.1\r\nHost: omegle.com\r\n" + many + b"\r\n")
    assert too_many.split(b" ", 2)[1] in (b"400", b"431")
    # a browser's usual cookies still fit
    reply = get(server, "omegle.com", Cookie="; ".join(f"c{i}={'v' * 60}" for i in range(60)))
    assert reply.status == 403


def test_allow_list_wins_on_the_page_too(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    """The page asks the same decision as DNS: a name in `allow` is not shown as blocked."""
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        allow: [omegle.com]
        blockpage:
          listen: ["127.0.0.1:0"]
    """)
    assert get(server, "ome.tv").body.count("random video chat with strangers") == 1
    assert "<title>Blocked: this site</title>" in get(server, "omegle.com").body


def test_a_client_outside_allow_clients_learns_nothing_of_the_lists(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          allow_clients: [192.168.0.0/16]
        blockpage:
          listen: ["127.0.0.1:0"]
    """)
    reply = get(server, "omegle.com")
    assert reply.status == 403
    assert "<title>Blocked: this site</title>" in reply.body
    assert "omegle.com" not in reply.body and "chat-roulette" not in reply.body


def test_custom_list_texts_and_categories(start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    (tmp_path / "school.txt").write_text("# category: gaming\ngames.example\n# category: misc\nother.example\n")
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        lists:
          - builtin: chat-roulette
          - {{name: school, path: {tmp_path / "school.txt"}}}
        metrics:
          listen: 127.0.0.1:0
        blockpage:
          listen: ["127.0.0.1:0"]
          contact: Mr Evans (IT office, room 12)
          unblock_url: https://school.example/unblock
          texts:
            heading: "$site is blocked at school"
            why_other: Our school's rules say so.
            help:
              - Speak to Mr Evans or any teacher.
            categories:
              gaming: online games
    """)
    games = get(server, "www.games.example")
    assert "<h1>www.games.example is blocked at school</h1>" in games.body
    assert "It is a site for online games, and it is blocked on this network." in games.body
    assert "Our school&#x27;s rules say so." in games.body
    assert "<li>Speak to Mr Evans or any teacher.</li>" in games.body and "Childline" not in games.body
    assert "This filter is run by Mr Evans (IT office, room 12)." in games.body
    assert '<a href="https://school.example/unblock">Ask for this site to be unblocked</a>' in games.body
    assert "Details: games.example is on the list school (category gaming)." in games.body
    other = get(server, "other.example")
    assert "It is on this network&#x27;s list of blocked sites." in other.body
    assert server.metric("filterd_blockpage_views_total", category="gaming") == 1
    assert server.metric("filterd_blockpage_views_total", category="other") == 1
    assert server.metric("filterd_blockpage_views_total", category="misc") == 0  # labels: described ids only


async def test_idle_and_slow_connections_are_closed() -> None:
    """A client that connects and sends nothing, or drips a request it never finishes, is cut off."""
    config = BlockpageConfig(listen=(Endpoint("127.0.0.1", 0),))
    metrics = Metrics(CollectorRegistry(), "test")
    app = blockpage_app(config, lambda name, client: None, metrics, Limits(idle=0.5))
    runner = HttpRunner(app, "blockpage", ClientEvents(metrics.client_events))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for first, drip in ((b"", b""), (b"GET / HTTP/1.1\r\nHost: omeg", b"l")):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            started = time.monotonic()
            writer.write(first)
            try:
                for _ in range(50):  # keep dripping bytes for up to 5 s, never ending the headers
                    await asyncio.sleep(0.1)
                    if reader.at_eof():
                        break
                    writer.write(drip)
                    await writer.drain()
                data = await asyncio.wait_for(reader.read(), 5)
            except ConnectionError:
                data = b""  # closed by the server while we were still writing
            assert time.monotonic() - started < 3, "the connection was held open"
            assert b"Blocked" not in data
            writer.close()
    finally:
        await runner.cleanup()
