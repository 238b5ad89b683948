"""Which list (if any) blocks a query name: the `Match` every part reports, and `Matcher`, the in-memory
reference implementation of the matching rules.

filterd serves from `compiled.CompiledMatcher` (a mapped snapshot, far smaller for big lists); `Matcher` is
the plain dict version of the same semantics, kept as the oracle the compiled store is tested against
(tests/unit/test_compiled.py, including a property test). One dict lookup per label level; every
(name, list, kind) packed into one int.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from filterd.blocklists.parse import ParsedList
from filterd.blocklists.rules import RuleHit, RuleSet

__all__ = ["BlockIndex", "ListSource", "Match", "Matcher", "rule_match"]

# Packed record layout (low bits first): kind (2 bits) | list index (16) | category index (16) | line (rest).
_SUBTREE = 1
_EXCEPTION = 2
_KIND_MASK = 3
_LIST_SHIFT = 2
_CAT_SHIFT = 18
_LINE_SHIFT = 34
_INDEX_MASK = 0xFFFF
_MAX_INDEX = _INDEX_MASK + 1

# A dict value: one packed record (the usual case) or, for names in several lists/kinds, a tuple of them.
_Record = int | tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ListSource:
    """A parsed list and how to report it: its name and the category of entries outside category sections."""

    name: str  # the list's name, e.g. "chat-roulette"
    category: str  # fallback category for entries without one
    parsed: ParsedList


class Match(NamedTuple):
    """Why a name is blocked: the list, the listed name that matched and where it is in that list."""

    list: str  # list name
    entry: str  # the listed name that matched (the query name itself or a parent)
    line: int  # line number of that entry in its list
    category: str  # entry.category or the list's fallback category
    subtree: bool


class BlockIndex(Protocol):
    """What the policy needs of the lists: `Matcher` (in memory) or `CompiledMatcher` (a mapped snapshot)."""

    def match(self, qname: str, lists: frozenset[str] | None = None) -> Match | None: ...

    def entry_counts(self) -> dict[str, int]: ...


class Matcher:
    """An immutable index of block and exception entries of ordered lists; the first list that blocks wins."""

    __slots__ = ("_categories", "_counts", "_fallbacks", "_lists", "_records", "_rules")

    def __init__(
        self,
        records: dict[str, _Record],
        lists: tuple[str, ...],
        categories: tuple[str, ...],
        counts: tuple[int, ...],
        rules: RuleSet | None = None,
        fallbacks: tuple[str, ...] = (),
    ) -> None:
        """Use build() or empty(); this only stores the already-packed index."""
        self._records = records
        self._lists = lists
        self._categories = categories
        self._counts = counts
        self._rules = rules if rules is not None and not rules.empty else None
        self._fallbacks = fallbacks

    @classmethod
    def empty(cls) -> Matcher:
        """A matcher that blocks nothing (no lists configured, or none loaded yet)."""
        return cls({}, (), (), ())

    @classmethod
    def build(cls, sources: Sequence[ListSource]) -> Matcher:
        """Index `sources` in one pass; a repeated (name, kind) within a list keeps its first (lowest) line.

        Raises ValueError for duplicate list names or more than 65536 lists or categories.
        """
        lists = tuple(source.name for source in sources)
        if len(set(lists)) != len(lists):
            raise ValueError(f"duplicate list names: {sorted({n for n in lists if lists.count(n) > 1})}")
        if len(lists) > _MAX_INDEX:
            raise ValueError(f"too many lists ({len(lists)}); at most {_MAX_INDEX}")
        records: dict[str, _Record] = {}
        category_index: dict[str, int] = {}
        counts: list[int] = []
        for list_index, source in enumerate(sources):
            counts.append(_add_list(records, category_index, list_index, source))
        rules = RuleSet((index, rule) for index, source in enumerate(sources) for rule in source.parsed.rules)
        for index, count in rules.counts().items():
            counts[index] += count
        fallbacks = tuple(source.category for source in sources)
        return cls(records, lists, tuple(category_index), tuple(counts), rules, fallbacks)

    def entry_counts(self) -> dict[str, int]:
        """List name -> number of distinct block entries (exceptions and duplicates not counted)."""
        return dict(zip(self._lists, self._counts, strict=True))

    def match(self, qname: str, lists: frozenset[str] | None = None) -> Match | None:
        """The first list (in order; only those named in `lists` when given) whose listed names block `qname`
        (lower-case, no trailing dot), and its entry; only when no listed name blocks it, the first list whose
        brand rule or pattern does."""
        allowed = None if lists is None else frozenset(i for i, n in enumerate(self._lists) if n in lists)
        found, excepted = self._match_names(qname, allowed)
        if found is not None or self._rules is None:
            return found
        hit = self._rules.match(qname, excepted, allowed)
        return None if hit is None else rule_match(hit, self._lists, self._fallbacks)

    def _match_names(self, qname: str, allowed: frozenset[int] | None) -> tuple[Match | None, set[int] | None]:
        """The listed names' decision, and the lists whose exceptions covered `qname` (for the rules)."""
        records = self._records
        found = records.get(qname)
        hits: list[tuple[str, _Record]] | None = None if found is None else [(qname, found)]
        dot = qname.find(".")
        while dot >= 0:
            suffix = qname[dot + 1 :]
            found = records.get(suffix)
            if found is not None:
                if hits is None:
                    hits = []
                hits.append((suffix, found))
            dot = qname.find(".", dot + 1)
        if hits is None:
            return None, None
        return self._decide(qname, hits, allowed)

    def _decide(
        self, qname: str, hits: list[tuple[str, _Record]], allowed: frozenset[int] | None
    ) -> tuple[Match | None, set[int] | None]:
        """Resolve the levels that had entries (most specific first) into the winning list's Match."""
        if allowed is not None:
            hits = [(name, kept) for name, record in hits if (kept := _only(record, allowed)) is not None]
            if not hits:
                return None, None
        if len(hits) == 1:
            name, record = hits[0]
            if isinstance(record, int):  # the usual hit: one entry of one list
                if not (record & _SUBTREE or len(name) == len(qname)):
                    return None, None
                if record & _EXCEPTION:
                    return None, {(record >> _LIST_SHIFT) & _INDEX_MASK}
                return self._match(name, record), None
        best: dict[int, tuple[str, int]] = {}
        excepted: set[int] = set()
        for name, record in hits:
            at_query = len(name) == len(qname)  # the only hit as long as qname is qname itself
            for item in (record,) if isinstance(record, int) else record:
                kind = item & _KIND_MASK
                if not (kind & _SUBTREE or at_query):
                    continue
                list_index = (item >> _LIST_SHIFT) & _INDEX_MASK
                if kind & _EXCEPTION:
                    excepted.add(list_index)
                elif list_index not in best:
                    best[list_index] = (name, item)
        blocking = [index for index in best if index not in excepted]
        if not blocking:
            return None, excepted
        name, item = best[min(blocking)]
        return self._match(name, item), None

    def _match(self, name: str, item: int) -> Match:
        """Unpack a record of entry `name` into the reported Match."""
        return Match(
            list=self._lists[(item >> _LIST_SHIFT) & _INDEX_MASK],
            entry=name,
            line=item >> _LINE_SHIFT,
            category=self._categories[(item >> _CAT_SHIFT) & _INDEX_MASK],
            subtree=bool(item & _SUBTREE),
        )


def _only(record: _Record, allowed: frozenset[int]) -> _Record | None:
    """The items of `record` that belong to the `allowed` lists (None when none does)."""
    items = [
        i for i in ((record,) if isinstance(record, int) else record) if (i >> _LIST_SHIFT) & _INDEX_MASK in allowed
    ]
    if not items:
        return None
    return items[0] if len(items) == 1 else tuple(items)


def rule_match(hit: RuleHit, lists: Sequence[str], fallbacks: Sequence[str]) -> Match:
    """The Match a brand rule or pattern reports: its list, the rule as written, its line and category."""
    rule = hit.rule
    return Match(
        list=lists[hit.list_index],
        entry=rule.entry,
        line=rule.line,
        category=rule.category or fallbacks[hit.list_index],
        subtree=rule.subtree,
    )


def _add_list(records: dict[str, _Record], category_index: dict[str, int], list_index: int, source: ListSource) -> int:
    """Pack one list's entries into `records` (in place, during build only); returns its block entry count."""
    list_bits = list_index << _LIST_SHIFT
    blocks = 0
    last_category: str | None = None
    category_bits = 0
    for entry in source.parsed.entries:
        category = entry.category or source.category
        if category is not last_category:
            category_bits = _category_bits(category_index, category)
            last_category = category
        kind = (_SUBTREE if entry.subtree else 0) | (_EXCEPTION if entry.exception else 0)
        item = (entry.line << _LINE_SHIFT) | category_bits | list_bits | kind
        existing = records.get(entry.name)
        if existing is None:
            records[entry.name] = item
        else:
            items = (existing,) if isinstance(existing, int) else existing
            key = list_bits | kind
            if any(other & (_INDEX_MASK << _LIST_SHIFT | _KIND_MASK) == key for other in items):
                continue  # a duplicate within this list: the first line stays
            records[entry.name] = (*items, item)
        if not entry.exception:
            blocks += 1
    return blocks


def _category_bits(category_index: dict[str, int], category: str) -> int:
    """The packed bits for `category`, interning it (in place, during build only)."""
    index = category_index.setdefault(category, len(category_index))
    if index >= _MAX_INDEX:
        raise ValueError(f"too many distinct categories; at most {_MAX_INDEX}")
    return index << _CAT_SHIFT
