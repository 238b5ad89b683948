"""The admin page over real HTTP (http.client, cookies as a browser keeps them), against a running filterd whose
query log is filled by real DNS queries from 127.0.0.x: login, expiry, logout, the rate limit on wrong tokens,
CSRF, every page and every action, and the escaping of what comes from the log."""

from __future__ import annotations

import http.client
import logging
import random
import re
import socket
import textwrap
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import dns.message
import dns.name
import dns.query
import dns.rcode
import pytest

from filterd.querylog.record import Record
from filterd.web.dashboard import local_midnight, overview
from tests.support import Dnsmasq, RunningFilterd, addresses

Start = Callable[..., RunningFilterd]
KIDS = "127.0.0.2"  # kids-tablet.lan, in group children
OTHER = "127.0.0.3"
SINKHOLE = ["127.0.0.1"]  # blocking.mode sinkhole, the default: a blocked name's address


class Reply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: str) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")


class Page:
    """One browser: keeps the session cookie as sent (Max-Age, deletion), never follows redirects."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.port, self.source = port, source
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(
        self, method: str, path: str, fields: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20, source_address=(self.source, 0))
        try:
            sent = dict(headers or {})
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            body = None
            if fields is not None:
                body = urlencode(fields)
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8")
            for raw in response.headers.get_all("Set-Cookie") or []:
                self.set_cookies.append(raw)
                for key, morsel in SimpleCookie(raw).items():
                    if morsel["max-age"] == "0" or not morsel.value:
                        self.cookies.pop(key, None)
                    else:
                        self.cookies[key] = morsel.value
            return Reply(response.status, response.headers, text)
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post(self, path: str, **fields: str) -> Reply:
        return self.request("POST", path, fields)

    def login(self, token: str) -> Reply:
        return self.post("/login", token=token)

    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.get("/").body)
        assert found, "no CSRF token on the overview"
        return found.group(1)


def ask(server: RunningFilterd, name: str | dns.name.Name, source: str = KIDS) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=server.port, source=source, timeout=3)


def wait_for_log(server: RunningFilterd, name: str, timeout: float = 5.0) -> None:
    """Until the query log holds a row for `name` (its writer batches once a second)."""
    assert server.app is not None and server.app.querylog is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(row.name == name for row in server.app.querylog.rows(limit=200)):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never reached the query log")


CONFIG = """
    dns:
      listen: ["127.0.0.1:0"]
      upstreams: ["{upstream}"]
      records: {{kids-tablet.lan: {kids}}}
    state_dir: {state}
    admin:
      listen: 127.0.0.1:0
      {admin_extra}
    querylog: {querylog}
    lists:
      - builtin: chat-roulette
      - {{name: extra, path: {extra}}}
    groups:
      - {{name: children, clients: [kids-tablet.lan], schedules: [bedtime]}}
    schedules:
      bedtime: {{when: ["mon 03:00-03:01"], block: all}}
    safeguarding:
      alerts:
        - {{name: roulette-tries, categories: [chat-roulette-video], attempts: 2, within: 10m}}
"""


def start_console(
    start_filterd: Start,
    dnsmasq: Dnsmasq,
    tmp_path: Path,
    admin_extra: str = "",
    querylog: str = "{retention: 14d}",
    **options: object,
) -> tuple[RunningFilterd, Page, str]:
    extra = tmp_path / "extra.txt"
    extra.write_text("# category: games\ngames.example\n")
    text = CONFIG.format(
        upstream=dnsmasq.address,
        kids=KIDS,
        state=tmp_path / "state",
        extra=extra,
        admin_extra=admin_extra,
        querylog=querylog,
    )
    server = start_filterd(textwrap.dedent(text), **options)
    assert server.app is not None and server.app.listening.admin is not None
    token = (tmp_path / "state" / "admin.token").read_text().strip()
    return server, Page(server.app.listening.admin.port), token


@pytest.fixture
def console(start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path) -> tuple[RunningFilterd, Page, str]:
    return start_console(start_filterd, dnsmasq, tmp_path)


def test_every_page_needs_a_login(console: tuple[RunningFilterd, Page, str]) -> None:
    server, page, _ = console
    for path in ("/", "/log", "/check?name=omegle.com", "/lists", "/groups", "/safeguarding", "/report"):
        reply = page.get(path)
        assert (reply.status, reply.location) == (302, "/login"), path
    assert page.get("/log/live").status == 401
    for path in ("/allow", "/block", "/reset", "/lists/update", "/logout"):
        reply = page.post(path, name="video.omegle.com", csrf="x")
        assert reply.status == 401 and "Log in" in reply.body, path
    form = page.get("/login")
    assert form.status == 200 and 'name="token"' in form.body and 'type="password"' in form.body
    assert addresses(ask(server, "video.omegle.com")) == SINKHOLE  # nothing was allowed


def test_login_sets_a_strict_httponly_cookie_and_logout_ends_the_session(
    console: tuple[RunningFilterd, Page, str],
) -> None:
    _, page, token = console
    reply = page.login(token)
    assert (reply.status, reply.location) == (303, "/")
    cookie = page.set_cookies[-1]
    assert cookie.startswith("filterd_session=")
    for attribute in ("HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"):
        assert attribute in cookie, cookie
    assert token not in cookie
    overview = page.get("/")
    assert overview.status == 200 and "Queries today" in overview.body
    assert "Log out" in overview.body
    assert page.get("/login").status == 302  # logged in already
    stolen = dict(page.cookies)
    assert page.post("/logout").status == 403  # no CSRF token: still logged in
    assert page.get("/").status == 200
    reply = page.post("/logout", csrf=page.csrf())
    assert (reply.status, reply.location) == (303, "/login")
    assert page.cookies == {}
    page.cookies = stolen  # the old cookie, replayed: the session is gone on the server
    assert page.get("/").status == 302


def test_a_session_expires_after_session_ttl(start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    shift = [0.0]
    _, page, token = start_console(
        start_filterd, dnsmasq, tmp_path, admin_extra="session_ttl: 1h", clock=lambda: time.time() + shift[0]
    )
    assert page.login(token).status == 303
    assert "Max-Age=3600" in page.set_cookies[-1]
    shift[0] = 3500
    assert page.get("/").status == 200
    shift[0] = 3601
    reply = page.get("/")
    assert (reply.status, reply.location) == (302, "/login")


def test_the_page_works_behind_an_https_reverse_proxy(console: tuple[RunningFilterd, Page, str]) -> None:
    """The README's advice for a school: an HTTPS proxy in front passes the browser's Host, but its Origin says
    https:// while filterd itself is spoken to in http://; the same host is still this page."""
    _server, page, token = console
    proxied = {"Host": "filter.school.example", "Origin": "https://filter.school.example"}
    login = page.request("POST", "/login", {"token": token}, headers=proxied)
    assert login.status == 303 and "filterd_session" in page.cookies
    csrf = page.csrf()
    reply = page.request("POST", "/block", {"name": "games2.example", "csrf": csrf}, headers=proxied)
    assert reply.status == 303
    other_site = {"Host": "filter.school.example", "Origin": "https://evil.example"}
    reply = page.request("POST", "/reset", {"name": "games2.example", "csrf": csrf}, headers=other_site)
    assert reply.status == 403


def test_wrong_tokens_are_limited_per_client(console: tuple[RunningFilterd, Page, str]) -> None:
    server, page, token = console
    foreign = page.request("POST", "/login", {"token": token}, headers={"Origin": "http://evil.example"})
    assert foreign.status == 403 and "filterd_session" not in page.cookies
    for _ in range(5):
        reply = page.login("not-the-token")
        assert reply.status == 401 and "not the admin token" in reply.body
        assert "filterd_session" not in page.cookies
    reply = page.login(token)  # even the right one, for the rest of the window
    assert reply.status == 429 and int(reply.headers["Retry-After"]) > 200
    assert "filterd_session" not in page.cookies
    other = Page(page.port, source=OTHER)  # another device is not locked out
    assert other.login(token).status == 303
    assert other.get("/").status == 200
    assert server.app is not None
    assert server.app.metrics.client_events.labels(event="admin_unauthorized")._value.get() >= 5


def test_the_json_api_is_unchanged(console: tuple[RunningFilterd, Page, str]) -> None:
    _, page, token = console
    page.login(token)
    assert page.get("/api/status").status == 401  # a page session is no API token
    api = Page(page.port)
    reply = api.request("GET", "/api/check?name=omegle.com", headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 200 and '"decision": "blocked"' in reply.body
    assert api.request("GET", "/api/nowhere", headers={"Authorization": "Bearer x"}).status == 401


def test_a_blocked_attempt_is_on_the_log_and_allow_unblocks_it(console: tuple[RunningFilterd, Page, str]) -> None:
    server, page, token = console
    assert addresses(ask(server, "video.omegle.com")) == SINKHOLE  # blocked
    wait_for_log(server, "video.omegle.com")
    page.login(token)
    log = page.get("/log?" + urlencode({"decision": "blocked", "device": "kids-tablet.lan"}))
    assert log.status == 200
    assert "video.omegle.com" in log.body and "kids-tablet.lan" in log.body and "children" in log.body
    assert "blocked by chat-roulette" in log.body
    assert page.get("/log?" + urlencode({"device": OTHER})).body.count("video.omegle.com") == 0
    back = "/log?decision=blocked"
    # without the form's token, or from another origin: refused, nothing changes
    assert page.post("/allow", name="video.omegle.com", back=back).status == 403
    csrf = page.csrf()
    foreign = page.request(
        "POST", "/allow", {"name": "video.omegle.com", "csrf": csrf}, headers={"Origin": "http://evil.example"}
    )
    assert foreign.status == 403
    assert page.get("/allow?name=video.omegle.com").status == 405  # no action from a GET
    assert addresses(ask(server, "video.omegle.com")) == SINKHOLE
    reply = page.post("/allow", name="video.omegle.com", csrf=csrf, back=back)
    assert (reply.status, reply.location) == (303, back)
    after = page.get(back).body
    assert "video.omegle.com: allowed" in after  # the result, shown once
    assert "video.omegle.com: allowed" not in page.get(back).body
    # the logged row still says what happened then, and what filterd does now (`filterd check`'s words)
    assert "blocked by chat-roulette" in after and "Now: allowed by the local entry video.omegle.com" in after
    assert 'aria-label="Block video.omegle.com"' in after
    assert addresses(ask(server, "video.omegle.com")) == ["192.0.2.66"]  # forwarded now
    api = Page(page.port).request("GET", "/api/lists", headers={"Authorization": f"Bearer {token}"})
    assert '"video.omegle.com"' in api.body  # the same local entries the CLI shows
    lists = page.get("/lists")
    assert "video.omegle.com" in lists.body
    reply = page.post("/reset", name="video.omegle.com", csrf=csrf, back="//evil.example/")
    assert (reply.status, reply.location) == (303, "/lists")  # only a path on this server
    for sneaky in ("/\t/evil.example/", "/\n/evil.example/", "/\x0b/evil.example/"):  # browsers drop tabs, newlines
        reply = page.post("/reset", name="video.omegle.com", csrf=csrf, back=sneaky)
        assert (reply.status, reply.location) == (303, "/lists"), sneaky
    assert addresses(ask(server, "video.omegle.com")) == SINKHOLE
    assert page.post("/block", name="example.org", csrf=csrf).status == 303
    assert addresses(ask(server, "example.org")) == SINKHOLE
    assert page.post("/block", name="not a name!", csrf=csrf).status == 303
    assert "not a name!: not blocked:" in page.get("/lists").body


def test_names_from_the_log_are_escaped(console: tuple[RunningFilterd, Page, str]) -> None:
    server, page, token = console
    # labels are bytes on the wire: filterd logs these two as they are (markup characters included)
    marked = ["<i>kid</i>.omegle.com", 'q"r&s.example.org']
    for text in marked:
        ask(server, dns.name.Name([*(label.encode() for label in text.split(".")), b""]))
    for text in marked:
        wait_for_log(server, text)
    page.login(token)
    body = page.get("/log").body
    assert "<i>kid" not in body and 'q"r' not in body
    assert "&lt;i&gt;kid&lt;/i&gt;.omegle.com" in body  # shown as text
    assert 'value="q&#34;r&amp;s.example.org"' in body  # the Block button's hidden field stays one attribute
    assert body.count("<form") == body.count("</form>")
    check = page.get("/check?" + urlencode({"name": "<b>x</b>", "client": '"><script>'})).body
    assert "<b>x</b>" not in check and "<script>" not in check and "&lt;b&gt;x&lt;/b&gt;" in check


def test_the_live_log_streams_new_rows(console: tuple[RunningFilterd, Page, str]) -> None:
    server, page, token = console
    page.login(token)
    conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=10)
    path = "/log/live?" + urlencode({"after": time.time(), "device": "kids-tablet.lan"})
    conn.request("GET", path, headers={"Cookie": f"filterd_session={page.cookies['filterd_session']}"})
    response = conn.getresponse()
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
    ask(server, "ome.tv")
    ask(server, "chatroulette.com", source=OTHER)  # another device: not on this stream
    seen = b""
    deadline = time.monotonic() + 10
    while not (b"ome.tv" in seen and seen.endswith(b"</tr>\n\n")) and time.monotonic() < deadline:
        seen += response.readline()
    conn.close()
    assert b"event: row" in seen and b"ome.tv" in seen and b"kids-tablet.lan" in seen
    assert b"chatroulette.com" not in seen
    assert b'name="csrf"' in seen  # the row's Allow button works like the page's own


def test_a_live_log_left_by_its_browser_ends_quietly(
    console: tuple[RunningFilterd, Page, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, page, token = console
    page.login(token)
    conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=10)
    conn.request("GET", "/log/live", headers={"Cookie": f"filterd_session={page.cookies['filterd_session']}"})
    response = conn.getresponse()
    assert response.status == 200
    response.readline()  # the stream has begun (its first comment)
    conn.sock.close()  # the parent closes the tab: the next row has nowhere to go
    conn.close()
    ask(server, "ome.tv")
    wait_for_log(server, "ome.tv")
    time.sleep(2.5)  # the stream looks for rows once a second
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failed, failed  # not "a request failed (answered 500)" with a traceback each time


def test_the_overview_is_counted_by_sqlite_not_row_by_row(
    console: tuple[RunningFilterd, Page, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, page, token = console
    assert server.app is not None and server.app.querylog is not None
    querylog = server.app.querylog
    now = time.time()
    midnight = local_midnight(now)
    rng = random.Random(19)
    for _ in range(3000):
        blocked = rng.random() < 0.4
        when = midnight + rng.uniform(-3600, now - midnight)  # some of it yesterday: not today's
        category = rng.choice(["chat-roulette-video", "games", ""]) if blocked else ""
        decision = "blocked" if blocked else rng.choice(["forwarded", "cached"])
        querylog.add((when, f"127.0.0.{rng.randrange(2, 30)}", rng.choice(["", "children"]),
                      f"n{rng.randrange(40)}.example", "A", decision,
                      rng.choice(["chat-roulette", "extra", ""]) if blocked else "", category, 1.0))  # fmt: skip
    rows = querylog.rows(since=midnight, limit=None)
    assert overview(querylog.totals(midnight)) == overview(rows)  # the same numbers as from every row

    def every_row(*args: object, **filters: object) -> list[Record]:
        if filters.get("limit", 1000) is None:
            raise AssertionError("the overview read every row of the day into Python")
        return rows

    monkeypatch.setattr(querylog, "rows", every_row)
    page.login(token)
    body = page.get("/").body
    assert f"<dd>{sum(row.count for row in rows)}</dd>" in body


def test_log_filters_find_rows_hours_back_on_a_busy_network(console: tuple[RunningFilterd, Page, str]) -> None:
    server, page, token = console
    assert server.app is not None and server.app.querylog is not None
    querylog = server.app.querylog
    ask(server, "example.org")  # kids-tablet.lan gets its devices row (its name)
    wait_for_log(server, "example.org")
    now = time.time()
    querylog.add((now - 7200, KIDS, "children", "morning.example", "A", "blocked", "extra", "games", 0.0))
    for i in range(6000):  # the rest of the network since: newer rows than the ones the filters want
        querylog.add((now - 3600 + i * 0.5, OTHER, "", f"n{i}.example", "A", "forwarded", "", "", 1.0))
    querylog.flush()
    page.login(token)
    for wanted in ({"device": "kids-tablet.lan"}, {"category": "games"}, {"category": "extra"}):
        body = page.get("/log?" + urlencode(wanted | {"since": "24h"})).body
        assert "morning.example" in body, wanted
    assert "morning.example" not in page.get("/log?" + urlencode({"device": "kids-tablet.lan", "since": "1h"})).body
    assert "n5999.example" in page.get("/log?" + urlencode({"decision": "forwarded"})).body


def test_a_damaged_query_log_file_is_named_and_the_rest_still_works(
    console: tuple[RunningFilterd, Page, str], caplog: pytest.LogCaptureFixture
) -> None:
    server, page, token = console
    assert server.app is not None and server.app.querylog is not None
    path = server.app.querylog.path
    ask(server, "example.org")
    wait_for_log(server, "example.org")
    page.login(token)
    for part in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm"), path):
        part.unlink(missing_ok=True)
    path.write_bytes(b"not a database, whatever wrote it " * 4096)
    for wanted in ("/", "/log", "/safeguarding"):
        reply = page.get(wanted)
        assert reply.status == 503 and f"The query log ({path}) cannot be read" in reply.body, wanted
    assert page.get("/lists").status == 200 and page.get("/check?name=omegle.com").status == 200
    conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=10)
    conn.request("GET", "/log/live", headers={"Cookie": f"filterd_session={page.cookies['filterd_session']}"})
    response = conn.getresponse()
    assert response.status == 200
    response.read()  # the stream ends at once
    conn.close()
    assert "answered 500" not in caplog.text
    assert addresses(ask(server, "omegle.com")) == SINKHOLE  # DNS goes on


def test_under_blocked_only_the_overview_gives_no_share(start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    options = "{retention: 14d, privacy: blocked-only}"
    server, page, token = start_console(start_filterd, dnsmasq, tmp_path, querylog=options)
    for name in ("omegle.com", "example.org", "example.com"):
        ask(server, name)
    wait_for_log(server, "omegle.com")
    page.login(token)
    body = page.get("/").body
    assert "100.0%" not in body and "Blocked share" not in body  # one of three queries, not all of them
    assert "only blocked queries" in body and "<dd>1</dd>" in body


def test_under_hash_clients_a_rows_why_link_checks_the_name(
    start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    options = "{retention: 14d, privacy: hash-clients}"
    server, page, token = start_console(start_filterd, dnsmasq, tmp_path, querylog=options)
    ask(server, "omegle.com")
    wait_for_log(server, "omegle.com")
    page.login(token)
    links = re.findall(r'href="(/check\?[^"]+)"', page.get("/log").body)
    assert links and "h%3A" not in links[0]  # the keyed hash is not an address `check` can take
    body = page.get(links[0].replace("&amp;", "&")).body
    assert "omegle.com</strong>: blocked" in body or "omegle.com: blocked" in re.sub(r"<[^>]+>", "", body)
    assert "is not an IP address" not in body


def test_check_lists_groups_and_safeguarding_pages(console: tuple[RunningFilterd, Page, str], tmp_path: Path) -> None:
    server, page, token = console
    for name in ("video.omegle.com", "ome.tv", "chatroulette.com"):  # attempts at one name count once a minute
        ask(server, name)
    wait_for_log(server, "chatroulette.com")
    page.login(token)
    csrf = page.csrf()
    check = page.get("/check?" + urlencode({"name": "omegle.com", "client": KIDS})).body
    assert "blocked by list chat-roulette" in check and "Allow omegle.com" in check and "group children" in check
    check = page.get("/check?name=example.org").body
    assert "forwarded" in check and "Block example.org" in check
    assert "not a valid domain name" in page.get("/check?name=a..b").body
    overview = page.get("/").body
    assert "kids-tablet.lan" in overview and "chat-roulette-video" in overview
    assert "roulette-tries" in overview  # the alert that fired
    assert "answering" in overview  # dnsmasq, the upstream
    groups = page.get("/groups").body
    assert "children" in groups and "bedtime" in groups and "kids-tablet.lan" in groups
    assert "config file" in groups and "<form" not in groups.split("<main", 1)[1]  # read-only
    safeguarding = page.get("/safeguarding").body
    assert "roulette-tries" in safeguarding and 'src="/report"' in safeguarding
    report = page.get("/report")
    assert report.status == 200 and "kids-tablet.lan" in report.body and "<svg" in report.body
    assert "frame-ancestors 'self'" in report.headers["Content-Security-Policy"]
    (tmp_path / "extra.txt").write_text("# category: games\ngames.example\nmore-games.example\n")
    reply = page.post("/lists/update", list="extra", csrf=csrf, back="/lists")
    assert reply.status == 303
    lists = page.get("/lists").body
    assert "extra: updated: read again: 2 names" in lists
    assert addresses(ask(server, "more-games.example")) == SINKHOLE
    assert "Update all lists now" in lists


def test_pages_send_strict_headers(console: tuple[RunningFilterd, Page, str]) -> None:
    _, page, token = console
    page.login(token)
    reply = page.get("/")
    policy = reply.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert reply.headers["X-Frame-Options"] == "DENY" and reply.headers["Cache-Control"] == "no-store"
    assert page.get("/static/console.css").status == 200
    assert "EventSource" in page.get("/static/console.js").body
    assert Page(page.port).get("/static/console.js").status == 200  # assets need no login
    assert page.get("/static/../app.py").status == 404


def test_the_admin_listener_still_serves_only_loopback_by_default(console: tuple[RunningFilterd, Page, str]) -> None:
    server, _, _ = console
    assert server.app is not None and server.app.listening.admin is not None
    assert server.app.listening.admin.host == "127.0.0.1"
    with socket.socket() as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("127.0.0.1", server.app.listening.admin.port)) == 0
