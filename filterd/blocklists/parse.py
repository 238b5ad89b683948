"""Blocklist text -> entries: hosts, domain and adblock-style lists, read as Pi-hole/AdGuard Home/Blocky do.

Pure functions only (text in, values out): fetching and caching lists is someone else's job. A bad line never
raises; it is counted in `Skipped`, and the first one is kept as a sample so the admin can find it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from filterd.blocklists.rules import BRAND, PATTERN, PublicSuffixes, Rule, brand_label, check_pattern, suffix_check
from filterd.dns.names import is_address

__all__ = [
    "FORMATS",
    "Entry",
    "ParsedList",
    "Sink",
    "Skipped",
    "detect_format",
    "normalize_name",
    "parse_list",
    "parse_stream",
]

FORMATS: tuple[str, ...] = ("hosts", "domains", "adblock")
"""The list formats parse_list understands (plus "auto", which picks one of these)."""

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_-."
#: Labels of 1-63 of [a-z0-9_-] joined by single dots: one C call instead of several checks (the loop runs per
#: line); a name it matches that does not end in a digit (never an address) is canonical as it is.
_CANONICAL = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*").fullmatch
_IPV4_CHARS = "0123456789."
_MAX_NAME = 253
_DETECT_SAMPLE = 200
_REASON_TEXT_MAX = 80

# Names every hosts file maps to itself: boilerplate, not blocking intent, so they are ignored silently.
_LOCAL_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "local",
        "broadcasthost",
        "ip6-localhost",
        "ip6-loopback",
        "ip6-localnet",
        "ip6-mcastprefix",
        "ip6-allnodes",
        "ip6-allrouters",
        "ip6-allhosts",
        "0.0.0.0",
    }
)
# The sink addresses nearly every hosts line starts with: checked before the (slow) ipaddress parser.
_COMMON_ADDRESSES = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "::0", "0:0:0:0:0:0:0:0", "0:0:0:0:0:0:0:1"})
_DEFAULT_SUBTREE: Mapping[str, bool] = MappingProxyType({"hosts": False, "domains": True, "adblock": True})
# Second character of a '#...' line in an adblock list that makes it a cosmetic rule (##, #@#, #?#, #$#, #%#).
_COSMETIC_SECOND = frozenset("#@?$%")

_MODIFIERS = "adblock rule with $modifiers"
_COSMETIC = "adblock cosmetic (element hiding) rule"
_REGEX = "adblock regex rule with $modifiers"
_PATH = "adblock rule with a path"
_WILDCARD = "adblock rule with a wildcard"


@dataclass(frozen=True, slots=True)
class Entry:
    """One listed name; `subtree` entries also cover every name below `name`."""

    name: str  # lower-case, A-label (IDNA), no trailing dot
    subtree: bool  # True: blocks name and every name under it; False: exactly this name
    exception: bool  # an adblock @@ rule: an exception within its own list only
    category: str | None  # from the nearest preceding '# category: NAME' line, else None
    line: int  # 1-based line number in the source


@dataclass(frozen=True)
class Skipped:
    """How many lines (or hosts-line names) were neither entries nor comments; the first is the example."""

    count: int
    sample_line: int | None  # first skipped line's number
    sample_reason: str | None  # e.g. "adblock rule with $modifiers", "not a valid hostname: 'a..b'"


@dataclass(frozen=True)
class ParsedList:
    """A parsed list: its entries in file order (duplicates kept) and what was skipped."""

    entries: tuple[Entry, ...]
    format: str  # "hosts" | "domains" | "adblock" (the detected one when auto)
    skipped: Skipped
    rules: tuple[Rule, ...] = ()  # brand rules and name patterns (rules.py), in file order


def normalize_name(text: str) -> str | None:
    """Canonical form of a DNS name (lower-case A-labels, no trailing dot), or None when it is not a hostname.

    Lenient where real lists are (underscores, edge hyphens, single labels); IP addresses are not names.
    """
    if len(text) <= _MAX_NAME and not text[-1:].isdigit() and _CANONICAL(text) is not None:
        return text  # already canonical, as nearly every line of a list is: one regex (0.24 us a name, not 0.48)
    return _normalize(text)


def _normalize(text: str) -> str | None:
    """`normalize_name` the long way: what its one-regex shortcut must agree with (tested)."""
    name = text.strip()
    if len(name) > _MAX_NAME + 1:  # an A-label is never shorter than its U-label: too long either way (and IDNA
        return None  # on a megabyte of text would take seconds)
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    if name.endswith("."):
        name = name[:-1]
    name = name.lower()
    if not name or len(name) > _MAX_NAME or _CANONICAL(name) is None:
        return None
    if name[-1].isdigit() and not name.strip(_IPV4_CHARS) and _is_ip(name):
        return None
    return name


def detect_format(text: str) -> str:
    """Guess a list's format from its first ~200 rule lines, so users need not name the syntax they use."""
    text = text.removeprefix("\ufeff")
    if text[:200].lstrip().startswith("[Adblock"):
        return "adblock"
    sampled = with_address = 0
    adblock = False
    for raw in _first_lines(text):
        line = raw.strip()
        if not line or line[0] in "#!" or _is_header(line):
            continue
        sampled += 1
        if line.startswith(("|", "@@")):
            adblock = True
        parts = line.split(None, 1)
        if len(parts) == 2 and _is_ip(parts[0]):
            with_address += 1
        if sampled >= _DETECT_SAMPLE:
            break
    if sampled and with_address * 2 > sampled:
        return "hosts"
    return "adblock" if adblock else "domains"


def _first_lines(text: str) -> Iterator[str]:
    """Lines from the start of `text` without splitting (copying) the whole of a possibly huge text."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            end = len(text)
        yield text[start:end]
        start = end + 1


def parse_list(
    text: str, *, fmt: str = "auto", subdomains: bool | None = None, allow_suffixes: bool = False
) -> ParsedList:
    """Parse list text in `fmt` ("auto" detects it); `subdomains` overrides the format's default subtree.
    An entry that would block a public suffix with everything under it (`com`, `co.uk`, `github.io`) is refused
    as an invalid line unless `allow_suffixes`.

    Raises ValueError only for an unknown `fmt`: bad lines are skipped and counted instead.
    """
    if fmt != "auto" and fmt not in _DEFAULT_SUBTREE:
        raise ValueError(f"unknown list format {fmt!r}: expected auto, {', '.join(FORMATS)}")
    text = text.removeprefix("\ufeff")
    if fmt == "auto":
        fmt = detect_format(text)
    default_subtree = _DEFAULT_SUBTREE[fmt] if subdomains is None else subdomains
    sink = Sink()
    if allow_suffixes:
        sink.suffixes = None
    _LINE_PARSERS[fmt](text.split("\n"), default_subtree, sink)
    return ParsedList(entries=tuple(sink.entries), format=fmt, skipped=sink.skipped(), rules=tuple(sink.rules))


def parse_stream(
    lines: Iterable[str], sink: Sink, *, fmt: str, subdomains: bool | None, allow_suffixes: bool = False
) -> Skipped:
    """Parse lines one at a time (a file object will do) without building Entry objects: each entry goes to
    `sink.add(name, subtree, exception, line)`, with the category in force in `sink.category`. `fmt` must be a
    concrete format (see detect_format). A compiler subclasses Sink and overrides `add`."""
    if fmt not in _DEFAULT_SUBTREE:
        raise ValueError(f"unknown list format {fmt!r}: expected {', '.join(FORMATS)}")
    if allow_suffixes:
        sink.suffixes = None
    default_subtree = _DEFAULT_SUBTREE[fmt] if subdomains is None else subdomains
    _LINE_PARSERS[fmt](lines, default_subtree, sink)
    return sink.skipped()


class Sink:
    """Per-parse accumulator: the current category, the skip tally, and where entries go (`add`: by default
    an Entry in `entries`; the compiler overrides it to hash straight into its table)."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.rules: list[Rule] = []
        self.category: str | None = None
        self.skip_count = 0
        self.skip_line: int | None = None
        self.skip_reason: str | None = None
        #: Public suffixes are refused as block entries (None: `allow_suffixes`, nothing refused).
        self.suffixes: PublicSuffixes | None = suffix_check()
        self._sample_is_suffix = False

    def add(self, name: str, subtree: bool, exception: bool, line: int) -> None:
        self.entries.append(Entry(name, subtree, exception, self.category, line))

    def add_rule(self, kind: str, text: str, subtree: bool, exception: bool, line: int) -> None:
        """A brand rule (`text` is the label) or a name pattern (`text` is the regex), already checked."""
        self.rules.append(Rule(kind, text, subtree, exception, self.category, line))

    def comment(self, line: str) -> None:
        """Note a '#'/'!' comment line; only '# category: NAME' matters (an empty NAME clears it)."""
        body = line[1:].lstrip()
        if body[:8].lower() == "category":
            rest = body[8:].lstrip()
            if rest.startswith(":"):
                self.category = rest[1:].strip() or None

    def reset_skips(self) -> None:
        """Start a new skip tally (a compiler reading several lists into one sink)."""
        self.skip_count, self.skip_line, self.skip_reason = 0, None, None
        self._sample_is_suffix = False

    def skip(self, line: int, reason: str) -> None:
        """Count a skipped line, keeping the first as the sample."""
        if self.skip_count == 0:
            self.skip_line = line
            self.skip_reason = reason
        self.skip_count += 1

    def refuse_suffix(self, line: int, name: str) -> None:
        """Count a subtree entry for a public suffix as a skipped line; the first one becomes the sample, ahead of
        lesser skips: a list that tried to block a TLD is what the admin must hear about."""
        what = "a whole TLD" if "." not in name else "every site under it"
        reason = f"{name!r} is a public suffix: it would block {what}"
        if not self._sample_is_suffix:
            self.skip_line, self.skip_reason, self._sample_is_suffix = line, reason, True
        self.skip_count += 1

    def skipped(self) -> Skipped:
        """The skip tally as a value."""
        return Skipped(self.skip_count, self.skip_line, self.skip_reason)


def _parse_hosts(lines: Iterable[str], default_subtree: bool, sink: Sink) -> None:
    """`ADDRESS name [name ...]`; a lone name is taken too (Pi-hole reads such mixed files)."""
    add = sink.add  # bound once: this loop runs once per line
    # Only a subtree entry for a public suffix is refused: an exact one (the hosts default) blocks one name, like
    # any other, and real hosts files list a few (hopto.org). Tested inline: 0.1 us a name, a call would double it.
    suffixes = sink.suffixes if default_subtree else None
    names_, under_ = _suffix_sets(suffixes)
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        first = line[0]
        if first == "#" or first == "!":
            sink.comment(line)
            continue
        if first == "[" and _is_header(line):
            continue
        if "#" in line:
            line = _cut_comment(line)
        parts = line.split()
        if _is_ip(parts[0]):
            names = parts[1:]
            if not names:
                sink.skip(number, f"hosts line with an address but no name: {_show(line)}")
                continue
        elif len(parts) == 1:
            names = parts
        else:
            sink.skip(number, f"hosts line does not start with an IP address: {_show(line)}")
            continue
        for text in names:
            name = normalize_name(text)
            if name is None:
                if text.lower() not in _LOCAL_NAMES:
                    sink.skip(number, _invalid(text))
            elif name not in _LOCAL_NAMES:
                dot = name.find(".")
                if (dot < 0 or name in names_ or name[dot + 1 :] in under_) and suffixes and suffixes(name):
                    sink.refuse_suffix(number, name)
                else:
                    add(name, default_subtree, False, number)


def _parse_domains(lines: Iterable[str], default_subtree: bool, sink: Sink) -> None:
    """One name per line; `*.name` always covers the subtree."""
    add = sink.add  # bound once: this loop runs once per line
    suffixes = sink.suffixes  # a subtree entry for one is refused; tested inline: 0.1 us a name, a call doubles it
    names_, under_ = _suffix_sets(suffixes)
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        first = line[0]
        if first == "#" or first == "!":
            sink.comment(line)
            continue
        if first == "[" and _is_header(line):
            continue
        if first == "/":
            _pattern_line(line, False, number, sink)
            continue
        if "#" in line:
            line = _cut_comment(line)
        if line.endswith(".*"):
            _brand_line(line.removeprefix("*."), default_subtree, False, number, sink)
            continue
        if line.startswith("*."):
            name = normalize_name(line[2:])
            subtree = True
        else:
            name = normalize_name(line)
            subtree = default_subtree
        if name is None:
            sink.skip(number, _invalid(line))
        elif (
            subtree
            and ((dot := name.find(".")) < 0 or name in names_ or name[dot + 1 :] in under_)
            and suffixes
            and suffixes(name)
        ):
            sink.refuse_suffix(number, name)
        else:
            add(name, subtree, False, number)


def _parse_adblock(lines: Iterable[str], default_subtree: bool, sink: Sink) -> None:
    """The DNS subset of adblock syntax: `||name^`, `|name^` (exact), bare names, and `@@` exceptions."""
    add = sink.add  # bound once: this loop runs once per line
    suffixes = sink.suffixes
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        first = line[0]
        if first == "#":
            if len(line) > 1 and line[1] in _COSMETIC_SECOND:
                sink.skip(number, _COSMETIC)
            else:
                sink.comment(line)
            continue
        if first == "!":
            sink.comment(line)
            continue
        if first == "[" and _is_header(line):
            continue
        result = _adblock_rule(line, default_subtree)
        if isinstance(result, str):
            sink.skip(number, result)
        elif len(result) == 4:
            kind, text, subtree, exception = result
            sink.add_rule(kind, text, subtree, exception, number)
        elif result[1] and not result[2] and suffixes and suffixes(result[0]):  # (exact or an exception: kept)
            sink.refuse_suffix(number, result[0])
        else:
            add(result[0], result[1], result[2], number)


def _adblock_rule(line: str, default_subtree: bool) -> tuple[str, bool, bool] | tuple[str, str, bool, bool] | str:
    """(name, subtree, exception) for a DNS-usable adblock rule, (kind, text, subtree, exception) for a brand
    rule or a name pattern, else the reason it is skipped."""
    exception = line.startswith("@@")
    body = line[2:] if exception else line
    if body.startswith("/"):  # `/regex/` (maybe with `$modifiers` after it) or a path rule
        end = body.rfind("/")
        if end > 0 and end == len(body) - 1:
            problem = _pattern_problem(body)
            return problem if problem is not None else (PATTERN, body[1:-1], True, exception)
        if end > 0 and body[end + 1] == "$":
            return _REGEX
    if "#" in body:  # ##, #@#, #?#, #$#, #%#: all cosmetic, whatever follows
        return _COSMETIC
    if "$" in body:
        return _MODIFIERS
    if body.startswith("/"):
        return _PATH
    if body.startswith("||"):
        core, subtree = body[2:], True
    elif body.startswith("|"):
        core, subtree = body[1:], False  # a single pipe anchors both ends: exactly this name (AdGuard Home)
    else:
        core, subtree = body, default_subtree
    if core.endswith("^|"):
        core = core[:-2]
    elif core.endswith(("^", "|")):
        core = core[:-1]
    if "/" in core:
        return _PATH
    if core.endswith(".*") and "*" not in core[:-2]:
        label = brand_label(core)
        if label is None:
            return f"a brand rule is one label before .* (like omegle.*): {_show(core)}"
        return (BRAND, label, subtree, exception)
    if "*" in core:
        return _WILDCARD
    name = normalize_name(core)
    if name is None:
        return _invalid(core)
    return name, subtree, exception


_LINE_PARSERS: Mapping[str, Callable[[Iterable[str], bool, Sink], None]] = MappingProxyType(
    {"hosts": _parse_hosts, "domains": _parse_domains, "adblock": _parse_adblock}
)


def _pattern_problem(line: str) -> str | None:
    """Why a `/pattern/` line cannot be used, or None."""
    if len(line) < 3 or not line.endswith("/"):
        return f"a name pattern is written /regex/: {_show(line)}"
    problem = check_pattern(line[1:-1])
    return None if problem is None else f"{problem}: {_show(line)}"


def _pattern_line(line: str, exception: bool, number: int, sink: Sink) -> None:
    """A `/regex/` line of a domains list (the whole line: a pattern may hold '#')."""
    problem = _pattern_problem(line)
    if problem is not None:
        sink.skip(number, problem)
    else:
        sink.add_rule(PATTERN, line[1:-1], True, exception, number)


def _brand_line(text: str, subtree: bool, exception: bool, number: int, sink: Sink) -> None:
    """An `omegle.*` line of a domains list."""
    label = brand_label(text)
    if label is None:
        sink.skip(number, f"a brand rule is one label before .* (like omegle.*): {_show(text)}")
    else:
        sink.add_rule(BRAND, label, subtree, exception, number)


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


def _suffix_sets(suffixes: PublicSuffixes | None) -> tuple[Container[str], Container[str]]:
    """The sets a parser's loop looks a name up in before asking `suffixes` (without the bundled list's names,
    every name is asked; with no check, none)."""
    if suffixes is None:
        return (), ()
    if not suffixes.names:
        return _Everything(), ()
    return suffixes.names, suffixes.wildcards


def _cut_comment(line: str) -> str:
    """Drop a trailing ' #comment' (the '#' must follow whitespace, as in hosts files)."""
    cut = line.find("#")
    while cut > 0:
        if line[cut - 1] in " \t":
            return line[:cut].rstrip()
        cut = line.find("#", cut + 1)
    return line


def _is_header(line: str) -> bool:
    """A `[Adblock Plus 2.0]`-style header line."""
    return line.startswith("[") and line.endswith("]")


def _is_ip(text: str) -> bool:
    """Whether `text` is an IPv4/IPv6 address (the common sink addresses without the slow parser)."""
    return text in _COMMON_ADDRESSES or is_address(text)


def _invalid(text: str) -> str:
    """Why `text` is not an entry, for Skipped.sample_reason."""
    text = text.strip()
    if _is_ip(text):
        return f"an IP address, not a hostname: {_show(text)}"
    return f"not a valid hostname: {_show(text)}"


def _show(text: str) -> str:
    """`text` quoted for a message, cut short so one absurd line cannot flood a log."""
    if len(text) > _REASON_TEXT_MAX:
        text = text[: _REASON_TEXT_MAX - 3] + "..."
    return repr(text)
