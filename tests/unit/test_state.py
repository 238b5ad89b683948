"""state_dir: atomic files, tolerant metadata, one filterd per directory."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from filterd.blocklists.state import ListMeta, StateDir, StateError, atomic_write


def test_copies_and_metadata_round_trip(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.open()
    try:
        assert state.read_copy("sub") is None and state.read_meta("sub") is None
        state.write_copy("sub", b"a.example\n")
        meta = ListMeta(url="http://x/sub.txt", etag='"v1"', last_success=12.5, size=10, entries=1)
        state.write_meta("sub", meta)
        assert state.read_copy("sub") == b"a.example\n"
        assert state.read_meta("sub") == meta
        assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o750
        assert sorted(p.name for p in state.lists.iterdir()) == ["sub.json", "sub.txt"]  # no temporary files
    finally:
        state.close()


def test_metadata_from_another_version_or_damaged(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.lists.mkdir()
    state.meta_path("new").write_text(json.dumps({"url": "u", "etag": "e", "added_later": 1}))
    assert state.read_meta("new") == ListMeta(url="u", etag="e")
    state.meta_path("bad").write_text("{not json")
    assert state.read_meta("bad") is None
    state.meta_path("wrong").write_text("[1, 2]")
    assert state.read_meta("wrong") is None


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old\n")
    atomic_write(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.txt"
    target.write_bytes(b"old\n")

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new\n")
    assert target.read_bytes() == b"old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_one_filterd_per_state_dir(tmp_path: Path) -> None:
    first = StateDir(tmp_path / "state")
    first.open()
    second = StateDir(tmp_path / "state")
    with pytest.raises(
        StateError, match=f"state_dir {tmp_path / 'state'} is in use by another filterd \\(pid {os.getpid()}\\)"
    ):
        second.open()
    first.close()
    second.open()  # free again once the first is closed
    second.close()


def test_stale_temporary_files_are_removed_at_open(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / ".sub.txt.abc.tmp").write_bytes(b"half")
    state = StateDir(tmp_path)
    state.open()
    state.close()
    assert list(lists.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_parent_is_a_clear_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(StateError, match="cannot create"):
            StateDir(tmp_path / "state").open()
    finally:
        tmp_path.chmod(0o700)


def test_a_file_in_the_way_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    with pytest.raises(StateError, match=f"state_dir {tmp_path / 'state'}: cannot create"):
        StateDir(tmp_path / "state").open()
