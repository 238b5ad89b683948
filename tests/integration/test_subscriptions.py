"""url lists end to end: a real list server on loopback, a real filterd, real DNS queries.

For every fault a list server can produce, filterd must keep blocking what the last good copy blocks, say
why in the log (`NAME[:LINE]: reason ... stays in use`) and in `filterd_list_refresh_total`, and block the
same after a restart with the list server gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import logging
import random
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from filterd.app import App
from filterd.blocklists.parse import parse_list
from filterd.blocklists.refresh import Result, UnknownList
from filterd.blocklists.sources import UpstreamDnsResolver
from filterd.blocklists.state import StateError
from filterd.config.load import load_config, parse_config
from filterd.config.schema import Endpoint
from tests.support import Dnsmasq, RunningFilterd, addresses, ede

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "domains-samples"
SINKHOLE = ["127.0.0.1"]

Route = Callable[[http.server.BaseHTTPRequestHandler], None]


@dataclass
class ListServer:
    """An HTTP/1.1 server on 127.0.0.1:0 (threads) whose routes can change mid-test; it records requests."""

    routes: dict[str, Route] = field(default_factory=dict)
    #: (path, If-None-Match) of every request
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    httpd: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("If-None-Match")))
                route = owner.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    route(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return int(self.httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, etag: str | None = None) -> None:
        self.routes[path] = ok(body, etag)


def ok(body: bytes, etag: str | None = None, length: int | None = None) -> Route:
    """200 with `body` (and an ETag, answering 304 to a matching If-None-Match); `length` overrides
    Content-Length (None: the body's length; -1: no Content-Length, the end of the body closes the connection)."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        if etag is not None and h.headers.get("If-None-Match") == etag:
            h.send_response(304)
            h.send_header("ETag", etag)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        if etag is not None:
            h.send_header("ETag", etag)
        if length == -1:
            h.send_header("Connection", "close")
            h.close_connection = True
        else:
            h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)
        if length is not None:
            h.close_connection = True  # a body shorter than announced: hang up

    return route


def status(code: int) -> Route:
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_error(code)

    return route


def drip(body: bytes, every: float = 0.2) -> Route:
    """A server that sends one byte at a time, far slower than any list timeout."""

    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        for i in range(len(body)):
            h.wfile.write(body[i : i + 1])
            h.wfile.flush()
            time.sleep(every)

    return route


def names(case: str, count: int = 20) -> list[str]:
    return [f"n{i}.{case}.example.org" for i in range(count)]


def domains(hosts: list[str], header: str = "# a test list") -> bytes:
    return ("\n".join([header, *hosts]) + "\n").encode()


HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Wi-Fi login</body></html>\n"


@dataclass(frozen=True)
class Fault:
    route: Callable[[str], Route]  # case name -> route
    result: Result
    log: str  # expected in the warning, after "sub"


FAULTS: dict[str, Fault] = {
    "http404": Fault(
        lambda c: status(404), Result.FAILED, ": download from http://127.0.0.1:{port}/sub.txt failed: HTTP 404"
    ),
    "http500": Fault(
        lambda c: status(500), Result.FAILED, ": download from http://127.0.0.1:{port}/sub.txt failed: HTTP 500"
    ),
    "slow": Fault(lambda c: drip(domains(names(c))), Result.FAILED, "no complete answer within 1s (3 attempts)"),
    "truncated": Fault(
        lambda c: ok(domains(names(c))[:100], length=len(domains(names(c))) + 500), Result.FAILED, "truncated"
    ),
    "garbage": Fault(lambda c: ok(random.Random(7).randbytes(1500)), Result.REJECTED, ":1: binary data (a NUL byte)"),
    "html": Fault(lambda c: ok(HTML), Result.REJECTED, ":1: an HTML page, not a list"),
    "empty": Fault(lambda c: ok(b""), Result.REJECTED, ": empty download (0 bytes)"),
    "over-cap": Fault(lambda c: ok(domains(names(c, 200))), Result.REJECTED, "over max_bytes (2 KB)"),
    "over-cap-streamed": Fault(
        lambda c: ok(domains(names(c, 200)), length=-1), Result.REJECTED, ": the body is over max_bytes (2 KB)"
    ),
    "shrink": Fault(
        lambda c: ok(domains(names(c, 2))), Result.REJECTED, ": shrank from 20 to 2 names (10% of the last good copy"
    ),
    "not-modified": Fault(lambda c: ok(domains(names(c)), etag='"v1"'), Result.NOT_MODIFIED, ""),
}


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}")


def blocked(server: RunningFilterd, name: str) -> bool:
    reply = server.query(name)
    return addresses(reply) == SINKHOLE and any("filterd: " in text for _, text in ede(reply))


def shut(server: RunningFilterd) -> None:
    """Stop a filterd mid-test (the fixture then has nothing left to stop)."""
    server.stop()
    server.app = None


def refreshes(server: RunningFilterd, result: Result, name: str = "sub") -> float:
    return server.metric("filterd_list_refresh_total", list=name, result=result.value)


@pytest.fixture
def list_server() -> Iterator[ListServer]:
    server = ListServer()
    server.start()
    yield server
    server.stop()


def config(dnsmasq: Dnsmasq, state: Path, lists: str) -> str:
    return f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        metrics:
          listen: 127.0.0.1:0
        state_dir: {state}
        lists:
{lists}
    """


def sub_list(url: str, extra: str = "") -> str:
    return f"""          - name: sub
            url: {url}
            refresh: 1s
            timeout: 1s
            max_bytes: 2KB
            {extra}"""


@pytest.mark.parametrize("case", list(FAULTS), ids=list(FAULTS))
def test_a_fault_never_loses_the_last_good_copy(
    case: str,
    list_server: ListServer,
    start_filterd: Callable[..., RunningFilterd],
    dnsmasq: Dnsmasq,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fault = FAULTS[case]
    good = names(case)
    list_server.routes["/sub.txt"] = ok(domains(good), etag='"v1"' if case == "not-modified" else None)
    cfg = config(dnsmasq, tmp_path / "state", sub_list(list_server.url("/sub.txt")))
    server = start_filterd(cfg)
    wait_for(lambda: refreshes(server, Result.UPDATED) >= 1, "the first download")
    assert all(blocked(server, name) for name in good)
    assert not blocked(server, f"other.{case}.example.org")
    assert server.metric("filterd_blocklist_entries", list="sub") == 20
    assert server.metric("filterd_list_last_success_timestamp_seconds", list="sub") > time.time() - 60

    caplog.set_level(logging.INFO, logger="filterd")
    list_server.routes["/sub.txt"] = fault.route(case)
    wait_for(lambda: refreshes(server, fault.result) >= 1, f"a refresh with result {fault.result}")
    assert [n for n in good if not blocked(server, n)] == [], "the last good copy must stay in use"
    assert refreshes(server, Result.UPDATED) == 1
    assert server.metric("filterd_blocklist_entries", list="sub") == 20
    if fault.result is Result.NOT_MODIFIED:
        assert ("/sub.txt", '"v1"') in list_server.requests, "the refresh must be a conditional request"
    else:
        expected = fault.log.format(port=list_server.port)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        reported = next((m for m in warnings if expected in m), None)
        assert reported is not None, warnings
        assert reported.startswith("sub" + expected if expected.startswith(":") else "sub: "), reported
        assert "the last good copy (20 names, from " in reported and "stays in use" in reported

    # A restart with the list server gone: the stored copy is served at once.
    shut(server)
    list_server.stop()
    again = start_filterd(cfg)
    assert [n for n in good if not blocked(again, n)] == []
    wait_for(lambda: refreshes(again, Result.FAILED) >= 1, "a failed refresh with the server gone")
    assert all(blocked(again, name) for name in good)
    assert again.metric("filterd_blocklist_entries", list="sub") == 20


def test_force_accepts_a_shrunk_list_and_nothing_broken(
    list_server: ListServer, start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    good = names("force")
    list_server.serve("/sub.txt", domains(good))
    cfg = config(
        dnsmasq, tmp_path / "state", sub_list(list_server.url("/sub.txt")).replace("refresh: 1s", "refresh: 1d")
    )
    server = start_filterd(cfg)
    wait_for(lambda: refreshes(server, Result.UPDATED) >= 1, "the first download")
    assert server.app is not None and server.app.refresher is not None
    refresher = server.app.refresher

    def update(names: list[str] | None, force: bool) -> list[object]:
        return asyncio.run_coroutine_threadsafe(refresher.update(names, force), server.loop).result(20)

    list_server.serve("/sub.txt", domains(good[:2]))
    [held] = update(["sub"], False)
    assert held.result is Result.REJECTED and "shrank from 20 to 2" in held.message  # type: ignore[attr-defined]
    assert all(blocked(server, n) for n in good)

    list_server.serve("/sub.txt", HTML)
    [broken] = update(["sub"], True)
    assert broken.result is Result.REJECTED, "force never installs a broken list"  # type: ignore[attr-defined]
    assert all(blocked(server, n) for n in good)

    list_server.serve("/sub.txt", domains(good[:2]))
    [forced] = update(None, True)
    assert forced.result is Result.UPDATED and forced.entries == 2  # type: ignore[attr-defined]
    assert [blocked(server, n) for n in good[:3]] == [True, True, False]
    assert server.metric("filterd_blocklist_entries", list="sub") == 2
    assert refreshes(server, Result.REJECTED) == 2 and refreshes(server, Result.UPDATED) == 2

    with pytest.raises(UnknownList, match="not a url list: chat-roulette"):
        update(["chat-roulette"], False)


def test_skipped_lines_are_reported_with_list_and_line(
    list_server: ListServer,
    start_filterd: Callable[..., RunningFilterd],
    dnsmasq: Dnsmasq,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = names("skipped")
    list_server.serve("/sub.txt", domains([*good[:3], "192.0.2.1", "bad..name", *good[3:]]))
    caplog.set_level(logging.INFO, logger="filterd")
    server = start_filterd(config(dnsmasq, tmp_path / "state", sub_list(list_server.url("/sub.txt"))))
    wait_for(lambda: refreshes(server, Result.UPDATED) >= 1, "the first download")
    assert all(blocked(server, n) for n in good)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "sub:5: an IP address, not a hostname: '192.0.2.1' (2 unsupported or invalid lines skipped in all)" in warnings
    )


def test_start_never_waits_for_the_network(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, list_server: ListServer
) -> None:
    """No stored copy and a list server that never answers: filterd starts at once, the url list blocks
    nothing yet, and the other lists work."""
    list_server.routes["/sub.txt"] = drip(domains(names("wait")), every=1.0)
    lists = (
        sub_list(list_server.url("/sub.txt")).replace("timeout: 1s", "timeout: 30s")
        + "\n          - builtin: chat-roulette"
    )
    started = time.monotonic()
    server = start_filterd(config(dnsmasq, tmp_path / "state", lists))
    assert time.monotonic() - started < 5
    assert blocked(server, "omegle.com")
    assert not blocked(server, "n1.wait.example.org")
    assert server.metric("filterd_blocklist_entries", list="sub") == 0
    wait_for(lambda: ("/sub.txt", None) in list_server.requests, "the first download, in the background")


def test_list_host_is_resolved_through_the_upstreams(
    list_server: ListServer, start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    """lists.example.org exists only in dnsmasq (the upstream): the system resolver could not find it."""
    good = names("resolved")
    list_server.serve("/sub.txt", domains(good))
    url = list_server.url("/sub.txt", host="lists.example.org")  # 127.0.0.1, in dnsmasq only
    server = start_filterd(config(dnsmasq, tmp_path / "state", sub_list(url)))
    wait_for(lambda: refreshes(server, Result.UPDATED) >= 1, "a download via a name only the upstream knows")
    assert all(blocked(server, n) for n in good)


async def test_upstream_resolver_against_dnsmasq(dnsmasq: Dnsmasq) -> None:
    resolver = UpstreamDnsResolver([Endpoint("127.0.0.1", dnsmasq.port)], timeout=2)
    [v4] = await resolver.resolve("lists.example.org", 80)
    assert (v4["host"], v4["port"], v4["hostname"]) == ("127.0.0.1", 80, "lists.example.org")
    [alias] = await resolver.resolve("mirror.example.org", 80)  # a CNAME to lists.example.org
    assert alias["host"] == "127.0.0.1"
    both = await resolver.resolve("example.org", 443, family=0)  # type: ignore[arg-type]
    assert sorted(r["host"] for r in both) == ["192.0.2.10", "2001:db8::10"]
    assert [r["host"] for r in await resolver.resolve("::1", 80)] == ["::1"]  # literals need no lookup
    with pytest.raises(OSError, match="NXDOMAIN"):
        await resolver.resolve("nothing-here.example.org")
    dead = UpstreamDnsResolver([Endpoint("127.0.0.1", 9)], timeout=0.5)
    with pytest.raises(OSError, match="no upstream answered"):
        await dead.resolve("lists.example.org")


def test_a_second_instance_on_the_same_state_dir_refuses_to_start(
    list_server: ListServer, start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    list_server.serve("/sub.txt", domains(names("lock")))
    state = tmp_path / "state"
    start_filterd(config(dnsmasq, state, sub_list(list_server.url("/sub.txt"))))
    path = tmp_path / "second.yaml"
    path.write_text(textwrap.dedent(config(dnsmasq, state, sub_list(list_server.url("/sub.txt")))))
    with pytest.raises(StateError, match=f"state_dir {state} is in use by another filterd"):
        asyncio.run(App(load_config(path)).start())


def test_a_state_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    (tmp_path / "file").write_text("not a directory\n")
    cfg = parse_config(
        f"dns: {{listen: ['127.0.0.1:0'], upstreams: ['{dnsmasq.address}']}}\n"
        f"state_dir: {tmp_path}/file/state\nlists: [{{url: 'http://127.0.0.1:9/x.txt'}}]\n",
        "f.yaml",
    )
    with pytest.raises(StateError, match=f"state_dir {tmp_path}/file/state: cannot create"):
        asyncio.run(App(cfg).start())


def _sample(name: str) -> bytes:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/domains-samples not present (only in the development workspace)")
    return (SAMPLES / name).read_bytes()


def test_the_same_public_list_in_three_syntaxes_blocks_the_same_names(
    list_server: ListServer, start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    """The Block List Project's basic list as hosts, domains and adblock files, subscribed by URL."""
    formats = ("hosts", "domains", "adblock")
    for fmt in formats:
        list_server.serve(f"/basic.{fmt}.txt", _sample(f"blocklistproject-basic.{fmt}.txt"))
    lists = "\n".join(
        f"""          - name: basic-{fmt}
            url: {list_server.url(f"/basic.{fmt}.txt")}
            subdomains: true"""
        for fmt in formats
    )
    state = tmp_path / "state"
    cfg = config(dnsmasq, state, lists)
    server = start_filterd(cfg)
    for fmt in formats:
        wait_for(lambda fmt=fmt: refreshes(server, Result.UPDATED, f"basic-{fmt}") >= 1, f"basic-{fmt}", 60)
        # two dynamic-DNS platforms (hopto.org, redirectme.net) would block every user's site: refused
        assert server.metric("filterd_blocklist_entries", list=f"basic-{fmt}") == 76_034
    sets = {
        fmt: {e.name for e in parse_list((state / "lists" / f"basic-{fmt}.txt").read_text()).entries} for fmt in formats
    }
    assert sets["hosts"] - {"hopto.org", "redirectme.net"} == sets["domains"] == sets["adblock"]
    sample = sorted(random.Random(3).sample(sorted(sets["domains"]), 25))
    assert [n for n in sample if not blocked(server, n)] == []

    shut(server)
    list_server.stop()
    again = start_filterd(cfg)
    for fmt in formats:
        assert again.metric("filterd_blocklist_entries", list=f"basic-{fmt}") == 76_034
    assert [n for n in sample if not blocked(again, n)] == []


def test_a_subscription_with_a_builtin_fallback_blocks_from_the_first_second(
    list_server: ListServer, start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    """The README's subscription to the published chat-roulette list: until the first download succeeds the
    built-in list blocks (never an empty list); then the downloaded copy, brand rules and patterns included."""
    list_server.routes["/chat-roulette.txt"] = status(503)
    lists = f"""          - name: chat-roulette
            url: {list_server.url("/chat-roulette.txt")}
            fallback: chat-roulette
            refresh: 1s
            timeout: 1s"""
    server = start_filterd(config(dnsmasq, tmp_path / "state", lists))
    assert blocked(server, "omegle.com") and blocked(server, "omegle.onl")  # the built-in names and brand rules
    assert server.metric("filterd_blocklist_entries", list="chat-roulette") > 200
    wait_for(lambda: refreshes(server, Result.FAILED, "chat-roulette") >= 1, "a failed download")
    assert blocked(server, "omegle.com")  # a failed download changes nothing
    published = b"# category: chat-roulette-video\nnewclone.example.org\nbrandnew.*\n/video-?roulette/\n"
    list_server.serve("/chat-roulette.txt", published)
    wait_for(lambda: refreshes(server, Result.UPDATED, "chat-roulette") >= 1, "the first good download")
    wait_for(lambda: blocked(server, "newclone.example.org"), "the downloaded copy in use")
    assert blocked(server, "brandnew.co.uk") and blocked(server, "www.videoroulette.example")
    assert not blocked(server, "omegle.com")  # the download replaced the fallback
    assert server.metric("filterd_blocklist_entries", list="chat-roulette") == 3
