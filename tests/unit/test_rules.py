"""Brand rules (`omegle.*`) and name patterns (`/regex/`): parsed from every list syntax, matched with the Public
Suffix List, reported with their list and line, and the same in memory and in the compiled snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.blocklists.compiled import CompiledMatcher, ListFile, compile_lists
from filterd.blocklists.matcher import ListSource, Match, Matcher
from filterd.blocklists.parse import parse_list
from filterd.blocklists.rules import BRAND, PATTERN, backtrack_bound, brand_label, check_pattern

CHAT = """\
# category: chat-roulette-video
omegle.com
omegle.*
*.ometv.*
/(^|[.-])chat-?roulette/
# category: anonymous-text-chat
/^([a-z0-9-]+\\.)*talk-?to-?strangers?[a-z0-9-]*\\./
"""


def _matcher(*lists: tuple[str, str, str]) -> Matcher:
    return Matcher.build([ListSource(name, f"{name}-cat", parse_list(text, fmt=fmt)) for name, fmt, text in lists])


def test_domains_list_reads_brand_rules_and_patterns_with_their_lines() -> None:
    parsed = parse_list(CHAT, fmt="domains")
    assert [(r.kind, r.text, r.line, r.category) for r in parsed.rules] == [
        (BRAND, "omegle", 3, "chat-roulette-video"),
        (BRAND, "ometv", 4, "chat-roulette-video"),
        (PATTERN, "(^|[.-])chat-?roulette", 5, "chat-roulette-video"),
        (PATTERN, "^([a-z0-9-]+\\.)*talk-?to-?strangers?[a-z0-9-]*\\.", 7, "anonymous-text-chat"),
    ]
    assert [e.name for e in parsed.entries] == ["omegle.com"]
    assert parsed.skipped.count == 0


def test_adblock_list_reads_brand_rules_patterns_and_their_exceptions() -> None:
    text = "||omegle.*^\n|ometv.*^\n/roulette/\n@@/^ok\\./\n@@||shop.omegle.tv^\n/x/$important\n"
    parsed = parse_list(text, fmt="adblock")
    assert [(r.kind, r.text, r.subtree, r.exception, r.line) for r in parsed.rules] == [
        (BRAND, "omegle", True, False, 1),
        (BRAND, "ometv", False, False, 2),
        (PATTERN, "roulette", True, False, 3),
        (PATTERN, "^ok\\.", True, True, 4),
    ]
    assert parsed.skipped.count == 1 and parsed.skipped.sample_line == 6  # a pattern with $modifiers


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("/bad(/", "invalid pattern"),
        ("//", "a name pattern is written /regex/"),
        ("foo.bar.*", "a brand rule is one label before .*"),
        ("-x-.*", "a brand rule is one label before .*"),
        ("/" + "a" * 1100 + "/", "longer than 1024"),
    ],
)
def test_a_bad_rule_is_skipped_with_its_line_and_reason(line: str, reason: str) -> None:
    parsed = parse_list(f"# category: c\nok.example\n{line}\n", fmt="domains")
    assert parsed.skipped.count == 1
    assert parsed.skipped.sample_line == 3
    assert reason in (parsed.skipped.sample_reason or "")
    assert [e.name for e in parsed.entries] == ["ok.example"]


@pytest.mark.parametrize(
    ("qname", "entry"),
    [
        ("omegle.com", "omegle.com"),  # a listed name is found first
        ("omegle.onl", "omegle.*"),
        ("omegle.co.uk", "omegle.*"),  # a multi-label public suffix
        ("front3.omegle.life", "omegle.*"),  # everything under it
        ("omegle.github.io", "omegle.*"),  # the PSL's private section counts
        ("omegle.some-new-tld", "omegle.*"),  # an unknown TLD counts as a suffix (the PSL's default rule)
        ("omegle", None),  # a bare label has no suffix
        ("notomegle.tv", None),
        ("omegle-fans.tv", None),
        ("omegle.example.com", None),  # not directly under a suffix: someone else's host name
        ("ometv.pl", "ometv.*"),
        ("chatroulette.ru", "/(^|[.-])chat-?roulette/"),
        ("www.best-chat-roulette.net", "/(^|[.-])chat-?roulette/"),
        ("kidschatroulette.com", None),  # the pattern asks for a boundary before it
        ("talktostrangers.com", "/^([a-z0-9-]+\\.)*talk-?to-?strangers?[a-z0-9-]*\\./"),
        ("www.talk-to-stranger-app.io", "/^([a-z0-9-]+\\.)*talk-?to-?strangers?[a-z0-9-]*\\./"),
        ("example.com", None),
    ],
)
def test_what_the_rules_block(qname: str, entry: str | None) -> None:
    found = _matcher(("chat", "domains", CHAT)).match(qname)
    assert (found.entry if found else None) == entry


def test_a_rule_match_reports_list_line_and_category() -> None:
    found = _matcher(("chat", "domains", CHAT)).match("x.talk-to-strangers.org")
    entry = "/^([a-z0-9-]+\\.)*talk-?to-?strangers?[a-z0-9-]*\\./"
    assert found == Match("chat", entry, 7, "anonymous-text-chat", True)


def test_exceptions_in_a_list_cover_only_that_lists_rules() -> None:
    first = "||omegle.*^\n@@||shop.omegle.tv^\n@@/^fine-roulette\\./\n/roulette/\n"
    second = "roulette.*\n"
    matcher = _matcher(("first", "adblock", first), ("second", "domains", second))
    assert matcher.match("shop.omegle.tv") is None  # first's name exception covers first's brand rule
    assert matcher.match("omegle.tv") == Match("first", "omegle.*", 1, "first-cat", True)
    assert matcher.match("fine-roulette.com") is None  # first excepts it; second's brand rule is "roulette" only
    found = matcher.match("roulette.fr")
    assert found is not None and found.list == "first"  # both lists match: the first list in order wins
    only_second = _matcher(("first", "adblock", "@@||roulette.fr^\n/roulette/\n"), ("second", "domains", second))
    assert only_second.match("roulette.fr") == Match("second", "roulette.*", 1, "second-cat", True)


def test_a_listed_name_in_a_later_list_is_found_before_a_rule() -> None:
    matcher = _matcher(("rules", "domains", "omegle.*\n"), ("names", "domains", "omegle.tv\n"))
    found = matcher.match("omegle.tv")
    assert found is not None and (found.list, found.entry) == ("names", "omegle.tv")


def test_entry_counts_include_rules() -> None:
    assert _matcher(("chat", "domains", CHAT)).entry_counts() == {"chat": 5}


def _compiled(tmp_path: Path, lists: list[tuple[str, str, str]]) -> tuple[Matcher, CompiledMatcher]:
    specs = []
    for name, fmt, text in lists:
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        specs.append(ListFile(name, f"{name}-cat", path, fmt))
    out = tmp_path / "snapshot.bin"
    compile_lists(specs, out)
    return _matcher(*lists), CompiledMatcher(out)


RULE_LISTS = [
    ("chat", "domains", CHAT),
    ("ab", "adblock", "||roulette.*^\n@@||ok.omegle.tv^\n@@/^fine\\./\n/ruletka/\n||chat.example^\n"),
    ("names", "hosts", "0.0.0.0 omegle.tv chatroulette.ru\n"),
]


@pytest.mark.parametrize(
    "qname",
    [
        "omegle.com",
        "omegle.tv",
        "ok.omegle.tv",
        "a.ok.omegle.tv",
        "omegle.co.uk",
        "chatroulette.ru",
        "roulette.de",
        "fine.roulette.de",
        "ruletka.ru",
        "fine.ruletka.ru",
        "chat.example",
        "example.org",
    ],
)
def test_the_compiled_snapshot_matches_rules_as_the_matcher_does(tmp_path: Path, qname: str) -> None:
    matcher, compiled = _compiled(tmp_path, RULE_LISTS)
    assert compiled.match(qname) == matcher.match(qname)
    assert compiled.entry_counts() == matcher.entry_counts()


_labels = st.sampled_from(["omegle", "ometv", "roulette", "ruletka", "fine", "ok", "chat", "www", "x-y"])
_suffixes = st.sampled_from(["com", "tv", "co.uk", "github.io", "example", "ru", "nosuchtld"])


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> tuple[Matcher, CompiledMatcher]:
    return _compiled(tmp_path_factory.mktemp("rules"), RULE_LISTS)


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(_labels, min_size=0, max_size=3), suffix=_suffixes)
def test_compiled_and_matcher_agree_on_generated_names(
    both: tuple[Matcher, CompiledMatcher], labels: list[str], suffix: str
) -> None:
    matcher, compiled = both
    qname = ".".join([*labels, suffix])
    assert compiled.match(qname) == matcher.match(qname)


def test_brand_label_normalises_and_refuses() -> None:
    assert brand_label("OMEGLE.*") == "omegle"
    assert brand_label("чатрулетка.*") == "чатрулетка".encode("idna").decode()
    assert brand_label("a.b.*") is None
    assert brand_label("omegle") is None


@pytest.mark.parametrize(
    "pattern",
    ["(a+)+b", "(a|a)*b", ".*a.*b", "(ab)+", "(x)\\1", "(?=a)b", "(?!a)b", "([a-z]+-)+x"],
)
def test_the_backtracking_proof_refuses_dangerous_patterns(pattern: str) -> None:
    """The standard engine is used only where re2 has no wheel: these could take exponential or high
    polynomial time there, so they are refused (re2 runs them in linear time)."""
    assert backtrack_bound(pattern) is not None


@pytest.mark.parametrize(
    "pattern",
    [
        "omegle",
        "(^|[.-])chat-?roulette",
        "^([a-z0-9-]{1,5}\\.)?omegle",
        "rulet(ka|ki)[a-z0-9-]*\\.",
        "(video|cam)-?chat-?(random|roulette)",
    ],
)
def test_the_backtracking_proof_accepts_the_patterns_lists_are_made_of(pattern: str) -> None:
    assert backtrack_bound(pattern) is None
    assert check_pattern(pattern) is None


def test_the_shipped_patterns_run_without_re2(monkeypatch: pytest.MonkeyPatch) -> None:
    """32-bit ARM has no re2 wheel: every shipped pattern must pass the backtracking proof and match there as
    it does with re2."""
    from filterd.blocklists import rules
    from filterd.blocklists.builtin import builtin_path

    text = builtin_path("chat-roulette").read_text(encoding="utf-8")
    with_re2 = Matcher.build([ListSource("c", "c", parse_list(text, fmt="domains"))])
    monkeypatch.setattr(rules, "_re2", None)
    parsed = parse_list(text, fmt="domains")
    assert parsed.skipped.count == 0, parsed.skipped
    assert sum(r.kind == PATTERN for r in parsed.rules) >= 10
    without = Matcher.build([ListSource("c", "c", parsed)])
    hostile = "a" * 60 + "." + "-" * 60 + "." + "chat" * 15 + "." + "x" * 60
    for name in ["omegle.onl", "www.videochatru.com", "best-random-chat.app", "example.org", "sohbet.example", hostile]:
        assert without.match(name) == with_re2.match(name), name


def test_without_re2_a_dangerous_pattern_is_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    from filterd.blocklists import rules

    monkeypatch.setattr(rules, "_re2", None)
    parsed = parse_list("omegle.*\n/(a+)+$/\n/omegle/\n", fmt="domains")
    assert [r.text for r in parsed.rules] == ["omegle", "omegle"]
    assert parsed.skipped.sample_line == 2
    assert "needs re2" in (parsed.skipped.sample_reason or "") and "repeat" in (parsed.skipped.sample_reason or "")
