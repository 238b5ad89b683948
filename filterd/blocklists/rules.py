"""Rules that reach names no list spells out: brand rules (`omegle.*`) and name patterns (`/regex/`).

A list of names is always behind the sites it chases: the same brand moves to another TLD or a mirror
(omegle.onl, omegle.cc, ...), and new clones take descriptive names (random chat, video roulette, ...). Two
kinds of rule catch them, written as AdGuard Home and Pi-hole users write them:

* a **brand rule**, `omegle.*` in a domains list or `||omegle.*^` in adblock syntax, blocks the label `omegle`
  directly under any public suffix (omegle.tv, omegle.co.uk, omegle.github.io, an unknown new TLD) and every
  name under it. The Public Suffix List comes bundled with the `publicsuffixlist` package: nothing is
  downloaded at run time. `notomegle.tv` and `omegle.example.com` are not matched.
* a **name pattern**, `/.../`, is a regular expression searched in the whole name (lower case, no trailing dot).

Patterns run on names a client chose, so the engine must never backtrack: google-re2 (linear time) where it has
a wheel (x86-64 and arm64). Elsewhere (32-bit ARM) the standard `re` engine is used, and a pattern is accepted
only when `backtrack_bound` proves its cost is bounded (see there): a pattern it rejects is skipped with the
reason, like any bad line. All patterns of all lists are compiled into one alternation, so a name that no rule
matches costs one search however many patterns there are.

Pure code: `parse_rule` reads a line's text, `RuleSet` matches names; the list parsers and the matchers call them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "BRAND",
    "ENGINE",
    "MAX_PATTERN",
    "PATTERN",
    "PublicSuffixes",
    "Rule",
    "RuleHit",
    "RuleSet",
    "Suffixes",
    "backtrack_bound",
    "brand_label",
    "check_pattern",
    "rule_kind",
    "suffix_check",
]

BRAND = "brand"
PATTERN = "pattern"
#: A pattern longer than this is refused (a list line, not a program).
MAX_PATTERN = 1024
#: Without re2: the most alternatives a pattern may make the standard engine try in sequence (see backtrack_bound).
_MAX_PATHS = 64

try:  # pragma: no cover - which branch runs depends on the platform's wheels
    import re2 as _re2

    _OPTIONS: Any = _re2.Options()
    _OPTIONS.log_errors = False  # a bad pattern is reported as a skipped line, not on stderr
    _FAST: Any = _re2.Options()
    _FAST.log_errors = False
    _FAST.never_capture = True
    ENGINE = "re2"
except ImportError:  # pragma: no cover
    _re2 = None
    ENGINE = "re"

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?").fullmatch


class Suffixes(Protocol):
    """What a brand rule needs of the Public Suffix List."""

    def is_public(self, name: str) -> bool: ...


def public_suffixes() -> Suffixes:
    """The bundled Public Suffix List (ICANN and private sections; an unknown TLD counts as a suffix)."""
    from publicsuffixlist import PublicSuffixList

    psl: Suffixes = PublicSuffixList()
    return psl


class PublicSuffixes:
    """Whether a listed name is a public suffix (`com`, `co.uk`, `github.io`): a list line that would block a
    whole TLD or hosting platform. The parsers ask it of every name a list holds, so they inline its first step
    (written out in parse.py): a single label is a suffix (a TLD, known or not); otherwise one or two set lookups
    rule out nearly every name, and only a rare candidate (the name, or its parent under a `*.` rule, is in the
    bundled list) is decided by the list itself (`is_public`).

    One kind of suffix is not one here: a name that is a suffix only through a `*.` rule of the list's private
    section (`ec2-1-2-3-4.compute-1.amazonaws.com` under `*.compute-1.amazonaws.com`): the platform made every
    tenant's host name a suffix of its own, so blocking it blocks one tenant, as a list means to."""

    __slots__ = ("_psl", "names", "wildcards")

    def __init__(self, psl: Suffixes | None = None) -> None:
        #: The list itself, made at the first rare candidate (0.14 s: most compiles never need it)
        self._psl = psl
        names: set[str] = set()
        wildcards: set[str] = set()
        for rule, icann in _psl_rules():
            if rule.startswith("*."):
                if icann:
                    wildcards.add(rule[2:])
                names.add(rule[2:])  # `*.ck` makes `ck` a suffix too
            elif rule.startswith("!"):
                names.add(rule[1:].partition(".")[2])  # `!www.ck`: its parent is one
            else:
                names.add(rule)
        #: Every name that may be a suffix, and every parent under which any label is one (`*.ck`: `ck`).
        self.names = frozenset(names)
        self.wildcards = frozenset(wildcards)

    def is_public(self, name: str) -> bool:
        psl = self._psl
        if psl is None:
            psl = self._psl = public_suffixes()
        return bool(psl.is_public(name))

    def __call__(self, name: str) -> bool:
        dot = name.find(".")
        if dot < 0:
            return True
        if not self.names:  # the bundled file could not be read: ask the list about every name (slower, and
            return self.is_public(name)  # without the private wildcards' exception)
        return (name in self.names or name[dot + 1 :] in self.wildcards) and self.is_public(name)


def _psl_rules() -> list[tuple[str, bool]]:
    """The rules of the Public Suffix List bundled with `publicsuffixlist`, as A-labels (`*.ck`, `!www.ck`, `co.uk`),
    each with whether it is in the ICANN section (else the private one); empty when its file cannot be read."""
    try:
        from publicsuffixlist import PSLFILE

        with open(PSLFILE, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (ImportError, OSError, UnicodeError):
        return []
    rules = []
    icann = True
    for line in lines:
        if "===BEGIN PRIVATE DOMAINS===" in line:
            icann = False
        text = line.split(" ")[0].strip().lower()
        if not text or text.startswith("//"):
            continue
        prefix = "!" if text.startswith("!") else ""
        labels = text.removeprefix("!").split(".")
        try:
            encoded = [label if label == "*" or label.isascii() else label.encode("idna").decode() for label in labels]
        except UnicodeError:
            continue
        rules.append((prefix + ".".join(encoded), icann))
    return rules


@functools.cache
def suffix_check() -> PublicSuffixes:
    """The shared PublicSuffixes (built once per process, about 0.1 s; the list itself only when first asked)."""
    return PublicSuffixes()


@dataclass(frozen=True, slots=True)
class Rule:
    """One brand rule or name pattern, where it was written and what it reports."""

    kind: str  # BRAND or PATTERN
    text: str  # the brand label ("omegle") or the pattern's source
    subtree: bool  # a brand rule also covers every name under brand.suffix (patterns see the whole name)
    exception: bool  # an adblock @@ rule: an exception within its own list only
    category: str | None
    line: int

    @property
    def entry(self) -> str:
        """The rule as a list writes it: `omegle.*` or `/omegle/`."""
        return f"{self.text}.*" if self.kind == BRAND else f"/{self.text}/"


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule that matched a name, and the index of the list it belongs to."""

    list_index: int
    rule: Rule


def rule_kind(entry: str) -> str:
    """What kind of list entry a Match's `entry` is: "name" (a listed name), "brand rule" (`omegle.*`) or
    "name pattern" (`/.../`)."""
    if entry.startswith("/"):
        return "name pattern"
    if entry.endswith(".*"):
        return "brand rule"
    return "name"


def brand_label(text: str) -> str | None:
    """`omegle` for `omegle.*` (the text between `||`/`*.` and `^` already removed), else None."""
    if not text.endswith(".*"):
        return None
    label = text[:-2].lower()
    if not label.isascii():
        try:
            label = label.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    return label if _LABEL(label) else None


def check_pattern(text: str) -> str | None:
    """Why `text` (a pattern's source, without the slashes) cannot be used here, or None when it can."""
    if not text:
        return "empty pattern"
    if len(text) > MAX_PATTERN:
        return f"pattern longer than {MAX_PATTERN} characters"
    if not text.isascii():
        return "pattern is not ASCII (names are matched as A-labels: write xn-- forms)"
    if _re2 is not None:
        try:
            _re2.compile(text, _OPTIONS)
        except Exception as exc:  # re2 raises its own error type, with the reason as bytes
            reason = exc.args[0] if exc.args else exc
            if isinstance(reason, bytes):
                reason = reason.decode("utf-8", "replace")
            return f"invalid pattern: {reason}"
        return None
    try:
        re.compile(text)
    except re.error as exc:
        return f"invalid pattern: {exc}"
    return backtrack_bound(text)


def backtrack_bound(text: str) -> str | None:
    """Without re2: None when the standard engine's cost for `text` is provably bounded, else why not.

    The rules (conservative, checked on the parsed pattern): no backreferences or lookarounds; every repeat
    that can vary in length (other than an optional `?`) repeats a single character or class; at most one such
    repeat in the pattern; and the alternatives and optional parts multiply to at most 64 paths. Then one
    search of a name of n characters tries at most n start positions x 64 paths x n positions of the one
    variable repeat: 253 x 64 x 253, about 4 million steps, for the longest name and the worst pattern, and a
    few thousand for real patterns (most start with a literal, which the engine scans for). `(a+)+`,
    `(a|a)*` and `.*a.*b` are refused.
    """
    from re import _parser  # type: ignore[attr-defined]

    try:
        parsed = _parser.parse(text)
    except re.error as exc:  # pragma: no cover - check_pattern compiled it already
        return f"invalid pattern: {exc}"
    state = {"variable": 0, "paths": 1}
    problem = _walk(parsed, _parser, state)
    if problem is not None:
        return f"pattern needs re2 (not installed on this platform): {problem}"
    return None


_SINGLE = {"LITERAL", "NOT_LITERAL", "ANY", "IN", "CATEGORY"}
_REFUSED = {
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
    "ASSERT": "a lookahead or lookbehind",
    "ASSERT_NOT": "a negative lookahead or lookbehind",
}


def _walk(items: Any, parser: Any, state: dict[str, int]) -> str | None:
    for op, arg in items:
        name = str(op)
        if name in _REFUSED:
            return _REFUSED[name]
        if name in {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}:
            low, high, body = arg
            if high == low:
                problem = _walk(body, parser, state)
            elif high == 1:  # optional: two paths
                state["paths"] *= 2
                if state["paths"] > _MAX_PATHS:
                    return f"more than {_MAX_PATHS} combinations of alternatives"
                problem = _walk(body, parser, state)
            elif not _single_char(body):
                return "a repeat of more than one character (like (ab)+ or (a+)+)"
            else:
                state["variable"] += 1
                if state["variable"] > 1:
                    return "more than one repeat of variable length (like .*a.*)"
                problem = None
        elif name == "SUBPATTERN":
            problem = _walk(arg[-1], parser, state)
        elif name == "ATOMIC_GROUP":
            problem = _walk(arg, parser, state)
        elif name == "BRANCH":
            branches = arg[1]
            state["paths"] *= len(branches)
            if state["paths"] > _MAX_PATHS:
                return f"more than {_MAX_PATHS} combinations of alternatives"
            problem = None
            for branch in branches:
                problem = problem or _walk(branch, parser, state)
        else:
            problem = None
        if problem is not None:
            return problem
    return None


def _single_char(body: Any) -> bool:
    """Whether a repeat's body matches exactly one character (a literal, a class, `.`, maybe in a group)."""
    items = list(body)
    while len(items) == 1 and str(items[0][0]) == "SUBPATTERN":
        items = list(items[0][1][-1])
    return len(items) == 1 and str(items[0][0]) in _SINGLE


class RuleSet:
    """The brand rules and patterns of every list, matched together; immutable once built.

    `match(qname, excepted, allowed)` returns the winning hit: the first list (in order, among `allowed` when
    given) with a matching rule that is not excepted, by that list's own exception rules or by `excepted`
    (lists whose listed names made an exception for this name).
    """

    __slots__ = (
        "_any",
        "_brands",
        "_count",
        "_exception_brands",
        "_exception_patterns",
        "_exceptions_any",
        "_patterns",
        "_suffixes",
    )

    def __init__(self, rules: Iterable[tuple[int, Rule]], suffixes: Suffixes | None = None) -> None:
        brands: dict[str, list[RuleHit]] = {}
        exception_brands: dict[str, list[RuleHit]] = {}
        patterns: list[tuple[RuleHit, Any]] = []
        exception_patterns: list[tuple[RuleHit, Any]] = []
        seen: set[tuple[int, str, str, bool, bool]] = set()
        for list_index, rule in rules:
            key = (list_index, rule.kind, rule.text, rule.subtree, rule.exception)
            if key in seen:
                continue  # the same rule again in the same list: the first line stands
            seen.add(key)
            hit = RuleHit(list_index, rule)
            if rule.kind == BRAND:
                (exception_brands if rule.exception else brands).setdefault(rule.text, []).append(hit)
            else:
                (exception_patterns if rule.exception else patterns).append((hit, _compile(rule.text)))
        if (brands or exception_brands) and suffixes is None:
            suffixes = public_suffixes()
        self._suffixes = suffixes
        self._brands = {label: tuple(hits) for label, hits in brands.items()}
        self._exception_brands = {label: tuple(hits) for label, hits in exception_brands.items()}
        self._patterns = tuple(patterns)
        self._any = _combine(hit.rule.text for hit, _ in patterns)
        self._exceptions_any = _combine(hit.rule.text for hit, _ in exception_patterns)
        self._count = len(seen)
        self._exception_patterns = tuple(exception_patterns)

    @property
    def empty(self) -> bool:
        return self._count == 0

    def brand_labels(self) -> set[str]:
        """The labels of every block brand rule (for `filterd lists suggest`)."""
        return set(self._brands)

    def pattern_texts(self) -> list[str]:
        """The sources of every block pattern (for `filterd lists suggest`)."""
        return [hit.rule.text for hit, _ in self._patterns]

    def counts(self) -> dict[int, int]:
        """List index -> number of distinct block rules."""
        out: dict[int, int] = {}
        for hits in self._brands.values():
            for hit in hits:
                out[hit.list_index] = out.get(hit.list_index, 0) + 1
        for hit, _ in self._patterns:
            out[hit.list_index] = out.get(hit.list_index, 0) + 1
        return out

    def match(
        self, qname: str, excepted: set[int] | None = None, allowed: frozenset[int] | None = None
    ) -> RuleHit | None:
        """The winning block rule for `qname` (lower case, no trailing dot), or None."""
        if not qname.isascii():  # names off the wire are ASCII (other bytes are \DDD escaped): nothing to match
            return None
        hits = self._brand_hits(qname, self._brands) if self._brands else []
        if self._any is not None and self._any.search(qname) is not None:
            hits.extend(hit for hit, pattern in self._patterns if pattern.search(qname) is not None)
        if not hits:
            return None
        blocked = excepted
        if self._exception_brands or self._exceptions_any is not None:
            blocked = set(excepted or ())
            blocked.update(hit.list_index for hit in self._exception_hits(qname))
        best: RuleHit | None = None
        for hit in hits:
            if (blocked and hit.list_index in blocked) or (allowed is not None and hit.list_index not in allowed):
                continue
            if best is None or (hit.list_index, hit.rule.line) < (best.list_index, best.rule.line):
                best = hit
        return best

    def _exception_hits(self, qname: str) -> list[RuleHit]:
        hits = self._brand_hits(qname, self._exception_brands) if self._exception_brands else []
        if self._exceptions_any is not None and self._exceptions_any.search(qname) is not None:
            hits.extend(hit for hit, pattern in self._exception_patterns if pattern.search(qname) is not None)
        return hits

    def _brand_hits(self, qname: str, table: dict[str, tuple[RuleHit, ...]]) -> list[RuleHit]:
        """Brand rules whose label sits directly under a public suffix in `qname` (at the name or above it)."""
        labels = qname.split(".")
        found: list[RuleHit] = []
        last = len(labels) - 1
        for index in range(last):
            rules = table.get(labels[index])
            if rules is None:
                continue
            assert self._suffixes is not None
            if not self._suffixes.is_public(".".join(labels[index + 1 :])):
                continue
            found.extend(hit for hit in rules if index == 0 or hit.rule.subtree)
        return found


def _compile(text: str) -> Any:
    if _re2 is not None:
        return _re2.compile(text, _FAST)
    return re.compile(text)


def _combine(texts: Iterable[str]) -> Any:
    """One alternation of every pattern: a name no pattern matches costs one search."""
    parts: Sequence[str] = [f"(?:{text})" for text in texts]
    if not parts:
        return None
    return _compile("|".join(parts))
