#!/usr/bin/env python3
"""Brand rules the sourced names support, for a maintainer to review before adding them to the rules table.

Usage (from the repository, with filterd installed, e.g. in the README's .venv)::

    python blocklists/tools/suggest_brand_rules.py [--all]

For each name the built list ships (`blocklists/chat-roulette.txt`: so every licence rule of the build holds)
that is its site's own registrable name (not a host on someone else's domain, and not a hobby deployment on a
hosting platform such as vercel.app), it takes the brand label (the one under the public suffix, from the Public
Suffix List that filterd uses) and prints a TSV row for `chat-roulette-rules.tsv` when no rule covers the brand
yet (neither its brand rule nor a pattern) and it looks distinctive: seen under two or more suffixes, or a longer
label with a chat-like word in it. A brand whose rule would block a popular site that is
not labelled chat-roulette (`blocklists/eval/`) is printed as a comment saying which, never as a row (the build
would refuse it). `--all` also lists the brands left out as not distinctive. Nothing is written: a person decides.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    from filterd.blocklists.rules import public_suffixes
except ImportError:  # pragma: no cover - run from a checkout without filterd installed
    sys.path.insert(0, str(ROOT.parent))
    from filterd.blocklists.rules import public_suffixes

HOSTING = {
    "vercel.app", "netlify.app", "onrender.com", "herokuapp.com", "pages.dev", "github.io", "web.app",
    "firebaseapp.com", "up.railway.app", "glitch.me", "repl.co",
}  # fmt: skip
_CHATTY = re.compile(r"chat|cam|talk|stranger|omeg|roulet|rulet|video|meet|czat|sohbet|obcy")


def read(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="also list the brands left out")
    args = parser.parse_args(argv)
    psl = public_suffixes()
    category: dict[str, str] = {}
    current = ""
    for line in (ROOT / "chat-roulette.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("# category: "):
            current = line.split(": ", 1)[1]
        elif line and not line.startswith("#") and not line.startswith("/") and not line.endswith(".*"):
            category[line] = current
    names = set(category)
    rules = [row["rule"] for row in read(ROOT / "sources" / "chat-roulette-rules.tsv")]
    existing = set(rules)
    patterns = [re.compile(rule[1:-1]) for rule in rules if rule.startswith("/")]
    top = [line.strip() for line in (ROOT / "eval" / "top-sites.txt").read_text().splitlines()]
    labelled = {row["domain"] for row in read(ROOT / "eval" / "top-sites-chat-roulette.tsv")}
    popular: dict[str, list[str]] = defaultdict(list)
    for site in top:
        if site and not site.startswith("#") and site not in labelled:
            popular[site.split(".", 1)[0]].append(site)
    brands: dict[str, set[str]] = defaultdict(set)
    for name in names:
        own = psl.privatesuffix(name)
        if own is None or (own != name and own not in names):
            continue  # a host on someone else's domain
        label, suffix = own.split(".", 1)
        if suffix in HOSTING:
            continue
        brands[label].add(own)
    print("rule\tcategory\tsources\tnotes")
    for label, owned in sorted(brands.items()):
        if f"{label}.*" in existing or any(p.search(f"{label}.com") for p in patterns):
            continue
        suffixes = {n.split(".", 1)[1] for n in owned}
        distinctive = len(suffixes) >= 2 or (len(label) >= 6 and _CHATTY.search(label) is not None)
        sample = sorted(owned)[:3]
        if popular.get(label):
            print(f"# {label}.*: would block popular sites not labelled chat-roulette: {', '.join(popular[label])}")
        elif distinctive:
            print(
                f"{label}.*\t{category[sample[0]]}\t{';'.join(sample)}\tbrand of the sourced names {', '.join(sample)}"
            )
        elif args.all:
            print(f"# {label}.*: not distinctive enough on its own ({', '.join(sample)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
