"""QueryLog: the query path counts each answer in a dict (never a wait, never a row); once a second the
counts go, a page at a time, to the writer process (`writer.py`), which holds the SQLite database (WAL mode,
in `state_dir`), makes the rows and deletes those older than `retention`. Readers (`filterd log`, the report,
`lists suggest`) open their own read-only connections.

Why a process: making and inserting rows costs a few microseconds each, in a thread that holds the event
loop's GIL while it does, so with a thread the log cost a third of the blocked-name throughput when every query
is a new row. Here the server's process only marshals each page (a C call on plain dicts), in a thread that
hands the GIL back between pages; the child's work runs on another core.

What a full queue, a failing disk or a dead writer cost: the rows that could not be kept are counted (`dropped`,
`failed`) and logged at most once a minute; a query is never delayed and never fails because of the log; a
writer that died is started again at the next batch.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import IO, Any

from filterd.querylog.record import Privacy, Record, pseudonym
from filterd.querylog.writer import WIDTH, frame, read_frame

log = logging.getLogger(__name__)

QUERYLOG_NAME = "querylog.sqlite"
KEY_NAME = "querylog.key"
#: What a reader selects: each row with its device's MAC and name as last known (one devices row per client).
_SELECT = (
    "SELECT q.time, q.client, coalesce(d.mac, ''), coalesce(d.device, ''), q.grp, q.name, q.qtype, q.decision, "
    "q.list, q.category, q.ms, q.n FROM queries q LEFT JOIN devices d ON d.client = q.client"
)
#: Answers noted in one page before a new one is started. Marshalling a page holds the GIL, and the event loop waits
#: for it: about 0.3 ms for 1,024 answers (4,096 made the loop wait 1-2 ms, `perf sched timehist`). Smaller pages
#: cost the writer thread more waits for the GIL between them (up to the 5 ms switch interval each, under full load).
PAGE = 1024
#: The pipe to the writer holds a whole second of a busy network's pages (64 KB by default): the writer thread
#: then hands the event loop's lock over once a page, not once every 64 KB.
PIPE_SIZE = 1 << 20
#: (group, name, qtype, decision, list, category): what a logged answer says, besides who asked and when
Tail = tuple[str, str, str, str, str, str]
#: (time, client IP, group, name, qtype, decision, list, category, ms): one answered query, as tests hand it over
Pending = tuple[float, str, str, str, str, str, str, str, float]
#: The answers noted, in order: their fields one after another (client and the tail's six: `writer.WIDTH` a
#: row, in one flat list, so the query path keeps no tuple of its own per answer), their times, and their answer
#: times in milliseconds
Page = tuple[list[str], list[float], list[float]]


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


class WriterError(Exception):
    """The writer process could not be started or stopped answering."""


@dataclass(frozen=True)
class Totals:
    """A span of the log counted (queries, and blocked attempts by category, local hour, device and name), as the
    admin page's overview shows it (filterd/web/dashboard.py)."""

    decisions: dict[str, int]
    categories: dict[str, int]  # the category, else the list, else "other": blocked attempts, most first
    hours: tuple[int, ...]  # blocked attempts in each hour of the day (local time), 24 values
    devices: tuple[tuple[str, str, str, int], ...]  # (client, device name or "", group, blocked), most first
    names: tuple[tuple[str, int], ...]  # the most blocked names, most first


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
        #: The page being filled: three lists, swapped as one tuple; full pages wait in `_full` for the next
        #: write. The keys' tails are mostly shared objects (a packet-cache entry keeps its own), which marshal
        #: writes once a page. `_clients`: who asked since the last write (their devices rows).
        self._pending: Page = ([], [], [])
        self._full: list[Page] = []
        #: The packet cache's hits since the last write, counted by answer: (client, *tail) -> [first time, count].
        #: A hit repeats an answer given a moment before, mostly to the same client, so one dict update stands for
        #: what would be a row appended to a page, marshalled and counted again by the writer.
        self._repeats: dict[tuple[str, ...], list[Any]] = {}
        self._clients: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_prune = 0.0
        self._pseudonyms: dict[str, str] = {}
        self._devices: dict[str, tuple[str, str]] = {}  # client -> (mac, device) as last written
        self._lock = threading.Lock()  # one conversation with the writer at a time (the thread, flush(), prune())
        self._child: subprocess.Popen[bytes] | None = None
        self._child_path: Path | None = None
        #: Seconds one exchange with the writer may take before it is killed (and started again next time).
        self.writer_timeout = 60.0

    # --- the query path ----------------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.privacy is not Privacy.OFF

    def log(self, client: str, tail: Tail, when: float, ms: float = 0.0) -> None:
        """Note one answered query; never blocks: three list appends and a set add, no hashing of the row.
        The writer counts what the interval's pages hold: the same question from the same client with the same
        answer within one write interval (a second) becomes one row with a count. `ms`: the answer time, for
        forwarded answers (0 for those answered at once)."""
        if self.privacy is not Privacy.FULL:
            kept = self._private(client, tail)
            if kept is None:
                return
            client = kept
        fields, times, ms_list = self._pending
        if len(times) >= PAGE:
            if (len(self._full) + 1) * PAGE >= self.max_queue:
                self.stats.dropped += 1
                return
            self._full.append(self._pending)
            fields, times, ms_list = self._pending = ([], [], [])
        fields.append(client)
        fields.extend(tail)
        times.append(when)
        ms_list.append(ms)
        self._clients.add(client)

    def hit(self, client: str, tail: Tail, clock: Callable[[], float]) -> None:
        """`log()` for a packet-cache hit (answered at once: no answer time): counted by client and answer for the
        interval, and written as one row with its count, as the writer would have counted it (`clock` is asked
        only for an answer's first time in the interval)."""
        if self.privacy is not Privacy.FULL:
            kept = self._private(client, tail)
            if kept is None:
                return
            client = kept
        key = (client, *tail)
        repeats = self._repeats
        seen = repeats.get(key)
        if seen is not None:
            seen[1] += 1
            return
        if len(repeats) >= self.max_queue:
            self.stats.dropped += 1
            return
        repeats[key] = [clock(), 1]
        self._clients.add(client)

    def _private(self, client: str, tail: Tail) -> str | None:
        """Under a privacy mode other than `full`: the client as the log keeps it, or None (the answer is not kept)."""
        if self.privacy is Privacy.BLOCKED_ONLY and tail[3] != "blocked":
            return None
        return self._pseudonym(client) if self.privacy is Privacy.HASH_CLIENTS else client

    def add(self, item: Pending) -> None:
        """`log()` with the fields in one tuple."""
        self.log(item[1], (item[2], item[3], item[4], item[5], item[6], item[7]), item[0], item[8])

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
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(10)
            self._thread = None
        self.flush()
        with self._lock:
            self._end_child()

    def _run(self) -> None:
        # (No lower CPU priority for this thread: preempted while holding the GIL, it would stall the event loop.)
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()
            now = self.clock()
            if now - self._last_prune >= 60:
                self.prune(now)

    def _writer(self) -> subprocess.Popen[bytes]:
        """The writer process (started, or started again after it died or the database moved)."""
        child = self._child
        if child is not None and (child.poll() is not None or self._child_path != self.path):
            self._end_child()
            child = None
        if child is None:
            try:
                child = subprocess.Popen(  # -P: not the working directory on sys.path
                    [sys.executable, "-P", "-m", "filterd.querylog.writer", str(self.path)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    close_fds=True,
                )
            except OSError as exc:
                raise WriterError(f"cannot start the writer process: {exc}") from exc
            if hasattr(fcntl, "F_SETPIPE_SZ") and child.stdin is not None:
                with contextlib.suppress(OSError):  # (capped by /proc/sys/fs/pipe-max-size: 1 MB by default)
                    fcntl.fcntl(child.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            self._child, self._child_path = child, self.path
        return child

    def _end_child(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        with contextlib.suppress(OSError):
            assert child.stdin is not None
            child.stdin.close()  # the writer ends at the end of its input
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    def _ask(
        self,
        message: tuple[Any, ...],
        pages: Iterable[Page] = (),
        repeats: tuple[list[tuple[str, ...]], list[Any]] = ([], []),
    ) -> tuple[Any, ...]:
        """Send pages and counted hits (`repeats`: keys and their [first time, count]), then a request, to the
        writer; its reply. Holds `_lock`. Raises WriterError."""
        child = self._writer()
        pipe: IO[bytes] | None = child.stdin
        assert pipe is not None and child.stdout is not None
        jsonl = "" if self.jsonl is None else str(self.jsonl)
        # A writer that hangs (a stopped process, a disk that never answers) is killed: that ends the
        # exchange (EPIPE, or the end of its replies) and the batch counts as failed, not the thread stuck.
        watchdog = threading.Timer(self.writer_timeout, child.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            for fields, times, ms in pages:
                pipe.write(frame(("page", fields, times, ms, jsonl)))
                time.sleep(0)  # hand the GIL back to the event loop between pages
            keys, counts = repeats
            for start in range(0, len(keys), PAGE):
                pipe.write(frame(("repeats", keys[start : start + PAGE], counts[start : start + PAGE], jsonl)))
                time.sleep(0)
            pipe.write(frame(message))
            pipe.flush()
            reply = read_frame(child.stdout)
        except (OSError, ValueError, EOFError) as exc:
            self._end_child()
            raise WriterError(f"the writer process failed: {exc}") from exc
        finally:
            watchdog.cancel()
        if reply is None:
            self._end_child()
            raise WriterError(f"the writer process ended (exit status {child.returncode})")
        return tuple(reply)

    def flush(self) -> int:
        """Write what is pending (in the writer thread; tests and readers call it directly). Returns the rows
        written: one per distinct question, client and answer of the interval, with its count; the clients'
        MACs and names go to the small `devices` table, once per client and change."""
        with self._lock:
            pages, self._full = self._full, []
            page, self._pending = self._pending, ([], [], [])  # the query path moves on to a new page
            repeats, self._repeats = self._repeats, {}
            clients, self._clients = self._clients, set()
            # The query path may be in the middle of noting an answer in the page or the dict just swapped out (this
            # thread can take the GIL between its appends): take what is whole now, each in one C call; an answer
            # noted after this is not written.
            fields, times, ms = page
            rows = min(len(fields) // WIDTH, len(times), len(ms))
            if rows:
                pages.append((fields[: rows * WIDTH], times[:rows], ms[:rows]))
            items = list(repeats.items())
            if not pages and not items:
                return 0
            keys, counts = [key for key, _ in items], [count for _, count in items]
            queries = sum(len(p[1]) for p in pages) + sum(count for _, count in counts)
            devices = self._device_rows(clients, self.clock())
            try:
                reply = self._ask(("commit", devices), pages, (keys, counts))
            except WriterError as exc:
                reply = ("error", queries, str(exc))
            if reply[0] != "ok":
                self._devices = {}  # written again with the next batch
                self._problem(f"cannot write {reply[1]} queries to {self.path}: {reply[2]}", int(reply[1]))
                return 0
            if len(reply) > 3:
                self._problem(str(reply[3]), 0)
            self.stats.written += int(reply[2])
            return int(reply[1])

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

    def _change(self, message: tuple[Any, ...], what: str) -> int | None:
        """Ask the writer for a change; the rows it changed, or None (it failed: counted and logged)."""
        with self._lock:
            try:
                reply = self._ask(message)
            except WriterError as exc:
                reply = ("error", 0, str(exc))
        if reply[0] != "ok":
            self._problem(f"cannot {what} in {self.path}: {reply[2]}", 0)
            return None
        return int(reply[1]) if len(reply) > 1 else 0

    def prune(self, now: float | None = None) -> int:
        """Delete rows (and alerts) older than `retention`; returns how many query rows went."""
        now = self.clock() if now is None else now
        self._last_prune = now
        gone = self._change(("prune", now - self.retention), "delete old rows") or 0
        self.stats.pruned += gone
        return gone

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
        self._change(("alert", (when, rule, client, mac, device, group, " ".join(names), result)), "record an alert")

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
        device: str | None = None,
        decision: str | None = None,
        category: str | None = None,
    ) -> list[Record]:
        """Rows, newest first, matching every filter given. `device`: the client's address or its device name;
        `category`: the row's category or list."""
        self.flush()
        where, args = _filters(self.client_key(client) if client else None, group, blocked, since)
        for clause, value in (
            ("(q.client = ? OR d.device = ?)", device),
            ("q.decision = ?", decision),
            ("(q.category = ? OR q.list = ?)", category),
        ):
            if value:
                where += (" AND " if where else " WHERE ") + clause
                args += [value] * clause.count("?")
        sql = f"{_SELECT}{where} ORDER BY q.time DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        if not self.path.exists():
            return []
        with contextlib.closing(self._reader()) as db:
            return [Record(*row) for row in db.execute(sql, args)]

    def totals(self, since: float, top: int = 10) -> Totals:
        """The admin page's overview numbers for the rows from `since` on, counted by SQLite: a day of a school's
        log is hundreds of thousands of rows, which as Python objects cost the server's process seconds of CPU
        (and the DNS path its share of the interpreter); SQLite counts them in C, without holding it."""
        self.flush()
        if not self.path.exists():
            return Totals({}, {}, (0,) * 24, (), ())
        blocked = "FROM queries WHERE time >= ? AND decision = 'blocked'"
        with contextlib.closing(self._reader()) as db:
            decisions = dict(db.execute("SELECT decision, sum(n) FROM queries WHERE time >= ? GROUP BY 1", (since,)))
            categories = dict(
                db.execute(
                    f"SELECT coalesce(nullif(category, ''), nullif(list, ''), 'other'), sum(n) AS total {blocked} "
                    "GROUP BY 1 ORDER BY total DESC, max(time) DESC",
                    (since,),
                )
            )
            hours = [0] * 24
            local_hour = "CAST(strftime('%H', time, 'unixepoch', 'localtime') AS INTEGER)"  # the C library's zone
            for hour, n in db.execute(f"SELECT {local_hour}, sum(n) {blocked} GROUP BY 1", (since,)):
                hours[hour] += n
            # (grp is a bare column beside the one max(): SQLite takes it from the client's newest blocked row)
            devices = db.execute(
                "SELECT b.client, coalesce(d.device, ''), b.grp, b.total FROM "
                f"(SELECT client, grp, sum(n) AS total, max(time) AS last {blocked} GROUP BY client "
                "ORDER BY total DESC, last DESC LIMIT ?) b "
                "LEFT JOIN devices d ON d.client = b.client ORDER BY b.total DESC, b.last DESC",
                (since, top),
            ).fetchall()
            names = db.execute(
                f"SELECT name, sum(n) AS total {blocked} GROUP BY name ORDER BY total DESC, max(time) DESC LIMIT ?",
                (since, top),
            ).fetchall()
        return Totals(decisions, categories, tuple(hours), tuple(devices), tuple(names))

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
        self._devices.pop(stored, None)
        gone = self._change(("delete", stored), f"delete the rows of {client}")
        if gone is None:
            raise OSError(self.stats.last_problem)
        return gone


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
