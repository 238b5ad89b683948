"""The query log and safeguarding alerts with a real server: queries from several loopback clients make the rows;
repeated attempts make one alert, delivered to a local webhook and a local SMTP sink (aiosmtpd); the quiet
period; privacy modes; a read-only state_dir; the report's numbers against the rows."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest

from filterd.querylog.report import build, render_html, render_text
from tests.support import Dnsmasq, RunningFilterd, free_port, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1_796_000_000.0  # 2026-11-30

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


class Webhook:
    def __init__(self) -> None:
        self.received: list[dict[str, object]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                owner.received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/filterd"


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.httpd.shutdown()
    hook.httpd.server_close()


@pytest.fixture
def smtp() -> Iterator[tuple[int, list[object]]]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[object] = []

    class Sink(Message):  # type: ignore[misc]
        def handle_message(self, message: object) -> None:
            received.append(message)

    port = free_port()
    controller = Controller(Sink(), hostname="127.0.0.1", port=port)
    controller.start()
    yield port, received
    controller.stop()


def ask(server: RunningFilterd, name: str, source: str) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0)
    return dns.query.udp(q, "127.0.0.1", port=server.port, source=source, timeout=3)


def config(dnsmasq: Dnsmasq, tmp_path: Path, extra: str) -> str:
    return f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{dnsmasq.address}"]
  records:
    kids-tablet.lan: 127.0.0.2
metrics:
  listen: 127.0.0.1:0
state_dir: {tmp_path / "state"}
groups:
  - name: children
    clients: [kids-tablet.lan, 127.0.0.4]
{extra}
"""


SAFEGUARDING = """
safeguarding:
  alerts:
    - name: chat-roulette-attempts
      categories: [chat-roulette-video, adult-cam-roulette, anonymous-text-chat]
      attempts: 3
      within: 10m
  notify:
    webhook: {webhook}
    email: {{smtp: "127.0.0.1:{smtp}", starttls: false, from: filterd@home.example, to: [parent@home.example]}}
  quiet: 1h
"""


def test_repeated_attempts_make_one_clear_alert_by_webhook_and_email(
    start_filterd: Callable[..., RunningFilterd],
    dnsmasq: Dnsmasq,
    tmp_path: Path,
    clock: Clock,
    webhook: Webhook,
    smtp: tuple[int, list[object]],
) -> None:
    port, mails = smtp
    server = start_filterd(config(dnsmasq, tmp_path, SAFEGUARDING.format(webhook=webhook.url, smtp=port)), clock=clock)
    # a browser retrying one page: once a minute per name counts, so these are 1 attempt, not 4
    for _ in range(4):
        ask(server, "omegle.com", "127.0.0.2")
    assert webhook.received == []
    clock.now += 61
    ask(server, "ome.tv", "127.0.0.2")
    ask(server, "example.org", "127.0.0.3")  # another device, not blocked
    assert webhook.received == []
    clock.now += 61
    ask(server, "chatroulette.com", "127.0.0.2")  # the third attempt within 10 minutes: the alert
    wait_for(lambda: webhook.received and mails, "the alert by webhook and email")
    alert = webhook.received[0]
    assert alert["rule"] == "chat-roulette-attempts"
    assert alert["device"] == {"name": "kids-tablet.lan", "ip": "127.0.0.2", "mac": "", "group": "children"}
    assert sorted(a["name"] for a in alert["attempts"]) == ["chatroulette.com", "ome.tv", "omegle.com"]  # type: ignore[index]
    assert "example.org" not in json.dumps(alert)  # never the device's other browsing
    mail = mails[0]
    assert mail["To"] == "parent@home.example"  # type: ignore[index]
    body = mail.get_payload()  # type: ignore[attr-defined]
    assert "Device: kids-tablet.lan (group children)" in body and "random video chat with strangers" in body
    assert "childline" in body.lower()
    # the quiet period: more attempts within the hour make no second alert
    for name in ["uhmegle.com", "chathub.cam", "shagle.com", "camsurf.com"]:
        clock.now += 61
        ask(server, name, "127.0.0.2")
    time.sleep(0.3)
    assert len(webhook.received) == 1 and len(mails) == 1
    assert server.metric("filterd_safeguarding_alerts_total", rule="chat-roulette-attempts", result="sent") == 2


def test_the_log_has_a_row_per_query_with_who_and_what(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path, "querylog: {retention: 14d}"), clock=clock)
    ask(server, "omegle.com", "127.0.0.2")
    ask(server, "example.org", "127.0.0.3")
    ask(server, "omegle.com", "127.0.0.4")
    assert server.app is not None and server.app.querylog is not None
    rows = server.app.querylog.rows()
    assert [(r.client, r.device, r.group, r.name, r.decision, r.list) for r in reversed(rows)] == [
        ("127.0.0.2", "kids-tablet.lan", "children", "omegle.com", "blocked", "chat-roulette"),
        ("127.0.0.3", "", "", "example.org", "forwarded", ""),
        ("127.0.0.4", "", "children", "omegle.com", "blocked", "chat-roulette"),
    ]
    assert all(r.time == clock.now and r.qtype == "A" and r.ms >= 0 for r in rows)
    assert rows[-1].category == "chat-roulette-video"
    blocked = server.app.querylog.rows(client="127.0.0.2", blocked=True)
    assert [r.name for r in blocked] == ["omegle.com"]
    assert (tmp_path / "state" / "querylog.sqlite").stat().st_mode & 0o777 == 0o600
    # retention: rows older than 14 days go
    clock.now += 15 * 86400
    ask(server, "example.org", "127.0.0.3")
    assert server.app.querylog.prune() == 3
    assert [r.name for r in server.app.querylog.rows()] == ["example.org"]
    # a device's records deleted on request
    assert server.app.querylog.delete_client("127.0.0.3") == 1
    assert server.app.querylog.rows() == []


def test_answers_from_the_packet_cache_are_logged_with_their_count(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> None:
    """Repeated questions, answered from the packet cache after their first or second time, are each in the log:
    counted, by client, name and answer, as rows with a count."""
    server = start_filterd(config(dnsmasq, tmp_path, "querylog: {retention: 14d}"), clock=clock)
    for _ in range(6):
        ask(server, "omegle.com", "127.0.0.2")
        ask(server, "example.org", "127.0.0.2")
        ask(server, "omegle.com", "127.0.0.3")
    assert server.app is not None and server.app.querylog is not None
    counted: dict[tuple[str, str], int] = {}
    for row in server.app.querylog.rows(limit=None):
        key = (row.client, row.name)
        counted[key] = counted.get(key, 0) + row.count
        assert row.decision == ("blocked" if row.name == "omegle.com" else "forwarded"), row  # (dnsmasq's TTL: 0)
    assert counted == {("127.0.0.2", "omegle.com"): 6, ("127.0.0.3", "omegle.com"): 6, ("127.0.0.2", "example.org"): 6}
    fast = server.app.handler.fast
    assert fast is not None and fast.hits == 8  # a blocked answer is kept at its second time: 4 hits a client


@pytest.mark.parametrize(
    ("privacy", "expected"),
    [
        ("hash-clients", ["h:", "h:"]),
        ("blocked-only", ["127.0.0.2"]),
        ("off", []),
    ],
)
def test_privacy_modes(
    start_filterd: Callable[..., RunningFilterd],
    dnsmasq: Dnsmasq,
    tmp_path: Path,
    clock: Clock,
    privacy: str,
    expected: list[str],
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path, f"querylog: {{privacy: {privacy}}}"), clock=clock)
    ask(server, "omegle.com", "127.0.0.2")
    ask(server, "example.org", "127.0.0.3")
    assert server.app is not None
    if privacy == "off":
        assert server.app.querylog is None
        return
    assert server.app.querylog is not None
    rows = server.app.querylog.rows()
    clients = [r.client[:2] if privacy == "hash-clients" else r.client for r in rows]
    assert clients == expected
    if privacy == "hash-clients":
        assert all("127.0.0" not in r.client and "kids" not in r.device for r in rows)
        mine = server.app.querylog.rows(client="127.0.0.2")  # the admin can still ask by address
        assert [r.name for r in mine] == ["omegle.com"]


def test_a_read_only_state_dir_costs_the_log_not_the_answers(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path, "querylog: {retention: 1d}"), clock=clock)
    assert server.app is not None and server.app.querylog is not None
    log_file = tmp_path / "state" / "querylog.sqlite"
    ask(server, "example.org", "127.0.0.3")
    server.app.querylog.flush()
    server.app.querylog.path = tmp_path / "missing" / "dir-is-a-file" / "q.sqlite"
    (tmp_path / "missing").write_text("not a directory")
    server.app.querylog._db = None  # as after a failed batch: the next one reconnects
    for _ in range(3):
        assert ask(server, "omegle.com", "127.0.0.2").answer  # still answered
    server.app.querylog.flush()
    assert server.app.querylog.stats.failed == 3
    assert server.metric("filterd_querylog_rows_total", result="failed") == 3
    assert log_file.exists()  # the rows written before the failure are still there


def test_the_report_counts_what_the_log_holds(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path, "querylog: {retention: 14d}"), clock=clock)
    for name in ["omegle.com", "ome.tv", "use-application-dns.net", "example.org"]:
        ask(server, name, "127.0.0.2")
    ask(server, "omegle.com", "127.0.0.3")
    assert server.app is not None and server.app.querylog is not None
    rows = server.app.querylog.rows(limit=None)
    report = build(rows, [], clock.now - 7 * 86400, clock.now)
    assert report.queries == 5 and report.blocked == 4
    kid = report.devices["127.0.0.2"]
    assert (kid.label, kid.group, kid.blocked, kid.bypass) == ("kids-tablet.lan", "children", 3, 1)
    assert kid.by_category["chat-roulette-video"] == 2 and sum(kid.by_hour) == 3
    assert report.top_blocked[0] == ("omegle.com", 2)
    text = render_text(report)
    assert "kids-tablet.lan (127.0.0.2): 3 blocked, 1 bypass attempts" in text
    page = render_html(report)
    assert "<svg" in page and "<script" not in page and "http" not in page.split("<body>")[1].replace("http-equiv", "")


def test_the_cli_shows_the_log_the_report_and_suggestions(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    import subprocess
    import sys

    text = config(dnsmasq, tmp_path, f"admin:\n  listen: 127.0.0.1:{free_port()}")
    server = start_filterd(text)
    for name in ["omegle.com", "example.org", "www.example.org"]:
        ask(server, name, "127.0.0.2")
    ask(server, "omeglle.com", "127.0.0.3")  # forwarded (dnsmasq refuses it), one letter from the brand
    ask(server, "omeglle.com", "127.0.0.3")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        run = [sys.executable, "-m", "filterd", "--config", str(server.config_path), *args]
        return subprocess.run(run, capture_output=True, text=True, timeout=60)

    shown = cli("log", "--client", "127.0.0.2")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 3 and "kids-tablet.lan [children] omegle.com A: blocked by chat-roulette" in lines[-1]
    blocked = json.loads(cli("log", "--blocked", "--since", "1h", "--json").stdout)
    assert [row["name"] for row in blocked] == ["omegle.com"]
    page = tmp_path / "week.html"
    report = cli("report", "--since", "7d", "--html", str(page))
    assert "kids-tablet.lan (127.0.0.2): 1 blocked, 0 bypass attempts" in report.stdout
    assert page.read_text().startswith("<!DOCTYPE html>")
    suggested = cli("lists", "suggest", "--json")
    assert json.loads(suggested.stdout) == [
        {"name": "omeglle.com", "lookups": 2, "reason": "one letter away from the brand omegle"}
    ]
    deleted = cli("log", "--client", "127.0.0.2", "--delete")
    assert deleted.stdout.strip() == "127.0.0.2: 3 query log rows deleted (and its alerts)"
    assert cli("log", "--client", "127.0.0.2").stdout == ""


def test_repeats_within_a_write_interval_are_one_row_with_a_count(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path, "querylog: {retention: 14d}"), clock=clock)
    assert server.app is not None and server.app.querylog is not None
    server.app.querylog.flush()
    for _ in range(5):
        ask(server, "omegle.com", "127.0.0.2")
    ask(server, "omegle.com", "127.0.0.3")
    rows = server.app.querylog.rows()
    assert sorted((r.client, r.name, r.count) for r in rows) == [
        ("127.0.0.2", "omegle.com", 5),
        ("127.0.0.3", "omegle.com", 1),
    ]
    report = build(rows, [], clock.now - 60, clock.now)
    assert report.blocked == 6 and report.devices["127.0.0.2"].blocked == 5
