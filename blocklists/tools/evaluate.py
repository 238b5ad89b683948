#!/usr/bin/env python3
"""How well the shipped chat-roulette list works: recall on a held-out set, wrong blocks on popular sites.

Usage (from the repository, with filterd installed, e.g. in the README's .venv)::

    python blocklists/tools/evaluate.py [--misses] [--rules] [--list FILE ...]

It matches names exactly as filterd serves them (filterd's own parser and matcher, brand rules and patterns
included) and reports:

* **recall** on `blocklists/eval/chat-roulette-heldout.tsv`: chat-roulette domains gathered from sources the list
  build never reads (see `blocklists/eval/README.md`), per category;
* **popular sites**: of the names in `blocklists/eval/top-sites.txt` (a public top-50k popularity list), how
  many of the chat-roulette sites labelled in `top-sites-chat-roulette.tsv` are blocked, and every other name
  that is blocked: a **wrong block**;
* **never-block.txt**: every name there that is blocked: also a wrong block;
* with `--rules`: what each brand rule and pattern matches among the popular sites (the lint a new rule needs).

Exit status 1 when there is any wrong block, so a maintainer (and the test suite) can gate on it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "eval"

try:
    from filterd.blocklists.matcher import ListSource, Match, Matcher
    from filterd.blocklists.parse import parse_list
    from filterd.blocklists.rules import rule_kind
except ImportError:  # pragma: no cover - run from a checkout without filterd installed
    sys.path.insert(0, str(ROOT.parent))
    from filterd.blocklists.matcher import ListSource, Match, Matcher
    from filterd.blocklists.parse import parse_list
    from filterd.blocklists.rules import rule_kind


@dataclass
class Report:
    heldout_total: int = 0
    heldout_blocked: int = 0
    per_category: dict[str, tuple[int, int]] = field(default_factory=dict)
    misses: list[str] = field(default_factory=list)
    top_total: int = 0
    top_labelled: list[str] = field(default_factory=list)
    top_labelled_blocked: list[str] = field(default_factory=list)
    wrong_top: list[tuple[str, Match]] = field(default_factory=list)
    wrong_never: list[tuple[str, Match]] = field(default_factory=list)
    rule_hits: dict[str, list[str]] = field(default_factory=dict)

    @property
    def recall(self) -> float:
        return self.heldout_blocked / self.heldout_total if self.heldout_total else 0.0

    @property
    def wrong(self) -> int:
        return len(self.wrong_top) + len(self.wrong_never)


def load_matcher(paths: Sequence[Path]) -> Matcher:
    """The lists as filterd serves them (each a domains list whose names cover their subdomains)."""
    sources = [ListSource(path.stem, path.stem, parse_list(path.read_text(encoding="utf-8"))) for path in paths]
    return Matcher.build(sources)


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def read_names(path: Path) -> list[str]:
    """One name a line; '#' comments and blank lines ignored."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip().lower()
        if line:
            names.append(line)
    return names


def evaluate(
    matcher: Matcher,
    heldout: Iterable[dict[str, str]],
    top_sites: Iterable[str],
    top_labelled: Iterable[str],
    never_block: Iterable[str],
) -> Report:
    report = Report()
    totals: Counter[str] = Counter()
    blocked: Counter[str] = Counter()
    for row in heldout:
        name = row["domain"].strip().lower()
        category = row.get("category", "") or "-"
        totals[category] += 1
        if matcher.match(name) is not None:
            blocked[category] += 1
        else:
            report.misses.append(name)
    report.heldout_total = sum(totals.values())
    report.heldout_blocked = sum(blocked.values())
    report.per_category = {c: (blocked[c], totals[c]) for c in sorted(totals)}
    labelled = set(top_labelled)
    report.top_labelled = sorted(labelled)
    for name in top_sites:
        report.top_total += 1
        found = matcher.match(name)
        if found is None:
            continue
        if rule_kind(found.entry) != "name":
            report.rule_hits.setdefault(found.entry, []).append(name)
        if name in labelled:
            report.top_labelled_blocked.append(name)
        else:
            report.wrong_top.append((name, found))
    for name in never_block:
        found = matcher.match(name)
        if found is not None:
            report.wrong_never.append((name, found))
    return report


def render(report: Report, *, misses: bool, rules: bool) -> str:
    out = [
        f"held-out recall: {report.heldout_blocked}/{report.heldout_total} ({report.recall:.1%})",
    ]
    for category, (hit, total) in report.per_category.items():
        out.append(f"  {category}: {hit}/{total} ({hit / total:.1%})")
    if misses and report.misses:
        out.append("  missed: " + ", ".join(sorted(report.misses)))
    labelled = len(report.top_labelled)
    hit = len(report.top_labelled_blocked)
    out.append(
        f"popular sites: {report.top_total:,} names; chat-roulette sites among them blocked: {hit}/{labelled}"
        f" ({hit / labelled if labelled else 0:.1%}); wrong blocks: {len(report.wrong_top)}"
    )
    missed_top = sorted(set(report.top_labelled) - set(report.top_labelled_blocked))
    if missed_top:
        out.append("  labelled but not blocked: " + ", ".join(missed_top))
    for name, found in report.wrong_top:
        out.append(f"  WRONG: {name}: {found.list}:{found.line}: {found.entry}")
    out.append(f"never-block.txt: wrong blocks: {len(report.wrong_never)}")
    for name, found in report.wrong_never:
        out.append(f"  WRONG: {name}: {found.list}:{found.line}: {found.entry}")
    if rules:
        out.append("rules and what they match among the popular sites:")
        for entry, names in sorted(report.rule_hits.items()):
            out.append(f"  {entry}: {', '.join(sorted(names))}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", type=Path, action="append", help="list file(s) (default: chat-roulette.txt)")
    parser.add_argument("--heldout", type=Path, default=EVAL / "chat-roulette-heldout.tsv")
    parser.add_argument("--top-sites", type=Path, default=EVAL / "top-sites.txt")
    parser.add_argument("--top-labelled", type=Path, default=EVAL / "top-sites-chat-roulette.tsv")
    parser.add_argument("--never-block", type=Path, default=ROOT / "never-block.txt")
    parser.add_argument("--misses", action="store_true", help="print the held-out names that are not blocked")
    parser.add_argument("--rules", action="store_true", help="print what each rule matches among popular sites")
    args = parser.parse_args(argv)
    matcher = load_matcher(args.list or [ROOT / "chat-roulette.txt"])
    report = evaluate(
        matcher,
        read_tsv(args.heldout),
        read_names(args.top_sites),
        (row["domain"] for row in read_tsv(args.top_labelled)),
        read_names(args.never_block),
    )
    print(render(report, misses=args.misses, rules=args.rules))
    return 1 if report.wrong else 0


if __name__ == "__main__":
    sys.exit(main())
