"""Lint the blocklists shipped in ``blocklists/`` (format, sorting, coverage, never-block names).

Standard library and pytest only, no imports from ``filterd``: this must run on any clone.
Every ``blocklists/*.txt`` except ``never-block.txt`` is linted, including lists added later.
Brand rules (``omegle.*``) and name patterns (``/regex/``) are linted here for their form; what they match,
with the Public Suffix List and filterd's own matcher, is checked by tests/unit/test_evaluate.py.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LISTS_DIR = ROOT / "blocklists"
NEVER_BLOCK = LISTS_DIR / "never-block.txt"
LIST_FILES = sorted(p for p in LISTS_DIR.glob("*.txt") if p.name != NEVER_BLOCK.name)
CHAT_ROULETTE = LISTS_DIR / "chat-roulette.txt"
GENERATOR = LISTS_DIR / "tools" / "build_chat_roulette.py"
DOH_BYPASS = LISTS_DIR / "doh-bypass.txt"
DOH_GENERATOR = LISTS_DIR / "tools" / "build_doh_bypass.py"
DOH_TSV = ROOT.parent / "shared" / "reference" / "doh-resolvers.tsv"

REQUIRED_KEYS = ("name", "description", "version", "license")
CHAT_ROULETTE_CATEGORIES = (
    "chat-roulette-video",
    "adult-cam-roulette",
    "anonymous-text-chat",
    "video-chat-rooms",
)
PRIORITY_NAMES = (
    "omegle.com",
    "ome.tv",
    "chatroulette.com",
    "bazoocam.org",
    "tinychat.com",
    "chatrandom.com",
    "flingster.com",
    "emeraldchat.com",
    "uhmegle.com",
    "coomeet.com",
)

DOH_CATEGORIES = ("doh-major-providers", "icloud-private-relay", "doh-other-resolvers")
#: Resolver hosts doh-bypass must block (each seen in two or more maintained lists).
DOH_RESOLVERS = (
    "dns.google",
    "dns.google.com",
    "cloudflare-dns.com",
    "mozilla.cloudflare-dns.com",
    "one.one.one.one",
    "dns.quad9.net",
    "dns.nextdns.io",
    "doh.opendns.com",
    "dns.adguard-dns.com",
    "doh.cleanbrowsing.org",
    "doh.dns.apple.com",
    "mask.icloud.com",
)
#: Vendors' whole sites and dashboards, and names that need another answer than a block.
DOH_NOT_BLOCKED = (
    "quad9.net",
    "www.quad9.net",
    "nextdns.io",
    "my.nextdns.io",
    "cloudflare.com",
    "dash.cloudflare.com",
    "cleanbrowsing.org",
    "google.com",
    "switch.ch",
    "use-application-dns.net",
)

_HEADER_KEY = re.compile(r"# ([a-z][a-z0-9-]*): (.*)")
_CATEGORY = re.compile(r"# category: (\S+)")
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Entry:
    where: str  # "blocklists/x.txt:12"
    name: str
    category: str | None
    section: int  # index of its `# category:` section, -1 before the first one


@dataclass
class ListFile:
    path: Path
    lines: list[str]
    header: dict[str, list[str]] = field(default_factory=dict)
    #: Category names with the location of their `# category:` line, in file order.
    sections: list[tuple[str, str]] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    #: brand rules (`omegle.*`) and name patterns (`/regex/`), after the names of their section
    rules: list[Entry] = field(default_factory=list)


_BRAND = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.\*")


def is_rule(line: str) -> bool:
    return line.startswith("/") or line.endswith(".*")


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def parse_list(path: Path) -> ListFile:
    text = path.read_bytes().decode("utf-8")
    parsed = ListFile(path, text.split("\n"))
    in_header = True
    category: str | None = None
    for number, line in enumerate(parsed.lines, start=1):
        where = f"{rel(path)}:{number}"
        if m := _CATEGORY.fullmatch(line):
            in_header = False
            category = m.group(1)
            parsed.sections.append((category, where))
        elif line.startswith("#"):
            if in_header and (m := _HEADER_KEY.fullmatch(line)):
                parsed.header.setdefault(m.group(1), []).append(m.group(2).strip())
        elif not line.strip():
            in_header = False
        else:
            in_header = False
            entry = Entry(where, line, category, len(parsed.sections) - 1)
            (parsed.rules if is_rule(line) else parsed.entries).append(entry)
    return parsed


def hostname_problem(name: str) -> str | None:
    """Why `name` is not a valid list entry, or None."""
    if name != name.strip() or any(c.isspace() for c in name):
        return "not a single name (whitespace)"
    if not name.isascii():
        return "not ASCII (write IDNs as xn-- A-labels)"
    if name != name.lower():
        return "not lower-case"
    if name.endswith("."):
        return "trailing dot"
    if len(name) > 253:
        return "longer than 253 characters"
    labels = name.split(".")
    if len(labels) < 2:
        return "a single label would block a whole top-level domain"
    for label in labels:
        if not _LABEL.fullmatch(label):
            return f"bad label {label!r} (allowed: a-z 0-9 _ -, 1-63 characters)"
        if label.startswith("xn--"):
            try:
                label[4:].encode("ascii").decode("punycode")
            except UnicodeError:
                return f"label {label!r} is not a valid punycode A-label"
    if labels[-1].isdigit():
        return "looks like an IP address, not a hostname"
    return None


def parents(name: str) -> list[str]:
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


def blocking_entry(name: str, entries: dict[str, Entry]) -> Entry | None:
    """The entry that blocks `name` (equal to it or a parent of it), if any."""
    for candidate in (name, *parents(name)):
        if candidate in entries:
            return entries[candidate]
    return None


def fail_if(problems: list[str], what: str) -> None:
    if problems:
        shown = problems[:50]
        more = f"\n... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        pytest.fail(f"{what}:\n" + "\n".join(shown) + more, pytrace=False)


lint_each_list = pytest.mark.parametrize("path", LIST_FILES, ids=[p.name for p in LIST_FILES])


def test_chat_roulette_list_is_shipped() -> None:
    assert CHAT_ROULETTE in LIST_FILES, f"{rel(CHAT_ROULETTE)} is missing"


@lint_each_list
def test_file_is_utf8_with_unix_newlines(path: Path) -> None:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        pytest.fail(f"{rel(path)}: not UTF-8: {exc}", pytrace=False)
    assert b"\r" not in data, f"{rel(path)}: use LF line endings, not CRLF"
    assert data.endswith(b"\n"), f"{rel(path)}: the last line must end with a newline"


@lint_each_list
def test_header(path: Path) -> None:
    parsed = parse_list(path)
    where = f"{rel(path)}:1"
    assert parsed.lines[0].startswith("# "), f"{where}: the file must start with a '# key: value' header"
    problems = []
    for key in REQUIRED_KEYS:
        values = parsed.header.get(key, [])
        if len(values) != 1 or not values[0]:
            problems.append(f"{where}: header needs exactly one non-empty '# {key}:' line (found {values!r})")
    name = parsed.header.get("name", [path.stem])[0]
    if name != path.stem:
        problems.append(f"{where}: '# name: {name}' should match the file name {path.stem!r}")
    version = parsed.header.get("version", [""])[0]
    if version and not _DATE.fullmatch(version):
        problems.append(f"{where}: '# version: {version}' should be a release date YYYY-MM-DD")
    if not any(parsed.header.get("source", [])):
        problems.append(f"{where}: header needs at least one '# source:' line (attribution)")
    fail_if(problems, "bad header")


@lint_each_list
def test_entries_are_valid_hostnames(path: Path) -> None:
    parsed = parse_list(path)
    problems = []
    for entry in parsed.entries:
        if why := hostname_problem(entry.name):
            problems.append(f"{entry.where}: {entry.name!r}: {why}")
    fail_if(problems, "invalid entries (one lower-case hostname per line)")


@lint_each_list
def test_entries_are_in_category_sections(path: Path) -> None:
    parsed = parse_list(path)
    problems = [
        f"{entry.where}: {entry.name!r} comes before any '# category:' line"
        for entry in parsed.entries
        if entry.category is None
    ]
    seen: dict[str, str] = {}
    for name, where in parsed.sections:
        if name in seen:
            problems.append(f"{where}: '# category: {name}' repeats the section at {seen[name]}")
        seen.setdefault(name, where)
    fail_if(problems, "entries outside sections")


@lint_each_list
def test_entries_sorted_within_sections(path: Path) -> None:
    parsed = parse_list(path)
    problems = []
    previous: Entry | None = None
    for entry in parsed.entries:
        if previous and previous.section == entry.section and entry.name < previous.name:
            problems.append(f"{entry.where}: {entry.name!r} should come before {previous.name!r} ({previous.where})")
        previous = entry
    fail_if(problems, "entries not sorted within their '# category:' section")


@lint_each_list
def test_no_duplicates(path: Path) -> None:
    parsed = parse_list(path)
    first: dict[str, Entry] = {}
    problems = []
    for entry in parsed.entries:
        if entry.name in first:
            problems.append(f"{entry.where}: {entry.name!r} is already listed at {first[entry.name].where}")
        first.setdefault(entry.name, entry)
    fail_if(problems, "duplicate entries")


@lint_each_list
def test_no_entry_covered_by_a_parent(path: Path) -> None:
    parsed = parse_list(path)
    entries = {entry.name: entry for entry in reversed(parsed.entries)}
    problems = []
    for entry in parsed.entries:
        for parent in parents(entry.name):
            if parent in entries:
                blocker = entries[parent]
                problems.append(f"{entry.where}: {entry.name!r} is already blocked by {parent!r} ({blocker.where})")
                break
    fail_if(problems, "redundant entries (each entry blocks all its subdomains)")


@lint_each_list
def test_rules_are_well_formed_and_follow_the_names(path: Path) -> None:
    parsed = parse_list(path)
    problems = []
    last_name_line: dict[int, int] = {}
    for entry in parsed.entries:
        last_name_line[entry.section] = int(entry.where.rsplit(":", 1)[1])
    kinds: dict[int, list[Entry]] = {}
    for rule in parsed.rules:
        line = int(rule.where.rsplit(":", 1)[1])
        if rule.category is None:
            problems.append(f"{rule.where}: {rule.name!r} comes before any '# category:' line")
        if line < last_name_line.get(rule.section, 0):
            problems.append(f"{rule.where}: {rule.name!r}: rules come after the names of their section")
        if rule.name.startswith("/"):
            body = rule.name[1:-1]
            if len(rule.name) < 3 or not rule.name.endswith("/") or not rule.name.isascii() or " " in body:
                problems.append(f"{rule.where}: {rule.name!r}: a pattern is one ASCII /regex/ without spaces")
            else:
                try:
                    re.compile(body)
                except re.error as exc:
                    problems.append(f"{rule.where}: {rule.name!r}: {exc}")
        elif not _BRAND.fullmatch(rule.name):
            problems.append(f"{rule.where}: {rule.name!r}: a brand rule is one lower-case label and .*")
        kinds.setdefault(rule.section, []).append(rule)
    for rules in kinds.values():
        order = [(r.name.startswith("/"), r.name) for r in rules]
        if order != sorted(order):
            problems.append(f"{rules[0].where}: brand rules (sorted), then patterns (sorted), in each section")
        names = [r.name for r in rules]
        problems += [f"{r.where}: {r.name!r} repeated" for i, r in enumerate(rules) if r.name in names[:i]]
    fail_if(problems, "malformed rules")


def test_chat_roulette_has_brand_rules_and_patterns() -> None:
    rules = [rule.name for rule in parse_list(CHAT_ROULETTE).rules]
    assert "omegle.*" in rules or "/omegle/" in rules
    assert sum(r.startswith("/") for r in rules) >= 10 and sum(r.endswith(".*") for r in rules) >= 50


def test_chat_roulette_sections() -> None:
    sections = tuple(name for name, _ in parse_list(CHAT_ROULETTE).sections)
    assert sections == CHAT_ROULETTE_CATEGORIES


def test_priority_names_are_blocked() -> None:
    entries = {entry.name: entry for entry in parse_list(CHAT_ROULETTE).entries}
    missing = [name for name in PRIORITY_NAMES if blocking_entry(name, entries) is None]
    assert not missing, f"{rel(CHAT_ROULETTE)} does not block: {', '.join(missing)}"


def test_never_block_names_are_not_blocked() -> None:
    if not NEVER_BLOCK.exists():
        pytest.skip(f"{rel(NEVER_BLOCK)} not present")
    lists = {path: {e.name: e for e in reversed(parse_list(path).entries)} for path in LIST_FILES}
    problems = []
    text = NEVER_BLOCK.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        name = line.split("#", 1)[0].strip().lower().rstrip(".")
        if not name:
            continue
        where = f"{rel(NEVER_BLOCK)}:{number}"
        if why := hostname_problem(name):
            problems.append(f"{where}: {name!r}: {why}")
            continue
        for entries in lists.values():
            if entry := blocking_entry(name, entries):
                problems.append(f"{where}: {name!r} is blocked by {entry.name!r} ({entry.where})")
    fail_if(problems, "names that must never be blocked are blocked")


def test_generator_reproduces_chat_roulette_list(tmp_path: Path) -> None:
    """The committed list is exactly what the generator makes from the sourced tables in blocklists/sources/."""
    out = tmp_path / "chat-roulette.txt"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{rel(GENERATOR)} failed:\n{result.stderr}"
    expected = out.read_text(encoding="utf-8")
    committed = CHAT_ROULETTE.read_text(encoding="utf-8")
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(),
            expected.splitlines(),
            fromfile=rel(CHAT_ROULETTE),
            tofile="generated",
            lineterm="",
        )
        pytest.fail(
            f"{rel(CHAT_ROULETTE)} is out of date; rerun 'python {rel(GENERATOR)}':\n" + "\n".join(list(diff)[:80]),
            pytrace=False,
        )


def test_never_block_file_format() -> None:
    if not NEVER_BLOCK.exists():
        pytest.skip(f"{rel(NEVER_BLOCK)} not present")
    first: dict[str, str] = {}
    problems = []
    for number, line in enumerate(NEVER_BLOCK.read_text(encoding="utf-8").split("\n"), start=1):
        where = f"{rel(NEVER_BLOCK)}:{number}"
        if not line.strip() or line.startswith("#"):
            continue
        if line != line.strip() or "#" in line:
            problems.append(f"{where}: {line!r}: one name per line, nothing else (comments on their own lines)")
        elif why := hostname_problem(line):
            problems.append(f"{where}: {line!r}: {why}")
        elif line in first:
            problems.append(f"{where}: {line!r} is already listed at {first[line]}")
        first.setdefault(line, where)
    fail_if(problems, "bad never-block.txt")


def test_doh_bypass_sections() -> None:
    sections = tuple(name for name, _ in parse_list(DOH_BYPASS).sections)
    assert sections == DOH_CATEGORIES


def test_doh_bypass_blocks_resolver_hosts_not_vendor_sites() -> None:
    entries = {entry.name: entry for entry in parse_list(DOH_BYPASS).entries}
    missing = [name for name in DOH_RESOLVERS if blocking_entry(name, entries) is None]
    assert not missing, f"{rel(DOH_BYPASS)} does not block: {', '.join(missing)}"
    wrong = [f"{name} (by {e.name}, {e.where})" for name in DOH_NOT_BLOCKED if (e := blocking_entry(name, entries))]
    assert not wrong, f"{rel(DOH_BYPASS)} blocks: {', '.join(wrong)}"


def test_generator_reproduces_doh_bypass_list(tmp_path: Path) -> None:
    if not DOH_TSV.is_file():
        pytest.skip("../shared/reference not present (only in the development workspace)")
    out = tmp_path / "doh-bypass.txt"
    result = subprocess.run(
        [sys.executable, str(DOH_GENERATOR), str(DOH_TSV), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{rel(DOH_GENERATOR)} failed:\n{result.stderr}"
    committed = DOH_BYPASS.read_text(encoding="utf-8")
    expected = out.read_text(encoding="utf-8")
    if committed != expected:
        diff = difflib.unified_diff(
            committed.splitlines(), expected.splitlines(), fromfile=rel(DOH_BYPASS), tofile="generated", lineterm=""
        )
        pytest.fail(
            f"{rel(DOH_BYPASS)} is out of date; rerun 'python {rel(DOH_GENERATOR)} {DOH_TSV}':\n"
            + "\n".join(list(diff)[:80]),
            pytrace=False,
        )
