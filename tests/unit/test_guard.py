"""Path lists keep their last good version (issue 13, defect 7): a file that is garbage, one enormous line, mostly
invalid, empty, much shorter, a directory or unreadable never replaces the list in use; a good file does."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from filterd.blocklists.checks import TextCheck
from filterd.blocklists.guard import SHRINK_MIN, FileGuard
from filterd.blocklists.load import LoadedLists, load_lists
from filterd.config.schema import ListConfig

GOOD = "".join(f"name{i}.example\n" for i in range(1000))


class Lists:
    """One path list `extra` (beside the built-in chat-roulette list) loaded as a server does: one guard,
    the current snapshot passed back in."""

    def __init__(self, tmp_path: Path, **options: object) -> None:
        self.file = tmp_path / "extra.txt"
        self.snapshot = tmp_path / "state" / "lists.snapshot"
        self.snapshot.parent.mkdir()
        self.guard = FileGuard(self.snapshot.with_name("files"))
        self.configs = [
            ListConfig(name="chat-roulette", builtin="chat-roulette", subdomains=True),
            ListConfig(name="extra", path=self.file, **options),  # type: ignore[arg-type]
        ]
        self.loaded: LoadedLists | None = None

    def load(self, force: bool = False) -> LoadedLists:
        current = self.loaded.matcher if self.loaded is not None else None
        self.loaded = load_lists(
            self.configs, None, self.snapshot, current=current, guard=self.guard, force=["extra"] if force else ()
        )
        return self.loaded

    def blocks(self, name: str) -> bool:
        assert self.loaded is not None
        match = self.loaded.matcher.match(name)
        return match is not None and match.list == "extra"


def _write(path: Path, data: bytes | str) -> None:
    """Replace a file so that its size or modification time surely changes."""
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


BAD_VERSIONS = [
    # (what, content, the reason logged)
    ("binary garbage", os.urandom(64) + b"\0" + os.urandom(2_000_000), "binary data (a NUL byte)"),
    (
        "100,000 lines of garbage",
        b"".join(os.urandom(30).replace(b"\0", b"x") + b"\n" for _ in range(100_000)),
        "not UTF-8 text",
    ),
    ("a single 10 MB line", b"a" * 10_000_000, "no entries: all 1 rules skipped"),
    ("mostly invalid", ("ok.example\n" + "bad..name\n" * 5).encode(), "mostly invalid: 5 rules skipped"),
    ("empty", b"", "empty file (0 bytes)"),
    ("only blank lines", b"\n\n  \n", "empty file (5 bytes)"),
    ("only comments", b"# nothing here\n", "no entries (only comments and blank lines)"),
    ("shrank to 10%", "".join(f"name{i}.example\n" for i in range(100)).encode(), "shrank from 1000 to 100 names"),
    ("an HTML page", b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>\n", "an HTML page"),
]


@pytest.mark.parametrize(("what", "content", "reason"), BAD_VERSIONS, ids=[b[0] for b in BAD_VERSIONS])
def test_a_bad_version_of_a_list_file_never_replaces_the_good_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, what: str, content: bytes, reason: str
) -> None:
    lists = Lists(tmp_path)
    _write(lists.file, GOOD)
    first = lists.load()
    assert first.entries["extra"] == 1000 and lists.blocks("name5.example") and first.problems == {}
    _write(lists.file, content)
    with caplog.at_level(logging.WARNING):
        loaded = lists.load()
    assert loaded.matcher is first.matcher  # the same lists: nothing was recompiled, the cache may stay
    assert loaded.entries["extra"] == 1000 and lists.blocks("name999.example")
    assert reason in loaded.problems["extra"]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert str(lists.file) in warning and reason in warning
    assert "its last good version (1000 names" in warning

    caplog.clear()  # the same bad version again (the next reload): still not used, still said
    with caplog.at_level(logging.WARNING):
        assert lists.load().matcher is first.matcher
    assert reason in caplog.text

    _write(lists.file, GOOD + "new.example\n")  # fixed: used at once
    fixed = lists.load()
    assert fixed.entries["extra"] == 1001 and lists.blocks("new.example") and fixed.problems == {}


def test_a_shrunk_file_is_taken_when_forced_or_when_small(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    _write(lists.file, GOOD)
    lists.load()
    _write(lists.file, "only.example\n")
    assert "shrank from 1000 to 1 names" in lists.load().problems["extra"]
    assert lists.blocks("name1.example")
    forced = lists.load(force=True)  # `filterd lists update --force extra`
    assert forced.entries["extra"] == 1 and lists.blocks("only.example") and not lists.blocks("name1.example")
    # below SHRINK_MIN names a list kept by hand shrinks freely
    _write(lists.file, "".join(f"n{i}.example\n" for i in range(SHRINK_MIN - 1)))
    assert lists.load().entries["extra"] == SHRINK_MIN - 1
    _write(lists.file, "n1.example\n")
    assert lists.load().entries["extra"] == 1


def test_shrink_guard_zero_turns_the_guard_off(tmp_path: Path) -> None:
    lists = Lists(tmp_path, shrink_guard=0.0)
    _write(lists.file, GOOD)
    lists.load()
    _write(lists.file, "only.example\n")
    assert lists.load().entries["extra"] == 1


def test_max_bytes_applies_to_a_file(tmp_path: Path) -> None:
    lists = Lists(tmp_path, max_bytes=10_000)
    _write(lists.file, "a.example\n")
    lists.load()
    _write(lists.file, GOOD)  # 17 KB
    loaded = lists.load()
    assert "over max_bytes" in loaded.problems["extra"] and loaded.entries["extra"] == 1


def test_a_list_with_nothing_to_lose_takes_an_empty_or_comment_only_file(tmp_path: Path) -> None:
    """A new list whose file is still the template (only comments) is no problem, and no warning."""
    lists = Lists(tmp_path)
    _write(lists.file, "# add names here, one a line\n")
    assert lists.load().problems == {}
    _write(lists.file, "")
    loaded = lists.load()
    assert loaded.problems == {} and loaded.entries["extra"] == 0


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo"])
def test_a_file_that_cannot_be_read_leaves_the_last_good_version(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    lists = Lists(tmp_path)
    _write(lists.file, GOOD)
    lists.load()
    lists.file.unlink()
    if kind == "directory":
        lists.file.mkdir()
    elif kind == "fifo":
        os.mkfifo(lists.file)
    with caplog.at_level(logging.ERROR):
        loaded = lists.load()
    expected = {"missing": "no such file", "directory": "is a directory", "fifo": "is not a regular file"}[kind]
    assert expected in loaded.problems["extra"] and lists.blocks("name1.example")
    assert any(r.levelno == logging.ERROR and str(lists.file) in r.getMessage() for r in caplog.records)


def test_a_file_that_cannot_be_read_at_the_first_start_blocks_nothing_but_starts(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    lists.file.mkdir()
    loaded = lists.load()
    assert "is a directory" in loaded.problems["extra"] and loaded.entries["extra"] == 0
    assert loaded.entries["chat-roulette"] > 100  # the other lists serve
    lists.file.rmdir()
    _write(lists.file, GOOD)
    assert lists.load().entries["extra"] == 1000  # and the next reload takes the file


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_leaves_the_last_good_version(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    _write(lists.file, GOOD)
    lists.load()
    _write(lists.file, GOOD + "x.example\n")
    lists.file.chmod(0)
    loaded = lists.load()
    assert "cannot read it" in loaded.problems["extra"] and loaded.entries["extra"] == 1000


@pytest.mark.parametrize(
    ("bad", "reason"), [(b"\0\0\0", "binary data"), (b"name1.example\n", "shrank from 1000 to 1 names")]
)
def test_the_last_good_version_survives_a_restart(tmp_path: Path, bad: bytes, reason: str) -> None:
    """The good copy is kept beside the snapshot (in state_dir): a restart with a broken file serves it, and the
    snapshot on disk never holds a version that failed (a restart maps it without checking again)."""
    lists = Lists(tmp_path)
    _write(lists.file, GOOD)
    lists.load()
    _write(lists.file, bad)
    assert reason in lists.load().problems["extra"]  # a reload: rejected
    for _ in range(2):  # a new process, twice
        again = Lists.__new__(Lists)
        again.__dict__.update(lists.__dict__)
        again.guard, again.loaded = FileGuard(lists.snapshot.with_name("files")), None
        loaded = again.load()
        assert loaded.entries["extra"] == 1000 and reason in loaded.problems["extra"]
    assert not list(lists.snapshot.parent.glob("*.pending"))


def test_an_unchanged_file_is_neither_copied_nor_compiled_again(tmp_path: Path) -> None:
    lists = Lists(tmp_path)
    _write(lists.file, GOOD)
    first = lists.load()
    copy = lists.guard.copy_path("extra")
    copied = copy.stat().st_mtime_ns
    assert lists.load().matcher is first.matcher and copy.stat().st_mtime_ns == copied
    assert not list(copy.parent.glob(".*.new"))  # no candidate left behind


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_text_checks_give_the_same_answer_in_chunks(chunk: int) -> None:
    cases = [b"a.example\nb.exa\x00mple\n", bytes(range(128, 256)) * 4, b"\n\n<html>x</html>", b"  \n", b"ok.example\n"]
    for data in cases:
        whole = TextCheck(1 << 20, "file")
        expected = whole.feed(data) or whole.finish()
        pieces = TextCheck(1 << 20, "file")
        got = None
        for i in range(0, len(data), chunk):
            got = got or pieces.feed(data[i : i + chunk])
        got = got or pieces.finish()
        assert got == expected, data
