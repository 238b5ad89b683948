"""The query log's writer process: what it makes of the pages, and what a dead or hung writer costs."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from filterd.querylog.record import Privacy
from filterd.querylog.store import PAGE, QueryLog
from filterd.querylog.writer import batch_of, keys_of, rows_of

BLOCK = ("kids", "omegle.com", "A", "blocked", "chat-roulette", "chat-roulette-video")
FORWARD = ("kids", "example.org", "AAAA", "forwarded", "", "")


def test_rows_count_repeats_keep_the_first_time_and_average_the_answer_time() -> None:
    answers = [
        ("10.0.0.2", BLOCK),
        ("10.0.0.3", BLOCK),
        ("10.0.0.2", BLOCK),
        ("10.0.0.2", FORWARD),
        ("10.0.0.2", FORWARD),
    ]
    fields = [field for client, tail in answers for field in (client, *tail)]  # a page, as the query path fills it
    rows = rows_of(batch_of(keys_of(fields), [5.0, 6.0, 7.0, 8.0, 9.0], [0.0, 0.0, 0.0, 10.0, 30.0]))
    assert rows == [
        (5.0, "10.0.0.2", *BLOCK, 0.0, 2),
        (6.0, "10.0.0.3", *BLOCK, 0.0, 1),
        (8.0, "10.0.0.2", *FORWARD, 20.0, 2),
    ]


def _stored(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT time, client, name, decision, n FROM queries ORDER BY time"))


def test_pages_of_one_interval_make_one_row_per_question(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite")
    try:
        for i in range(PAGE * 2 + 10):  # three pages; the first name in each of them
            log.log("10.0.0.2", BLOCK if i % 2 == 0 else FORWARD, 100.0 + i)
        assert log.flush() == 2
        assert _stored(tmp_path / "q.sqlite") == [
            (100.0, "10.0.0.2", "omegle.com", "blocked", PAGE + 5),
            (101.0, "10.0.0.2", "example.org", "forwarded", PAGE + 5),
        ]
        assert log.stats.written == PAGE * 2 + 10
        assert (tmp_path / "q.sqlite").stat().st_mode & 0o777 == 0o600
    finally:
        log.stop()


def test_hits_counted_on_the_query_path_join_the_rows_of_their_answers(tmp_path: Path) -> None:
    """The packet cache's hits are counted by client and answer as they come (one dict update each, no row): the
    log then holds what it would hold had each been noted as a row, a row per question, client and answer with
    its count and first time, merged with the same answers noted as rows in the interval."""
    log = QueryLog(tmp_path / "q.sqlite")
    asked: list[float] = []

    def clock() -> float:
        asked.append(200.0 + len(asked))
        return asked[-1]

    try:
        log.log("10.0.0.2", BLOCK, 150.0)  # the slow path's answer, then the same answer from the packet cache
        for _ in range(500):
            log.hit("10.0.0.2", BLOCK, clock)
            log.hit("10.0.0.3", BLOCK, clock)
        log.hit("10.0.0.2", FORWARD, clock)
        assert asked == [200.0, 201.0, 202.0]  # the time of an answer's first hit only
        assert log.flush() == 3
        assert _stored(tmp_path / "q.sqlite") == [
            (150.0, "10.0.0.2", "omegle.com", "blocked", 501),
            (201.0, "10.0.0.3", "omegle.com", "blocked", 500),
            (202.0, "10.0.0.2", "example.org", "forwarded", 1),
        ]
        assert log.stats.written == 1002
        log.hit("10.0.0.2", BLOCK, clock)  # the next interval: a row of its own
        assert log.flush() == 1
        assert _stored(tmp_path / "q.sqlite")[-1] == (203.0, "10.0.0.2", "omegle.com", "blocked", 1)
    finally:
        log.stop()


def test_hits_of_more_answers_than_a_page_are_all_written(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite", max_queue=PAGE * 3)
    try:
        for i in range(PAGE * 4):  # a page and a half of different answers, each hit twice; then too many
            log.hit("10.0.0.2", ("", f"n{i}.example", "A", "cached", "", ""), lambda: 100.0)
            if i < PAGE * 3 // 2:
                log.hit("10.0.0.2", ("", f"n{i}.example", "A", "cached", "", ""), lambda: 100.0)
        assert log.stats.dropped == PAGE
        assert log.flush() == PAGE * 3
        with sqlite3.connect(tmp_path / "q.sqlite") as db:
            assert db.execute("SELECT count(*), sum(n), max(n) FROM queries").fetchone() == (
                PAGE * 3,
                PAGE * 3 + PAGE * 3 // 2,
                2,
            )
    finally:
        log.stop()


def test_an_answer_half_noted_when_the_page_is_taken_costs_only_itself(tmp_path: Path) -> None:
    """The writer thread may take the page while the query path is between its appends (the GIL changes hands
    there): the whole rows are written, the half one is left out, and the batch does not fail."""
    log = QueryLog(tmp_path / "q.sqlite")
    try:
        log.log("10.0.0.2", BLOCK, 100.0)
        fields, _, _ = log._pending
        fields.append("10.0.0.3")  # the next answer's fields noted, its time not yet
        fields.extend(FORWARD)
        log.hit("10.0.0.4", BLOCK, lambda: 101.0)
        assert log.flush() == 2
        assert _stored(tmp_path / "q.sqlite") == [
            (100.0, "10.0.0.2", "omegle.com", "blocked", 1),
            (101.0, "10.0.0.4", "omegle.com", "blocked", 1),
        ]
        assert log.stats.failed == 0 and log.stats.written == 2
    finally:
        log.stop()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_the_writer_runs_only_on_a_cpu_with_nothing_else_to_run(tmp_path: Path) -> None:
    """SCHED_IDLE: a query never waits for the writer's turn on a core (at nice 10 it kept a core for up to 4.5 ms
    while the server waited)."""
    log = QueryLog(tmp_path / "q.sqlite")
    try:
        log.log("10.0.0.2", BLOCK, 100.0)
        assert log.flush() == 1
        assert log._child is not None
        assert os.sched_getscheduler(log._child.pid) == os.SCHED_IDLE
    finally:
        log.stop()


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite", max_queue=PAGE * 2)
    try:
        for i in range(PAGE * 3):
            log.log("10.0.0.2", ("", f"n{i}.example", "A", "forwarded", "", ""), 100.0)
        assert log.stats.dropped == PAGE  # two pages kept, the third dropped
        written = log.flush()
        assert written + log.stats.dropped == PAGE * 3
    finally:
        log.stop()


def test_a_writer_that_died_is_started_again(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite")
    try:
        log.log("10.0.0.2", BLOCK, 100.0)
        assert log.flush() == 1
        child = log._child
        assert child is not None
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        log.log("10.0.0.3", BLOCK, 101.0)
        assert log.flush() == 1
        assert log._child is not None and log._child.pid != child.pid
        assert [row[1] for row in _stored(tmp_path / "q.sqlite")] == ["10.0.0.2", "10.0.0.3"]
        assert log.stats.failed == 0
    finally:
        log.stop()


def test_a_hung_writer_costs_its_batch_not_the_thread(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / "q.sqlite")
    log.writer_timeout = 1.0
    try:
        log.log("10.0.0.2", BLOCK, 100.0)
        assert log.flush() == 1
        child = log._child
        assert child is not None
        os.kill(child.pid, signal.SIGSTOP)  # alive, but never answers
        for i in range(PAGE * 20):  # more than the pipe holds: the write itself blocks until the watchdog fires
            log.log("10.0.0.2", ("", f"n{i}.example", "A", "forwarded", "", ""), 200.0)
        started = time.monotonic()
        assert log.flush() == 0
        assert time.monotonic() - started < 15
        assert log.stats.failed == PAGE * 20
        assert "writer" in log.stats.last_problem
        log.log("10.0.0.3", BLOCK, 300.0)
        assert log.flush() == 1  # a new writer
        assert [row[1] for row in _stored(tmp_path / "q.sqlite")] == ["10.0.0.2", "10.0.0.3"]
    finally:
        log.stop()


@pytest.mark.parametrize("privacy", [Privacy.BLOCKED_ONLY, Privacy.HASH_CLIENTS])
def test_privacy_is_applied_before_anything_leaves_the_query_path(tmp_path: Path, privacy: Privacy) -> None:
    log = QueryLog(tmp_path / "q.sqlite", privacy=privacy, key=b"k" * 32)
    try:
        log.log("10.0.0.2", BLOCK, 100.0)
        log.log("10.0.0.2", FORWARD, 101.0)
        log.hit("10.0.0.2", FORWARD, lambda: 102.0)  # the packet cache's hits too
        assert list(log._repeats) == (
            [] if privacy is Privacy.BLOCKED_ONLY else [(log.client_key("10.0.0.2"), *FORWARD)]
        )
        pending = keys_of(log._pending[0])
        if privacy is Privacy.BLOCKED_ONLY:
            assert pending == [("10.0.0.2", *BLOCK)]
        else:
            assert {key[0] for key in pending} == {log.client_key("10.0.0.2")}
            assert "10.0.0.2" not in repr(pending)
        assert log.flush() == (1 if privacy is Privacy.BLOCKED_ONLY else 2)
        stored = _stored(tmp_path / "q.sqlite")
        if privacy is Privacy.BLOCKED_ONLY:
            assert [row[3] for row in stored] == ["blocked"]
        else:
            assert [(row[1], row[4]) for row in stored] == [
                (log.client_key("10.0.0.2"), 1),
                (log.client_key("10.0.0.2"), 2),
            ]
    finally:
        log.stop()


def test_a_log_of_the_wide_table_moves_to_the_new_tables_once(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite"
    with sqlite3.connect(path) as db:  # the layout before `kinds`: one wide table, as the last release wrote it
        db.executescript(
            "CREATE TABLE queries (time REAL NOT NULL, client TEXT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL,"
            " qtype TEXT NOT NULL, decision TEXT NOT NULL, list TEXT NOT NULL, category TEXT NOT NULL,"
            " ms REAL NOT NULL, n INTEGER NOT NULL);"
            "CREATE INDEX queries_time ON queries (time);"
        )
        db.execute(
            "INSERT INTO queries VALUES (50.0, '10.0.0.9', 'kids', 'omegle.com', 'A', 'blocked',"
            " 'chat-roulette', 'chat-roulette-video', 0.0, 3)"
        )
    db.close()
    log = QueryLog(path)
    try:
        log.log("10.0.0.2", BLOCK, 100.0)
        log.log("10.0.0.2", FORWARD, 101.0, 12.5)
        assert log.flush() == 2
        assert _stored(path) == [
            (50.0, "10.0.0.9", "omegle.com", "blocked", 3),
            (100.0, "10.0.0.2", "omegle.com", "blocked", 1),
            (101.0, "10.0.0.2", "example.org", "forwarded", 1),
        ]
        with sqlite3.connect(path) as db:
            kinds = db.execute("SELECT count(*) FROM kinds").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        db.close()
        assert kinds == 2  # the old row's kind and the blocked row share one; the forwarded one is the second
        assert "queries_v1" not in tables and "answers" in tables
        assert [r.ms for r in log.rows(since=0)] == [12.5, 0.0, 0.0]
    finally:
        log.stop()
