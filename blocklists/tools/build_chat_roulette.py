#!/usr/bin/env python3
"""Build the shipped ``chat-roulette`` blocklist from the curated, sourced reference table.

Usage::

    python blocklists/tools/build_chat_roulette.py [NAMES.tsv] [--rules RULES.tsv] [-o OUTPUT]

The inputs are the sourced tables in ``blocklists/sources/`` (the defaults):

* ``chat-roulette.tsv``: one row per name, columns ``domain``, ``category``, ``sources`` (``;``-separated,
  each ``owner/repo:path@commit``, ``owner/repo:path``, an issue URL or a web page's URL) and ``notes``;
* ``chat-roulette-rules.tsv``: one row per brand rule (``omegle.*``) or name pattern (``/regex/``), columns
  ``rule``, ``category``, ``sources`` (the evidence: sourced names, pages) and ``notes``.

The output (default: ``blocklists/chat-roulette.txt`` next to this directory) is a domains list in which every
name blocks itself and all its subdomains, followed in each section by its brand rules and patterns:

* names are normalised (lower case, no trailing dot, IDNs as ``xn--`` A-labels) and must be valid
  hostnames; an invalid name or rule, an unknown category or a row without a source stops the build;
* a name whose every source is a list under a non-commercial or no-derivatives licence (``NC_ND_SOURCES``)
  is left out: such a name ships only with a second, compatible source (the site's own page counts);
* a name whose every source is a page of the held-out evaluation set (``blocklists/eval/SOURCES.md``) is left
  out, so the evaluation stays held out;
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

VERSION = "2026-12-01"

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


#: Attribution for the repositories the table cites, in the order they are listed in the header, with the
#: licence as read; any other repository cited is listed after these with its licence "not recorded".
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
    "badmojr/1Hosts": SourceInfo("1Hosts", "no LICENSE file in the snapshot read"),
    "webbms72/blocklist": SourceInfo("webbms72 blocklist", "not stated in the repository"),
    "4skinSkywalker/Anti-Porn-HOSTS-File": SourceInfo("Anti-Porn HOSTS File", "no LICENSE file in the snapshot read"),
    "chadmayfield/my-pihole-blocklists": SourceInfo("chadmayfield Pi-hole blocklists", "not recorded"),
    "mhxion/pornaway": SourceInfo("pornaway", "Unlicense/MIT, per its README (not checked per file)"),
    "Import-External-Sources/pornhosts": SourceInfo("pornhosts", "not recorded"),
    "videochat-extension/videochat-extension": SourceInfo(
        "Videochat Extension, platforms list", "BSD-style licence (Fyodor Kurlyuk)"
    ),
    "videochat-extension/website-minimal": SourceInfo("Videochat Extension website, platform pages", "not stated"),
    "qrlk/videochatru-extension": SourceInfo("videochatru-extension README", "MIT"),
    "srghma/videochatru-extension": SourceInfo("videochatru-extension fork", "BSD-style licence"),
    "julianofantone-creator/freak-app": SourceInfo("freak-app source", "not recorded"),
    "sudhanshu9028/timblenge-chat": SourceInfo("timblenge-chat source", "not recorded"),
    "imihajlow/chatvdvoem": SourceInfo("chatvdvoem client", "not recorded"),
    "beak2825/greasyfork_archives": SourceInfo(
        "Greasy Fork userscript archive, @match lists", "script licence not stated"
    ),
    "Kucharskov/6obcy-cli": SourceInfo("6obcy-cli client", "not recorded"),
    "djestick/nekto.me-skipper": SourceInfo("nekto.me-skipper userscript", "not recorded"),
}
ISSUE_LICENSE = "none; names as quoted in a public issue thread"
#: A repository cited in the table but not in REPO_SOURCES: named in the header, its licence not recorded yet.
UNRECORDED_LICENSE = "not recorded (see the repository)"
PAGE_LICENSE = "names as published on those pages (facts)"

#: Sources under a non-commercial or no-derivatives licence: a name seen only there is not shipped.
NC_ND_SOURCES = frozenset(
    {
        "sefinek24/Sefinek-Blocklist-Collection",  # CC BY-NC-ND 4.0
        "cbuijs/shallalist",  # the Shalla list's terms: free for non-commercial use only
    }
)

HERE = Path(__file__).resolve().parent
LISTS = HERE.parent
NAMES_TABLE = LISTS / "sources" / "chat-roulette.tsv"
RULES_TABLE = LISTS / "sources" / "chat-roulette-rules.tsv"
HELDOUT_SOURCES = LISTS / "eval" / "SOURCES.md"
TOP_SITES = LISTS / "eval" / "top-sites.txt"
TOP_LABELLED = LISTS / "eval" / "top-sites-chat-roulette.tsv"

NOTE = """\
How entries were chosen: every name was seen in at least one named source above (a blocklist, a
userscript or extension match list, an issue thread, or a site's own page or an app listing); nothing
was guessed. The category was assigned from the source's own category plus the site's name or
description. Each name, rule and its sources are in blocklists/sources/ in the filterd source.
Each name blocks itself and all its subdomains, so a name is dropped when its parent is listed.
A name seen only in a list under a non-commercial or no-derivatives licence is left out.
Brand rules (omegle.*) block that label directly under any public suffix and everything under it;
name patterns (/regex/) are searched in the whole name. Each rule was checked against a list of the
50,000 most popular sites and blocklists/never-block.txt (blocklists/tools/evaluate.py --rules).
A name or rule that would block one of those popular sites ships only once a maintainer has labelled
that site chat-roulette (blocklists/eval/top-sites-chat-roulette.tsv, with a source).
Built by blocklists/tools/build_chat_roulette.py from {rows} sourced names: {entries} names and
{rules} rules; {covered} names dropped as covered by a listed parent, {nc} seen only under an NC/ND
licence{heldout}{merged}."""

_ISSUE = re.compile(r"https://github\.com/([^/\s]+/[^/\s]+)/(?:issues|pull)/(\d+)")
_PAGE = re.compile(r"https?://[^\s;]+")
_REPO_SOURCE = re.compile(r"([A-Za-z0-9._-]+/[A-Za-z0-9._-]+):([^@\s]+)(?:@([0-9a-f]{7,40}))?")
_BRAND = re.compile(r"([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)\.\*")


@dataclass
class Row:
    domain: str
    category: str
    sources: list[str] = field(default_factory=list)


def _repo(source: str) -> str | None:
    m = _REPO_SOURCE.fullmatch(source)
    return m.group(1) if m and not source.startswith("http") else None


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


def read_rules(path: Path) -> list[Row]:
    """Brand rules and patterns in table order; `domain` holds the rule as the list writes it."""
    if not path.is_file():
        return []
    rules: list[Row] = []
    errors: list[str] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"rule", "category", "sources"} - set(reader.fieldnames or ())
        if missing:
            raise BuildError(f"{path}: missing columns: {', '.join(sorted(missing))}")
        for record in reader:
            where = f"{path}:{reader.line_num}"
            rule = (record["rule"] or "").strip()
            category = (record["category"] or "").strip()
            sources = [s.strip() for s in (record["sources"] or "").split(";") if s.strip()]
            if problem := rule_problem(rule):
                errors.append(f"{where}: {rule!r}: {problem}")
            elif category not in CATEGORIES:
                errors.append(f"{where}: {rule}: unknown category {category!r}")
            elif not sources:
                errors.append(f"{where}: {rule}: no source")
            elif rule in seen:
                errors.append(f"{where}: {rule}: repeated")
            else:
                seen.add(rule)
                rules.append(Row(rule, category, sources))
    if errors:
        raise BuildError("\n".join(errors))
    return rules


def rule_problem(rule: str) -> str | None:
    """Why `rule` is not a brand rule (label.*) or a pattern (/regex/ that compiles), or None."""
    if rule.startswith("/"):
        if len(rule) < 3 or not rule.endswith("/"):
            return "a pattern is written /regex/"
        if not rule.isascii() or any(c.isspace() for c in rule):
            return "a pattern must be ASCII without spaces"
        try:
            re.compile(rule[1:-1])
        except re.error as exc:
            return f"invalid pattern: {exc}"
        return None
    if not _BRAND.fullmatch(rule):
        return "a brand rule is one lower-case label followed by .* (like omegle.*)"
    return None


def covering_parent(name: str, names: set[str]) -> str | None:
    """The nearest proper parent of `name` that is in `names`, if any."""
    labels = name.split(".")
    for i in range(1, len(labels)):
        parent = ".".join(labels[i:])
        if parent in names:
            return parent
    return None


def heldout_pages(path: Path = HELDOUT_SOURCES) -> set[str]:
    """The page URLs the held-out evaluation set was gathered from (none when the file is absent)."""
    if not path.is_file():
        return set()
    return {url.rstrip(").,") for url in _PAGE.findall(path.read_text(encoding="utf-8"))}


def popular_sites(top: Path = TOP_SITES, labelled: Path = TOP_LABELLED) -> tuple[set[str], set[str]]:
    """The popular registrable names (one a line, '#' comments) and those labelled chat-roulette."""
    if not top.is_file():
        return set(), set()
    names = {line.split("#", 1)[0].strip() for line in top.read_text(encoding="utf-8").splitlines()}
    names.discard("")
    marked: set[str] = set()
    if labelled.is_file():
        with labelled.open(encoding="utf-8", newline="") as fh:
            marked = {row["domain"].strip() for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)}
    return names, marked


def rule_hits(rule: str, names: Iterable[str]) -> list[str]:
    """The popular registrable names a rule matches (a brand rule: the name's first label is the brand)."""
    if rule.startswith("/"):
        search = re.compile(rule[1:-1]).search
        return sorted(name for name in names if search(name))
    brand = rule[:-2]
    return sorted(name for name in names if name.split(".", 1)[0] == brand)


def source_lines(rows: Iterable[Row]) -> list[str]:
    files: dict[str, set[str]] = {}
    issues: set[tuple[str, int]] = set()
    pages: set[str] = set()
    errors: list[str] = []
    for row in rows:
        for source in row.sources:
            if m := _ISSUE.fullmatch(source):
                issues.add((m.group(1), int(m.group(2))))
            elif _PAGE.fullmatch(source):
                pages.add(source)
            elif m := _REPO_SOURCE.fullmatch(source):
                repo, file, commit = m.groups()
                used = f"{file}@{commit}" if commit else f"{file} (commit not recorded)"
                files.setdefault(repo, set()).add(used)
            elif not _BRAND.fullmatch(source) and not _is_name(source):
                errors.append(f"{row.domain}: unrecognised source {source!r}")
    if errors:
        raise BuildError("\n".join(errors))
    lines = []
    others = {repo: SourceInfo(repo, UNRECORDED_LICENSE) for repo in sorted(files) if repo not in REPO_SOURCES}
    for repo, info in {**REPO_SOURCES, **others}.items():
        if repo in files:
            used = sorted(files[repo])
            noun = "file" if len(used) == 1 else "files"
            lines.append(f"{info.label}, https://github.com/{repo}, {noun} {', '.join(used)}; license: {info.license}")
    for repo, number in sorted(issues):
        url = f"https://github.com/{repo}/issues/{number}"
        lines.append(f"issue {repo}#{number}, {url}; license: {ISSUE_LICENSE}")
    if pages:
        hosts = sorted({re.sub(r"^www\.", "", url.split("/")[2].lower()) for url in pages})
        lines.append(
            f"web pages: {len(pages)} pages on {len(hosts)} sites (the sites' own pages, app listings, articles),"
            f" each cited per name in blocklists/sources/; license: {PAGE_LICENSE}"
        )
    return lines


def _is_name(source: str) -> bool:
    """A rule's evidence may cite sourced names of the names table."""
    try:
        normalize(source)
    except ValueError:
        return False
    return "/" not in source and ":" not in source


def build(table: Path = NAMES_TABLE, version: str = VERSION, rules_table: Path = RULES_TABLE) -> str:
    rows, merged = read_table(table)
    rules = read_rules(rules_table)
    nc_only = [row for row in rows if all(_repo(s) in NC_ND_SOURCES for s in row.sources)]
    held = heldout_pages()
    heldout_only = [row for row in rows if held and all(s in held for s in row.sources)]
    popular, labelled = popular_sites()
    unlabelled_popular = [row for row in rows if row.domain in popular and row.domain not in labelled]
    dropped = {row.domain for row in (*nc_only, *heldout_only, *unlabelled_popular)}
    shipped = [row for row in rows if row.domain not in dropped]
    wrong = [f"{row.domain} matches {hit}" for row in rules for hit in rule_hits(row.domain, popular - labelled)]
    if wrong:
        raise BuildError(
            "rules that match popular sites not labelled chat-roulette (blocklists/eval/top-sites-chat-roulette.tsv):\n"
            + "\n".join(wrong)
        )
    names = {row.domain for row in shipped}
    kept = [row for row in shipped if covering_parent(row.domain, names) is None]
    sections: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for row in kept:
        sections[row.category].append(row.domain)
    for category in CATEGORIES:
        sections[category].sort()
    brands = sorted((row for row in rules if not row.domain.startswith("/")), key=lambda row: row.domain)
    patterns = sorted((row for row in rules if row.domain.startswith("/")), key=lambda row: row.domain)
    for row in (*brands, *patterns):
        sections[row.category].append(row.domain)

    note = NOTE.format(
        rows=len(rows),
        entries=len(kept),
        rules=len(rules),
        covered=len(shipped) - len(kept),
        nc=len(nc_only),
        heldout=(f", {len(heldout_only)} seen only on held-out evaluation pages" if heldout_only else "")
        + (
            f", {len(unlabelled_popular)} popular sites awaiting a maintainer's label"
            f" ({', '.join(sorted(row.domain for row in unlabelled_popular))})"
            if unlabelled_popular
            else ""
        ),
        merged=f"; {merged} repeated {'name' if merged == 1 else 'names'} merged" if merged else "",
    )
    return render(
        name="chat-roulette",
        description=DESCRIPTION,
        version=version,
        license=LICENSE,
        homepage=HOMEPAGE,
        sources=source_lines([*shipped, *rules]),
        note=note,
        sections=sections,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, nargs="?", default=NAMES_TABLE, help="names table (default: %(default)s)")
    parser.add_argument("--rules", type=Path, default=RULES_TABLE, help="rules table (default: %(default)s)")
    parser.add_argument(
        "-o",
        "--output",
        default=str(LISTS / "chat-roulette.txt"),
        help="where to write the list ('-' for standard output; default: %(default)s)",
    )
    parser.add_argument("--version", default=VERSION, help="version (release date) for the header")
    args = parser.parse_args(argv)
    try:
        text = build(args.table, args.version, args.rules)
    except (BuildError, OSError) as exc:
        print(f"build_chat_roulette: {exc}", file=sys.stderr)
        return 1
    write(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
