"""QueryLog: the query path hands it a tuple (one bounded deque append, never a wait); one writer thread
turns them into rows of an SQLite database in WAL mode in `state_dir`, in batches, and deletes rows older
than `retention`. Readers (`filterd log`, the report, `lists suggest`) open their own connections.

What a full queue or a failing disk costs: the rows it could not take are counted (`dropped`, `failed`) and
logged at most once a minute; a query is never delayed and never fails because of the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

from filterd.querylog.record import Privacy, Record, pseudonym

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    time REAL NOT NULL, client TEXT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL, qtype TEXT NOT NULL,
    decision TEXT NOT NULL, list TEXT NOT NULL, category TEXT NOT NULL, ms REAL NOT NULL, n INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queries_time ON queries (time);  -- the only index: each costs every write
CREATE TABLE IF NOT EXISTS devices (
    client TEXT PRIMARY KEY, mac TEXT NOT NULL, device TEXT NOT NULL, seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    time REAL NOT NULL, rule TEXT NOT NULL, client TEXT NOT NULL, mac TEXT NOT NULL, device TEXT NOT NULL,
    grp TEXT NOT NULL, names TEXT NOT NULL, result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_time ON alerts (time);
"""
QUERYLOG_NAME = "querylog.sqlite"
KEY_NAME = "querylog.key"
#: What a reader selects: each row with its device's MAC and name as last known (one devices row per client).
_SELECT = (
    "SELECT q.time, q.client, coalesce(d.mac, ''), coalesce(d.device, ''), q.grp, q.name, q.qtype, q.decision, "
    "q.list, q.category, q.ms, q.n FROM queries q LEFT JOIN devices d ON d.client = q.client"
)
_INSERT = "INSERT INTO queries VALUES (?,?,?,?,?,?,?,?,?,?)"
#: Rows written per statement; the writer hands the GIL back between chunks so the event loop is never kept waiting.
_CHUNK = 500  # rows a statement: 5,000 parameters, well under SQLite's limit (32,766)
#: (time, client IP, group, name, qtype, decision, list, category, ms): what the query path hands over
Pending = tuple[float, str, str, str, str, str, str, str, float]


@dataclass(frozen=True, slots=True)
class Identity:
    """What is known of a client address when its rows are written (from the client directory)."""

    mac: str = ""
    device: str = ""


@dataclass
class LogStats:
    written: int = 0
    dropped: int = 0  # the queue was full
    failed: int = 0  # the database refused a batch (full disk, read-only state_dir, ...)
    pruned: int = 0
    last_problem: str = ""
    _reported: float = field(default=0.0, repr=False)


class QueryLog:
    def __init__(
        self,
        path: Path,
        *,
        privacy: Privacy = Privacy.FULL,
        retention: float = 14 * 86400,
        key: bytes = b"",
        jsonl: Path | None = None,
        identify: Callable[[str], Identity] | None = None,
        clock: Callable[[], float] = time.time,
        max_queue: int = 100_000,
        interval: float = 1.0,
    ) -> None:
        self.path = path
        self.privacy = privacy
        self.retention = retention
        self.key = key
        self.jsonl = jsonl
        self.identify = identify or (lambda ip: Identity())
        self.clock = clock
        self.max_queue = max_queue
        self.interval = interval
        self.stats = LogStats()
        #: (client, group, name, qtype, decision, list, category) -> [first time, count, total ms], per interval
        #: (counts, first times, total ms) by (client, group, name, qtype, decision, list, category), for the
        #: current interval: three dicts of numbers, swapped as one tuple. No object per query that the garbage
        #: collector has to track (a list per query made the collector run every few hundred queries).
        self._pending: tuple[dict[tuple[str, ...], int], dict[tuple[str, ...], float], dict[tuple[str, ...], float]]
        self._pending = ({}, {}, {})
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0
        self._pseudonyms: dict[str, str] = {}
        self._devices: dict[str, tuple[str, str]] = {}  # client -> (mac, device) as last written
        self._lock = threading.Lock()  # one writer connection, used by the thread and by flush()/prune()
        self._db: sqlite3.Connection | None = None

    # --- the query path ----------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.privacy is not Privacy.OFF

    def add_fields(
        self,
        when: float,
        client: str,
        group: str,
        name: str,
        qtype: str,
        decision: str,
        list_name: str,
        category: str,
        ms: float,
    ) -> None:
        """`add()` without building the tuple first (the query path's call)."""
        if self.privacy is not Privacy.FULL:
            self.add((when, client, group, name, qtype, decision, list_name, category, ms))
            return
        self._count((client, group, name, qtype, decision, list_name, category), when, ms)

    def _count(self, key: tuple[str, ...], when: float, ms: float) -> None:
        counts, first, total = self._pending
        n = counts.get(key)
        if n is not None:
            counts[key] = n + 1
            total[key] += ms
        elif len(counts) < self.max_queue:
            counts[key] = 1
            first[key] = when
            total[key] = ms
        else:
            self.stats.dropped += 1

    def add(self, item: Pending) -> None:
        """Hand over one answered query; never blocks. The same question from the same client with the same
        answer within one write interval (a second) becomes one row with a count: a page's repeated lookups
        and a program's retries cost one dict update each, not a row each."""
        if self.privacy is Privacy.BLOCKED_ONLY and item[5] != "blocked":
            return
        client = item[1]
        if self.privacy is Privacy.HASH_CLIENTS:
            client = self._pseudonym(client)
        self._count((client, *item[2:8]), item[0], item[8])

    def _pseudonym(self, client: str) -> str:
        found = self._pseudonyms.get(client)
        if found is None:
            if len(self._pseudonyms) > 65536:
                self._pseudonyms = {}
            found = self._pseudonyms[client] = pseudonym(self.key, client)
        return found

    # --- the writer -------------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="filterd-querylog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._thread = None
        self.flush()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _run(self) -> None:
        # (No lower CPU priority for this thread: preempted while holding the GIL, it would stall the event loop.)
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()
            now = self.clock()
            if now - self._last_prune >= 60:
                self.prune(now)

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.exists()
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=5)
            if fresh:
                with contextlib.suppress(OSError):
                    os.chmod(self.path, 0o600)  # who asked what is personal data: the service user only
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def flush(self) -> int:
        """Write what is pending (in the writer thread; tests call it directly). Returns the rows written.

        One row per distinct question, client and answer of the interval, with its count; the clients' MACs and
        names go to the small `devices` table, once per client and batch. Rows are made and written a few hundred
        at a time, and the GIL is handed back between chunks, so the event loop's thread never waits long."""
        (counts, first, total), self._pending = self._pending, ({}, {}, {})  # one swap: the query path moves on
        if not counts:
            return 0
        entries = [(key, (first[key], n, total[key])) for key, n in counts.items()]
        devices = self._device_rows({key[0] for key in counts}, entries[-1][1][0])
        queries = 0
        try:
            with self._lock:
                db = self._connect()
                with db:  # one transaction (one commit) per batch
                    for start in range(0, len(entries), _CHUNK):
                        chunk = entries[start : start + _CHUNK]
                        # one statement for many rows: SQLite's work runs with the GIL released once per
                        # statement, not once per row (each hand-over of the GIL makes the event loop wait)
                        values = [v for key, (t, n, total) in chunk for v in (t, *key, total / n, n)]
                        db.execute(_insert_many(len(chunk)), values)
                        if start == 0 and devices:
                            db.executemany("INSERT OR REPLACE INTO devices VALUES (?,?,?,?)", devices)
                        queries += sum(slot[1] for _, slot in chunk)
                        time.sleep(0)  # let the event loop's thread run between chunks
        except (sqlite3.Error, OSError) as exc:
            lost = sum(slot[1] for _, slot in entries) - queries
            self._problem(f"cannot write {lost} queries to {self.path}: {exc}", lost)
            self._db = None
            self._devices = {}
            return 0
        self.stats.written += queries
        if self.jsonl is not None:
            self._write_jsonl([(t, *key, total / n, n) for key, (t, n, total) in entries])
        return len(entries)

    def _device_rows(self, clients: set[str], when: float) -> list[tuple[str, str, str, float]]:
        """(client, mac, device, seen) for the clients whose MAC or name changed since last written."""
        out = []
        hashed = self.privacy is Privacy.HASH_CLIENTS
        reverse = {v: k for k, v in self._pseudonyms.items()} if hashed else {}
        for client in clients:
            identity = self.identify(reverse.get(client, client))
            mac, device = identity.mac, identity.device
            if hashed:
                mac, device = pseudonym(self.key, mac), pseudonym(self.key, device)
            if self._devices.get(client) != (mac, device):
                self._devices[client] = (mac, device)
                out.append((client, mac, device, when))
        return out

    def _write_jsonl(self, rows: Sequence[tuple[Any, ...]]) -> None:
        assert self.jsonl is not None
        keys = ("time", "client", "group", "name", "qtype", "decision", "list", "category", "ms", "count")
        try:
            with self.jsonl.open("a", encoding="utf-8") as handle:
                for row in rows:
                    record: dict[str, Any] = dict(zip(keys, row, strict=True))
                    mac, device = self._devices.get(row[1], ("", ""))
                    record |= {"mac": mac, "device": device}
                    handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            self._problem(f"cannot append to {self.jsonl}: {exc}", 0)

    def prune(self, now: float | None = None) -> int:
        """Delete rows (and alerts) older than `retention`; returns how many query rows went."""
        now = self.clock() if now is None else now
        self._last_prune = now
        cutoff = now - self.retention
        try:
            with self._lock:
                db = self._connect()
                with db:
                    gone = db.execute("DELETE FROM queries WHERE time < ?", (cutoff,)).rowcount
                    db.execute("DELETE FROM alerts WHERE time < ?", (cutoff,))
                    db.execute("DELETE FROM devices WHERE client NOT IN (SELECT DISTINCT client FROM queries)")
        except (sqlite3.Error, OSError) as exc:
            self._problem(f"cannot delete old rows from {self.path}: {exc}", 0)
            return 0
        self.stats.pruned += gone
        return int(gone)

    def _problem(self, message: str, rows: int) -> None:
        self.stats.failed += rows
        self.stats.last_problem = message
        now = time.monotonic()
        if now - self.stats._reported >= 60:
            self.stats._reported = now
            log.error("querylog: %s (queries are still answered; %d rows lost so far)", message, self.stats.failed)

    def record_alert(self, when: float, rule: str, client: str, group: str, names: Iterable[str], result: str) -> None:
        identity = self.identify(client)
        mac, device = identity.mac, identity.device
        if self.privacy is Privacy.HASH_CLIENTS:
            client, mac, device = (pseudonym(self.key, v) for v in (client, mac, device))
        try:
            with self._lock:
                db = self._connect()
                with db:
                    db.execute(
                        "INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?)",
                        (when, rule, client, mac, device, group, " ".join(names), result),
                    )
        except (sqlite3.Error, OSError) as exc:
            self._problem(f"cannot record an alert in {self.path}: {exc}", 0)

    # --- readers ----------------------------------------------------------------------------------------

    def client_key(self, client: str) -> str:
        """How a client given on the command line is stored (its hash under hash-clients)."""
        return self._pseudonym(client) if self.privacy is Privacy.HASH_CLIENTS else client

    def _reader(self) -> sqlite3.Connection:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return db

    def rows(
        self,
        *,
        client: str | None = None,
        group: str | None = None,
        blocked: bool = False,
        since: float | None = None,
        limit: int | None = 1000,
    ) -> list[Record]:
        """Rows, newest first, matching every filter given."""
        self.flush()
        where, args = _filters(self.client_key(client) if client else None, group, blocked, since)
        sql = f"{_SELECT}{where} ORDER BY q.time DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if not self.path.exists():
            return []
        with contextlib.closing(self._reader()) as db:
            return [Record(*row) for row in db.execute(sql, args)]

    def alerts(self, since: float | None = None) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        sql, args = "SELECT time, rule, client, mac, device, grp, names, result FROM alerts", []
        if since is not None:
            sql, args = sql + " WHERE time >= ?", [since]
        with contextlib.closing(self._reader()) as db:
            return list(db.execute(sql + " ORDER BY time", args))

    def delete_client(self, client: str) -> int:
        """Delete every row (and alert) of one client; returns the query rows deleted."""
        self.flush()
        stored = self.client_key(client)
        with self._lock:
            db = self._connect()
            with db:
                gone = db.execute("DELETE FROM queries WHERE client = ?", (stored,)).rowcount
                db.execute("DELETE FROM alerts WHERE client = ?", (stored,))
                db.execute("DELETE FROM devices WHERE client = ?", (stored,))
            self._devices.pop(stored, None)
        return int(gone)


_INSERTS: dict[int, str] = {}


def _insert_many(rows: int) -> str:
    """`INSERT INTO queries VALUES (...), (...), ...` for `rows` rows (memoised)."""
    sql = _INSERTS.get(rows)
    if sql is None:
        sql = _INSERTS[rows] = "INSERT INTO queries VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * rows)
    return sql


def _filters(client: str | None, group: str | None, blocked: bool, since: float | None) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if client:
        clauses.append("q.client = ?")
        args.append(client)
    if group:
        clauses.append("q.grp = ?")
        args.append(group)
    if blocked:
        clauses.append("q.decision = 'blocked'")
    if since is not None:
        clauses.append("q.time >= ?")
        args.append(since)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def as_dict(record: Record) -> dict[str, Any]:
    keys = ("time", "client", "mac", "device", "group", "name", "qtype", "decision", "list", "category", "ms", "count")
    return dict(zip(keys, astuple(record), strict=True))


def querylog_key(state_dir: Path) -> bytes:
    """The key of `hash-clients` pseudonyms: 32 random bytes in state_dir (mode 0600), made at first use."""
    path = state_dir / KEY_NAME
    try:
        data = path.read_bytes()
        if len(data) >= 16:
            return data
    except OSError:
        pass
    data = os.urandom(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        log.error("querylog: cannot keep the pseudonym key in %s: %s (pseudonyms change at each start)", path, exc)
    return data
