"""Matcher: which list blocks a name (list order, exact vs subtree, per-list exceptions, specificity)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.blocklists.matcher import ListSource, Match, Matcher
from filterd.blocklists.parse import Entry, ParsedList, Skipped, parse_list

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "domains-samples"


def source(name: str, text: str, *, fmt: str = "adblock", category: str | None = None) -> ListSource:
    return ListSource(name, category or f"{name}-cat", parse_list(text, fmt=fmt))


def matcher(*sources: ListSource) -> Matcher:
    return Matcher.build(sources)


def brief(found: Match | None) -> tuple[str, str, int] | None:
    """(list, entry, line) of a match: what most cases are about."""
    return None if found is None else (found.list, found.entry, found.line)


# --- one list: exact vs subtree ---------------------------------------------------------------------------

_ONE_LIST = "\n".join(
    [
        "||sub.example.com^",  # 1: subtree
        "|exact.example.com^",  # 2: exact
        "||example.org^",  # 3: subtree
        "|www.example.org^",  # 4: exact, under a subtree entry
        "||deep.www.example.org^",  # 5: subtree, more specific still
        "|com^",  # 6: exact TLD entry: must not block everything under .com
    ]
)


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("sub.example.com", ("l", "sub.example.com", 1)),
        ("a.sub.example.com", ("l", "sub.example.com", 1)),
        ("a.b.c.sub.example.com", ("l", "sub.example.com", 1)),
        ("example.com", None),  # a parent of a subtree entry is not covered
        ("xsub.example.com", None),  # label boundaries, not string suffixes
        ("exact.example.com", ("l", "exact.example.com", 2)),
        ("a.exact.example.com", None),  # exact entries do not cover children
        ("example.org", ("l", "example.org", 3)),
        ("www.example.org", ("l", "www.example.org", 4)),  # most specific entry reported
        ("x.www.example.org", ("l", "example.org", 3)),  # the exact entry does not apply here
        ("deep.www.example.org", ("l", "deep.www.example.org", 5)),
        ("x.deep.www.example.org", ("l", "deep.www.example.org", 5)),
        ("com", ("l", "com", 6)),
        ("other.com", None),
        ("org", None),
        ("", None),
        ("unrelated.net", None),
    ],
)
def test_exact_and_subtree(qname: str, expected: tuple[str, str, int] | None) -> None:
    assert brief(matcher(source("l", _ONE_LIST)).match(qname)) == expected


def test_match_fields() -> None:
    text = "||plain.com^\n# category: chat-roulette\n|omegle.com^\n"
    found = matcher(source("chat", text, category="fallback")).match("omegle.com")
    assert found == Match(list="chat", entry="omegle.com", line=3, category="chat-roulette", subtree=False)
    found = matcher(source("chat", text, category="fallback")).match("x.plain.com")
    assert found == Match(list="chat", entry="plain.com", line=1, category="fallback", subtree=True)


@pytest.mark.parametrize(
    ("fmt", "text", "qname", "expected"),
    [
        ("hosts", "0.0.0.0 ads.com", "ads.com", ("l", "ads.com", 1)),
        ("hosts", "0.0.0.0 ads.com", "x.ads.com", None),  # hosts entries are exact by default
        ("domains", "ads.com", "x.ads.com", ("l", "ads.com", 1)),  # domain entries cover the subtree
        ("domains", "*.ads.com", "x.ads.com", ("l", "ads.com", 1)),
        ("adblock", "ads.com", "x.ads.com", ("l", "ads.com", 1)),
    ],
)
def test_format_defaults_reach_the_matcher(
    fmt: str, text: str, qname: str, expected: tuple[str, str, int] | None
) -> None:
    assert brief(matcher(source("l", text, fmt=fmt)).match(qname)) == expected


# --- several lists: order and exceptions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lists", "qname", "expected"),
    [
        # the first list that blocks wins, even with a less specific entry
        ([("a", "||example.com^"), ("b", "|www.example.com^")], "www.example.com", ("a", "example.com", 1)),
        (
            [("a", "|www.example.com^"), ("b", "||example.com^")],
            "www.example.com",
            ("a", "www.example.com", 1),
        ),
        ([("a", "|www.example.com^"), ("b", "||example.com^")], "x.www.example.com", ("b", "example.com", 1)),
        # an exception only unblocks within its own list
        ([("a", "||ads.com^\n@@||ads.com^"), ("b", "||ads.com^")], "ads.com", ("b", "ads.com", 1)),
        ([("a", "||ads.com^"), ("b", "@@||ads.com^")], "ads.com", ("a", "ads.com", 1)),
        ([("a", "@@||ads.com^"), ("b", "||x.ads.com^")], "x.ads.com", ("b", "x.ads.com", 1)),
        # an exception covers its name and everything under it, at any level relative to the block entry
        ([("a", "||ads.com^\n@@||ok.ads.com^")], "ok.ads.com", None),
        ([("a", "||ads.com^\n@@||ok.ads.com^")], "x.ok.ads.com", None),
        ([("a", "||ads.com^\n@@||ok.ads.com^")], "other.ads.com", ("a", "ads.com", 1)),
        ([("a", "||ads.com^\n@@||ok.ads.com^")], "ads.com", ("a", "ads.com", 1)),
        ([("a", "||x.ads.com^\n@@||ads.com^")], "x.ads.com", None),  # a parent exception wins too
        ([("a", "@@||ads.com^\n||x.ads.com^")], "y.x.ads.com", None),  # order within a list is irrelevant
        # an exact exception (`@@|name^`) covers only that name
        ([("a", "||ads.com^\n@@|ok.ads.com^")], "ok.ads.com", None),
        ([("a", "||ads.com^\n@@|ok.ads.com^")], "x.ok.ads.com", ("a", "ads.com", 1)),
        # exceptions alone block nothing
        ([("a", "@@||ads.com^")], "ads.com", None),
        # a list with exceptions elsewhere does not lose its other entries
        ([("a", "@@||ok.com^\n||ads.com^"), ("b", "||ok.com^")], "ads.com", ("a", "ads.com", 2)),
        ([("a", "@@||ok.com^\n||ads.com^"), ("b", "||ok.com^")], "ok.com", ("b", "ok.com", 1)),
    ],
)
def test_list_order_and_exceptions(
    lists: list[tuple[str, str]], qname: str, expected: tuple[str, str, int] | None
) -> None:
    built = Matcher.build([source(name, text) for name, text in lists])
    assert brief(built.match(qname)) == expected


def test_duplicates_keep_the_first_line() -> None:
    built = matcher(source("l", "a.com\nb.com\na.com\n# category: late\na.com\n", fmt="domains"))
    found = built.match("a.com")
    assert found is not None
    assert (found.line, found.category) == (1, "l-cat")
    assert built.entry_counts() == {"l": 2}


def test_exact_and_subtree_entries_of_one_name_are_both_kept() -> None:
    built = matcher(source("l", "|a.com^\n||a.com^\n"))
    assert brief(built.match("a.com")) == ("l", "a.com", 1)  # both match: the first line is reported
    assert brief(built.match("x.a.com")) == ("l", "a.com", 2)  # only the subtree entry matches
    assert built.entry_counts() == {"l": 2}


def test_entry_counts_exclude_exceptions_and_cover_every_list() -> None:
    built = Matcher.build(
        [
            source("a", "||a.com^\n@@||b.a.com^\n||c.com^\n||c.com^\n"),
            source("empty", "! nothing\n"),
            source("hosts", "0.0.0.0 x.com y.com\n", fmt="hosts"),
        ]
    )
    assert built.entry_counts() == {"a": 2, "empty": 0, "hosts": 2}
    assert built.entry_counts() is not built.entry_counts()  # a fresh dict each time: callers may mutate it


def test_categories_are_per_entry_with_the_list_fallback() -> None:
    text = "||one.com^\n# category: video\n||two.com^\n# category: text\n||three.com^\n"
    built = Matcher.build([source("a", text, category="adult"), source("b", "||four.com^", category="doh")])
    assert [(m.list, m.category) for m in map(built.match, ["one.com", "two.com", "three.com", "four.com"]) if m] == [
        ("a", "adult"),
        ("a", "video"),
        ("a", "text"),
        ("b", "doh"),
    ]


def test_built_from_hand_made_entries() -> None:
    parsed = ParsedList(
        entries=(
            Entry("b.com", subtree=False, exception=False, category="x", line=7),
            Entry("c.com", subtree=True, exception=False, category=None, line=9),
        ),
        format="domains",
        skipped=Skipped(0, None, None),
    )
    built = Matcher.build([ListSource("hand", "fallback", parsed)])
    assert built.match("b.com") == Match("hand", "b.com", 7, "x", False)
    assert built.match("z.c.com") == Match("hand", "c.com", 9, "fallback", True)


def test_empty_matcher() -> None:
    empty = Matcher.empty()
    assert empty.match("example.com") is None
    assert empty.entry_counts() == {}
    assert Matcher.build([]).match("example.com") is None


def test_duplicate_list_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate list names"):
        Matcher.build([source("a", "||x.com^"), source("a", "||y.com^")])


def test_large_line_numbers_and_many_lists_survive_packing() -> None:
    parsed = ParsedList((Entry("far.com", True, False, None, 10**9),), "domains", Skipped(0, None, None))
    sources = [source(f"l{i}", f"||n{i}.com^") for i in range(300)] + [ListSource("last", "c", parsed)]
    built = Matcher.build(sources)
    assert built.match("far.com") == Match("last", "far.com", 10**9, "c", True)
    assert brief(built.match("x.n299.com")) == ("l299", "n299.com", 1)


# --- property: the index agrees with a naive scan over the entries ----------------------------------------

_LABELS = st.sampled_from(["a", "b", "com", "x-y", "_s"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)
_ENTRIES = st.lists(st.tuples(_NAMES, st.booleans(), st.booleans()), max_size=8)


def _naive(lists: list[list[tuple[str, bool, bool]]], qname: str) -> tuple[int, str] | None:
    """(list index, entry name) by scanning every entry: the definition the Matcher must agree with."""

    def covers(entry: str, subtree: bool) -> bool:
        return qname == entry or (subtree and qname.endswith("." + entry))

    for index, entries in enumerate(lists):
        if any(exc and covers(name, sub) for name, sub, exc in entries):
            continue
        hits = [name for name, sub, exc in entries if not exc and covers(name, sub)]
        if hits:
            return index, max(hits, key=len)
    return None


@settings(max_examples=300, deadline=None)
@given(lists=st.lists(_ENTRIES, max_size=3), qname=_NAMES)
def test_matcher_agrees_with_a_naive_scan(lists: list[list[tuple[str, bool, bool]]], qname: str) -> None:
    sources = [
        ListSource(
            f"l{i}",
            "c",
            ParsedList(
                tuple(Entry(name, sub, exc, None, line) for line, (name, sub, exc) in enumerate(entries, 1)),
                "domains",
                Skipped(0, None, None),
            ),
        )
        for i, entries in enumerate(lists)
    ]
    found = Matcher.build(sources).match(qname)
    expected = _naive(lists, qname)
    assert (None if found is None else (int(found.list[1:]), found.entry)) == expected


# --- real list files (only in the development workspace) --------------------------------------------------


def _sample(name: str) -> str:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/domains-samples not present (only in the development workspace)")
    return (SAMPLES / name).read_text(encoding="utf-8")


def test_sample_lists_together() -> None:
    sources = [
        ListSource("adult", "adult", parse_list(_sample("shadowwhisperer-adult.domains.txt"))),
        ListSource("porn-hosts", "adult", parse_list(_sample("sinfonietta-pornography.hosts.txt"))),
        ListSource("chat", "chat", parse_list(_sample("ut1-chat.domains.txt"))),
        ListSource("doh", "doh", parse_list(_sample("dibdot-doh-domains.txt"))),
    ]
    started = time.perf_counter()
    built = Matcher.build(sources)
    assert time.perf_counter() - started < 10  # generous: about 0.1 s on a laptop
    counts = built.entry_counts()
    assert counts["porn-hosts"] == 61_182 - 24  # the 24 duplicate lines are counted once
    assert counts["chat"] == 195
    assert counts["doh"] == 1_376 - 1  # eth.link: a public suffix, refused
    first = sources[0].parsed.entries[0]
    assert brief(built.match(first.name)) == ("adult", first.name, first.line)
    assert brief(built.match("www." + first.name)) == ("adult", first.name, first.line)  # domains: subtree
    assert built.match("filterd-test.invalid") is None
