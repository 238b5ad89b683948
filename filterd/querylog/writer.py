"""The query log's writer: a child process that holds the SQLite database's only write connection.

The server's process hands it each interval's rows over a pipe (`store.QueryLog`), a page at a time, as the
query path counted them; everything that costs per row (making the rows, SQLite's inserts and its index, the
JSONL sink) happens here, on another core, so the process that answers queries pays only for marshalling a
page. It exits when the pipe closes: when the server stops, or dies.

    python -m filterd.querylog.writer DATABASE    (stdin: requests; stdout: replies)

Requests and replies are frames: a 4-byte big-endian length, then a `marshal` payload (plain tuples, strings and
numbers: nothing in it can run code). Requests:

    ("page", fields, times, ms, jsonl) answers noted by the server: fields holds WIDTH strings an answer, one
                                     answer after another (client, group, name, qtype, decision, list,
                                     category); answer i was at times[i], in ms[i] milliseconds; also to the
                                     JSONL file jsonl, if not "". No reply (the next "commit" says how they went)
    ("repeats", keys, counts, jsonl)  packet-cache hits the server counted itself: keys[i] is an answer's key
                                     (client, group, name, qtype, decision, list, category), counts[i] its
                                     [first time, count] (no answer time: answered at once). No reply
    ("commit", devices)              write the pages since the last commit, one row per distinct key with its
                                     count, first time and mean answer time, and the changed devices rows
                                     (client, mac, device, seen), in one transaction ->
                                     ("ok", rows, queries[, problem with the JSONL file]) or
                                     ("error", queries lost, why)
    ("prune", cutoff)                delete rows and alerts older than cutoff -> ("ok", rows deleted)
    ("delete", client)               delete a client's rows, alerts and device -> ("ok", rows deleted)
    ("alert", row)                   record an alert that fired -> ("ok",)

Any request may get ("error", 0, why) instead; the writer then reconnects for the next one.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import sqlite3
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from itertools import chain, compress, repeat
from operator import itemgetter, truediv
from pathlib import Path
from typing import IO, Any, NamedTuple

SCHEMA = """
CREATE TABLE IF NOT EXISTS kinds (
    id INTEGER PRIMARY KEY, grp TEXT NOT NULL, qtype TEXT NOT NULL, decision TEXT NOT NULL, list TEXT NOT NULL,
    category TEXT NOT NULL, UNIQUE (grp, qtype, decision, list, category)
);
CREATE TABLE IF NOT EXISTS answers (
    time REAL NOT NULL, client TEXT NOT NULL, kind INTEGER NOT NULL REFERENCES kinds (id), name TEXT NOT NULL,
    ms REAL NOT NULL, n INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_time ON answers (time);  -- the only index: each costs every write
CREATE VIEW IF NOT EXISTS queries AS
    SELECT a.time, a.client, k.grp, a.name, k.qtype, k.decision, k.list, k.category, a.ms, a.n
    FROM answers a JOIN kinds k ON k.id = a.kind;
CREATE TABLE IF NOT EXISTS devices (
    client TEXT PRIMARY KEY, mac TEXT NOT NULL, device TEXT NOT NULL, seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    time REAL NOT NULL, rule TEXT NOT NULL, client TEXT NOT NULL, mac TEXT NOT NULL, device TEXT NOT NULL,
    grp TEXT NOT NULL, names TEXT NOT NULL, result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time);
"""
#: SCHEMA's statements, one at a time (inside a transaction: `executescript` would commit first)
STATEMENTS = tuple(filter(str.strip, SCHEMA.split(";")))
#: A log written before `kinds` (one wide `queries` table, now the view's name): its rows move, once.
MIGRATE = (
    "ALTER TABLE queries RENAME TO queries_v1",
    "DROP INDEX IF EXISTS queries_time",
    *STATEMENTS,
    "INSERT OR IGNORE INTO kinds (grp, qtype, decision, list, category) "
    "SELECT DISTINCT grp, qtype, decision, list, category FROM queries_v1",
    "INSERT INTO answers SELECT q.time, q.client, k.id, q.name, q.ms, q.n "
    "FROM queries_v1 q JOIN kinds k USING (grp, qtype, decision, list, category) ORDER BY q.time",
    "DROP TABLE queries_v1",
)
FRAME = struct.Struct("!I")
#: Rows written per statement: 4,800 parameters, well under SQLite's limit (32,766).
CHUNK = 800
#: The columns of `answers`, as the INSERT binds them
COLUMNS = 6
#: The fields of one answer in a page: client, group, name, qtype, decision, list, category
WIDTH = 7
JSONL_KEYS = ("time", "client", "group", "name", "qtype", "decision", "list", "category", "ms", "count")
Row = tuple[Any, ...]


def read_frame(stream: IO[bytes]) -> Any:
    """The next message, or None at the end of the stream (a frame cut short is the end too)."""
    head = stream.read(FRAME.size)
    if len(head) < FRAME.size:
        return None
    (size,) = FRAME.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return marshal.loads(body)


def frame(message: Any) -> bytes:
    body = marshal.dumps(message)
    return FRAME.pack(len(body)) + body


def keys_of(fields: list[str]) -> list[tuple[str, ...]]:
    """A page's flat fields as one tuple an answer: (client, group, name, qtype, decision, list, category)."""
    return list(zip(*[iter(fields)] * WIDTH, strict=True))


class Batch(NamedTuple):
    """An interval's answers counted: one entry per distinct key (`keys_of`), in the order first seen, with
    its first time, mean answer time and count. Made by C code only (Counter, dict, map): no Python per row."""

    keys: list[Any]
    first: list[float]
    ms: list[float]
    n: list[int]


def batch_of(
    keys: list[Any], times: list[float], ms: list[float], repeats: Iterable[tuple[Any, list[Any]]] = ()
) -> Batch:
    """`repeats`: answers the server counted itself, (key, [first time, count]); each one joins the row of its key
    (Python per distinct key, not per answer)."""
    counts = Counter(keys)
    first = dict(zip(reversed(keys), reversed(times), strict=True))  # the earliest time is set last
    for key, (when, count) in repeats:
        counts[key] += count
        seen = first.get(key)
        if seen is None or when < seen:
            first[key] = when
    total: dict[Any, float] = {}
    for key, m in compress(zip(keys, ms, strict=True), ms):  # (only answers that waited for an upstream have one)
        total[key] = total.get(key, 0.0) + m
    distinct = list(counts)
    n = list(counts.values())
    mean = list(map(truediv, map(total.get, distinct, repeat(0.0)), n)) if total else [0.0] * len(n)
    return Batch(distinct, list(map(first.__getitem__, distinct)), mean, n)


def rows_of(b: Batch) -> list[Row]:
    """The batch as rows: (time first seen, client, group, name, qtype, decision, list, category, mean ms,
    count), one per distinct key in the order first seen (the JSONL sink's records)."""
    return [(t, *key, m, n) for key, t, m, n in zip(b.keys, b.first, b.ms, b.n, strict=True)]


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = not path.exists()
    db = sqlite3.connect(path, timeout=5, isolation_level=None)  # transactions are begun and ended here
    if fresh:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)  # who asked what is personal data: the service user only
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    try:
        old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'queries'").fetchone()
        db.execute("BEGIN")  # (SQLite's schema changes are transactional: a migration is whole or not at all)
        for statement in MIGRATE if old else STATEMENTS:
            db.execute(statement)
        db.execute("COMMIT")
    except sqlite3.Error:
        db.close()  # (rolls the migration back: the old table stays as it was, for the next try)
        raise
    return db


class _Kinds(dict[tuple[str, ...], int]):
    """(group, qtype, decision, list, category) -> its id in `kinds`; a new one is added by `add`."""

    def __init__(self, add: Callable[[tuple[str, ...]], int]) -> None:
        super().__init__()
        self.add = add

    def __missing__(self, kind: tuple[str, ...]) -> int:
        return self.add(kind)


class Writer:
    """The writing half of the query log, as the child process runs it (tests may drive one directly)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db: sqlite3.Connection | None = None
        #: the answers of the pages since the last commit (`keys_of`), and the JSONL file they go to ("": none)
        self.keys: list[Any] = []
        self.times: list[float] = []
        self.ms: list[float] = []
        #: the hits the server counted itself since the last commit: (key, [first time, count])
        self.repeats: list[tuple[Any, list[Any]]] = []
        self.jsonl = ""
        #: client -> (mac, device) as last written (for the JSONL sink's rows)
        self.devices: dict[str, tuple[str, str]] = {}
        #: (group, qtype, decision, list, category) -> its id in `kinds`, as this connection knows them
        self.kinds = _Kinds(self._kind)

    def _db(self) -> sqlite3.Connection:
        if self.db is None:
            self.db = connect(self.path)
        return self.db

    def _fail(self, exc: BaseException) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()  # (rolls back what it had begun)
        self.db = None
        self.kinds = _Kinds(self._kind)  # (the kinds added by a transaction that did not end are not in the database)

    def _kind(self, kind: tuple[str, ...]) -> int:
        """The id of a kind of answer, added to `kinds` if new (within the open transaction)."""
        db = self._db()
        db.execute("INSERT OR IGNORE INTO kinds (grp, qtype, decision, list, category) VALUES (?,?,?,?,?)", kind)
        (found,) = db.execute(
            "SELECT id FROM kinds WHERE grp = ? AND qtype = ? AND decision = ? AND list = ? AND category = ?", kind
        ).fetchone()
        self.kinds[kind] = found
        return int(found)

    def _insert(self, db: sqlite3.Connection, batch: Batch) -> None:
        """The batch's rows into `answers`, CHUNK rows a statement, the parameters flattened by C code."""
        kind_ids = map(self.kinds.__getitem__, map(_KIND, batch.keys))  # (a new kind: `_Kinds.__missing__`)
        clients, names = map(itemgetter(0), batch.keys), map(itemgetter(2), batch.keys)
        params = list(chain.from_iterable(zip(batch.first, clients, kind_ids, names, batch.ms, batch.n, strict=True)))
        step = CHUNK * COLUMNS
        for start in range(0, len(params), step):
            chunk = params[start : start + step]
            db.execute(_insert_many(len(chunk) // COLUMNS), chunk)

    def page(self, fields: list[str], times: list[float], ms: list[float], jsonl: str) -> None:
        self.keys.extend(keys_of(fields))
        self.times.extend(times)
        self.ms.extend(ms)
        self.jsonl = jsonl

    def repeated(self, keys: list[Any], counts: list[Any], jsonl: str) -> None:
        self.repeats.extend(zip(map(tuple, keys), counts, strict=True))  # (tuples: dict keys)
        self.jsonl = jsonl

    def commit(self, devices: list[tuple[str, str, str, float]]) -> tuple[Any, ...]:
        keys, times, ms, repeats, jsonl = self.keys, self.times, self.ms, self.repeats, self.jsonl
        self.keys, self.times, self.ms, self.repeats, self.jsonl = [], [], [], [], ""
        queries = len(keys) + sum(count for _, (_, count) in repeats)
        batch = batch_of(keys, times, ms, repeats)
        try:
            db = self._db()
            db.execute("BEGIN")
            self._insert(db, batch)
            if devices:
                db.executemany("INSERT OR REPLACE INTO devices VALUES (?,?,?,?)", devices)
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return ("error", queries, str(exc))
        for client, mac, device, _ in devices:
            self.devices[client] = (mac, device)
        rows = len(batch.n)
        if jsonl and rows:
            problem = self._jsonl(Path(jsonl), rows_of(batch))
            if problem:
                return ("ok", rows, queries, problem)
        return ("ok", rows, queries)

    def _jsonl(self, path: Path, rows: list[Row]) -> str:
        try:
            with path.open("a", encoding="utf-8") as handle:
                for row in rows:
                    record: dict[str, Any] = dict(zip(JSONL_KEYS, row, strict=True))
                    mac, device = self.devices.get(row[1], ("", ""))
                    record |= {"mac": mac, "device": device}
                    handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            return f"cannot append to {path}: {exc}"
        return ""

    def _change(self, *statements: tuple[str, tuple[Any, ...]]) -> tuple[Any, ...]:
        """Run statements in one transaction; the first one's row count is the reply."""
        try:
            db = self._db()
            db.execute("BEGIN")
            counts = [db.execute(sql, args).rowcount for sql, args in statements]
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._fail(exc)
            return ("error", 0, str(exc))
        return ("ok", counts[0])

    def prune(self, cutoff: float) -> tuple[Any, ...]:
        return self._change(
            ("DELETE FROM answers WHERE time < ?", (cutoff,)),
            ("DELETE FROM alerts WHERE time < ?", (cutoff,)),
            ("DELETE FROM devices WHERE client NOT IN (SELECT DISTINCT client FROM answers)", ()),
        )

    def delete(self, client: str) -> tuple[Any, ...]:
        self.devices.pop(client, None)
        return self._change(
            ("DELETE FROM answers WHERE client = ?", (client,)),
            ("DELETE FROM alerts WHERE client = ?", (client,)),
            ("DELETE FROM devices WHERE client = ?", (client,)),
        )

    def alert(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return self._change(("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?)", tuple(row)))

    def handle(self, message: Any) -> tuple[Any, ...] | None:
        """The reply to one request (None: none is due)."""
        op = message[0]
        if op == "page":
            self.page(message[1], message[2], message[3], message[4])
            return None
        if op == "repeats":
            self.repeated(message[1], message[2], message[3])
            return None
        if op == "commit":
            return self.commit(message[1])
        if op == "prune":
            return self.prune(message[1])
        if op == "delete":
            return self.delete(message[1])
        if op == "alert":
            return self.alert(message[1])
        return ("error", 0, f"unknown request {op!r}")


#: An answer's kind: (group, qtype, decision, list, category)
_KIND = itemgetter(1, 3, 4, 5, 6)
_INSERTS: dict[int, str] = {}


def _insert_many(rows: int) -> str:
    """`INSERT INTO answers VALUES (...), (...), ...` for `rows` rows (memoised): one statement for many rows."""
    sql = _INSERTS.get(rows)
    if sql is None:
        sql = _INSERTS[rows] = "INSERT INTO answers VALUES " + ",".join(["(?,?,?,?,?,?)"] * rows)
    return sql


def background() -> None:
    """The server's answers come first; the rows wait when the cores are busy. SCHED_IDLE: this process runs only
    on a CPU that has nothing else to run, and a query arriving there takes the CPU back at once. At the nice 10 of
    before, the scheduler let it keep a core for slices of up to 4.5 ms (`perf sched timehist`) while the server
    waited to answer, which made the p99 latency of answers at 10,000 queries/s 1.2-2.1 ms. Where SCHED_IDLE is
    missing (not Linux): nice 10."""
    if hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return
    with contextlib.suppress(OSError):
        os.nice(10)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m filterd.querylog.writer DATABASE", file=sys.stderr)
        return 2
    background()
    writer = Writer(Path(argv[0]))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            message = read_frame(stdin)
        except (ValueError, EOFError, TypeError) as exc:  # not marshal data: the pipe is not ours
            print(f"filterd querylog writer: bad request: {exc}", file=sys.stderr)
            return 1
        if message is None:
            break
        reply = writer.handle(message)
        if reply is not None:
            stdout.write(frame(reply))
            stdout.flush()
    if writer.db is not None:
        writer.db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
