"""The admin page's pure parts: sessions and the wrong-token limit (clock injected), the overview's numbers from
log rows, the log filter, and the config key admin.session_ttl."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from filterd.config.load import load_config
from filterd.errors import ConfigError
from filterd.querylog.record import Record
from filterd.web.dashboard import LogFilter, devices_by_group, local_midnight, overview, row_reason
from filterd.web.session import LoginLimiter, Sessions


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_lives_until_its_ttl_and_ends_on_logout() -> None:
    clock = Clock()
    sessions = Sessions(ttl=60, clock=clock)
    one, two = sessions.create(), sessions.create()
    assert one.id != two.id and one.csrf != two.csrf and len(one.id) >= 40
    assert sessions.get(one.id) is one and sessions.get("made-up") is None and sessions.get(None) is None
    assert one.csrf_ok(one.csrf) and not one.csrf_ok(two.csrf) and not one.csrf_ok(None) and not one.csrf_ok("")
    sessions.end(two.id)
    assert sessions.get(two.id) is None
    clock.now += 59.9
    assert sessions.get(one.id) is one
    clock.now += 0.1
    assert sessions.get(one.id) is None and len(sessions) == 0


def test_at_most_limit_sessions_the_oldest_ends_first() -> None:
    sessions = Sessions(ttl=60, clock=Clock(), limit=3)
    made = [sessions.create() for _ in range(5)]
    assert [sessions.get(s.id) is not None for s in made] == [False, False, True, True, True]


def test_wrong_tokens_lock_an_address_out_for_the_window() -> None:
    clock = Clock()
    limiter = LoginLimiter(clock, attempts=3, window=100)
    for _ in range(2):
        limiter.failed("192.0.2.1")
        assert limiter.wait("192.0.2.1") == 0
    limiter.failed("192.0.2.1")
    assert limiter.wait("192.0.2.1") == 100 and limiter.wait("192.0.2.2") == 0
    clock.now += 60
    assert limiter.wait("192.0.2.1") == 40
    clock.now += 40.5  # the first failure has left the window
    assert limiter.wait("192.0.2.1") == 0
    limiter.failed("192.0.2.2")
    limiter.succeeded("192.0.2.2")
    limiter.failed("192.0.2.2")
    limiter.failed("192.0.2.2")
    assert limiter.wait("192.0.2.2") == 0  # a success forgets earlier failures


def test_the_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = LoginLimiter(Clock(), attempts=1, window=100, tracked=10)
    for i in range(50):
        limiter.failed(f"10.0.0.{i}")
    assert limiter.wait("10.0.0.49") > 0 and limiter.wait("10.0.0.0") == 0
    assert len(limiter._failures) == 10


def _row(decision: str, *, client: str = "192.168.1.5", name: str = "omegle.com", at: float = 0.0,
         count: int = 1, category: str = "chat-roulette-video", device: str = "", group: str = "",
         list_name: str = "chat-roulette") -> Record:  # fmt: skip
    when = local_midnight(time.time()) + at
    blocked = decision == "blocked"
    return Record(when, client, "", device, group, name, "A", decision, list_name if blocked else "",
                  category if blocked else "", 1.0, count)  # fmt: skip


def test_the_overview_counts_decisions_categories_hours_and_devices() -> None:
    rows = [
        _row("blocked", at=3600 * 9 + 5, count=3, device="kids-tablet.lan", group="children"),
        _row("blocked", client="192.168.1.6", name="ome.tv", at=3600 * 21),
        _row("blocked", client="192.168.1.6", name="dns.google", at=3600 * 21 + 60, category="doh-bypass"),
        _row("forwarded", name="example.org", count=10),
        _row("cached", name="example.org", count=4),
        _row("refused", client="203.0.113.9", name="example.org"),
    ]
    today = overview(rows)
    assert today.queries == 20 and today.blocked == 5 and today.blocked_share == 0.25
    assert today.by_decision == (("blocked", 5), ("forwarded", 10), ("cached", 4), ("refused", 1))
    assert [(c, n) for c, _, n in today.by_category] == [("chat-roulette-video", 4), ("doh-bypass", 1)]
    assert today.by_category[0][1] == "random video chat with strangers"
    assert today.by_hour[9] == 3 and today.by_hour[21] == 2 and sum(today.by_hour) == 5
    assert [(d.label, d.group, d.blocked) for d in today.devices] == [
        ("kids-tablet.lan", "children", 3),
        ("192.168.1.6", "", 2),
    ]
    assert today.top_blocked[0] == ("omegle.com", 3)
    assert overview([]).blocked_share == 0.0 and overview([]).by_decision == ()


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        (LogFilter(), [True, True, True]),
        (LogFilter(device="kids-tablet.lan"), [True, False, False]),
        (LogFilter(device="192.168.1.6"), [False, True, True]),
        (LogFilter(decision="blocked"), [True, True, False]),
        (LogFilter(category="doh-bypass"), [False, True, False]),
        (LogFilter(category="chat-roulette"), [True, False, False]),  # a list's name works too
    ],
)
def test_the_log_filter(wanted: LogFilter, matches: list[bool]) -> None:
    rows = [
        _row("blocked", device="kids-tablet.lan"),
        _row("blocked", client="192.168.1.6", category="doh-bypass", list_name="doh-bypass"),
        _row("forwarded", client="192.168.1.6"),
    ]
    assert [wanted.matches(r) for r in rows] == matches


def test_each_row_says_what_happened() -> None:
    assert row_reason(_row("blocked")) == "blocked by chat-roulette (random video chat with strangers)"
    assert row_reason(_row("forwarded")) == "not blocked: asked the upstream"
    assert row_reason(_row("refused")) == "refused: this client is not served"


def test_devices_by_group_labels_each_address_with_its_longest_name() -> None:
    got = devices_by_group(
        ["10.0.0.2", "10.0.0.1", "10.0.0.3"],
        {"10.0.0.1": "children", "10.0.0.2": "children"},
        {"10.0.0.1": frozenset({"tablet", "tablet.lan"})},
    )
    assert got == {"children": [("tablet.lan", "10.0.0.1"), ("10.0.0.2", "10.0.0.2")], "": [("10.0.0.3", "10.0.0.3")]}


def test_admin_session_ttl_is_a_duration_with_bounds(tmp_path: Path) -> None:
    path = tmp_path / "filterd.yaml"
    dns = "dns: {listen: [127.0.0.1:53], upstreams: [192.0.2.53]}"
    base = f"state_dir: {tmp_path / 'state'}\n{dns}\nadmin:\n  listen: 127.0.0.1:8053\n"
    path.write_text(base)
    config = load_config(path)
    assert config.admin is not None and config.admin.session_ttl == 12 * 3600
    path.write_text(base + "  session_ttl: 30m\n")
    config = load_config(path)
    assert config.admin is not None and config.admin.session_ttl == 1800
    for bad, words in (("10s", "must be from 60 to 2592000 seconds"), ("soon", "is not a duration")):
        path.write_text(base + f"  session_ttl: {bad}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert f"{path}:5: admin.session_ttl: " in str(caught.value) and words in str(caught.value)
