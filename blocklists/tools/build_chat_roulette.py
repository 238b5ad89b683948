#!/usr/bin/env python3
"""Build the shipped ``chat-roulette`` blocklist from the curated, sourced reference table.

Usage::

    python blocklists/tools/build_chat_roulette.py PATH/TO/chat-roulette.tsv [-o OUTPUT]

The input is a tab-separated table with a header row and the columns ``domain``, ``category``,
``sources`` (``;``-separated, each ``owner/repo:path@commit``, ``owner/repo:path`` or an issue URL)
and ``notes``. The output (default: ``blocklists/chat-roulette.txt`` next to this directory) is a
domains list in which every entry blocks itself and all its subdomains:

* names are normalised (lower case, no trailing dot, IDNs as ``xn--`` A-labels) and must be valid
  hostnames; an invalid name, an unknown category or a row without a source stops the build;
* a name covered by another listed name (its parent zone) is dropped;
* entries are grouped under ``# category: NAME`` lines in the order of ``CATEGORIES`` and sorted;
* the header attributes every upstream source that the table cites.

The output depends only on the input table and the constants below, so the build is reproducible.
Standard library only: it must run from a bare clone.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from listfile import BuildError, normalize, render, write  # beside this script

VERSION = "2026-11-28"

#: Category ids, in the order of the sections in the output.
CATEGORIES = (
    "chat-roulette-video",
    "adult-cam-roulette",
    "anonymous-text-chat",
    "video-chat-rooms",
)

DESCRIPTION = (
    "Omegle, its clones and successors: random video chat with strangers, adult cam roulette, "
    "anonymous stranger chat, open video chat rooms"
)
LICENSE = (
    "CC BY-SA 4.0 for this list as a compilation, because it includes facts from UT1 (CC BY-SA 4.0); "
    "the domain names themselves are facts"
)
HOMEPAGE = "see blocklists/README.md in the filterd source"


@dataclass(frozen=True)
class SourceInfo:
    label: str
    license: str


#: Attribution for every repository the table may cite, in the order they are listed in the header.
#: A source that is not here stops the build: add its label and license before using its names.
REPO_SOURCES: dict[str, SourceInfo] = {
    "ShadowWhisperer/BlockLists": SourceInfo("ShadowWhisperer BlockLists", "Unlicense"),
    "Sinfonietta/hostfiles": SourceInfo("Sinfonietta hostfiles", "MIT"),
    "olbat/ut1-blacklists": SourceInfo("UT1 blacklists (Universite Toulouse Capitole), daily mirror", "CC BY-SA 4.0"),
    "cbuijs/shallalist": SourceInfo("Shalla list (discontinued), unpacked copy", "Shalla list terms (not checked)"),
    "sefinek24/Sefinek-Blocklist-Collection": SourceInfo("Sefinek Blocklist Collection", "CC BY-NC-ND 4.0"),
    "sjhgvr/oisd": SourceInfo("oisd", "see the repository (not recorded)"),
    "hagezi/dns-blocklists": SourceInfo("hagezi DNS blocklists", "see the repository LICENSE (not checked)"),
    "EolnMsuk/ome-ip": SourceInfo("ome-ip userscript, @match list", "GPL-3.0"),
    "MysteryBlokHed/userscripts": SourceInfo("Omegle Grabber userscript, @match list", "GPL-3.0"),
    "ChromegleApp/Chromegle": SourceInfo("Chromegle extension manifest", "GPL-3.0"),
    "EolnMsuk/Chromegle-5.0": SourceInfo(
        "Chromegle 5.0 extension manifest", "Creative Commons text in LICENSE (version not recorded)"
    ),
    "EolnMsuk/Chromegle-4.0": SourceInfo("Chromegle 4.0 README", "not recorded"),
}
ISSUE_LICENSE = "none; names as quoted in a public issue thread"

NOTE = """\
How entries were chosen: every name was seen in at least one named source above (a blocklist, a
userscript or extension match list, or an issue thread); nothing was guessed. The category was
assigned from the source's own category plus the site's name or description.
Each entry blocks the name and all its subdomains, so a name is dropped when its parent is listed.
Service hosts (API, CDN, chat-server or telemetry names) are kept only where their parent is not
listed; no parent names were inferred.
Built by blocklists/tools/build_chat_roulette.py from {rows} sourced names: {entries} entries,
{covered} dropped as covered by a listed parent{merged}."""

_ISSUE = re.compile(r"https://github\.com/([^/\s]+/[^/\s]+)/(?:issues|pull)/(\d+)")
_REPO_SOURCE = re.compile(r"([A-Za-z0-9._-]+/[A-Za-z0-9._-]+):([^@\s]+)(?:@([0-9a-f]{7,40}))?")


@dataclass
class Row:
    domain: str
    category: str
    sources: list[str] = field(default_factory=list)


def read_table(path: Path) -> tuple[list[Row], int]:
    """Rows in table order, one per name (the first category wins); also the number of merged repeats."""
    rows: dict[str, Row] = {}
    merged = 0
    errors: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"domain", "category", "sources"} - set(reader.fieldnames or ())
        if missing:
            raise BuildError(f"{path}: missing columns: {', '.join(sorted(missing))}")
        for record in reader:
            where = f"{path}:{reader.line_num}"
            raw = record["domain"] or ""
            try:
                name = normalize(raw)
            except ValueError as exc:
                errors.append(f"{where}: {raw!r}: {exc}")
                continue
            category = (record["category"] or "").strip()
            if category not in CATEGORIES:
                errors.append(f"{where}: {name}: unknown category {category!r}")
                continue
            sources = [s.strip() for s in (record["sources"] or "").split(";") if s.strip()]
            if not sources:
                errors.append(f"{where}: {name}: no source")
                continue
            if name in rows:
                merged += 1
                rows[name].sources.extend(s for s in sources if s not in rows[name].sources)
            else:
                rows[name] = Row(name, category, sources)
    if errors:
        raise BuildError("\n".join(errors))
    return list(rows.values()), merged


def covering_parent(name: str, names: set[str]) -> str | None:
    """The nearest proper parent of `name` that is in `names`, if any."""
    labels = name.split(".")
    for i in range(1, len(labels)):
        parent = ".".join(labels[i:])
        if parent in names:
            return parent
    return None


def source_lines(rows: Iterable[Row]) -> list[str]:
    files: dict[str, set[str]] = {}
    issues: set[tuple[str, int]] = set()
    errors: list[str] = []
    for row in rows:
        for source in row.sources:
            if m := _ISSUE.fullmatch(source):
                issues.add((m.group(1), int(m.group(2))))
            elif m := _REPO_SOURCE.fullmatch(source):
                repo, file, commit = m.groups()
                if repo not in REPO_SOURCES:
                    errors.append(f"{row.domain}: repository {repo!r} has no attribution in REPO_SOURCES")
                    continue
                used = f"{file}@{commit}" if commit else f"{file} (commit not recorded)"
                files.setdefault(repo, set()).add(used)
            else:
                errors.append(f"{row.domain}: unrecognised source {source!r}")
    if errors:
        raise BuildError("\n".join(errors))
    lines = []
    for repo, info in REPO_SOURCES.items():
        if repo in files:
            used = sorted(files[repo])
            noun = "file" if len(used) == 1 else "files"
            lines.append(f"{info.label}, https://github.com/{repo}, {noun} {', '.join(used)}; license: {info.license}")
    for repo, number in sorted(issues):
        url = f"https://github.com/{repo}/issues/{number}"
        lines.append(f"issue {repo}#{number}, {url}; license: {ISSUE_LICENSE}")
    return lines


def build(table: Path, version: str = VERSION) -> str:
    rows, merged = read_table(table)
    names = {row.domain for row in rows}
    kept = [row for row in rows if covering_parent(row.domain, names) is None]
    sections: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for row in kept:
        sections[row.category].append(row.domain)

    note = NOTE.format(
        rows=len(rows),
        entries=len(kept),
        covered=len(rows) - len(kept),
        merged=f"; {merged} repeated {'name' if merged == 1 else 'names'} merged" if merged else "",
    )
    return render(
        name="chat-roulette",
        description=DESCRIPTION,
        version=version,
        license=LICENSE,
        homepage=HOMEPAGE,
        sources=source_lines(rows),
        note=note,
        sections=sections,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="the curated chat-roulette.tsv")
    parser.add_argument(
        "-o",
        "--output",
        default=str(Path(__file__).resolve().parents[1] / "chat-roulette.txt"),
        help="where to write the list ('-' for standard output; default: %(default)s)",
    )
    parser.add_argument("--version", default=VERSION, help="version (release date) for the header")
    args = parser.parse_args(argv)
    try:
        text = build(args.table, args.version)
    except (BuildError, OSError) as exc:
        print(f"build_chat_roulette: {exc}", file=sys.stderr)
        return 1
    write(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
