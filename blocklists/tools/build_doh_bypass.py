#!/usr/bin/env python3
"""Build the shipped ``doh-bypass`` blocklist from the sourced table of encrypted-DNS resolver names.

Usage::

    python blocklists/tools/build_doh_bypass.py PATH/TO/doh-resolvers.tsv [-o OUTPUT] [--never-block FILE]

The input is a tab-separated table with a header row and the columns ``domain`` and ``sources``
(``;``-separated, each ``owner/repo:path@commit``, optionally followed by a note such as ``(inactive)``):
the union of several maintained DoH/DoT resolver lists, one row per name. The output (default:
``blocklists/doh-bypass.txt`` next to this directory) is a domains list in which every entry blocks
itself and all its subdomains. A name is kept when:

* at least ``MIN_SOURCES`` different maintained lists carry it as an active resolver (dibdot's file of
  abandoned resolvers does not count: its maintainer marks those names inactive);
* it is not the whole site of a DNS vendor or of an organisation that also runs a resolver
  (``NOT_RESOLVER_HOSTS``): there the resolver host names under it are kept instead;
* it is not a signal name that needs a particular answer rather than a block (``SIGNALS``);
* it would not block a name in ``never-block.txt`` (itself or a parent of one);
* no parent of it is kept (each entry covers its subdomains).

Entries are grouped into ``# category:`` sections (``CATEGORIES``): the resolvers of the big public DNS
operators (``MAJOR_PROVIDERS``), iCloud Private Relay, and every other resolver. The output depends only
on the inputs and the constants below, so the build is reproducible. Standard library only.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from listfile import BuildError, normalize, render, write  # beside this script

VERSION = "2026-11-28"
MIN_SOURCES = 2

DESCRIPTION = (
    "Public DNS-over-HTTPS / DNS-over-TLS resolvers and iCloud Private Relay: the encrypted DNS a device "
    "can use to skip the filter"
)
LICENSE = (
    "CC BY-SA 4.0 for this list as a compilation, because it includes facts from UT1 (CC BY-SA 4.0); "
    "the domain names themselves are facts"
)
HOMEPAGE = "see blocklists/README.md in the filterd source"

#: Category ids, in the order of the sections in the output.
CATEGORIES = ("doh-major-providers", "icloud-private-relay", "doh-other-resolvers")

#: Zones of the large public DNS operators (names equal to or under them go to `doh-major-providers`).
MAJOR_PROVIDERS: dict[str, str] = {
    "dns.google": "Google Public DNS",
    "8888.google": "Google Public DNS",
    "google.com": "Google Public DNS (dns.google.com, google-public-dns-a/b.google.com; never google.com)",
    "cloudflare-dns.com": "Cloudflare 1.1.1.1",
    "one.one.one.one": "Cloudflare 1.1.1.1",
    "cloudflare.com": "Cloudflare (dns.cloudflare.com; never cloudflare.com)",
    "cloudflare-gateway.com": "Cloudflare Zero Trust gateway resolvers",
    "quad9.net": "Quad9",
    "opendns.com": "Cisco OpenDNS",
    "adguard-dns.com": "AdGuard DNS",
    "adguard.com": "AdGuard DNS (former names)",
    "nextdns.io": "NextDNS",
    "cleanbrowsing.org": "CleanBrowsing",
    "dns.apple.com": "Apple's DoH endpoint",
    "aaplimg.com": "Apple's DoH endpoint (CDN name)",
    "alidns.com": "Alibaba AliDNS",
    "doh.pub": "Tencent DNSPod",
    "dot.pub": "Tencent DNSPod",
    "dns.pub": "Tencent DNSPod",
    "mullvad.net": "Mullvad DNS",
    "controld.com": "Control D",
    "360.cn": "Qihoo 360",
    "yandex.net": "Yandex DNS",
    "yandex.ru": "Yandex DNS",
    "cira.ca": "CIRA Canadian Shield",
    "dns.sb": "DNS.SB",
    "doh.sb": "DNS.SB",
}

#: Zones whose kept names are iCloud Private Relay hosts (category `icloud-private-relay`).
PRIVATE_RELAY = ("icloud.com", "apple-dns.net")

#: Names the source lists carry that are a vendor's or an organisation's whole site, not a resolver host:
#: blocking them would block the website, the dashboard or unrelated services. Their resolver hosts, listed
#: separately in the table, are kept.
NOT_RESOLVER_HOSTS: dict[str, str] = {
    "quad9.net": "Quad9's website; resolvers dns.quad9.net, dns9-13.quad9.net, dns-nosec.quad9.net",
    "nextdns.io": "NextDNS's website and dashboard (my.nextdns.io); resolvers dns.nextdns.io and others",
    "cleanbrowsing.org": "CleanBrowsing's website and dashboard; resolvers *-filter-dns, doh.cleanbrowsing.org",
    "alidns.com": "AliDNS's website; resolver dns.alidns.com",
    "dns.sb": "DNS.SB's website; resolvers doh.dns.sb, public-dns-a/b.dns.sb",
    "ahadns.net": "AhaDNS's website; resolvers doh.<city>.ahadns.net",
    "rethinkdns.com": "RethinkDNS's website and app; resolvers basic., max., sky.rethinkdns.com",
    "bravedns.com": "RethinkDNS's former website; resolvers basic., free.bravedns.com",
    "censurfridns.dk": "UncensoredDNS's website; resolvers anycast., unicast.censurfridns.dk",
    "uncensoreddns.org": "UncensoredDNS's website; resolvers anycast., unicast.uncensoreddns.org",
    "dnswarden.com": "DNSWarden's website; resolvers doh., dns. and *-dot.dnswarden.com",
    "dns4me.net": "dns4me's website and account pages (a paid service); resolvers xx01.dns4me.net",
    "dnsforfamily.com": "DNS for Family's website; resolvers dns-doh., dns-dot.dnsforfamily.com",
    "comss.one": "Comss.one, a technology news site; resolvers dns., dns.east.comss.one",
    "comss.ru": "Comss.ru, the same news site; its resolvers are under comss.one",
    "switch.ch": "SWITCH, the Swiss research and education network: its whole site; resolver dns.switch.ch",
    "iij.jp": "Internet Initiative Japan, an ISP: its whole site; resolver public.dns.iij.jp",
}

#: Names that need a particular answer, not a block: answered by policy, not by a blocklist.
SIGNALS: dict[str, str] = {
    "use-application-dns.net": (
        "Firefox's canary: Firefox turns its default DoH off only on NXDOMAIN, SERVFAIL or an answer without "
        "A/AAAA, and a blocked name gets the sinkhole address in sinkhole mode"
    ),
}

#: Files whose names do not count towards MIN_SOURCES.
INACTIVE_FILES = {("dibdot/DoH-IP-blocklists", "doh-domains_abandoned.txt")}


@dataclass(frozen=True)
class SourceInfo:
    label: str
    license: str


#: Attribution for every repository the table may cite, in header order; an unknown one stops the build.
REPO_SOURCES: dict[str, SourceInfo] = {
    "hagezi/dns-blocklists": SourceInfo("hagezi DNS blocklists, DoH only", "see the repository LICENSE (not checked)"),
    "dibdot/DoH-IP-blocklists": SourceInfo("dibdot DoH-IP-blocklists", "GPL-3.0"),
    "oneoffdallas/dohservers": SourceInfo("oneoffdallas dohservers", "MIT"),
    "nextdns/dns-bypass-methods": SourceInfo("NextDNS dns-bypass-methods", "MIT"),
    "olbat/ut1-blacklists": SourceInfo("UT1 blacklists (Universite Toulouse Capitole), daily mirror", "CC BY-SA 4.0"),
    "ShadowWhisperer/BlockLists": SourceInfo("ShadowWhisperer BlockLists", "Unlicense"),
}

NOTE = """\
How entries were chosen: the table is the union of {lists} maintained DoH/DoT resolver lists ({rows}
names). A name is kept when at least {min_sources} of those lists carry it as an active resolver
(dibdot's file of abandoned resolvers does not count), so one list's mistake or stale entry is not
enough. Kept names are resolver hosts only: where a list names a DNS vendor's or an organisation's
whole site (quad9.net, nextdns.io, cleanbrowsing.org, switch.ch, ...), that site is left out and its
resolver hosts (dns.quad9.net, dns.nextdns.io, ...) are kept; blocklists/tools/build_doh_bypass.py
says why for each. use-application-dns.net (Firefox's canary) is left out: it needs a negative
answer, not the sinkhole address. No name blocks one in blocklists/never-block.txt.
Each entry blocks the name and all its subdomains, so a name is dropped when its parent is listed.
Built by blocklists/tools/build_doh_bypass.py: {kept} entries from the {eligible} names that {min_sources} or more
lists carry; left out: {vendor} vendor or organisation sites, {signals} signal name(s), {never} name(s) that
would block a never-block name, {covered} names covered by a listed parent."""

_SOURCE = re.compile(r"([A-Za-z0-9._-]+/[A-Za-z0-9._-]+):([^@\s]+)@([0-9a-f]{7,40})(?:\s+\(.*\))?")


@dataclass
class Row:
    domain: str
    #: (repo, file, commit) of each list carrying the name
    sources: list[tuple[str, str, str]] = field(default_factory=list)

    def active_lists(self) -> set[str]:
        return {repo for repo, path, _ in self.sources if (repo, path) not in INACTIVE_FILES}


def read_table(path: Path) -> list[Row]:
    rows: dict[str, Row] = {}
    errors: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = {"domain", "sources"} - set(reader.fieldnames or ())
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
            row = rows.setdefault(name, Row(name))
            for source in (s.strip() for s in (record["sources"] or "").split(";")):
                if not source:
                    continue
                m = _SOURCE.fullmatch(source)
                if m is None:
                    errors.append(f"{where}: {name}: unrecognised source {source!r}")
                elif m.group(1) not in REPO_SOURCES:
                    errors.append(f"{where}: {name}: repository {m.group(1)!r} has no attribution in REPO_SOURCES")
                elif m.groups() not in row.sources:
                    row.sources.append((m.group(1), m.group(2), m.group(3)))
            if not row.sources:
                errors.append(f"{where}: {name}: no source")
    if errors:
        raise BuildError("\n".join(errors))
    return list(rows.values())


def read_never_block(path: Path) -> set[str]:
    names = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            try:
                names.add(normalize(text))
            except ValueError as exc:
                raise BuildError(f"{path}:{number}: {text!r}: {exc}") from None
    return names


def parents(name: str) -> list[str]:
    labels = name.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))]


def under(name: str, zones: Collection[str]) -> str | None:
    """The zone (in `zones`) that `name` equals or falls under, if any."""
    for candidate in (name, *parents(name)):
        if candidate in zones:
            return candidate
    return None


def category_of(name: str) -> str:
    if under(name, PRIVATE_RELAY):
        return "icloud-private-relay"
    if under(name, MAJOR_PROVIDERS):
        return "doh-major-providers"
    return "doh-other-resolvers"


def build(table: Path, never_block: Path, version: str = VERSION) -> str:
    rows = read_table(table)
    protected = read_never_block(never_block)
    eligible = [row for row in rows if len(row.active_lists()) >= MIN_SOURCES]
    vendor = [row for row in eligible if row.domain in NOT_RESOLVER_HOSTS]
    signals = [row for row in eligible if row.domain in SIGNALS]
    candidates = [row for row in eligible if row.domain not in NOT_RESOLVER_HOSTS and row.domain not in SIGNALS]
    never = [row for row in candidates if row.domain in protected or any(under(p, {row.domain}) for p in protected)]
    candidates = [row for row in candidates if row not in never]
    names = {row.domain for row in candidates}
    kept = [row for row in candidates if not any(parent in names for parent in parents(row.domain))]
    missing = sorted(set(NOT_RESOLVER_HOSTS) - {row.domain for row in vendor})
    if missing:
        raise BuildError(f"NOT_RESOLVER_HOSTS names no longer eligible in the table: {', '.join(missing)}")

    used: dict[str, set[str]] = {}
    for row in kept:
        for repo, path, commit in row.sources:
            used.setdefault(repo, set()).add(f"{path}@{commit}")
    sources = []
    for repo, info in REPO_SOURCES.items():
        if repo in used:
            files = sorted(used[repo])
            noun = "file" if len(files) == 1 else "files"
            sources.append(
                f"{info.label}, https://github.com/{repo}, {noun} {', '.join(files)}; license: {info.license}"
            )

    note = NOTE.format(
        lists=len({repo for row in rows for repo, _, _ in row.sources}),
        rows=len(rows),
        min_sources=MIN_SOURCES,
        kept=len(kept),
        eligible=len(eligible),
        vendor=len(vendor),
        signals=len(signals),
        never=len(never),
        covered=len(candidates) - len(kept),
    )
    sections: dict[str, list[str]] = {category: [] for category in CATEGORIES}
    for row in kept:
        sections[category_of(row.domain)].append(row.domain)
    for entries in sections.values():
        entries.sort()
    return render(
        name="doh-bypass",
        description=DESCRIPTION,
        version=version,
        license=LICENSE,
        homepage=HOMEPAGE,
        sources=sources,
        note=note,
        sections=sections,
    )


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", type=Path, help="the sourced doh-resolvers.tsv")
    parser.add_argument(
        "-o",
        "--output",
        default=str(here / "doh-bypass.txt"),
        help="where to write the list ('-' for standard output; default: %(default)s)",
    )
    parser.add_argument(
        "--never-block",
        type=Path,
        default=here / "never-block.txt",
        help="names no entry may block (default: %(default)s)",
    )
    parser.add_argument("--version", default=VERSION, help="version (release date) for the header")
    args = parser.parse_args(argv)
    try:
        text = build(args.table, args.never_block, args.version)
    except (BuildError, OSError) as exc:
        print(f"build_doh_bypass: {exc}", file=sys.stderr)
        return 1
    write(text, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
