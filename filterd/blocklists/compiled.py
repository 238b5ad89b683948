"""A compiled snapshot of the lists: an ordered open-addressed table of 64-bit name hashes in one mmapped file.

A million names cost about 17 MB (12 bytes a slot at a load of 0.7) instead of the 100+ MB of Python
strings in a set, the file is written once and mapped by every process that serves from it (the page cache
holds one copy), and a restart maps it in milliseconds instead of parsing the lists again.

File layout (little-endian):
    magic  b"FDSNAP3\\0" | span u64 | slots u64 | meta_len u64 | seed u64 | hashes u64[slots] | values u32[slots] |
    meta JSON
A slot's hash is XXH3-64 of the name with the snapshot's seed (0 marks an empty slot; a name hashing to 0 is stored
as 1). The seed is drawn afresh (64 random bits) for every compile on the machine that serves it: XXH3 is fast
(0.04 us a name, blake2b 0.5) but not a cryptographic hash, and a secret seed is what keeps anyone who can put a
line in a subscribed list from making a name that collides with another one (blocking a name unseen, or excepting
one) without first reading the snapshot file (mode 0640, in `state_dir`). Its value
packs kind (2 bits: subtree, exception) | list index (8 bits) | line (22 bits; 0 when beyond). Categories come
from the list's `# category:` sections by line, kept in the metadata, and so are the brand rules and name
patterns (rules.py): a few per list, matched only for names the table does not block. The list text itself
stays on disk, so `filterd check` can still quote the matching line. A 64-bit hash collision makes a false match with a
probability of about n / 2^64 per lookup (1e-13 for a million names).

The table is ordered (Amble and Knuth's ordered hash table, with linear probing): a hash's home slot is
`h * span >> 64`, which grows with the hash, and every run of occupied slots is kept in hash order, spilling past
`span` into a few spare slots at the end rather than wrapping round. A lookup stops at the first slot holding a
larger hash (or none): a name that is not listed, the usual case, costs about 2 probes at a load of 0.7 instead
of the 6 of plain linear probing. The last slot is always empty, so every probe ends inside the table.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import itertools
import json
import logging
import mmap
import os
import pickle
import secrets
import select
import struct
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import xxhash

from filterd.blocklists.matcher import Match, rule_match
from filterd.blocklists.parse import Sink, Skipped, detect_format, parse_stream
from filterd.blocklists.rules import Rule, RuleSet

log = logging.getLogger(__name__)

MAGIC = b"FDSNAP3\x00"
_HEADER = struct.Struct("<8sQQQQ")
_SUBTREE = 1
_EXCEPTION = 2
_KIND_BITS = 2
_LIST_BITS = 8
_LINE_SHIFT = _KIND_BITS + _LIST_BITS
_MAX_LINE = (1 << (32 - _LINE_SHIFT)) - 1
MAX_LISTS = 1 << _LIST_BITS
LOAD_FACTOR = 0.7
#: Spare slots after the home slots, for the runs that end past the last home slot (a run at a load of 0.7 is a few
#: dozen slots at the most; more spill means a bigger table: `_TableFull`).
SPILL = 256
#: Release the GIL explicitly every 1,024 entries (about 1.5 ms): the interpreter's own switching was seen to let
#: this loop hold it for hundreds of milliseconds, stalling DNS answers during a reload.
_YIELD_EVERY = 1023


_xxh3 = xxhash.xxh3_64_intdigest
_new = tuple.__new__
_NONE: set[int] = set()  # (never changed: no list excepted)


def new_seed() -> int:
    return secrets.randbits(64)


@dataclass(frozen=True, slots=True)
class ListFile:
    """One list to compile: its name, fallback category, the file, and how to read it."""

    name: str
    category: str
    path: Path
    fmt: str = "auto"
    subdomains: bool | None = None
    #: Take names that are public suffixes (`com`, `co.uk`) as entries instead of refusing them.
    allow_suffixes: bool = False


@dataclass(frozen=True, slots=True)
class CompileReport:
    #: distinct block entries per list (exceptions and repeats not counted), as entry_counts() says
    entries: dict[str, int]
    #: every rule read per list (repeats and exceptions included), to weigh against `skipped`
    read: dict[str, int]
    skipped: dict[str, Skipped]
    formats: dict[str, str]


class CompileError(Exception):
    pass


def compile_lists(
    lists: Sequence[ListFile], out: Path, *, fingerprint: str = "", isolated: bool = False, seed: int | None = None
) -> CompileReport:
    """Parse every list (streaming: no per-entry objects) into a new snapshot at `out`, written atomically."""
    report, matcher = compile_and_open(lists, out, fingerprint=fingerprint, isolated=isolated, seed=seed)
    matcher.close()
    return report


def compile_and_open(
    lists: Sequence[ListFile],
    out: Path,
    *,
    fingerprint: str = "",
    isolated: bool = False,
    parallel: bool | None = None,
    seed: int | None = None,
) -> tuple[CompileReport, CompiledMatcher]:
    """compile_lists(), and the new snapshot already mapped: mapped before it is renamed into place, so two
    compiles racing for `out` each get their own (the mapping outlives the rename).

    `isolated`: the parsing and hashing run in a child process (`python -m filterd.blocklists.compiled`), which
    a server does once it is answering: in a thread, a million names hold the GIL for seconds, and the event loop,
    which gives it up at every poll for new packets, gets it back only between the compiler's slices: it answers
    a few hundred queries a second meanwhile (a million names under load: 5 s answers and lost queries). The child
    costs memory while it runs: an interpreter (about 20 MB) besides the table it writes. One that cannot run (no
    usable interpreter) falls back to this process, with a warning.

    `parallel`: a large list read by two processes (`_Part`); by default when compiling in this process (at start,
    when nothing is answered until the lists are in), not in a child (a reload, while the lists in use answer).

    `seed`: the hash's seed (None: a new random one, as a server always has; a test compiling twice to compare
    the files gives one)."""
    if len(lists) > MAX_LISTS:
        raise CompileError(f"too many lists ({len(lists)}); at most {MAX_LISTS}")
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        if parallel is None:
            parallel = not isolated
        if seed is None:
            seed = new_seed()
        if isolated:
            report = _compile_isolated(lists, tmp, fingerprint, parallel, seed)
        else:
            report = write_snapshot(lists, tmp, fingerprint, parallel=parallel, seed=seed)
        matcher = CompiledMatcher(tmp)
        os.replace(tmp, out)
        matcher.path = out
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return report, matcher


def write_snapshot(
    lists: Sequence[ListFile],
    tmp: Path,
    fingerprint: str,
    *,
    seed: int,
    yielding: bool = False,
    parallel: bool = False,
) -> CompileReport:
    """Compile into the new file `tmp` (fsynced; the caller renames it into place), its names hashed with `seed`.
    `yielding`: hand the GIL to other threads every 1,024 names (a server compiling in this process while it
    answers; elsewhere each hand-over costs up to 0.1 ms for nothing: a tenth of a second a million names).
    `parallel`: a large list is read by two processes (`_Part`): at start, when nothing is answered until the lists
    are in, every core helps."""
    estimate = sum(_count_lines(item.path) for item in lists)
    span = max(16, int(estimate / LOAD_FACTOR) + 1)
    while True:
        try:
            return _compile(lists, tmp, span, fingerprint, yielding, parallel, seed)
        except _TableFull:
            span *= 2  # a hosts file with many names a line: more entries than lines


#: How long a child compile may take before it is given up (the lists in use stay).
CHILD_TIMEOUT = 600.0


def _compile_isolated(
    lists: Sequence[ListFile], tmp: Path, fingerprint: str, parallel: bool, seed: int
) -> CompileReport:
    """write_snapshot() in a child process: the job as JSON on its stdin, the report on its stdout."""
    job = {
        "lists": [
            [item.name, item.category, str(item.path), item.fmt, item.subdomains, item.allow_suffixes] for item in lists
        ],
        "out": str(tmp),
        "fingerprint": fingerprint,
        "parallel": parallel,
        "seed": seed,
    }
    # -P: not the working directory on sys.path (only the installed filterd runs)
    command = [sys.executable, "-P", "-m", "filterd.blocklists.compiled"]
    try:
        done = subprocess.run(
            command, input=json.dumps(job), capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise CompileError(f"compiling took more than {CHILD_TIMEOUT:.0f} s; gave up") from None
    except OSError as exc:
        done = subprocess.CompletedProcess(command, -1, "", str(exc))
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error"):
        raise CompileError(str(answer["error"]))
    if not isinstance(answer, dict) or "report" not in answer:
        log.warning(
            "lists: compiling in a child process failed (%s): compiling in this one, which slows its answers "
            "while it runs",
            (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1],
        )
        return write_snapshot(lists, tmp, fingerprint, yielding=True, seed=seed)
    return _report_from_json(answer["report"])


def _report_to_json(report: CompileReport) -> dict[str, Any]:
    return {
        "entries": report.entries,
        "read": report.read,
        "skipped": {name: [s.count, s.sample_line, s.sample_reason] for name, s in report.skipped.items()},
        "formats": report.formats,
    }


def _report_from_json(data: dict[str, Any]) -> CompileReport:
    return CompileReport(
        entries={k: int(v) for k, v in data["entries"].items()},
        read={k: int(v) for k, v in data["read"].items()},
        skipped={k: Skipped(*v) for k, v in data["skipped"].items()},
        formats=dict(data["formats"]),
    )


def _child_main() -> int:
    """`python -m filterd.blocklists.compiled`: one compile job (JSON on stdin), its report on stdout. At a lower
    priority (nice 10): on a machine with few cores, the server answering queries comes first; except a `parallel`
    job, which only a start asks for (`load.prepare`), when there is nothing to answer yet.
    `python -m filterd.blocklists.compiled --part JOB`: the rest of a large list (`_Part`), its entries in a file."""
    if sys.argv[1:2] == ["--part"]:
        stdout = sys.stdout.buffer

        def handed(entries: int) -> None:
            stdout.write(b"P" + _COUNT.pack(entries))
            stdout.flush()

        result = pickle.dumps(_read_part(json.loads(sys.argv[2]), handed), protocol=pickle.HIGHEST_PROTOCOL)
        stdout.write(b"R" + _COUNT.pack(len(result)) + result)
        stdout.flush()
        return 0
    job = json.loads(sys.stdin.read())
    if not job.get("parallel"):  # (asked only at start, when nothing is answered until the lists are in)
        with contextlib.suppress(OSError, AttributeError):
            os.nice(10)
    lists = [ListFile(name, cat, Path(path), fmt, sub, allow) for name, cat, path, fmt, sub, allow in job["lists"]]
    try:
        report = write_snapshot(
            lists, Path(job["out"]), job["fingerprint"], parallel=bool(job.get("parallel")), seed=int(job["seed"])
        )
    except (OSError, CompileError, ValueError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps({"report": _report_to_json(report)}))
    return 0


class _TableFull(Exception):
    pass


def _count_lines(path: Path) -> int:
    count = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            count += chunk.count(b"\n")
    return count + 1


def _compile(
    lists: Sequence[ListFile], tmp: Path, span: int, fingerprint: str, yielding: bool, parallel: bool, seed: int
) -> CompileReport:
    slots = span + SPILL
    table_bytes = slots * 12
    limit = int(span * 0.95)
    with tmp.open("w+b") as handle:
        os.fchmod(handle.fileno(), 0o640)
        handle.truncate(_HEADER.size + table_bytes)
        with mmap.mmap(handle.fileno(), _HEADER.size + table_bytes) as mm:
            hashes = memoryview(mm)[_HEADER.size : _HEADER.size + slots * 8].cast("Q")
            values = memoryview(mm)[_HEADER.size + slots * 8 : _HEADER.size + table_bytes].cast("I")
            try:
                part_out = tmp.with_name(f"{tmp.name}.part") if parallel else None
                meta = _fill(lists, hashes, values, span, limit, seed, yielding, part_out)
            finally:
                hashes.release()
                values.release()
            # (no mm.flush(): it holds the GIL for the whole msync; the fsync below, which does not, covers it)
        meta["fingerprint"] = fingerprint
        blob = json.dumps(meta, separators=(",", ":")).encode()
        handle.seek(0, os.SEEK_END)
        handle.write(blob)
        handle.seek(0)
        handle.write(_HEADER.pack(MAGIC, span, slots, len(blob), seed))
        handle.flush()
        os.fsync(handle.fileno())
    report = CompileReport(
        entries=dict(zip(meta["lists"], meta["counts"], strict=True)),
        read=dict(zip(meta["lists"], meta["read"], strict=True)),
        skipped={name: Skipped(*s) for name, s in zip(meta["lists"], meta["skipped"], strict=True)},
        formats=dict(zip(meta["lists"], meta["formats"], strict=True)),
    )
    return report


class _Table(Sink):
    """The open-addressed table being filled: the parser's sink, with the bookkeeping of the list being read."""

    def __init__(self, hashes: Any, values: Any, span: int, limit: int, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.hashes = hashes
        self.values = values
        self.span = span
        self.last = span + SPILL - 1  # (always left empty: every lookup's probe ends at or before it)
        self.limit = limit
        self.used = 0
        self.categories: list[str] = []
        self.category_index: dict[str, int] = {}
        #: [list index, kind, text, subtree, exception, category, line] for every brand rule and pattern
        self.rule_rows: list[list[Any]] = []
        self.start_list(0, "")

    def start_list(self, list_index: int, fallback: str) -> None:
        self.category = None
        self.reset_skips()
        self.base = list_index << _KIND_BITS
        self.list_index = list_index
        self.fallback = fallback
        self.count = 0
        self.exceptions = 0
        self.read = 0
        self.sections: list[tuple[int, int]] = []  # (first line, category index), in line order
        self.current: str | None = None
        self.started = False

    def category_id(self, label: str) -> int:
        if label not in self.category_index:
            self.category_index[label] = len(self.categories)
            self.categories.append(label)
        return self.category_index[label]

    def add_rule(self, kind: str, text: str, subtree: bool, exception: bool, line: int) -> None:
        self.read += 1
        self.add_rule_row(kind, text, subtree, exception, self.category, line)

    def add_yielding(self, name: str, subtree: bool, exception: bool, line: int) -> None:
        """`add`, handing the GIL to other threads every 1,024 names (a server compiling in this process)."""
        if not (self.read + 1) & _YIELD_EVERY:
            time.sleep(0)  # let an event loop's thread run
        _Table.add(self, name, subtree, exception, line)

    def add(self, name: str, subtree: bool, exception: bool, line: int) -> None:
        self.read += 1
        category = self.category
        if category != self.current or not self.started:
            self.current, self.started = category, True
            self.sections.append((line, self.category_id(category or self.fallback)))
        kind = (_EXCEPTION if exception else 0) | (_SUBTREE if subtree else 0)
        value = kind | self.base | ((line if line <= _MAX_LINE else 0) << _LINE_SHIFT)
        self.place(_xxh3(name.encode("ascii", "replace"), self.seed) or 1, value)

    def place(self, h: int, value: int) -> None:
        """Put one entry (its name's hash, its packed value) in the table, in hash order."""
        counted = not value & _EXCEPTION  # (before the shifting below, which reuses `value`)
        hashes, values, last = self.hashes, self.values, self.last
        i = (h * self.span) >> 64
        stored = hashes[i]
        while 0 < stored < h:
            i += 1
            stored = hashes[i]
        while stored == h:
            if values[i] & 0x3FF == value & 0x3FF:
                return  # the same name, list and kind again: the first line stands
            i += 1
            stored = hashes[i]
        if self.used >= self.limit:
            raise _TableFull
        while stored:  # the run from here moves one slot on, to keep it in order (it ends by the last slot, empty)
            hashes[i], values[i], h, value = h, value, stored, values[i]
            i += 1
            stored = hashes[i]
        if i >= last:  # (that would fill the last slot: the table is too small)
            raise _TableFull
        hashes[i] = h
        values[i] = value
        self.used += 1
        if counted:
            self.count += 1
        else:
            self.exceptions += 1

    def add_rule_row(
        self, kind: str, text: str, subtree: bool, exception: bool, category: str | None, line: int
    ) -> None:
        """A rule read elsewhere (`_Part`), with the category it was read under."""
        key = [self.list_index, kind, text, subtree, exception]
        if any(rule[:5] == key for rule in self.rule_rows):
            return  # the same rule again in this list: the first line stands
        self.rule_rows.append([*key, category or self.fallback, line])
        if not exception:
            self.count += 1


def _fill(
    lists: Sequence[ListFile],
    hashes: Any,
    values: Any,
    span: int,
    limit: int,
    seed: int,
    yielding: bool = False,
    part_out: Path | None = None,
) -> dict[str, Any]:
    """`part_out`: read a large list in two processes (`_Part`), the helper's entries passing through this file."""
    table = _Table(hashes, values, span, limit, seed)
    if yielding:
        table.add = table.add_yielding  # type: ignore[method-assign]
    part = _Part.start(lists, part_out, seed) if part_out is not None else None
    counts: list[int] = []
    exceptions: list[int] = []
    read: list[int] = []
    sections: list[list[tuple[int, int]]] = []
    skipped: list[tuple[int, int | None, str | None]] = []
    formats: list[str] = []
    for list_index, item in enumerate(lists):
        table.start_list(list_index, item.category)
        if part is not None and part.index == list_index:
            fmt = part.fmt
            with item.path.open(encoding="utf-8-sig", errors="replace") as handle:
                head = part.head(handle)
                skip = parse_stream(
                    head, table, fmt=fmt, subdomains=item.subdomains, allow_suffixes=item.allow_suffixes
                )
            skip = part.merge(table, skip)
        else:
            with item.path.open(encoding="utf-8-sig", errors="replace") as handle:
                fmt = _format(item, handle)
                skip = parse_stream(
                    handle, table, fmt=fmt, subdomains=item.subdomains, allow_suffixes=item.allow_suffixes
                )
        list_sections = table.sections
        if not list_sections or list_sections[0][0] > 1:
            list_sections.insert(0, (0, table.category_id(item.category)))
        counts.append(table.count)
        exceptions.append(table.exceptions)
        read.append(table.read)
        sections.append(list_sections)
        skipped.append((skip.count, skip.sample_line, skip.sample_reason))
        formats.append(fmt)
    return {
        "lists": [item.name for item in lists],
        "paths": [str(item.path) for item in lists],
        "counts": counts,
        "exceptions": exceptions,
        "read": read,
        "categories": table.categories,
        "sections": sections,
        "skipped": skipped,
        "formats": formats,
        "slots": span + SPILL,
        "used": table.used,
        "rules": table.rule_rows,
    }


def _format(item: ListFile, handle: TextIO) -> str:
    """The list's format: as configured, or guessed from its start (the handle is left at its start)."""
    if item.fmt != "auto":
        return item.fmt
    fmt = detect_format(handle.read(1 << 16))
    handle.seek(0)
    return fmt


#: A list this large (the largest one, when there are several) is read by two processes when compiling at start
#: (`_Part`); a smaller one is done before a second process would have started.
PARALLEL_MIN_BYTES = 4 << 20
#: The share of that list this process reads itself: it also places every entry in the table, the helper's too
#: (as the helper hands them over), which costs about half as much again as reading one; so the helper, which only
#: reads and hashes, reads more. (0.36: the quickest of 0.30-0.42 on the 2-vCPU benchmark VM, a million names.)
_OWN_SHARE = 0.36
#: The category a helper's first entries have: whatever the first part's last `# category:` left in force (a
#: label never holds a line break).
_INHERITED = "\n"
#: The helper hands its entries over in chunks of this many, each as soon as it is read (its hashes, then its
#: values, appended to the file `out`; then a progress record on its stdout): this process places them while the
#: helper reads on, instead of waiting, idle, for the whole of it.
_CHUNK = 1 << 16
_COUNT = struct.Struct("<Q")


class _Part:
    """The rest of a large list, read (parsed and hashed) by a helper process (`python -m filterd.blocklists.compiled
    --part`) while this one reads the first part; this one then places the helper's entries after its own, in the
    order a single reader would have, so the table and its metadata are the same byte for byte. The split is at a
    line's end; the helper is told how many lines come before it (counted as text mode counts them: \\n, \\r\\n
    or a lone \\r), so its line numbers are the file's. The helper's entries come back in a file (`out`), mapped
    here while they are placed: no copy of them on this process's heap, which would stay in its RSS."""

    def __init__(
        self, index: int, fmt: str, lines: int, job: dict[str, Any], helper: subprocess.Popen[bytes] | None
    ) -> None:
        self.index = index
        self.fmt = fmt
        self.lines = lines
        self.job = job
        self.helper = helper

    @classmethod
    def start(cls, lists: Sequence[ListFile], out: Path, seed: int) -> _Part | None:
        if (os.cpu_count() or 1) < 2 or not lists:
            return None
        try:
            sizes = [item.path.stat().st_size for item in lists]
        except OSError:
            return None
        index = max(range(len(lists)), key=sizes.__getitem__)
        item = lists[index]
        if sizes[index] < PARALLEL_MIN_BYTES:
            return None
        try:
            with item.path.open(encoding="utf-8-sig", errors="replace") as text:
                fmt = _format(item, text)
            with item.path.open("rb") as raw:
                lines, last, remaining = 0, b"", int(sizes[index] * _OWN_SHARE)
                while remaining > 0 and (chunk := raw.read(min(remaining, 1 << 20))):
                    remaining -= len(chunk)
                    lines += _line_ends(chunk, last)
                    last = chunk[-1:]
                lines += _line_ends(raw.readline(), last)  # to the end of that line
                start = raw.tell()
        except OSError:
            return None
        if start >= sizes[index]:  # no line end after the first part (one long line, or only \r): one reader
            return None
        job = {
            "path": str(item.path),
            "start": start,
            "lines": lines,
            "list": index,
            "fmt": fmt,
            "subdomains": item.subdomains,
            "allow_suffixes": item.allow_suffixes,
            "out": str(out),
            "chunk": _CHUNK,
            "seed": seed,
        }
        try:
            # -P: not the working directory on sys.path (only the installed filterd runs)
            command = [sys.executable, "-P", "-m", "filterd.blocklists.compiled", "--part", json.dumps(job)]
            helper = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        except OSError:
            helper = None  # read here, after the first part (as if there were no helper)
        return cls(index, fmt, lines, job, helper)

    def head(self, handle: TextIO) -> Iterator[str]:
        """The first part's lines, from the whole list's file."""
        return itertools.islice(handle, self.lines)

    def _handed_over(self, table: _Table, out: Path) -> tuple[dict[str, Any], int]:
        """Place the helper's chunks as it hands them over; its result at the end, and how many entries it handed
        over (all of them, or as many as it had when it failed: this process reads the part then, and places the
        rest)."""
        helper = self.helper
        placed = 0
        if helper is None or helper.stdout is None:
            return _read_part(self.job), placed
        deadline = time.monotonic() + CHILD_TIMEOUT
        fd = helper.stdout.fileno()
        try:
            while True:
                kind = _read_exactly(fd, 1, deadline)
                count = _COUNT.unpack(_read_exactly(fd, _COUNT.size, deadline))[0]
                if kind == b"P" and placed < count <= placed + self.job["chunk"]:
                    _place_chunks(table, out, placed, count, self.job["chunk"])
                    placed = count
                elif kind == b"R":
                    result: dict[str, Any] = pickle.loads(_read_exactly(fd, count, deadline))
                    if helper.wait(timeout=max(deadline - time.monotonic(), 0.1)) == 0 and result["entries"] == placed:
                        return result, placed
                    break
                else:
                    break
        except (OSError, EOFError, TimeoutError, subprocess.TimeoutExpired, pickle.UnpicklingError, ValueError):
            pass
        finally:  # (also when placing raised: a full table, compiled again larger)
            if helper.poll() is None:
                helper.kill()
                helper.wait()
            helper.stdout.close()
        log.warning("lists: the helper reading the rest of %s failed; reading it here", self.job["path"])
        return _read_part(self.job), placed

    def merge(self, table: _Table, skip: Skipped) -> Skipped:
        """The helper's entries, rules and skips after the first part's, as one reader would have added them."""
        out = Path(self.job["out"])
        try:
            result, placed = self._handed_over(table, out)
            if result["entries"] > placed:
                _place_chunks(table, out, placed, result["entries"], self.job["chunk"])
        finally:
            with contextlib.suppress(FileNotFoundError):
                out.unlink()
        inherited = table.category
        for line, category in result["sections"]:  # (the category at each entry where it changed)
            category = inherited if category == _INHERITED else category
            if category != table.current or not table.started:
                table.current, table.started = category, True
                table.sections.append((line, table.category_id(category or table.fallback)))
        for kind, text, subtree, exception, category, line in result["rules"]:
            table.add_rule_row(kind, text, subtree, exception, inherited if category == _INHERITED else category, line)
        table.read += result["read"]
        count, line, reason, suffix = result["skipped"]
        if table._sample_is_suffix or (not suffix and skip.count):
            return Skipped(skip.count + count, skip.sample_line, skip.sample_reason)
        return Skipped(skip.count + count, line, reason)


def _read_exactly(fd: int, size: int, deadline: float) -> bytes:
    """`size` bytes from a pipe, or EOFError (the writer is gone) or TimeoutError (nothing by the deadline)."""
    chunks: list[bytes] = []
    while size > 0:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _place_chunks(table: _Table, path: Path, start: int, stop: int, chunk: int) -> None:
    """Place the entries `start` to `stop` of a helper's file (chunks of `chunk` entries, each its hashes then
    its values; `start` is where a chunk begins), read one chunk at a time."""
    with path.open("rb") as handle:
        handle.seek(start * 12)
        place = table.place
        while start < stop:
            n = min(chunk, stop - start)
            data = handle.read(n * 12)
            if len(data) != n * 12:
                raise CompileError(f"{path}: {len(data)} bytes from the helper, not {n * 12}")
            hashes = array("Q")
            hashes.frombytes(data[: n * 8])
            values = array("I")
            values.frombytes(data[n * 8 :])
            for h, value in zip(hashes, values, strict=True):
                place(h, value)
            start += n


def _line_ends(chunk: bytes, before: bytes) -> int:
    """Lines ended in `chunk` as text mode counts them (\\n, \\r\\n, a lone \\r); `before`: the byte before it."""
    ends = chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
    return ends - 1 if before == b"\r" and chunk[:1] == b"\n" else ends


class _PartSink(Sink):
    """What the helper keeps of the rest of a list: each entry's hash and packed value, the category where it
    changes, the rules, the skips; line numbers are the file's."""

    def __init__(
        self,
        list_index: int,
        lines_before: int,
        out: BinaryIO,
        chunk: int,
        handed: Callable[[int], None] | None,
        seed: int,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.category = _INHERITED
        self.offset = lines_before
        self.base = list_index << _KIND_BITS
        self.hashes = array("Q")
        self.values = array("I")
        self.out = out
        self.chunk = chunk
        self.handed = handed
        #: entries written to `out` so far
        self.written = 0
        self.sections: list[tuple[int, str | None]] = []
        self.rule_rows: list[tuple[str, str, bool, bool, str | None, int]] = []
        self.read = 0
        self._current: str | None = None
        self._started = False

    def add(self, name: str, subtree: bool, exception: bool, line: int) -> None:
        self.read += 1
        line += self.offset
        category = self.category
        if category != self._current or not self._started:
            self._current, self._started = category, True
            self.sections.append((line, category))
        kind = (_EXCEPTION if exception else 0) | (_SUBTREE if subtree else 0)
        self.values.append(kind | self.base | ((line if line <= _MAX_LINE else 0) << _LINE_SHIFT))
        self.hashes.append(_xxh3(name.encode("ascii", "replace"), self.seed) or 1)
        if len(self.hashes) >= self.chunk:
            self.hand_over()

    def hand_over(self) -> None:
        """Write the chunk read so far to `out` and say so (`handed`)."""
        if not self.hashes:
            return
        self.out.write(self.hashes.tobytes())
        self.out.write(self.values.tobytes())
        self.out.flush()
        self.written += len(self.hashes)
        self.hashes = array("Q")
        self.values = array("I")
        if self.handed is not None:
            self.handed(self.written)

    def add_rule(self, kind: str, text: str, subtree: bool, exception: bool, line: int) -> None:
        self.read += 1
        self.rule_rows.append((kind, text, subtree, exception, self.category, line + self.offset))

    def skip(self, line: int, reason: str) -> None:
        super().skip(line + self.offset, reason)

    def refuse_suffix(self, line: int, name: str) -> None:
        super().refuse_suffix(line + self.offset, name)


def _read_part(job: dict[str, Any], handed: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Parse and hash a list from byte `start` (a line's start) to its end: the helper's job (or this process's,
    when the helper failed). The entries go to the file `out` in chunks (of `chunk` entries), each told to
    `handed` once written; the rest is returned."""
    with open(job["out"], "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        sink = _PartSink(job["list"], job["lines"], out, job["chunk"], handed, int(job["seed"]))
        with open(job["path"], "rb") as raw:
            raw.seek(job["start"])
            with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as text:
                skip = parse_stream(
                    text, sink, fmt=job["fmt"], subdomains=job["subdomains"], allow_suffixes=job["allow_suffixes"]
                )
        sink.hand_over()
    return {
        "entries": sink.written,
        "sections": sink.sections,
        "rules": sink.rule_rows,
        "read": sink.read,
        "skipped": (skip.count, skip.sample_line, skip.sample_reason, sink._sample_is_suffix),
    }


class CompiledMatcher:
    """Matches names against a snapshot file, mapped read-only; the same interface as `Matcher`."""

    def __init__(self, path: Path) -> None:
        with path.open("rb") as handle:
            header = handle.read(_HEADER.size)
            if len(header) != _HEADER.size:
                raise CompileError(f"{path}: not a filterd snapshot (too short)")
            magic, span, slots, meta_len, seed = _HEADER.unpack(header)
            if magic != MAGIC:
                if magic.startswith(MAGIC[:6]):
                    raise CompileError(f"{path}: a snapshot in another version's layout")
                raise CompileError(f"{path}: not a filterd snapshot (bad magic)")
            size = os.fstat(handle.fileno()).st_size
            if size != _HEADER.size + slots * 12 + meta_len:
                raise CompileError(f"{path}: truncated snapshot")
            if not 0 < span < slots:
                raise CompileError(f"{path}: not a filterd snapshot (span {span}, slots {slots})")
            self._mm = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        self.path = path
        self.span = span
        self.slots = slots
        self.seed = seed
        self._hashes = memoryview(self._mm)[_HEADER.size : _HEADER.size + slots * 8].cast("Q")
        self._values = memoryview(self._mm)[_HEADER.size + slots * 8 : _HEADER.size + slots * 12].cast("I")
        if self._hashes[slots - 1]:  # (every probe ends at an empty slot: the last one at the latest)
            self.close()
            raise CompileError(f"{path}: not a filterd snapshot (its last slot is used)")
        meta = json.loads(bytes(self._mm[_HEADER.size + slots * 12 :]))
        self.meta: dict[str, Any] = meta
        self._lists: list[str] = meta["lists"]
        self._categories: list[str] = meta["categories"]
        self._section_lines = [[line for line, _ in sec] for sec in meta["sections"]]
        self._section_cats = [[cat for _, cat in sec] for sec in meta["sections"]]
        #: A list with one category (the usual: no `# category:` sections) needs no search by line.
        self._one_category = [
            str(self._categories[cats[0]]) if len(set(cats)) == 1 else None for cats in self._section_cats
        ]
        rules = RuleSet(
            (index, Rule(kind, text, subtree, exception, category, line))
            for index, kind, text, subtree, exception, category, line in meta.get("rules", ())
        )
        #: None when the lists have no brand rules or patterns: a miss then costs nothing more
        self.rules: RuleSet | None = None if rules.empty else rules
        self._no_fallbacks = [""] * len(self._lists)
        #: By list: it holds no exception (`@@||name^`), so its block of the query name itself is the answer when
        #: it is the first list the client's lists include: nothing at a parent name can come before it, and
        #: nothing in it can except the name. Spares the parents' lookups of the usual block. (A snapshot
        #: without the count: never.)
        exceptions = meta.get("exceptions")
        self._exact_final = (
            [count == 0 for count in exceptions]
            if isinstance(exceptions, list) and len(exceptions) == len(self._lists)
            else [False] * len(self._lists)
        )
        self._index_memo: dict[frozenset[str], frozenset[int]] = {}

    @property
    def fingerprint(self) -> str:
        return str(self.meta.get("fingerprint", ""))

    def close(self) -> None:
        """Unmap the file; only once nothing can call match() any more (after a swap, when the old one idles)."""
        self._hashes.release()
        self._values.release()
        self._mm.close()

    def entry_counts(self) -> dict[str, int]:
        return dict(zip(self._lists, self.meta["counts"], strict=True))

    def match(self, qname: str, lists: frozenset[str] | None = None) -> Match | None:
        """The first list (in order; only those named in `lists` when given: a client group's) that blocks
        `qname`, its own exceptions considered (see matcher.py).

        The hot path: one hash and (usually) one probe per label; nothing is allocated unless a level hits."""
        hashes = self._hashes
        span = self.span
        hits: list[tuple[str, bool, int]] | None = None
        seed = self.seed
        allowed = None if lists is None else self._indexes(lists)
        first = 0 if allowed is None else min(allowed, default=-1)
        if not qname.isascii():  # (never a query's name: its text escapes every other byte; the block page's Host)
            qname = qname.encode("ascii", "replace").decode()  # as the compiler reads it: no name listed matches
        name = qname
        exact = True
        h = _xxh3(name.encode(), seed) or 1  # (ASCII: its UTF-8 is the compiler's bytes)
        while True:
            i = (h * span) >> 64
            stored = hashes[i]
            while 0 < stored < h:  # (the run is in hash order: a larger hash or an empty slot ends the search)
                i += 1
                stored = hashes[i]
            if stored == h:
                if exact and hashes[i + 1] != h:  # the query name itself, listed once
                    value = self._values[i]
                    list_index = (value >> _KIND_BITS) & 0xFF
                    if list_index == first and self._exact_final[list_index]:
                        line = value >> _LINE_SHIFT
                        category = self._one_category[list_index] or self._category(list_index, line)
                        # (a NamedTuple made from a tuple: its generated __new__ costs more than the lookup)
                        return _new(Match, (self._lists[list_index], name, line, category, value & _SUBTREE == 1))
                if hits is None:
                    hits = []
                while stored == h:
                    hits.append((name, exact, self._values[i]))
                    i += 1
                    stored = hashes[i]
            dot = name.find(".")
            if dot < 0:
                break
            name = name[dot + 1 :]
            exact = False
            h = _xxh3(name.encode(), seed) or 1
        if hits is None:
            if self.rules is None:
                return None
            excepted = None
        else:
            found, excepted = self._decide(hits, allowed)
            if found is not None or self.rules is None:
                return found
        hit = self.rules.match(qname, excepted, allowed)
        return None if hit is None else rule_match(hit, self._lists, self._no_fallbacks)

    def _indexes(self, lists: frozenset[str]) -> frozenset[int]:
        """The indexes of the named lists (memoised: a group's set of lists is the same object every query)."""
        found = self._index_memo.get(lists)
        if found is None:
            found = frozenset(i for i, name in enumerate(self._lists) if name in lists)
            if len(self._index_memo) > 256:
                self._index_memo.clear()
            self._index_memo[lists] = found
        return found

    def _decide(
        self, hits: list[tuple[str, bool, int]], allowed: frozenset[int] | None = None
    ) -> tuple[Match | None, set[int]]:
        if len(hits) == 1:  # the usual block: one listed name, no exception
            name, exact, value = hits[0]
            list_index = (value >> _KIND_BITS) & 0xFF
            if not value & _EXCEPTION and (exact or value & _SUBTREE) and (allowed is None or list_index in allowed):
                line = value >> _LINE_SHIFT
                category = self._category(list_index, line)
                return Match(self._lists[list_index], name, line, category, bool(value & _SUBTREE)), _NONE
        best: dict[int, tuple[str, int]] = {}  # list index -> (most specific matching name, value)
        excepted: set[int] = set()
        for name, exact, value in hits:
            kind = value & 3
            list_index = (value >> _KIND_BITS) & 0xFF
            if allowed is not None and list_index not in allowed:
                continue
            if kind & _EXCEPTION:
                if exact or kind & _SUBTREE:
                    excepted.add(list_index)
            elif (exact or kind & _SUBTREE) and list_index not in best:
                best[list_index] = (name, value)
        blocking = [index for index in best if index not in excepted]
        if not blocking:
            return None, excepted
        list_index = min(blocking)
        entry, value = best[list_index]
        line = value >> _LINE_SHIFT
        found = Match(self._lists[list_index], entry, line, self._category(list_index, line), bool(value & _SUBTREE))
        return found, excepted

    def _category(self, list_index: int, line: int) -> str:
        only = self._one_category[list_index]
        if only is not None:
            return only
        lines = self._section_lines[list_index]
        at = max(bisect.bisect_right(lines, line) - 1, 0)
        return str(self._categories[self._section_cats[list_index][at]])


if __name__ == "__main__":
    sys.exit(_child_main())
