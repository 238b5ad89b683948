"""Client groups and schedules as pure logic: windows across midnight, week ends and DST; which group a client
is in (IP, CIDR, MAC, name); what a group's policy decides; the neighbour-table and lease parsers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from filterd.blocklists.matcher import ListSource, Matcher
from filterd.blocklists.parse import parse_list
from filterd.config.load import parse_config
from filterd.config.schema import BlockingConfig
from filterd.dns import wire
from filterd.errors import ConfigError
from filterd.groups.clock import ScheduleClock
from filterd.groups.model import Directory, build_groups, find_group, parse_client
from filterd.groups.schedule import is_open, parse_window
from filterd.groups.sources import (
    build_directory,
    parse_dnsmasq_leases,
    parse_ip_neigh,
    parse_kea_leases,
    parse_leases,
    parse_proc_arp,
)
from filterd.pipeline.cache import cache_key
from filterd.pipeline.policy import AllowList, PolicyStage
from filterd.sinkhole import BlockedReplies

LONDON = ZoneInfo("Europe/London")


def at(text: str, zone: ZoneInfo = LONDON) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


# --- windows ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026-12-07 20:59", False),  # Monday evening, before bedtime
        ("2026-12-07 21:00", True),  # Monday 21:00: opens
        ("2026-12-07 23:59", True),
        ("2026-12-08 00:00", True),  # Tuesday after midnight: still Monday's window
        ("2026-12-08 06:59", True),
        ("2026-12-08 07:00", False),  # closes
        ("2026-12-11 21:30", False),  # Friday 21:30: Friday is not in mon-thu,sun
        ("2026-12-12 06:00", False),  # Saturday morning: Friday's night was not a school night
        ("2026-12-13 21:00", True),  # Sunday: in the list
        ("2026-12-14 06:30", True),  # Monday morning, from Sunday night
    ],
)
def test_a_window_that_crosses_midnight_belongs_to_the_day_it_starts(when: str, expected: bool) -> None:
    window = parse_window("mon-thu,sun 21:00-07:00")
    assert is_open(window, at(when)) is expected


def test_weekend_and_day_ranges() -> None:
    assert parse_window("weekends 10:00-12:00").days == frozenset({5, 6})
    assert parse_window("weekdays 08:30-15:30").days == frozenset(range(5))
    assert parse_window("fri-mon 00:00-24:00").days == frozenset({4, 5, 6, 0})  # a range may wrap
    assert parse_window("12:00-13:00").days == frozenset(range(7))
    saturday_late = parse_window("fri,sat 22:30-08:00")
    assert is_open(saturday_late, at("2026-12-13 07:59"))  # Sunday morning after Saturday night
    assert not is_open(saturday_late, at("2026-12-14 07:59"))  # Monday morning: Sunday is not listed


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("mon 25:00-07:00", "not a time from 00:00 to 24:00"),
        ("funday 21:00-07:00", "is not a day"),
        ("mon 21:00", "not a time span"),
        ("mon 21:00-21:00", "starts and ends at the same time"),
        ("mon tue 21:00-22:00", "is not 'DAYS HH:MM-HH:MM'"),
    ],
)
def test_a_bad_window_says_why(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_window(text)


def _clock_config(timezone: str = "Europe/London") -> str:
    return f"""
dns: {{listen: ["127.0.0.1:5353"]}}
groups:
  - name: children
    clients: [192.168.1.0/24]
    schedules: [bedtime]
schedules:
  bedtime:
    when: ["daily 01:30-02:30"]
    block: all
    timezone: {timezone}
"""


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # 2026-03-29: the UK moves from GMT to BST at 01:00 UTC; 01:30-02:30 local time does not exist that night
        ("2026-03-28T01:45:00", True),  # the night before: GMT, 01:45 local
        ("2026-03-29T00:45:00", False),  # 00:45 GMT, before the window
        ("2026-03-29T01:15:00", True),  # 02:15 BST: clocks jumped from 01:00 to 02:00; 02:15 is in the window
        ("2026-03-29T01:35:00", False),  # 02:35 BST: closed (the window was 30 minutes short that night)
        ("2026-03-30T00:45:00", True),  # 01:45 BST the night after: the window follows local time
        ("2026-03-30T01:45:00", False),  # 02:45 BST
        # 2026-10-25: back from BST to GMT at 01:00 UTC; 01:00-02:00 local time happens twice
        ("2026-10-25T00:45:00", True),  # 01:45 BST
        ("2026-10-25T01:45:00", True),  # 01:45 GMT, the second time round
        ("2026-10-25T02:45:00", False),  # 02:45 GMT
    ],
)
def test_schedules_follow_local_time_across_dst_changes(utc: str, expected: bool) -> None:
    config = parse_config(_clock_config(), "t.yaml")
    groups = build_groups(config.groups, config.schedules)
    now = datetime.fromisoformat(utc).replace(tzinfo=UTC).timestamp()
    changes: list[int] = []
    clock = ScheduleClock(groups, config.schedules, lambda: changes.append(1), clock=lambda: now)
    clock.tick()
    assert groups[0].block_all is expected
    assert bool(changes) is expected  # on_change (the cache flush) runs only when a group's rules changed


def test_the_clock_flushes_when_a_window_opens_and_closes() -> None:
    config = parse_config(_clock_config(timezone="UTC"), "t.yaml")
    groups = build_groups(config.groups, config.schedules)
    now = [datetime(2026, 12, 7, 1, 29, tzinfo=UTC).timestamp()]
    flushes: list[float] = []
    clock = ScheduleClock(groups, config.schedules, lambda: flushes.append(now[0]), clock=lambda: now[0])
    assert clock.tick() is False and not groups[0].block_all
    now[0] += 60  # 01:30: opens
    assert clock.tick() is True and groups[0].block_all and groups[0].active == {"bedtime"}
    assert clock.tick() is False  # nothing changed: no second flush
    now[0] += 3600  # 02:30: closes
    assert clock.tick() is True and not groups[0].block_all
    assert len(flushes) == 2


# --- who is in which group -------------------------------------------------------------------------------


def test_client_specs() -> None:
    assert parse_client("192.168.1.50").network is not None
    assert str(parse_client("192.168.1.64/26").network) == "192.168.1.64/26"
    assert str(parse_client("fd00::10").network) == "fd00::10/128"
    assert (parse_client("AA-BB-CC-DD-EE-FF").kind, parse_client("AA-BB-CC-DD-EE-FF").value) == (
        "mac",
        "aa:bb:cc:dd:ee:ff",
    )
    assert (parse_client("Tablet.LAN").kind, parse_client("Tablet.LAN").value) == ("name", "tablet.lan")
    with pytest.raises(ValueError, match="not an IP address, a network"):
        parse_client("not a client!")


GROUPS = """
dns: {listen: ["127.0.0.1:5353"]}
lists:
  - {name: chat, path: chat.txt}
  - {name: social, path: social.txt}
groups:
  - name: children
    clients: [192.168.1.50, 192.168.1.64/26, "aa:bb:cc:dd:ee:ff", tablet.lan]
    lists: [chat]
    block: [games.example]
    allow: [ok.chat.example]
    schedules: [bedtime]
  - name: adults
    clients: [192.168.1.0/24, fd00::10]
    lists: []
schedules:
  bedtime:
    when: ["daily 21:00-07:00"]
    block: all
  homework:
    when: ["weekdays 16:00-18:00"]
    block: [social]
"""


@pytest.fixture
def config(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "chat.txt").write_text("chat.example\n")
    (tmp_path / "social.txt").write_text("social.example\n")
    return parse_config(GROUPS, "g.yaml", base_dir=tmp_path)


def test_the_first_matching_group_wins(config) -> None:  # type: ignore[no-untyped-def]
    groups = build_groups(config.groups, config.schedules)
    directory = Directory(macs={"192.168.1.7": "aa:bb:cc:dd:ee:ff"}, names={"192.168.1.9": frozenset({"tablet"})})
    group = {ip: (g.name if (g := find_group(groups, ip, directory)) else None) for ip in [
        "192.168.1.50", "192.168.1.70", "192.168.1.7", "192.168.1.9", "192.168.1.10", "fd00::10", "::ffff:192.168.1.50",
        "fe80::1%eth0", "10.0.0.1",
    ]}  # fmt: skip
    assert group == {
        "192.168.1.50": "children",  # by address
        "192.168.1.70": "children",  # in 192.168.1.64/26
        "192.168.1.7": "children",  # by MAC, though 192.168.1.0/24 (adults) also matches: first group wins
        "192.168.1.9": "adults",  # named "tablet", not "tablet.lan": so the next group, by network
        "192.168.1.10": "adults",
        "fd00::10": "adults",
        "::ffff:192.168.1.50": "children",  # IPv4-mapped IPv6
        "fe80::1%eth0": None,
        "10.0.0.1": None,  # no group: the top-level rules
    }
    named = Directory(names={"192.168.1.9": frozenset({"tablet.lan", "tablet"})})
    found = find_group(groups, "192.168.1.9", named)
    assert found is not None and found.name == "children"


def _policy(config) -> tuple[PolicyStage, dict[str, object]]:  # type: ignore[no-untyped-def]
    sources = [ListSource(cfg.name, cfg.name, parse_list(cfg.path.read_text())) for cfg in config.lists]
    policy = PolicyStage(Matcher.build(sources), AllowList(config.allow), BlockedReplies(BlockingConfig()))
    groups = {g.name: g for g in build_groups(config.groups, config.schedules)}
    return policy, groups  # type: ignore[return-value]


def test_a_groups_policy(config) -> None:  # type: ignore[no-untyped-def]
    policy, groups = _policy(config)
    children, adults = groups["children"], groups["adults"]

    def decided(name: str, group: object) -> str | None:
        found = policy.decide(name, group)  # type: ignore[arg-type]
        return None if found is None else f"{found.list}:{found.entry}"

    assert decided("x.chat.example", None) == "chat:chat.example"  # no group: every list
    assert decided("social.example", None) == "social:social.example"
    assert decided("x.chat.example", children) == "chat:chat.example"
    assert decided("social.example", children) is None  # not one of the children's lists
    assert decided("ok.chat.example", children) is None  # the group's own allow
    assert decided("www.games.example", children) == "group:children:games.example"  # its own block
    assert decided("games.example", adults) is None
    assert decided("chat.example", adults) is None  # lists: [] (no list at all)


def test_block_all_spares_allow_entries_and_the_names_a_device_needs(config) -> None:  # type: ignore[no-untyped-def]
    policy, groups = _policy(config)
    children = groups["children"]
    children.set_active(frozenset({"bedtime"}))  # type: ignore[attr-defined]
    assert policy.decide("www.youtube.com", children) is not None  # type: ignore[arg-type]
    found = policy.decide("example.org", children)  # type: ignore[arg-type]
    assert found is not None and found.list == "schedule:bedtime" and found.category == "schedule"
    for healthy in ["connectivitycheck.gstatic.com", "captive.apple.com", "time.windows.com", "0.pool.ntp.org"]:
        assert policy.decide(healthy, children) is None, healthy  # type: ignore[arg-type]
    assert policy.decide("ok.chat.example", children) is None  # type: ignore[arg-type]
    assert policy.decide("www.youtube.com", groups["adults"]) is None  # type: ignore[arg-type]


def test_a_schedule_switches_lists_on(config) -> None:  # type: ignore[no-untyped-def]
    policy, groups = _policy(config)
    children = groups["children"]
    children.config = children.config.__class__(  # type: ignore[attr-defined]
        **{**{f: getattr(children.config, f) for f in children.config.__slots__}, "schedules": ("homework",)}  # type: ignore[attr-defined]
    )
    children.schedules = tuple(s for s in config.schedules if s.name == "homework")  # type: ignore[attr-defined]
    assert policy.decide("social.example", children) is None  # type: ignore[arg-type]
    assert children.set_active(frozenset({"homework"}))  # type: ignore[attr-defined]
    found = policy.decide("social.example", children)  # type: ignore[arg-type]
    assert found is not None and found.list == "social"


def test_the_cache_never_serves_one_groups_answer_to_another(config) -> None:  # type: ignore[no-untyped-def]
    groups = build_groups(config.groups, config.schedules)
    question = wire.parse_query(bytes.fromhex("abcd01000001000000000000076578616d706c65036f72670000010001"))
    keys = {cache_key(question, None), cache_key(question, groups[0]), cache_key(question, groups[1])}
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("groups: [{name: a, clients: [10.0.0.1], lists: [nope]}]", "groups[0].lists: no list named 'nope'"),
        ("groups: [{name: a, clients: [10.0.0.1], schedules: [x]}]", "groups[0].schedules: no schedule named 'x'"),
        ("groups: [{name: a, clients: ['bad client']}]", "groups[0].clients[0]: 'bad client' is not an IP"),
        ("groups: [{clients: [10.0.0.1]}]", "groups[0].name: is required"),
        ("groups: [{name: a}]", "groups[0].clients: is required"),
        ("groups: [{name: a, clients: [10.0.0.1], colour: red}]", "unknown key"),
        ("groups: [{name: a, clients: [1.2.3.4]}, {name: a, clients: [1.2.3.5]}]", "'a' is used by another group"),
        ("schedules: {s: {when: ['mon 9:00-25:00']}}", "schedules.s.when[0]: '25:00'"),
        ("schedules: {s: {when: ['mon 9:00-10:00'], block: [nope]}}", "schedules.s.block: no list named 'nope'"),
        ("schedules: {s: {when: ['mon 9:00-10:00'], timezone: Nowhere/Land}}", "'Nowhere/Land' is not a time zone"),
    ],
)
def test_group_and_schedule_errors_name_file_line_and_key(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"dns: {{listen: ['127.0.0.1:5353']}}\n{text}\n", "g.yaml")
    assert any(p.startswith("g.yaml:2: ") and problem in p for p in raised.value.problems), raised.value.problems


# --- the neighbour table and DHCP leases ------------------------------------------------------------------

PROC_ARP = """IP address       HW type     Flags       HW address            Mask     Device
192.168.1.7      0x1         0x2         aa:bb:cc:dd:ee:ff     *        eth0
192.168.1.8      0x1         0x0         00:00:00:00:00:00     *        eth0
192.168.1.9      0x1         0x2         AA:BB:CC:00:11:22     *        eth0
"""
IP_NEIGH = """fe80::1c2b:3aff:fe4d:5e6f dev eth0 lladdr aa:bb:cc:dd:ee:ff router STALE
2001:db8::abcd dev eth0 lladdr aa:bb:cc:dd:ee:ff REACHABLE
2001:db8::dead dev eth0  FAILED
2001:db8::beef dev eth0 lladdr 11:22:33:44:55:66 INCOMPLETE
"""


def test_the_neighbour_table_maps_every_address_of_a_device_to_its_mac() -> None:
    assert parse_proc_arp(PROC_ARP) == {"192.168.1.7": "aa:bb:cc:dd:ee:ff", "192.168.1.9": "aa:bb:cc:00:11:22"}
    assert parse_ip_neigh(IP_NEIGH) == {
        "fe80::1c2b:3aff:fe4d:5e6f": "aa:bb:cc:dd:ee:ff",
        "2001:db8::abcd": "aa:bb:cc:dd:ee:ff",  # a rotated privacy address: the same MAC, so the same group
    }


def test_dhcp_leases_in_dnsmasq_and_kea_formats() -> None:
    dnsmasq = (
        "1767225600 aa:bb:cc:dd:ee:ff 192.168.1.64 tablet 01:aa:bb:cc:dd:ee:ff\n"
        "1767225600 11:22:33:44:55:66 192.168.1.65 * *\n"
        "duid 00:01\n"
    )
    assert parse_dnsmasq_leases(dnsmasq) == [
        ("192.168.1.64", "aa:bb:cc:dd:ee:ff", "tablet"),
        ("192.168.1.65", "11:22:33:44:55:66", None),
    ]
    kea = (
        "address,hwaddr,client_id,valid_lifetime,expire,subnet_id,fqdn_fwd,fqdn_rev,hostname,state,user_context\n"
        "192.168.1.66,aa:bb:cc:dd:ee:01,,3600,1767225600,1,0,0,laptop.lan.,0,\n"
        "192.168.1.67,aa:bb:cc:dd:ee:02,,3600,1767225600,1,0,0,old.lan,2,\n"
    )
    assert parse_kea_leases(kea) == [("192.168.1.66", "aa:bb:cc:dd:ee:01", "laptop.lan")]
    assert parse_leases(kea) == parse_kea_leases(kea) and parse_leases(dnsmasq) == parse_dnsmasq_leases(dnsmasq)
    directory = build_directory(
        {"192.168.1.7": "aa:bb:cc:dd:ee:ff"},
        [("printer.lan", ["192.168.1.5"])],
        parse_kea_leases(kea),
        {"192.168.1.9": "phone.lan"},
    )
    assert directory.macs == {"192.168.1.7": "aa:bb:cc:dd:ee:ff", "192.168.1.66": "aa:bb:cc:dd:ee:01"}
    assert directory.names["192.168.1.5"] == {"printer.lan", "printer"}
    assert directory.names["192.168.1.66"] == {"laptop.lan", "laptop"}
    assert directory.names["192.168.1.9"] == {"phone.lan", "phone"}
