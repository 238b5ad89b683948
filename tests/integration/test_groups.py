"""Client groups on a running server: clients on 127.0.0.2, 127.0.0.3, ... and ::1 land in different groups
and get different answers, never one another's cached ones; schedules with an injected clock; the metric's
group label; `filterd check --client`; a reload that moves a client while queries run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.support import Dnsmasq, FakeUpstream, RunningFilterd, addresses, ede, free_port

FILTERD = [sys.executable, "-m", "filterd"]
SINKHOLE = ["127.0.0.1"]


def ask(server: RunningFilterd, name: str, source: str, rdtype: str = "A") -> dns.message.Message:
    """A query from `source` (a loopback address of its own), to the listener of the same family."""
    assert server.app is not None
    v6 = ":" in source
    endpoint = next(ep for ep in server.app.listening.dns if (":" in ep.host) == v6)
    q = dns.message.make_query(name, rdtype, use_edns=0)
    return dns.query.udp(q, endpoint.host, port=endpoint.port, source=source, timeout=3)


def blocked(reply: dns.message.Message) -> str | None:
    """The EDE 15 text of a blocked answer ("filterd: LIST"), or None."""
    texts = [text for code, text in ede(reply) if code == 15]
    return texts[0] if texts else None


def config_text(dnsmasq: Dnsmasq, tmp_path: Path, groups: str) -> str:
    (tmp_path / "games.txt").write_text("# category: games\ngames.example\nexample.org\n")
    return f"""
dns:
  listen: ["127.0.0.1:0", "[::1]:0"]
  upstreams: ["{dnsmasq.address}"]
metrics:
  listen: 127.0.0.1:0
state_dir: {tmp_path / "state"}
admin:
  listen: 127.0.0.1:{free_port()}
lists:
  - builtin: chat-roulette
  - {{name: games, path: {tmp_path / "games.txt"}}}
{groups}
"""


GROUPS = """
groups:
  - name: children
    clients: [127.0.0.2, 127.0.0.16/28]
    lists: [chat-roulette, games]
    block: [www.example.org]
    allow: [ok.games.example]
    schedules: [bedtime]
  - name: adults
    clients: [127.0.0.3, "::1"]
    lists: [chat-roulette]
schedules:
  bedtime:
    when: ["daily 21:00-07:00"]
    block: all
    timezone: UTC
"""


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 12, 7, 17, 0, tzinfo=UTC))  # a Monday, 17:00: no schedule open


@pytest.fixture
def server(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> RunningFilterd:
    return start_filterd(config_text(dnsmasq, tmp_path, GROUPS), clock=clock)


def test_clients_land_in_their_groups(server: RunningFilterd) -> None:
    # example.org is on the games list: blocked for children (127.0.0.2, 127.0.0.17) and for clients in no
    # group (every list), resolved for adults (127.0.0.3, ::1), whose only list is chat-roulette
    for source, expected in [
        ("127.0.0.2", "filterd: games"),
        ("127.0.0.17", "filterd: games"),
        ("127.0.0.3", None),
        ("::1", None),
        ("127.0.0.4", "filterd: games"),
    ]:
        reply = ask(server, "example.org", source)
        assert blocked(reply) == expected, source
        if expected is None:
            assert addresses(reply) == ["192.0.2.10"], source
    for source in ["127.0.0.2", "127.0.0.3", "::1", "127.0.0.4"]:
        assert blocked(ask(server, "omegle.com", source)) == "filterd: chat-roulette", source


def test_a_cached_answer_never_crosses_groups(
    start_filterd: Callable[..., RunningFilterd], fake_upstream: FakeUpstream, tmp_path: Path, clock: Clock
) -> None:
    """The fake upstream answers every name with TTL 60, so the second round is served from the cache."""
    text = config_text(fake_upstream, tmp_path, GROUPS)  # type: ignore[arg-type]
    server = start_filterd(text, clock=clock)
    for _ in range(2):
        assert addresses(ask(server, "www.example.org", "127.0.0.3")) == ["192.0.2.1"]
        children = ask(server, "www.example.org", "127.0.0.2")
        assert addresses(children) == SINKHOLE and blocked(children) == "filterd: group:children"
    assert fake_upstream.received == ["www.example.org"]  # asked once: the adults' second answer was cached
    assert server.metric("filterd_queries_total", decision="cached", group="adults") == 1
    assert server.metric("filterd_queries_total", decision="blocked", group="children") == 2


def test_the_groups_allow_entry_wins_over_its_lists(server: RunningFilterd) -> None:
    assert blocked(ask(server, "x.games.example", "127.0.0.2")) == "filterd: games"
    assert blocked(ask(server, "ok.games.example", "127.0.0.2")) is None


def _tick(server: RunningFilterd) -> None:
    assert server.app is not None and server.app.schedule_clock is not None
    clock = server.app.schedule_clock
    asyncio.run_coroutine_threadsafe(asyncio.to_thread(lambda: None), server.loop).result(5)
    server.loop.call_soon_threadsafe(clock.tick)
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), server.loop).result(5)


def test_bedtime_blocks_everything_but_what_a_device_needs(server: RunningFilterd, clock: Clock) -> None:
    assert addresses(ask(server, "example.net", "127.0.0.3")) == []  # (dnsmasq: local zone, no such name)
    assert blocked(ask(server, "safe.example.net", "127.0.0.2")) is None  # 17:00: open as usual, and cached
    clock.now = datetime(2026, 12, 7, 21, 0, tzinfo=UTC).timestamp()
    _tick(server)
    reply = ask(server, "safe.example.net", "127.0.0.2")  # cached before bedtime: not served now
    assert addresses(reply) == SINKHOLE and blocked(reply) == "filterd: schedule:bedtime"
    assert blocked(ask(server, "connectivitycheck.gstatic.com", "127.0.0.2")) is None  # a device stays online
    assert blocked(ask(server, "ok.games.example", "127.0.0.2")) is None  # the group's allow
    assert addresses(ask(server, "safe.example.net", "127.0.0.3")) == ["192.0.2.20"]  # adults: no schedule
    clock.now = datetime(2026, 12, 8, 7, 0, tzinfo=UTC).timestamp()  # Tuesday 07:00: over
    _tick(server)
    assert addresses(ask(server, "safe.example.net", "127.0.0.2")) == ["192.0.2.20"]


def test_check_with_a_client_shows_the_group_schedules_and_decision(server: RunningFilterd, tmp_path: Path) -> None:
    config = server.config_path
    run = subprocess.run(
        [*FILTERD, "--config", str(config), "check", "example.org", "--client", "127.0.0.2", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["group"] == "children" and result["schedules"] == []
    assert result["decision"] == "blocked" and result["list"] == "games"
    adults = subprocess.run(
        [*FILTERD, "--config", str(config), "check", "example.org", "--client", "::1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert adults.stdout.startswith("example.org: forwarded: ") and "group adults" in adults.stdout
    offline = subprocess.run(
        [*FILTERD, "--config", str(config), "check", "--offline", "x.games.example", "--client", "127.0.0.3", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(offline.stdout)["decision"] == "forwarded" and json.loads(offline.stdout)["group"] == "adults"


def test_a_reload_that_moves_a_client_while_queries_run(
    server: RunningFilterd, dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    assert server.app is not None
    assert blocked(ask(server, "example.org", "127.0.0.2")) == "filterd: games"
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        deadline = time.monotonic() + 20
        count = 0
        while not stop.is_set() and time.monotonic() < deadline and count < 5000:
            count += 1
            try:
                reply = ask(server, "omegle.com", "127.0.0.2")
                if blocked(reply) != "filterd: chat-roulette":
                    failures.append(f"unblocked: {reply}")
            except Exception as exc:
                failures.append(repr(exc))

    worker = threading.Thread(target=load)
    worker.start()
    moved = GROUPS.replace("clients: [127.0.0.2, 127.0.0.16/28]", "clients: [127.0.0.16/28]").replace(
        'clients: [127.0.0.3, "::1"]', 'clients: [127.0.0.2, 127.0.0.3, "::1"]'
    )
    server.config_path.write_text(config_text(dnsmasq, tmp_path, moved))
    result = asyncio.run_coroutine_threadsafe(server.app.reload(), server.loop).result(30)
    time.sleep(0.2)
    stop.set()
    worker.join(30)
    assert result["ok"], result
    assert failures == []
    assert addresses(ask(server, "example.org", "127.0.0.2")) == ["192.0.2.10"]  # now an adult
    assert blocked(ask(server, "example.org", "127.0.0.17")) == "filterd: games"


def test_the_block_page_explains_the_block_the_clients_group_got(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path, clock: Clock
) -> None:
    import http.client

    text = config_text(dnsmasq, tmp_path, GROUPS) + "blockpage:\n  listen: ['127.0.0.1:0']\n"
    server = start_filterd(text, clock=clock)

    def page(source: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", server.blockpage_port, timeout=5, source_address=(source, 0))
        try:
            conn.request("GET", "/", headers={"Host": "www.example.org"})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    status, body = page("127.0.0.2")  # a child: www.example.org is the group's own block entry
    assert status == 403 and "group:children" in body
    status, body = page("127.0.0.3")  # an adult: not blocked, so the page does not pretend it is
    assert "group:children" not in body and "www.example.org is on the list" not in body
