#!/usr/bin/env python3
"""Deterministic benchmark data: a synthetic blocklist in three syntaxes, the upstream's zone, dnsperf query files.

    python3 bench/gen.py --out /tmp/filterd-bench/data [--names 1000000] [--seed 20261128] [--reps 3]

Writes into OUT (and a manifest.json that run.py reads; an existing data set with the same parameters is
reused, so a second run does not regenerate it):

    blocklist.domains        the N names, one a line (filterd: `format: domains`, each name with its subtree)
    blocklist.hosts          `0.0.0.0 NAME` lines (dnsmasq `addn-hosts`: exactly those names)
    blocklist.unbound.conf   `local-zone: "NAME." always_null` lines (unbound: 0.0.0.0 for the name and below)
    bench.test.zone          the upstream's zone: 1,000 allowed names (A 127.10.x.y) and `*.miss.bench.test`
                             (A 127.10.255.1: every name under it is a cache miss answered by the upstream)
    upstream-dnsmasq.conf    the same zone as dnsmasq options (the upstream when nsd is not installed)
    q-warm.txt               the 1,000 allowed names once (cache warm-up)
    q-a.txt                  a: names sampled from the blocklist (100% blocked)
    q-b.txt                  b: draws from the 1,000 allowed names (100% cache hits after the warm-up)
    q-c-tput-R.txt           c: the mix, 10% blocked / 85% the 1,000 cached names / 5% misses, one file per
    q-c-lat-R.txt               repetition R and per kind of run, each with its own unique miss names, so a miss
                                is a miss in every run
    q-d-tput-R.txt           d: 100% misses, every name unique (`TAG-HEX.miss.bench.test`): the forwarding path,
    q-d-lat-R.txt               each answered by the upstream

Only data: every address written is 0.0.0.0 or in 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Top-level domains with rough real-list weights (names under .test never appear: the zone lives there).
TLDS = (
    ("com", 40),
    ("net", 9),
    ("org", 5),
    ("top", 6),
    ("xyz", 5),
    ("info", 4),
    ("ru", 4),
    ("io", 3),
    ("cn", 3),
    ("tv", 2),
    ("de", 2),
    ("co", 2),
    ("online", 2),
    ("site", 2),
    ("club", 2),
    ("cam", 2),
    ("biz", 1),
    ("me", 1),
    ("app", 1),
    ("live", 1),
    ("icu", 1),
)
#: Letters three times as likely as digits, as in real names.
BODY = string.ascii_lowercase * 3 + string.digits
ZONE = "bench.test"
MISS_ZONE = "miss." + ZONE
MISS_ADDR = "127.10.255.1"
VERSION = 2  # bump when the generated data changes for the same parameters


def _label(rng: random.Random, lo: int = 4, hi: int = 14) -> str:
    n = rng.randint(lo, hi)
    body = rng.choices(BODY, k=n - 1)
    if n >= 7 and rng.random() < 0.15:
        body[rng.randint(1, n - 3)] = "-"
    return rng.choice(string.ascii_lowercase) + "".join(body)


def blocklist_names(rng: random.Random, count: int) -> list[str]:
    """`count` unique names, 1-3 labels under a weighted TLD (45% / 40% / 15%)."""
    tlds = [t for t, _ in TLDS]
    weights = [w for _, w in TLDS]
    seen: set[str] = set()
    names: list[str] = []
    while len(names) < count:
        depth = rng.choices((1, 2, 3), weights=(45, 40, 15))[0]
        name = ".".join([_label(rng) for _ in range(depth)]) + "." + rng.choices(tlds, weights)[0]
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def allowed_names(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` (name, address) pairs under bench.test, none under miss.bench.test."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        depth = rng.choices((1, 2), weights=(70, 30))[0]
        name = ".".join([_label(rng) for _ in range(depth)]) + "." + ZONE
        if name in seen or name.endswith("." + MISS_ZONE) or name == MISS_ZONE:
            continue
        seen.add(name)
        i = len(out) + 1
        out.append((name, f"127.10.{i >> 8}.{i & 255}"))
    return out


def _write(path: Path, lines: Iterable[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="ascii") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
    tmp.replace(path)


def mix_lines(rng: random.Random, blocked: list[str], hot: list[str], count: int, tag: str) -> Iterator[str]:
    """The c file: 10% blocked, 85% hot (cached), 5% unique misses named `TAG-HEX.miss.bench.test`."""
    miss = 0
    for _ in range(count):
        r = rng.random()
        if r < 0.10:
            yield rng.choice(blocked) + " A"
        elif r < 0.95:
            yield rng.choice(hot) + " A"
        else:
            miss += 1
            yield f"{tag}-{miss:x}.{MISS_ZONE} A"


def miss_lines(count: int, tag: str) -> Iterator[str]:
    """The d file: `count` unique misses named `TAG-HEX.miss.bench.test`."""
    for miss in range(1, count + 1):
        yield f"{tag}-{miss:x}.{MISS_ZONE} A"


def generate(
    out: Path,
    *,
    names: int = 1_000_000,
    seed: int = 20261128,
    reps: int = 3,
    c_lines: int = 3_750_000,
    d_lines: int = 600_000,
    lat_lines: int = 120_000,
    ab_lines: int = 200_000,
    allowed: int = 1000,
    log: bool = True,
) -> dict[str, object]:
    """Write the data set into `out` unless one with the same parameters is there; return its manifest."""
    params = {
        "version": VERSION,
        "names": names,
        "seed": seed,
        "reps": reps,
        "c_lines": c_lines,
        "d_lines": d_lines,
        "lat_lines": lat_lines,
        "ab_lines": ab_lines,
        "allowed": allowed,
    }
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        try:
            manifest: dict[str, object] = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}
        if manifest.get("params") == params:
            if log:
                print(f"data: reusing {out} ({names:,} names, seed {seed})", flush=True)
            return manifest
    out.mkdir(parents=True, exist_ok=True)
    manifest_path.unlink(missing_ok=True)
    t0 = time.monotonic()
    rng = random.Random(seed)

    blocked = blocklist_names(rng, names)
    _write(out / "blocklist.domains", blocked)
    _write(out / "blocklist.hosts", (f"0.0.0.0 {n}" for n in blocked))
    _write(out / "blocklist.unbound.conf", (f'local-zone: "{n}." always_null' for n in blocked))

    zone = allowed_names(rng, allowed)
    _write(
        out / "bench.test.zone",
        [
            f"$ORIGIN {ZONE}.",
            "$TTL 3600",
            f"@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 900 604800 3600",
            f"@ IN NS ns.{ZONE}.",
            "ns IN A 127.0.0.1",
            f"*.miss IN A {MISS_ADDR}",
            *(f"{n}. IN A {a}" for n, a in zone),
        ],
    )
    _write(
        out / "upstream-dnsmasq.conf",
        [f"address=/{MISS_ZONE}/{MISS_ADDR}", "local-ttl=3600", *(f"host-record={n},{a}" for n, a in zone)],
    )
    hot = [n for n, _ in zone]
    _write(out / "q-warm.txt", (n + " A" for n in hot))
    _write(out / "q-a.txt", (rng.choice(blocked) + " A" for _ in range(ab_lines)))
    _write(out / "q-b.txt", (rng.choice(hot) + " A" for _ in range(ab_lines)))
    for rep in range(1, reps + 1):
        _write(out / f"q-c-tput-{rep}.txt", mix_lines(rng, blocked, hot, c_lines, f"t{rep}"))
        _write(out / f"q-c-lat-{rep}.txt", mix_lines(rng, blocked, hot, lat_lines, f"l{rep}"))
        _write(out / f"q-d-tput-{rep}.txt", miss_lines(d_lines, f"dt{rep}"))
        _write(out / f"q-d-lat-{rep}.txt", miss_lines(lat_lines, f"dl{rep}"))

    manifest = {
        "params": params,
        "last_blocked": blocked[-1],
        "sample_blocked": blocked[len(blocked) // 2],
        "allowed": list(zone[0]),
        "miss_zone": MISS_ZONE,
        "miss_addr": MISS_ADDR,
        "seconds": round(time.monotonic() - t0, 1),
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    if log:
        print(f"data: {names:,} names and query files in {out} ({manifest['seconds']} s)", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/filterd-bench/data"))
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--c-lines", type=int, default=3_750_000, help="lines per throughput mix file")
    ap.add_argument("--lat-lines", type=int, default=120_000, help="lines per latency mix file")
    a = ap.parse_args(argv)
    generate(a.out, names=a.names, seed=a.seed, reps=a.reps, c_lines=a.c_lines, lat_lines=a.lat_lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
