"""Blocklist parsing: the rules users bring from Pi-hole / AdGuard Home / Blocky, and real list files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.blocklists.parse import (
    Entry,
    ParsedList,
    Skipped,
    _normalize,
    detect_format,
    normalize_name,
    parse_list,
)

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "domains-samples"
_LONGEST = ".".join(["a" * 63] * 3 + ["a" * 61])


def names(parsed: ParsedList) -> list[str]:
    return [e.name for e in parsed.entries]


def triples(parsed: ParsedList) -> list[tuple[str, bool, bool]]:
    """(name, subtree, exception) per entry: what most rules are about."""
    return [(e.name, e.subtree, e.exception) for e in parsed.entries]


# --- normalize_name ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("example.com", "example.com"),
        ("  Example.COM.  ", "example.com"),  # whitespace, case, one trailing dot
        ("example.com..", None),  # only one trailing dot is dropped
        ("\texample.com\r", "example.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),  # underscore is valid
        ("-edge-.example.com", "-edge-.example.com"),  # edge hyphens tolerated: real lists have them
        ("localhost", "localhost"),  # a single label is a name
        ("0.0.0.0.beeglivesex.com", "0.0.0.0.beeglivesex.com"),
        ("123.com", "123.com"),
        ("1.2.3", "1.2.3"),  # not an address ipaddress accepts
        ("01.2.3.4", "01.2.3.4"),  # leading zeros: ipaddress rejects it, so it is a (strange) name
        ("bücher.de", "xn--bcher-kva.de"),  # IDN -> A-label
        ("Bücher.DE.", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("MÜNCHEN.de", "xn--mnchen-3ya.de"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("a" * 64 + ".com", None),  # label too long
        (_LONGEST, _LONGEST),  # 253 characters: the limit
        (_LONGEST + ".", _LONGEST),
        ("b" + _LONGEST, None),  # 254 characters
        ("", None),
        ("   ", None),
        (".", None),
        ("..", None),
        ("a..b", None),
        (".example.com", None),
        ("exa mple.com", None),
        ("example.com/path", None),
        ("*.example.com", None),
        ("ex#ample.com", None),
        ("1.2.3.4", None),  # addresses are not names
        ("0.0.0.0", None),
        ("::1", None),
        ("2001:db8::1", None),
        ("fe80::1%eth0", None),
        ("\ud800.com", None),  # lone surrogate: the idna codec fails, no exception escapes
        ("ü" * 70 + ".com", None),  # label too long for IDNA
    ],
)
def test_normalize_name(text: str, expected: str | None) -> None:
    assert normalize_name(text) == expected


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(alphabet="abcXYZ019_-. \tü", max_size=30),
        st.lists(st.text(alphabet="az09-_", min_size=0, max_size=70), min_size=1, max_size=5).map(".".join),
        st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){3}", fullmatch=True),
    )
)
def test_normalize_names_shortcut_agrees_with_the_long_way(text: str) -> None:
    """The one-regex shortcut for names already in canonical form answers exactly as the full rules do: label and
    name lengths, upper case, dots at the ends, spaces, addresses, non-ASCII."""
    assert normalize_name(text) == _normalize(text)


def test_normalize_name_is_idempotent_on_its_output() -> None:
    for text in ("Bücher.DE.", "_x.Example.com", "a-.b"):
        once = normalize_name(text)
        assert once is not None
        assert normalize_name(once) == once


# --- comments, blank lines, categories, line endings ------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hosts", "domains", "adblock"])
def test_comments_blank_lines_and_headers_are_not_counted(fmt: str) -> None:
    text = "# a comment\n! another\n   # indented\n\n \t \n[Adblock Plus 2.0]\n"
    parsed = parse_list(text, fmt=fmt)
    assert parsed.entries == ()
    assert parsed.skipped == Skipped(0, None, None)
    assert parsed.format == fmt


@pytest.mark.parametrize(
    ("fmt", "line"),
    [
        ("hosts", "0.0.0.0 ex.com #comment"),
        ("hosts", "0.0.0.0 ex.com\t# comment"),
        ("domains", "ex.com #comment"),
        ("domains", "ex.com\t#comment # more"),
    ],
)
def test_trailing_comment_after_an_entry(fmt: str, line: str) -> None:
    assert names(parse_list(line, fmt=fmt)) == ["ex.com"]


def test_hash_glued_to_a_name_is_not_a_comment() -> None:
    parsed = parse_list("ex.com#x\n", fmt="domains")
    assert parsed.entries == ()
    assert parsed.skipped == Skipped(1, 1, "not a valid hostname: 'ex.com#x'")


@pytest.mark.parametrize("fmt", ["hosts", "domains", "adblock"])
def test_category_sections(fmt: str) -> None:
    prefix = {"hosts": "0.0.0.0 ", "domains": "", "adblock": "||"}[fmt]
    suffix = "^" if fmt == "adblock" else ""
    text = "\n".join(
        [
            f"{prefix}none.com{suffix}",
            "# category: chat-roulette",
            f"{prefix}a.com{suffix}",
            "#CATEGORY:adult-cam",  # case-insensitive key, no whitespace needed
            f"{prefix}b.com{suffix}",
            "#   Category  :   video chat  ",  # any whitespace; the value is stripped
            f"{prefix}c.com{suffix}",
            "# categoryless: not a category line",
            f"{prefix}d.com{suffix}",
            "# category:",  # an empty value ends the section
            f"{prefix}e.com{suffix}",
        ]
    )
    parsed = parse_list(text, fmt=fmt)
    assert [(e.name, e.category) for e in parsed.entries] == [
        ("none.com", None),
        ("a.com", "chat-roulette"),
        ("b.com", "adult-cam"),
        ("c.com", "video chat"),
        ("d.com", "video chat"),
        ("e.com", None),
    ]


def test_category_line_may_use_the_adblock_comment_marker() -> None:
    parsed = parse_list("! category: doh\n||dns.example^\n", fmt="adblock")
    assert [(e.name, e.category) for e in parsed.entries] == [("dns.example", "doh")]


@pytest.mark.parametrize("fmt", ["auto", "hosts", "domains", "adblock"])
def test_crlf_bom_and_line_numbers(fmt: str) -> None:
    body = {
        "auto": "0.0.0.0 a.com\r\n0.0.0.0 b.com\r\n",
        "hosts": "0.0.0.0 a.com\r\n0.0.0.0 b.com\r\n",
        "domains": "a.com\r\nb.com\r\n",
        "adblock": "||a.com^\r\n||b.com^\r\n",
    }[fmt]
    parsed = parse_list("\ufeff# header\r\n\r\n" + body, fmt=fmt)
    assert [(e.name, e.line) for e in parsed.entries] == [("a.com", 3), ("b.com", 4)]
    assert parsed.skipped.count == 0


def test_bom_before_the_first_entry() -> None:
    assert names(parse_list("\ufeffa.com\nb.com", fmt="domains")) == ["a.com", "b.com"]


def test_tabs_separate_hosts_fields() -> None:
    assert names(parse_list("0.0.0.0\ta.com\t\tb.com\n", fmt="hosts")) == ["a.com", "b.com"]


# --- hosts ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("0.0.0.0 ex.com", ["ex.com"]),
        ("127.0.0.1 ex.com", ["ex.com"]),
        (":: ex.com", ["ex.com"]),
        ("::1 ex.com", ["ex.com"]),
        ("192.168.1.20 printer.lan", ["printer.lan"]),
        ("2001:db8::1 v6.example", ["v6.example"]),
        ("0.0.0.0 a.com www.a.com m.a.com", ["a.com", "www.a.com", "m.a.com"]),  # several names per line
        ("0.0.0.0 Ehentai.to", ["ehentai.to"]),  # upper case (sinfonietta has such names)
        ("0.0.0.0 ex.com.", ["ex.com"]),  # trailing dot
        ("0.0.0.0 bücher.de", ["xn--bcher-kva.de"]),  # IDN
        ("0.0.0.0 _sip._tcp.example.com", ["_sip._tcp.example.com"]),  # underscore
        ("lone.example.com", ["lone.example.com"]),  # a lone name: taken, as Pi-hole does
    ],
)
def test_hosts_entries(line: str, expected: list[str]) -> None:
    parsed = parse_list(line, fmt="hosts")
    assert names(parsed) == expected
    assert all(not e.subtree and not e.exception and e.line == 1 for e in parsed.entries)
    assert parsed.skipped.count == 0


@pytest.mark.parametrize(
    "line",
    [
        "127.0.0.1 localhost",
        "127.0.0.1 localhost.localdomain",
        "127.0.0.1 local",
        "255.255.255.255 broadcasthost",
        "::1 ip6-localhost ip6-loopback",
        "fe00::0 ip6-localnet",
        "ff00::0 ip6-mcastprefix",
        "ff02::1 ip6-allnodes",
        "ff02::2 ip6-allrouters",
        "ff02::3 ip6-allhosts",
        "0.0.0.0 0.0.0.0",
        "127.0.0.1 LOCALHOST",
        "localhost",
    ],
)
def test_hosts_localhost_names_are_ignored_silently(line: str) -> None:
    assert parse_list(line, fmt="hosts") == ParsedList((), "hosts", Skipped(0, None, None))


def test_hosts_localhost_is_dropped_but_the_rest_of_the_line_kept() -> None:
    assert names(parse_list("127.0.0.1 localhost ads.example.com", fmt="hosts")) == ["ads.example.com"]


@pytest.mark.parametrize(
    ("text", "count", "reason"),
    [
        ("0.0.0.0 85.17.187.83", 1, "an IP address, not a hostname: '85.17.187.83'"),
        ("0.0.0.0", 1, "hosts line with an address but no name: '0.0.0.0'"),
        ("ex.com 0.0.0.0", 1, "hosts line does not start with an IP address: 'ex.com 0.0.0.0'"),
        ("999.1.1.1 ex.com", 1, "hosts line does not start with an IP address: '999.1.1.1 ex.com'"),
        ("0.0.0.0 ok.com bad..com worse!.com", 2, "not a valid hostname: 'bad..com'"),  # counted per name
        ("||ex.com^", 1, "not a valid hostname: '||ex.com^'"),
    ],
)
def test_hosts_invalid_lines_are_skipped_and_counted(text: str, count: int, reason: str) -> None:
    parsed = parse_list("# header\n" + text, fmt="hosts")
    assert parsed.skipped == Skipped(count, 2, reason)


# --- domains ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "subdomains", "expected"),
    [
        ("ex.com", None, ("ex.com", True, False)),
        ("ex.com", False, ("ex.com", False, False)),
        ("ex.com", True, ("ex.com", True, False)),
        ("*.ex.com", None, ("ex.com", True, False)),
        ("*.ex.com", False, ("ex.com", True, False)),  # `*.` is always a subtree
        ("  WWW.Ex.COM.  ", None, ("www.ex.com", True, False)),
        ("bücher.de", None, ("xn--bcher-kva.de", True, False)),
        ("_acme-challenge.ex.com", None, ("_acme-challenge.ex.com", True, False)),
    ],
)
def test_domains_entries(line: str, subdomains: bool | None, expected: tuple[str, bool, bool]) -> None:
    parsed = parse_list(line, fmt="domains", subdomains=subdomains)
    assert triples(parsed) == [expected]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("193.238.160.62", "an IP address, not a hostname: '193.238.160.62'"),  # UT1 lists have such lines
        ("2001:db8::1", "an IP address, not a hostname: '2001:db8::1'"),
        ("a..b", "not a valid hostname: 'a..b'"),
        ("0.0.0.0 ex.com", "not a valid hostname: '0.0.0.0 ex.com'"),
        ("*.", "not a valid hostname: '*.'"),
        ("http://ex.com/", "not a valid hostname: 'http://ex.com/'"),
        ("x" * 300, "not a valid hostname: '" + "x" * 77 + "...'"),  # long text is cut in the reason
    ],
)
def test_domains_invalid_lines_are_skipped_and_counted(line: str, reason: str) -> None:
    parsed = parse_list(f"ok.com\n{line}\nok2.com\n{line}\n", fmt="domains")
    assert names(parsed) == ["ok.com", "ok2.com"]
    assert parsed.skipped == Skipped(2, 2, reason)


# --- adblock ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "subdomains", "expected"),
    [
        ("||ex.com^", None, ("ex.com", True, False)),
        ("||ex.com^", False, ("ex.com", True, False)),  # `||` is always a subtree
        ("||ex.com", None, ("ex.com", True, False)),  # no `^`: fine when the rest is a plain hostname
        ("||ex.com^|", None, ("ex.com", True, False)),
        ("||Ex.COM.^", None, ("ex.com", True, False)),
        ("||bücher.de^", None, ("xn--bcher-kva.de", True, False)),
        ("|ex.com^", None, ("ex.com", False, False)),  # a single pipe: exactly this name (AdGuard Home)
        ("|ex.com^", True, ("ex.com", False, False)),
        ("ex.com", None, ("ex.com", True, False)),  # bare name: the format default (subtree)
        ("ex.com", False, ("ex.com", False, False)),
        ("ex.com^", None, ("ex.com", True, False)),
        ("@@||ex.com^", None, ("ex.com", True, True)),  # exception
        ("@@||ex.com^", False, ("ex.com", True, True)),
        ("@@ex.com", None, ("ex.com", True, True)),
        ("@@|ex.com^", None, ("ex.com", False, True)),
    ],
)
def test_adblock_entries(line: str, subdomains: bool | None, expected: tuple[str, bool, bool]) -> None:
    parsed = parse_list(f"! comment\n{line}\n", fmt="adblock", subdomains=subdomains)
    assert triples(parsed) == [expected]
    assert parsed.entries[0].line == 2
    assert parsed.skipped.count == 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("||ex.com^$important", "adblock rule with $modifiers"),
        ("||ex.com^$dnstype=AAAA", "adblock rule with $modifiers"),
        ("@@||ex.com^$badfilter", "adblock rule with $modifiers"),
        ("$third-party", "adblock rule with $modifiers"),
        ("||ex.com/ads/*", "adblock rule with a path"),
        ("||ex.com^/x", "adblock rule with a path"),
        ("/ads/banner.gif", "adblock rule with a path"),
        ("/ads/banner.gif$image", "adblock rule with $modifiers"),
        ("/^ads?\\./$important", "adblock regex rule with $modifiers"),
        ("||ad*.ex.com^", "adblock rule with a wildcard"),
        ("||ex.*.com^", "adblock rule with a wildcard"),
        ("||ex.com.*^", "a brand rule is one label before .* (like omegle.*): 'ex.com.*'"),
        ("ex.com##.ad-banner", "adblock cosmetic (element hiding) rule"),
        ("##.ad-banner", "adblock cosmetic (element hiding) rule"),
        ("ex.com#@#.ad", "adblock cosmetic (element hiding) rule"),
        ("ex.com#?#div:has(> .ad)", "adblock cosmetic (element hiding) rule"),
        ("ex.com#$#body { color: red }", "adblock cosmetic (element hiding) rule"),
        ("#%#//scriptlet('abort-on-property-read', 'x')", "adblock cosmetic (element hiding) rule"),
        ("||a..b^", "not a valid hostname: 'a..b'"),
        ("||1.2.3.4^", "an IP address, not a hostname: '1.2.3.4'"),
        ("0.0.0.0 ex.com", "not a valid hostname: '0.0.0.0 ex.com'"),
    ],
)
def test_adblock_unsupported_rules_are_skipped_and_counted(line: str, reason: str) -> None:
    text = f"[Adblock Plus 2.0]\n! Title: t\n||first.com^\n{line}\n||last.com^\n{line}\n"
    parsed = parse_list(text, fmt="adblock")
    assert names(parsed) == ["first.com", "last.com"]
    assert parsed.skipped == Skipped(2, 4, reason)


def test_adblock_hash_comment_is_a_comment_not_a_cosmetic_rule() -> None:
    parsed = parse_list("# just a comment\n#\n||ex.com^\n", fmt="adblock")
    assert names(parsed) == ["ex.com"]
    assert parsed.skipped.count == 0


# --- format detection and arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("# hosts\n0.0.0.0 a.com\n0.0.0.0 b.com\n", "hosts"),
        ("127.0.0.1\tlocalhost\n::1 ip6-localhost\n0.0.0.0 x.com\n", "hosts"),
        ("0.0.0.0 a.com\n0.0.0.0 b.com\nc.com\n", "hosts"),  # most lines carry an address
        ("a.com\nb.com\n0.0.0.0 c.com\n", "domains"),
        ("a.com\n1.2.3.4\n5.6.7.8\n", "domains"),  # bare addresses (UT1) are not hosts lines
        ("! Title\n||a.com^\n", "adblock"),
        ("a.com\nb.com\n@@||c.com^\n", "adblock"),  # any adblock rule
        ("|a.com^\n", "adblock"),
        ("[Adblock Plus 2.0]\na.com\n", "adblock"),
        ("\ufeff[Adblock Plus 2.0]\na.com\n", "adblock"),
        ("# only comments\n\n", "domains"),
        ("", "domains"),
        ("*.a.com\nb.com\n", "domains"),
        (
            "\r\n".join(["0.0.0.0 a.com"] * 300) + "\r\n||b.com^\r\n",
            "hosts",
        ),  # only the first 200 lines count
    ],
)
def test_detect_format(text: str, expected: str) -> None:
    assert detect_format(text) == expected
    assert parse_list(text).format == expected


def test_detect_format_looks_only_at_the_first_200_rule_lines() -> None:
    text = "# c\n" * 500 + "a.com\n" * 200 + "||b.com^\n"
    assert detect_format(text) == "domains"
    assert detect_format("# c\n" * 500 + "a.com\n" * 199 + "||b.com^\n") == "adblock"


@pytest.mark.parametrize(("fmt", "subtree"), [("hosts", False), ("domains", True), ("adblock", True)])
def test_default_subtree_per_format_and_override(fmt: str, subtree: bool) -> None:
    line = "0.0.0.0 ex.com" if fmt == "hosts" else "ex.com"
    assert parse_list(line, fmt=fmt).entries[0].subtree is subtree
    assert parse_list(line, fmt=fmt, subdomains=True).entries[0].subtree is True
    assert parse_list(line, fmt=fmt, subdomains=False).entries[0].subtree is False


@pytest.mark.parametrize("fmt", ["host", "HOSTS", "", "abp"])
def test_unknown_format_raises(fmt: str) -> None:
    with pytest.raises(ValueError, match="unknown list format"):
        parse_list("a.com", fmt=fmt)


def test_entries_keep_duplicates_and_order() -> None:
    parsed = parse_list("b.com\na.com\nb.com\n", fmt="domains")
    assert [(e.name, e.line) for e in parsed.entries] == [("b.com", 1), ("a.com", 2), ("b.com", 3)]


def test_entry_fields() -> None:
    parsed = parse_list("# category: chat\n*.ex.com\n", fmt="domains")
    assert parsed.entries == (Entry(name="ex.com", subtree=True, exception=False, category="chat", line=2),)


def test_large_input_is_parsed_in_one_go() -> None:
    n = 100_000
    text = "".join(f"0.0.0.0 host{i}.example.com\n" for i in range(n))
    parsed = parse_list(text)
    assert parsed.format == "hosts"
    assert len(parsed.entries) == n
    assert parsed.entries[-1] == Entry(f"host{n - 1}.example.com", False, False, None, n)


# --- properties -------------------------------------------------------------------------------------------

_LIST_ALPHABET = st.sampled_from([*"abcxyz019.-_*|^@$#!/ \t\r\n:[]", "ü", "\ufeff", "\u3002", "ß", "\ud800"])
_LIST_LINES = st.lists(
    st.one_of(
        st.text(),
        st.text(_LIST_ALPHABET, max_size=40),
        st.sampled_from(["0.0.0.0 ", "||", "@@||", "*.", "# category: ", "127.0.0.1 localhost"]).flatmap(
            lambda prefix: st.text(_LIST_ALPHABET, max_size=30).map(lambda rest: prefix + rest)
        ),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None)
@given(lines=_LIST_LINES, fmt=st.sampled_from(["auto", "hosts", "domains", "adblock"]))
def test_parse_list_never_raises_and_names_round_trip(lines: list[str], fmt: str) -> None:
    text = "\n".join(lines)
    parsed = parse_list(text, fmt=fmt)
    assert parsed.format in ("hosts", "domains", "adblock")
    assert parsed.skipped.count >= 0
    assert (parsed.skipped.sample_line is None) == (parsed.skipped.count == 0)
    for entry in parsed.entries:
        assert normalize_name(entry.name) == entry.name
        assert 1 <= entry.line <= text.count("\n") + 1


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_normalize_name_never_raises_and_is_idempotent(text: str) -> None:
    name = normalize_name(text)
    if name is not None:
        assert name.isascii() and name == name.lower() and not name.endswith(".")
        assert normalize_name(name) == name


# --- real list files (only in the development workspace) --------------------------------------------------


def _sample(name: str) -> str:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/domains-samples not present (only in the development workspace)")
    return (SAMPLES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt", ["hosts", "domains", "adblock"])
def test_sample_blocklistproject_format_is_detected(fmt: str) -> None:
    text = _sample(f"blocklistproject-basic.{fmt}.txt")
    assert detect_format(text) == fmt
    parsed = parse_list(text)
    assert parsed.format == fmt
    if fmt == "hosts":
        assert len(parsed.entries) == 76_036  # the header's "Entries: 76,036"
        assert parsed.skipped == Skipped(0, None, None)
    else:  # as subtrees, two dynamic-DNS platforms would block every name their users have: refused
        assert len(parsed.entries) == 76_034
        reason = "'hopto.org' is a public suffix: it would block every site under it"
        assert parsed.skipped == Skipped(2, 26_207, reason)
        assert len(parse_list(text, allow_suffixes=True).entries) == 76_036
    assert all(e.subtree is (fmt != "hosts") and not e.exception for e in parsed.entries)


def test_sample_blocklistproject_three_syntaxes_give_the_same_names() -> None:
    # The upstream files are the same list in three syntaxes and really do agree: no intersection needed.
    sets = {
        fmt: set(names(parse_list(_sample(f"blocklistproject-basic.{fmt}.txt"))))
        for fmt in ("hosts", "domains", "adblock")
    }
    assert sets["hosts"] - {"hopto.org", "redirectme.net"} == sets["domains"] == sets["adblock"]  # (suffixes)
    assert len(sets["hosts"]) == 76_036
    assert sum(name.startswith("xn--") or ".xn--" in name for name in sets["hosts"]) == 276  # README quirks
    assert sum("_" in name for name in sets["hosts"]) == 4


# (file, format, entries, skipped count, first skipped line, its reason); all skips are bare IPv4 addresses or
# public suffixes (sex.hu, bologna.it, tochigi.jp...: each would block every site under it).
_OTHER_SAMPLES = [
    (
        "shadowwhisperer-adult.domains.txt",
        "domains",
        219_517,
        5,
        33_753,
        "'bologna.it' is a public suffix: it would block every site under it",
    ),
    (
        "dibdot-doh-domains.txt",
        "domains",
        1_375,
        1,
        865,
        "'eth.link' is a public suffix: it would block every site under it",
    ),
    # 73 of 268 lines are bare IPv4 addresses
    ("ut1-chat.domains.txt", "domains", 195, 73, 2, "an IP address, not a hostname: '193.238.160.62'"),
    ("ut1-doh.domains.txt", "domains", 2_996, 19, 5, "an IP address, not a hostname: '1.0.0.1'"),
    # 5 `0.0.0.0 <IPv4>` lines; 61,186 non-blank lines, one (`0.0.0.0 xxxhindi.to en`) with two names
    (
        "sinfonietta-pornography.hosts.txt",
        "hosts",
        61_182,
        5,
        111,
        "an IP address, not a hostname: '85.17.187.83'",
    ),
]


@pytest.mark.parametrize(("file", "fmt", "entries", "count", "line", "reason"), _OTHER_SAMPLES)
def test_sample_files_parse_with_few_skips(
    file: str, fmt: str, entries: int, count: int, line: int | None, reason: str | None
) -> None:
    parsed = parse_list(_sample(file))
    assert parsed.format == fmt
    assert len(parsed.entries) == entries
    assert parsed.skipped == Skipped(count, line, reason)


def test_sample_sinfonietta_quirks() -> None:
    text = _sample("sinfonietta-pornography.hosts.txt")
    parsed = parse_list(text)
    counts = Counter(names(parsed))
    assert sum(n - 1 for n in counts.values()) == 24  # duplicate lines are kept by the parser
    assert "ehentai.to" in counts and "mysubs.cc" in counts  # upper case in the file, lower case here
    assert max(map(len, counts)) == 187
    assert sum("_" in name for name in counts) == 1
    uppercase_lines = {n for n, raw in enumerate(text.split("\n"), 1) if raw != raw.lower()}
    assert len(uppercase_lines) == 3
    assert all(e.name == e.name.lower() for e in parsed.entries)


# --- public suffixes (issue 13, defect 8) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "fmt", "reason"),
    [
        ("com", "domains", "'com' is a public suffix: it would block a whole TLD"),
        ("*.com", "domains", "'com' is a public suffix: it would block a whole TLD"),
        ("COM.", "domains", "'com' is a public suffix: it would block a whole TLD"),
        ("il", "domains", "'il' is a public suffix: it would block a whole TLD"),
        ("t", "domains", "'t' is a public suffix: it would block a whole TLD"),  # unknown TLDs too
        ("co.uk", "domains", "'co.uk' is a public suffix: it would block every site under it"),
        ("github.io", "domains", "'github.io' is a public suffix: it would block every site under it"),
        ("x.ck", "domains", "'x.ck' is a public suffix: it would block every site under it"),  # under `*.ck`
        ("xn--p1ai", "domains", "'xn--p1ai' is a public suffix: it would block a whole TLD"),  # .рф
        ("рф", "domains", "'xn--p1ai' is a public suffix: it would block a whole TLD"),
        ("||com^", "adblock", "'com' is a public suffix: it would block a whole TLD"),
        ("||co.uk^", "adblock", "'co.uk' is a public suffix: it would block every site under it"),
        ("com", "adblock", "'com' is a public suffix: it would block a whole TLD"),  # a bare name is a subtree
    ],
)
def test_a_subtree_entry_for_a_public_suffix_is_refused(line: str, fmt: str, reason: str) -> None:
    parsed = parse_list(f"good.example\n{line}\n", fmt=fmt)
    assert names(parsed) == ["good.example"]
    assert parsed.skipped == Skipped(1, 2, reason)
    assert names(parse_list(f"good.example\n{line}\n", fmt=fmt, allow_suffixes=True))[1:] != []  # forced: taken


@pytest.mark.parametrize(
    ("text", "fmt", "expected"),
    [
        ("www.gov.il\n", "domains", ["www.gov.il"]),  # under a suffix: an ordinary name
        ("gov.il.example\n", "domains", ["gov.il.example"]),
        ("www.ck\n", "domains", ["www.ck"]),  # `!www.ck`: the exception to `*.ck`
        ("foo.github.io\n", "domains", ["foo.github.io"]),  # one user's site
        # a platform's `*.` rule makes each tenant's host a suffix of its own: blocking one blocks one tenant
        ("ec2-44-195-46-161.compute-1.amazonaws.com\n", "domains", ["ec2-44-195-46-161.compute-1.amazonaws.com"]),
        ("0.0.0.0 com github.io\n", "hosts", ["com", "github.io"]),  # exact: one name each, as listed
        ("|com^\n", "adblock", ["com"]),  # exact
        ("@@||com^\n", "adblock", ["com"]),  # an exception blocks nothing
    ],
)
def test_what_is_not_refused_as_a_public_suffix(text: str, fmt: str, expected: list[str]) -> None:
    parsed = parse_list(text, fmt=fmt)
    assert names(parsed) == expected and parsed.skipped.count == 0


def test_hosts_entries_made_subtrees_refuse_suffixes_too() -> None:
    parsed = parse_list("0.0.0.0 com a.example\n", fmt="hosts", subdomains=True)
    assert names(parsed) == ["a.example"] and parsed.skipped.sample_reason == (
        "'com' is a public suffix: it would block a whole TLD"
    )


def test_a_refused_suffix_is_the_sample_ahead_of_lesser_skips() -> None:
    """The log shows one sample line per list: a list that tried to block a TLD is the one to show."""
    parsed = parse_list("1.2.3.4\nbad..name\na.example\ncom\nco.uk\n", fmt="domains")
    assert parsed.skipped == Skipped(4, 4, "'com' is a public suffix: it would block a whole TLD")


def test_garbage_names_from_a_broken_list_do_not_block_tlds() -> None:
    """The probe's case: a list of names cut from garbage held `il`, `t`, `s`; www.gov.il was then blocked."""
    from filterd.blocklists.matcher import ListSource, Matcher

    parsed = parse_list("il\nt\ns\nreal.example\n", fmt="domains")
    matcher = Matcher.build([ListSource("junk", "junk", parsed)])
    assert matcher.match("www.gov.il") is None and matcher.match("x.real.example") is not None
    assert parsed.skipped.count == 3


def test_a_megabyte_line_is_skipped_at_once() -> None:
    """A 10 MB line (a broken file) costs a length check, not seconds of IDNA (it took 2 s a megabyte)."""
    import time

    started = time.perf_counter()
    parsed = parse_list("é" * 2_000_000 + "\nok.example\n", fmt="domains")
    assert time.perf_counter() - started < 1.0
    assert names(parsed) == ["ok.example"] and parsed.skipped.count == 1
    assert normalize_name("a" * 254) is None and normalize_name("a." * 126 + "a.") is not None
