"""The pure parts of url-list refreshes: checking a download, the shrink guard and the schedule."""

from __future__ import annotations

import random

import pytest

from filterd.blocklists.refresh import (
    FAILED_RETRY,
    JITTER,
    Problem,
    Result,
    examine,
    first_delay,
    next_delay,
    retry_policy,
    shrink_problem,
)
from filterd.blocklists.sources import RetryPolicy
from filterd.blocklists.state import ListMeta
from filterd.config.schema import ListConfig, ListFormat

CFG = ListConfig(name="sub", url="http://127.0.0.1/sub.txt", max_bytes=4096)


def _lines(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


# (download, expected problem (reason fragment, line) or None when it is a usable list)
EXAMINE_CASES = [
    (_lines("a.example", "b.example"), None),
    (_lines("# header", "0.0.0.0 a.example b.example"), None),
    (_lines("||a.example^", "||b.example^$third-party", "||c.example^"), None),  # 1 of 3 skipped: fine
    ("\ufeffa.example\r\nb.example\r\n".encode(), None),  # BOM and CRLF
    (_lines("a.example", "1.2.3.4"), None),  # as many skipped as read: still a list
    (b"", ("empty download (0 bytes)", None)),
    (b" \n\n\t\n", ("empty download (5 bytes)", None)),
    (b"a.example\nb.exa\x00mple\n", ("binary data (a NUL byte)", 2)),
    (bytes(range(128, 256)) * 4, ("not UTF-8 text (512 of 512 bytes undecodable)", 1)),
    (b"\n\n<!DOCTYPE html>\n<html><body>Sign in</body></html>\n", ("an HTML page, not a list", 3)),
    (b"<?xml version='1.0'?><Error>AccessDenied</Error>", ("an HTML page, not a list", 1)),
    (_lines("# only", "# comments", "! here"), ("no entries (only comments and blank lines)", None)),
    (_lines("# x", "1.2.3.4", "5.6.7.8"), ("no entries: all 2 rules skipped, e.g. an IP address", 2)),
    (
        _lines("a.example", "##.ad-banner", "example.org##.ad", "||x.example^$script"),
        ("mostly invalid: 3 rules skipped and only 1 read, e.g. adblock cosmetic", 2),
    ),
    (b"x" * 5000, ("5000 bytes, over max_bytes (4 KB)", None)),
]


@pytest.mark.parametrize(("data", "expected"), EXAMINE_CASES)
def test_examine(data: bytes, expected: tuple[str, int | None] | None) -> None:
    summary, problem = examine(data, CFG)
    if expected is None:
        assert problem is None and summary is not None and summary.entries
        return
    assert summary is None and problem is not None
    reason, line = expected
    assert reason in problem.reason
    assert problem.line == line


def test_examine_uses_the_configured_format() -> None:
    hosts = ListConfig(name="h", url="http://x/h", format=ListFormat.HOSTS, subdomains=True)
    summary, problem = examine(_lines("0.0.0.0 a.example", "b.example"), hosts)
    assert problem is None and summary is not None
    assert (summary.format, summary.entries, summary.read) == ("hosts", 2, 2)
    domains, _ = examine(_lines("0.0.0.0 a.example", "b.example"), CFG)  # read as domains: the hosts line is junk
    assert domains is not None and domains.skipped.count == 1


def test_entries_are_counted_like_the_lists_count_them() -> None:
    summary, _ = examine(_lines("||a.example^", "||a.example^", "|a.example^", "@@||b.example^", "c.example"), CFG)
    assert summary is not None
    assert summary.entries == 3  # a (subtree), a (exact), c; the duplicate and the exception are not names
    assert summary.read == 5


@pytest.mark.parametrize(
    ("entries", "last_good", "guard", "force", "held"),
    [
        (100, 100, 0.5, False, False),
        (50, 100, 0.5, False, False),  # exactly the guard: accepted
        (49, 100, 0.5, False, True),
        (10, 100, 0.5, True, False),  # forced
        (10, 100, 0.0, False, False),  # guard off
        (10, 0, 0.5, False, False),  # no good copy yet: nothing to compare with
        (999, 1000, 1.0, False, True),  # guard 1: any shrink is held back
        (2000, 1000, 0.5, False, False),  # growth is always fine
    ],
)
def test_shrink_guard(entries: int, last_good: int, guard: float, force: bool, held: bool) -> None:
    problem = shrink_problem(entries, last_good, guard, force=force, name="hagezi-pro")
    assert (problem is not None) is held
    if problem is not None:
        assert problem.reason.startswith(f"shrank from {last_good} to {entries} names")
        assert problem.hint is not None and "--force hagezi-pro" in problem.hint


def test_problem_says_where() -> None:
    assert Problem("bad", 88).where("hagezi-pro") == "hagezi-pro:88"
    assert Problem("bad").where("hagezi-pro") == "hagezi-pro"


DAY = 86400.0


@pytest.mark.parametrize(
    ("meta", "has_copy", "now", "low", "high"),
    [
        (None, False, 1000.0, 0, 0),  # nothing stored: at once
        (ListMeta(url="u", last_success=1000.0), False, 1000.0, 0, 0),  # metadata but no copy: at once
        (ListMeta(url="u"), True, 1000.0, 0, 0),  # a copy never confirmed: at once
        (ListMeta(url="u", last_success=0.0), True, 2 * DAY, 0, 0),  # overdue: at once
        (ListMeta(url="u", last_success=1000.0), True, 1000.0, DAY * (1 - JITTER), DAY * (1 + JITTER)),
        (ListMeta(url="u", last_success=0.0), True, DAY / 2, DAY * (0.5 - JITTER), DAY * (0.5 + JITTER)),
        (ListMeta(url="u", last_success=10 * DAY), True, 0.0, 0, DAY * (1 + JITTER)),  # clock went back
    ],
)
def test_first_delay(meta: ListMeta | None, has_copy: bool, now: float, low: float, high: float) -> None:
    for seed in range(20):
        delay = first_delay(meta, has_copy, DAY, now, random.Random(seed))
        assert low <= delay <= high


@pytest.mark.parametrize(
    ("result", "refresh", "nominal"),
    [
        (Result.UPDATED, DAY, DAY),
        (Result.NOT_MODIFIED, 6 * 3600, 6 * 3600),
        (Result.REJECTED, DAY, DAY),  # the same bad file would come back at once
        (Result.FAILED, DAY, FAILED_RETRY),  # a passing failure: try again within the hour
        (Result.FAILED, 60.0, 60.0),  # but never more often than the refresh itself
    ],
)
def test_next_delay(result: Result, refresh: float, nominal: float) -> None:
    delays = [next_delay(result, refresh, random.Random(seed)) for seed in range(50)]
    assert all(nominal * (1 - JITTER) <= d <= nominal * (1 + JITTER) for d in delays)
    assert len(set(delays)) > 1, "jittered"


def test_retry_policy_scales_with_the_refresh() -> None:
    assert retry_policy(DAY) == RetryPolicy(attempts=3, first_delay=30.0)
    assert retry_policy(1.0) == RetryPolicy(attempts=3, first_delay=0.05)
    rng = random.Random(1)
    waits = [RetryPolicy(3, 30.0).delay(n, rng) for n in (1, 2)]
    assert 15 <= waits[0] <= 30 and 30 <= waits[1] <= 60
