"""What hostile or broken clients do to filterd's log and web servers: `filterd serve` run as an admin runs it,
floods of malformed requests and reset connections on loopback, and its stderr read line by line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from filterd import cli
from filterd.config.load import load_config
from filterd.logs import ClientEvents
from filterd.metrics import Metrics
from filterd.web.runner import HttpRunner
from tests.support import Dnsmasq, RunningFilterd, free_port, query

FILTERD = [sys.executable, "-m", "filterd"]
#: How every line filterd writes begins.
STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")

#: Requests aiohttp cannot parse, each on its own connection.
MALFORMED = [
    b"GET /\x00bad HTTP/1.1\r\nHost: omegle.com\r\n\r\n",  # a NUL in the path
    b"BLAH\r\n\r\n",  # not HTTP at all
    b"GET / HTTP/1.1\r\nHost: omegle.com\r\nBad Header\r\n\r\n",  # a header line without a colon
    b"GET / HTTP/9.Z\r\n\r\n",  # a version that is none
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello on the HTTP port
]


class Served:
    """`filterd serve` in a subprocess with DNS, metrics, the block page and the admin API on loopback ports."""

    def __init__(self, tmp_path: Path, dnsmasq: Dnsmasq) -> None:
        self.dns, self.metrics, self.blockpage, self.admin = (free_port() for _ in range(4))
        self.state = tmp_path / "state"
        self.config = tmp_path / "filterd.yaml"
        self.config.write_text(f"""
dns:
  listen: ["127.0.0.1:{self.dns}"]
  upstreams: ["{dnsmasq.address}"]
state_dir: {self.state}
metrics: {{listen: "127.0.0.1:{self.metrics}"}}
blockpage: {{listen: ["127.0.0.1:{self.blockpage}"]}}
admin: {{listen: "127.0.0.1:{self.admin}"}}
""")
        self.proc: subprocess.Popen[str] | None = None
        self.err = ""

    def start(self) -> None:
        self.proc = subprocess.Popen([*FILTERD, "serve", "-c", str(self.config)], stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"filterd exited: {self.proc.communicate()[1]}")
            try:
                query("example.org", "A", self.dns, timeout=0.2)
                with socket.create_connection(("127.0.0.1", self.admin), timeout=0.2):
                    return
            except Exception:
                time.sleep(0.1)
        raise AssertionError("filterd did not start")

    def stop(self) -> list[str]:
        """SIGTERM; every line it wrote to stderr."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.err = self.proc.communicate(timeout=15)[1]
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.err = self.proc.communicate()[1]
        return self.err.splitlines()

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


@pytest.fixture
def served(tmp_path: Path, dnsmasq: Dnsmasq) -> Iterator[Served]:
    server = Served(tmp_path, dnsmasq)
    server.start()
    yield server
    server.stop()
    assert server.proc is not None and server.proc.returncode == 0, server.err


def raw(port: int, request: bytes) -> bytes:
    """Send bytes as they are and read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


def _head_and_body(response: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_2000_malformed_requests_are_two_lines_and_a_count(served: Served) -> None:
    """The probe's 2,000 bad requests logged 38,000 lines of tracebacks; now the first is one line, the count of
    the rest another (at stop, as the interval has not ended), and each is answered with the bare status."""
    for i in range(2000):
        port = (served.blockpage, served.metrics, served.admin)[i % 3]
        request = MALFORMED[i % len(MALFORMED)]
        response = raw(port, request)
        status, *headers = _head_and_body(response)[0]
        assert status.startswith(b"HTTP/1.") and b" 400 " in status, (request, response)
        assert b"Server: filterd" in headers and not any(b"aiohttp" in h or b"Python" in h for h in headers)
        assert _head_and_body(response)[1] == b"400 Bad Request\n"  # never the request echoed
    assert served.metric("filterd_client_events_total", event="http_bad_request") == 2000
    lines = served.stop()
    assert all(STAMPED.match(line) for line in lines), [line for line in lines if not STAMPED.match(line)]
    # (no traceback, and nothing of uvloop's own: the ready line's "event loop: uvloop" is filterd's)
    assert not [line for line in lines if "Traceback" in line or "uvloop" in line.replace("event loop: uvloop", "")]
    bad = [line for line in lines if "malformed HTTP request" in line]
    assert len(bad) == 2, bad
    assert re.search(r"(blockpage|metrics|admin): a malformed HTTP request from 127\.0\.0\.1 \(answered 400\)", bad[0])
    assert "1999 more malformed HTTP requests (answered 400) since " in bad[1]
    assert len(lines) < 20  # start, the two, stop


def test_a_non_ascii_authorization_header_is_a_401(served: Served) -> None:
    token = (served.state / "admin.token").read_text().strip()
    for value in ("Bearer \u00e9\u00e9".encode("latin-1"), "Bearer \u00e9".encode(), b"Bearer \xff\xfe", b"\x80"):
        request = b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: " + value + b"\r\n\r\n"
        response = raw(served.admin, request)
        head, body = _head_and_body(response)
        assert head[0].startswith(b"HTTP/1.1 401 "), response
        assert json.loads(body) == {"error": "missing or wrong admin token"}
    request = urllib.request.Request(f"http://127.0.0.1:{served.admin}/api/status")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200 and response.headers["Server"] == "filterd"
    assert served.metric("filterd_client_events_total", event="admin_unauthorized") == 4
    lines = served.stop()
    assert not [line for line in lines if "Traceback" in line or " 500" in line]
    refused = [line for line in lines if "admin: refused" in line]
    assert len(refused) == 1 and "GET /api/status from 127.0.0.1: missing or wrong token" in refused[0]
    assert sum("3 more admin API requests without the right token" in line for line in lines) == 1


def test_clients_that_reset_tcp_connections_leave_no_trace_in_the_log(served: Served) -> None:
    """The probe's reset TCP clients made 20,615 untimestamped `socket.send() raised exception.` lines."""
    q = dns.message.make_query("omegle.com", "A").to_wire()
    queries = (struct.pack("!H", len(q)) + q) * 200
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", served.dns), timeout=5) as sock:
            sock.sendall(queries)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    time.sleep(0.5)
    assert query("omegle.com", "A", served.dns, tcp=True).answer  # still serving
    lines = served.stop()
    assert all(STAMPED.match(line) for line in lines), [line for line in lines if not STAMPED.match(line)]
    assert not [line for line in lines if "socket.send()" in line]
    assert len(lines) < 20


def test_normal_answers_name_no_library_or_version(served: Served) -> None:
    for port, path in ((served.metrics, "/metrics"), (served.metrics, "/nowhere"), (served.blockpage, "/")):
        response = raw(port, f"GET {path} HTTP/1.1\r\nHost: omegle.com\r\nConnection: close\r\n\r\n".encode())
        head = _head_and_body(response)[0]
        assert b"Server: filterd" in head and not any(b"aiohttp" in h or b"Python" in h for h in head), head


async def test_a_handler_that_fails_logs_its_traceback_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """A 500 is filterd's own bug, triggered by a client: its traceback is logged, but not once per request."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    caplog.set_level(logging.INFO)
    metrics = Metrics(CollectorRegistry(), "test")
    app = web.Application()
    app.router.add_get("/", broken)
    runner = HttpRunner(app, "test", ClientEvents(metrics.client_events))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await reader.read()
            writer.close()
            head, body = _head_and_body(response)
            assert head[0] == b"HTTP/1.1 500 Internal Server Error" and body == b"500 Internal Server Error\n"
            assert b"Server: filterd" in head
    finally:
        await runner.cleanup()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None and "a bug" in str(errors[0].exc_info[1])
    assert metrics.registry.get_sample_value("filterd_client_events_total", {"event": "http_server_error"}) == 20


def test_a_traceback_does_not_begin_with_uvloops_import_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without uvloop the server ran inside `except ImportError:`, so every traceback began with
    `ModuleNotFoundError: No module named 'uvloop'`."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError, installed or not

    async def failing(config: object, early: object = None) -> None:
        raise RuntimeError("failed while serving")

    monkeypatch.setattr(cli, "serve", failing)
    config = tmp_path / "c.yaml"
    config.write_text("dns:\n  listen: ['127.0.0.1:0']\n")
    with pytest.raises(RuntimeError) as info:
        cli.run_serve(load_config(config))
    assert info.value.__context__ is None
    assert "No module named" not in "".join(traceback.format_exception(info.value))


def test_a_token_file_others_can_read_is_made_0600_with_a_warning(
    tmp_path: Path, dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "state" / "admin.token"
    token_file.parent.mkdir()
    token_file.write_text("my-token\n")
    os.chmod(token_file, 0o644)
    config = tmp_path / "filterd.yaml"
    config.write_text(f"""
dns: {{listen: ["127.0.0.1:0"], upstreams: ["{dnsmasq.address}"]}}
state_dir: {tmp_path / "state"}
admin: {{listen: "127.0.0.1:{free_port()}"}}
""")
    caplog.set_level(logging.INFO, logger="filterd")
    server = RunningFilterd(config)
    server.start()
    try:
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert token_file.read_text() == "my-token\n"  # the same token, only its mode changed
    finally:
        server.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"admin.token_file {token_file} had mode 0644: other users could read the admin token; set it to 0600"
    ]
