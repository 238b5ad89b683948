"""Client events: every one counted, one log line an interval for each kind, with a timestamp."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from filterd import logs
from filterd.logs import CLIENT_EVENTS, ClientEvents, printable
from filterd.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _events(clock: Clock | None = None) -> tuple[ClientEvents, Metrics]:
    metrics = Metrics(CollectorRegistry(), "test")
    return ClientEvents(metrics.client_events, clock=clock or Clock()), metrics


def _count(metrics: Metrics, event: str) -> float:
    value = metrics.registry.get_sample_value("filterd_client_events_total", {"event": event})
    assert value is not None
    return value


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "filterd.clients"]


def test_every_label_is_exported_from_the_start() -> None:
    _, metrics = _events()
    assert all(_count(metrics, event) == 0 for event in CLIENT_EVENTS)


def test_one_line_an_interval_and_a_count_of_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="filterd.clients")
    clock = Clock()
    events, metrics = _events(clock)
    for _ in range(2000):
        events.note("http_bad_request", "blockpage: a malformed request from %s", "192.0.2.7")
        clock.now += 0.001  # 2 s in all: within the interval
    assert _count(metrics, "http_bad_request") == 2000
    assert _lines(caplog) == [
        "blockpage: a malformed request from 192.0.2.7 "
        "[filterd_client_events_total{event=http_bad_request}; logged at most once every 60s]"
    ]
    clock.now += 60
    events.note("http_bad_request", "blockpage: a malformed request from %s", "192.0.2.8")
    last = _lines(caplog)[-1]
    assert re.fullmatch(
        r"blockpage: a malformed request from 192\.0\.2\.8 \(and 1999 more since \d\d:\d\d:\d\d\) \[.*\]", last
    )
    events.note("http_bad_request", "again")  # within the new interval: counted only
    events.flush()  # at stop: what went unlogged is said
    assert _lines(caplog)[-1].startswith("1 more malformed HTTP requests (answered 400) since ")
    assert len(_lines(caplog)) == 3
    assert _count(metrics, "http_bad_request") == 2002


def test_kinds_are_limited_separately(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="filterd.clients")
    events, metrics = _events()
    for _ in range(3):
        events.note("http_bad_request", "bad")
        events.note("admin_unauthorized", "token")
    assert _lines(caplog) == [
        "bad [filterd_client_events_total{event=http_bad_request}; logged at most once every 60s]",
        "token [filterd_client_events_total{event=admin_unauthorized}; logged at most once every 60s]",
    ]
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
    assert _count(metrics, "admin_unauthorized") == 3


async def test_in_a_running_loop_the_count_comes_when_the_interval_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="filterd.clients")
    metrics = Metrics(CollectorRegistry(), "test")
    events = ClientEvents(metrics.client_events, interval=0.2)
    for _ in range(10):
        events.note("write_after_close", "dropped")
    await asyncio.sleep(0.4)
    lines = _lines(caplog)
    assert len(lines) == 2 and lines[1].startswith("9 more replies to connections the client had already closed")
    events.flush()
    assert len(_lines(caplog)) == 2  # nothing was pending


async def test_asyncio_write_to_a_reset_connection_is_one_counted_event(caplog: pytest.LogCaptureFixture) -> None:
    """asyncio logs `socket.send() raised exception.` for every write to a connection that is gone (after the
    fifth): with the filter on, the writes are counted and logged once, asyncio's own line never appears."""
    caplog.set_level(logging.INFO)
    events, metrics = _events()
    gone = asyncio.Event()
    transports: list[asyncio.Transport] = []

    class Server(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            transports.append(transport)

        def connection_lost(self, exc: Exception | None) -> None:
            gone.set()

    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, "127.0.0.1", 0)
    asyncio_logger = logging.getLogger("asyncio")
    others = list(asyncio_logger.filters)  # a server started by an earlier test in this process may still have one
    for other in others:
        asyncio_logger.removeFilter(other)
    filter_ = events.asyncio_filter()
    asyncio_logger.addFilter(filter_)
    try:
        with socket.create_connection(server.sockets[0].getsockname()[:2]) as client:
            client.sendall(b"x")
            while not transports:
                await asyncio.sleep(0.01)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        while not gone.is_set():
            transports[0].write(b"reply")  # a reply for a client that has gone
            await asyncio.sleep(0.01)
        for _ in range(100):
            transports[0].write(b"reply")
    finally:
        asyncio_logger.removeFilter(filter_)
        for other in others:
            asyncio_logger.addFilter(other)
        server.close()
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert _count(metrics, "write_after_close") >= 95  # asyncio stays silent for the first five
    assert len(_lines(caplog)) == 1 and "closed or reset" in _lines(caplog)[0]


def test_setup_puts_a_timestamp_on_every_logger(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("filterd").level)
    asyncio_logger = logging.getLogger("asyncio")
    others = list(asyncio_logger.filters)  # a server started by an earlier test in this process may still have one
    for other in others:
        asyncio_logger.removeFilter(other)
    try:
        logs.setup()
        logs.setup()  # twice: still one handler of ours
        logging.getLogger("filterd.test").info("ours")
        logging.getLogger("asyncio").warning("socket.send() raised exception.")
        logging.getLogger("aiohttp.server").error("theirs")
        logging.getLogger("aiohttp.server").info("not shown: other libraries from WARNING")
    finally:
        root.handlers[:], level, own = saved
        root.setLevel(level)
        logging.getLogger("filterd").setLevel(own)
        for other in others:
            asyncio_logger.addFilter(other)
    lines = capsys.readouterr().err.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    assert len(lines) == 3
    assert re.fullmatch(stamp + "INFO filterd.test: ours", lines[0])
    assert re.fullmatch(stamp + r"WARNING asyncio: socket\.send\(\) raised exception\.", lines[1])
    assert re.fullmatch(stamp + "ERROR aiohttp.server: theirs", lines[2])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Invalid method encountered:\n\n  b'BLAH'\n    ^", "Invalid method encountered:"),
        ("a\x1b[31mred\x00", "a?[31mred?"),
        ("x" * 150, "x" * 100 + "..."),
        ("", ""),
    ],
)
def test_printable(text: str, expected: str) -> None:
    assert printable(text) == expected


async def test_asyncio_tls_write_after_close_is_a_counted_event(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Over TLS (DoT, DoH, the HTTPS block page) asyncio's line is `SSL connection is closed`, once per write after
    the client ended the session: a client closing mid-reply must not fill the log (an HTTP/2 flood did, a line
    per write)."""
    import ssl

    from tests.support_tls import client_context, make_pki

    pki = make_pki(tmp_path / "pki")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki.cert, pki.key)
    caplog.set_level(logging.INFO)
    events, metrics = _events()
    writers: list[asyncio.StreamWriter] = []
    ended = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read()  # until the client's close_notify
        ended.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    asyncio_logger = logging.getLogger("asyncio")
    others = list(asyncio_logger.filters)
    for other in others:
        asyncio_logger.removeFilter(other)
    filter_ = events.asyncio_filter()
    asyncio_logger.addFilter(filter_)
    try:
        port = server.sockets[0].getsockname()[1]
        _, client = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(pki.ca), server_hostname="dns.test"
        )
        while not writers:
            await asyncio.sleep(0.01)
        client.close()  # close_notify: the server's side of the session is shutting down
        await asyncio.wait_for(ended.wait(), 5)
        for _ in range(50):
            writers[0].write(b"late reply")
    finally:
        asyncio_logger.removeFilter(filter_)
        for other in others:
            asyncio_logger.addFilter(other)
        server.close()
    assert not [r for r in caplog.records if r.name == "asyncio"], [r.getMessage() for r in caplog.records]
    assert _count(metrics, "write_after_close") >= 40
