"""config/home.yaml and config/school.yaml do what their comments say: each loads, and `filterd check --client`
(the same decision the DNS side makes) gives each kind of device the rules its comment promises, at the times
the schedules say."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from filterd.app import offline_check
from filterd.config.load import load_config, parse_config
from filterd.config.schema import Config

ROOT = Path(__file__).resolve().parents[2]
LONDON = ZoneInfo("Europe/London")


def london(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON).timestamp()


MONDAY_AFTERNOON = london("2026-12-07 17:00")  # no bedtime, after school
MONDAY_NIGHT = london("2026-12-07 22:00")  # a school night: bedtime
FRIDAY_2200 = london("2026-12-11 22:00")  # Friday: bedtime starts at 22:30
SATURDAY_0745 = london("2026-12-12 07:45")  # after Friday night, bedtime lasts until 08:00
TUESDAY_LESSONS = london("2026-12-08 10:00")  # school hours


@pytest.fixture
def home(tmp_path: Path) -> Config:
    text = (ROOT / "config" / "home.yaml").read_text()
    return parse_config(text.replace("# dhcp_leases:", "# (leases)"), "home.yaml", base_dir=tmp_path)


@pytest.fixture
def school() -> Config:
    return load_config(ROOT / "config" / "school.yaml")


def check(config: Config, name: str, client: str, when: float) -> dict[str, object]:
    return offline_check(config, name, client, clock=lambda: when)


def decision(config: Config, name: str, client: str, when: float = MONDAY_AFTERNOON) -> str:
    result = check(config, name, client, when)
    return f"{result['decision']}:{result.get('list', '')}"


def test_both_examples_load_and_use_every_group_key(home: Config, school: Config) -> None:
    for config in (home, school):
        assert config.groups and config.schedules
    used = {key for config in (home, school) for g in config.groups for key in g.__slots__ if getattr(g, key)}
    assert used >= {"name", "clients", "lists", "block", "allow", "schedules", "safe_search"}
    assert any(g.bypass_protection is False for g in home.groups)
    assert school.dhcp_leases and dict(school.dns.forward_zones).get("school.internal")


def test_home_parents_get_the_chat_roulette_list_only(home: Config) -> None:
    assert decision(home, "omegle.com", "192.168.1.10") == "blocked:chat-roulette"
    assert decision(home, "dns.google", "192.168.1.10") == "forwarded:"  # doh-bypass is not theirs
    assert decision(home, "use-application-dns.net", "192.168.1.10") == "forwarded:"  # bypass_protection: false
    assert check(home, "www.google.com", "192.168.1.10", MONDAY_AFTERNOON)["decision"] == "forwarded"
    assert decision(home, "youtube.com", "fd00::10", MONDAY_NIGHT) == "forwarded:"  # no bedtime for parents


@pytest.mark.parametrize("client", ["192.168.1.50", "192.168.1.70"])  # kids-tablet.lan by name; the /27
def test_home_children(home: Config, client: str) -> None:
    assert check(home, "omegle.com", client, MONDAY_AFTERNOON)["group"] == "children"
    assert decision(home, "omegle.com", client) == "blocked:chat-roulette"
    assert decision(home, "dns.google", client) == "blocked:doh-bypass"
    assert decision(home, "www.roblox.com", client) == "blocked:group:children"
    assert decision(home, "use-application-dns.net", client) == "blocked:bypass-protection"
    safe = check(home, "www.google.co.uk", client, MONDAY_AFTERNOON)
    assert "forcesafesearch.google.com" in str(safe["reason"])
    assert "restrict.youtube.com" in str(check(home, "www.youtube.com", client, MONDAY_AFTERNOON)["reason"])
    # bedtime: school nights from 21:00, Friday and Saturday from 22:30 until 08:00
    assert decision(home, "youtube.com", client, MONDAY_AFTERNOON) == "forwarded:"
    assert decision(home, "youtube.com", client, MONDAY_NIGHT) == "blocked:schedule:bedtime"
    assert decision(home, "youtube.com", client, FRIDAY_2200) == "forwarded:"
    assert decision(home, "youtube.com", client, SATURDAY_0745) == "blocked:schedule:bedtime"
    assert decision(home, "homework.example.org", client, MONDAY_NIGHT) == "allowed:"
    assert decision(home, "bbc.co.uk", client, MONDAY_NIGHT) == "allowed:"  # the top-level allow, for everyone
    assert decision(home, "connectivitycheck.gstatic.com", client, MONDAY_NIGHT) == "forwarded:"  # stays online


def test_home_guests_and_everyone_else(home: Config) -> None:
    guest = "192.168.2.40"
    assert check(home, "x.example", guest, MONDAY_AFTERNOON)["group"] == "guests"
    assert decision(home, "omegle.com", guest) == "blocked:chat-roulette"
    assert "restrictmoderate.youtube.com" in str(check(home, "www.youtube.com", guest, MONDAY_AFTERNOON)["reason"])
    assert decision(home, "youtube.com", guest, MONDAY_NIGHT) == "forwarded:"
    tv = "192.168.1.30"  # in no group: the top level, every list, no safe search
    assert check(home, "x.example", tv, MONDAY_AFTERNOON)["group"] is None
    assert decision(home, "dns.google", tv) == "blocked:doh-bypass"
    assert check(home, "www.google.com", tv, MONDAY_AFTERNOON)["decision"] == "forwarded"


def test_school_staff_students_guests(school: Config) -> None:
    staff, student, guest = "10.10.0.40", "10.30.1.5", "10.50.0.9"
    assert decision(school, "omegle.com", staff) == "blocked:chat-roulette"
    assert decision(school, "tiktok.com", staff, TUESDAY_LESSONS) == "forwarded:"
    assert decision(school, "dns.google", staff) == "forwarded:"
    assert "forcesafesearch" not in str(check(school, "www.google.com", staff, TUESDAY_LESSONS)["reason"])
    assert decision(school, "omegle.com", student) == "blocked:chat-roulette"
    assert decision(school, "dns.google", student) == "blocked:doh-bypass"
    assert decision(school, "discord.com", student) == "blocked:group:students"
    assert decision(school, "scratch.mit.edu", student) == "allowed:"
    assert decision(school, "tiktok.com", student, MONDAY_AFTERNOON) == "forwarded:"  # after school
    assert decision(school, "tiktok.com", student, TUESDAY_LESSONS) == "blocked:social"  # during lessons
    assert "forcesafesearch.google.com" in str(check(school, "www.google.com", student, TUESDAY_LESSONS)["reason"])
    assert decision(school, "classroom.google.com", student, TUESDAY_LESSONS) == "allowed:"
    assert decision(school, "omegle.com", guest) == "blocked:chat-roulette"
    assert "forcesafesearch.google.com" in str(check(school, "www.google.com", guest, TUESDAY_LESSONS)["reason"])
    result = check(school, "dc1.school.internal", student, TUESDAY_LESSONS)
    assert result["decision"] in ("allowed", "forwarded")  # the AD zone: never blocked, forwarded to the DCs


def test_school_shows_the_block_page_over_https_with_its_local_ca(school: Config, home: Config) -> None:
    assert school.blockpage is not None and school.blockpage.https is not None
    assert school.blockpage.https.mode == "local-ca"
    assert [str(ep) for ep in school.blockpage.https.listen] == ["10.10.0.53:443"]
    assert home.blockpage is None or home.blockpage.https is None  # a home's own phones would only see a warning
