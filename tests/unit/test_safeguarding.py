"""The alert engine (counting, retries once a minute, windows, the quiet period), the message, `lists suggest`."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from filterd.blocklists.rules import public_suffixes
from filterd.config.load import parse_config
from filterd.querylog.store import Identity
from filterd.querylog.suggest import one_edit, pattern_words, suggest
from filterd.safeguarding.engine import AlertEngine
from filterd.safeguarding.notify import compose

CONFIG = """
dns: {listen: ["127.0.0.1:5353"]}
safeguarding:
  alerts:
    - {name: attempts, categories: [chat-roulette-video, anonymous-text-chat], attempts: 3, within: 10m}
    - {name: late-night, categories: [chat-roulette-video], when: ["daily 23:00-05:00"], timezone: UTC}
    - {name: bypass, categories: [doh-bypass, bypass-protection], attempts: 2, within: 1h}
  quiet: 1h
"""


class Clock:
    def __init__(self, when: datetime) -> None:
        self.now = when.timestamp()

    def __call__(self) -> float:
        return self.now


def engine(at: datetime) -> tuple[AlertEngine, Clock]:
    clock = Clock(at)
    return AlertEngine(parse_config(CONFIG, "s.yaml").safeguarding, clock=clock), clock


def fired(alerts: list) -> list[str]:  # type: ignore[type-arg]
    return [a.rule.name for a in alerts]


def test_attempts_within_the_window_fire_once_then_quiet() -> None:
    e, clock = engine(datetime(2026, 12, 7, 16, 0, tzinfo=UTC))
    assert fired(e.observe("10.0.0.5", "kids", "omegle.com", "chat-roulette-video", "chat-roulette")) == []
    assert fired(e.observe("10.0.0.5", "kids", "omegle.com", "chat-roulette-video", "chat-roulette")) == []  # retry
    clock.now += 30
    assert fired(e.observe("10.0.0.5", "kids", "ome.tv", "chat-roulette-video", "chat-roulette")) == []
    clock.now += 30
    alerts = e.observe("10.0.0.5", "kids", "chatiw.me", "anonymous-text-chat", "chat-roulette")
    assert fired(alerts) == ["attempts"]
    assert alerts[0].names == ["chatiw.me", "ome.tv", "omegle.com"] and alerts[0].group == "kids"
    for name in ["a.example", "b.example", "c.example"]:  # within the quiet hour: counted, not sent
        clock.now += 61
        assert fired(e.observe("10.0.0.5", "kids", name, "chat-roulette-video", "chat-roulette")) == []
    assert e.quieted == 1
    clock.now += 3600
    for name in ["d.example", "e.example", "f.example"]:
        clock.now += 61
        alerts = e.observe("10.0.0.5", "kids", name, "chat-roulette-video", "chat-roulette")
    assert fired(alerts) == ["attempts"] and alerts[0].suppressed == 1
    assert fired(e.observe("10.0.0.6", "kids", "g.example", "chat-roulette-video", "chat-roulette")) == []


def test_attempts_spread_beyond_the_window_do_not_fire() -> None:
    e, clock = engine(datetime(2026, 12, 7, 16, 0, tzinfo=UTC))
    for name in ["a.example", "b.example", "c.example"]:
        assert fired(e.observe("10.0.0.5", "", name, "chat-roulette-video", "chat-roulette")) == []
        clock.now += 6 * 60  # 12 minutes for three: never three in ten minutes


def test_late_night_rule_fires_on_one_attempt_inside_its_window_only() -> None:
    e, clock = engine(datetime(2026, 12, 7, 22, 59, tzinfo=UTC))
    assert fired(e.observe("10.0.0.5", "", "omegle.com", "chat-roulette-video", "chat-roulette")) == []
    clock.now += 120  # 23:01
    assert fired(e.observe("10.0.0.5", "", "ome.tv", "chat-roulette-video", "chat-roulette")) == ["late-night"]


def test_rules_match_list_names_too_and_ignore_other_categories() -> None:
    e, clock = engine(datetime(2026, 12, 7, 16, 0, tzinfo=UTC))
    assert fired(e.observe("10.0.0.5", "", "use-application-dns.net", "bypass-protection", "bypass-protection")) == []
    clock.now += 61
    assert fired(e.observe("10.0.0.5", "", "dns.google", "doh-major-providers", "doh-bypass")) == ["bypass"]
    assert fired(e.observe("10.0.0.5", "", "ads.example", "ads", "hagezi")) == []
    assert not e.watches("ads", "hagezi")


def test_the_message_is_factual_and_names_the_device() -> None:
    e, _ = engine(datetime(2026, 12, 7, 23, 30, tzinfo=UTC))
    [alert] = e.observe("192.168.1.50", "children", "omegle.com", "chat-roulette-video", "chat-roulette")
    subject, text, payload = compose(alert, Identity(mac="aa:bb:cc:dd:ee:ff", device="kids-tablet.lan"))
    assert subject == "filterd: kids-tablet.lan tried to open blocked sites (late-night)"
    assert "Device: kids-tablet.lan (group children)" in text
    assert "IP address: 192.168.1.50, MAC address: aa:bb:cc:dd:ee:ff" in text
    assert "random video chat with strangers: omegle.com" in text
    assert "not the device's other use of the internet" in text
    assert payload["device"] == {"name": "kids-tablet.lan", "ip": "192.168.1.50", "mac": "aa:bb:cc:dd:ee:ff",
                                 "group": "children"}  # fmt: skip


def test_one_edit() -> None:
    assert one_edit("omeglle", "omegle") and one_edit("omegle", "omegla") and one_edit("megle", "omegle")
    assert not one_edit("omegle", "omegle") and not one_edit("google", "omegle")


@pytest.fixture(scope="module")
def psl():  # type: ignore[no-untyped-def]
    return public_suffixes()


def test_suggest_finds_look_alikes_the_rules_missed(psl) -> None:  # type: ignore[no-untyped-def]
    brands = {"chatib", "shagle", "omegle", "ome"}
    words = pattern_words(["(^|[.-])chat-?roulette", "strangers?-?(chat|cam)", "sohbet"])
    assert words == {"roulette", "strangers", "sohbet"}
    counts = {
        "chatibb.com": 5,  # one edit from a brand
        "www.myshagle.net": 2,  # holds a brand
        "strangersclub.io": 1,  # a pattern's word
        "google.com": 40,
        "ome.example.co.uk": 3,  # 'ome' is too short to judge by
    }
    found = {s.name: s.reason for s in suggest(counts, brands, words, psl)}
    assert found == {
        "chatibb.com": "one letter away from the brand chatib",
        "www.myshagle.net": "holds the brand shagle",
        "strangersclub.io": "holds the word 'strangers' that the chat-roulette patterns look for",
    }


def test_an_alert_rules_time_zone_is_checked_like_a_schedules() -> None:
    from filterd.errors import ConfigError

    text = CONFIG.replace("timezone: UTC", "timezone: Nowhere/Land")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "s.yaml")
    assert any("safeguarding.alerts[1].timezone: 'Nowhere/Land' is not a time zone" in p for p in raised.value.problems)
