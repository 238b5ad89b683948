"""File (`path:`) lists keep their last good version, as url lists keep their last good download (refresh.py).

A file an admin or a script writes breaks the same ways a download does: truncated, emptied, overwritten with
binary garbage or one enormous line, replaced by a directory, made unreadable. So a list file is checked (the
rules of checks.py) whenever it has changed since it was last used, and only a file that passes replaces the
version in use. Its good version is kept as a copy, `files/NAME.txt` beside the compiled snapshot (in
`state_dir`, or filterd's private temporary folder without one), with `files/NAME.json` saying which version of
which file it is and how many names it held. A file that fails, or cannot be read, is not used: the copy is
compiled in its place (nothing, for a list that never had a good version), and the log says which file and why,
at every reload until it is fixed; `filterd_list_file_ok{list}` is 0 meanwhile.

The content checks run on the copy as it is made (never holding the file whole); the counts (no entries, mostly
invalid, shrank) come from compiling it (load.py asks `verify` once the lists are compiled). A version
rejected once is not read again until the file changes. This module does file I/O: call it off the event loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from filterd.blocklists.checks import Problem, TextCheck, count_problem, shrink_problem
from filterd.blocklists.parse import Skipped
from filterd.blocklists.state import atomic_write
from filterd.config.schema import ListConfig

log = logging.getLogger(__name__)

__all__ = ["SHRINK_MIN", "FileGuard", "FileVersion"]

#: The shrink guard protects a file list from this many names up: a short list kept by hand may shrink as its
#: admin likes (a file emptied of every entry is still held back, see verify).
SHRINK_MIN = 100
_CHUNK = 1 << 20

#: (path, size, modification time in ns): which version of a file.
Stamp = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What to compile for one path list: its file's new version (`candidate`: checked, then `verify`d once
    compiled), its last good copy, or nothing (`path` None); `problem` says why the file itself is not used."""

    path: Path | None
    #: The fingerprint's view of it: the same key for the same content, whichever file holds it.
    key: tuple[object, ...]
    candidate: bool = False
    stamp: Stamp | None = None
    problem: Problem | None = None


@dataclass(frozen=True, slots=True)
class _Good:
    """files/NAME.json: the version of the file the copy was made from, and what it held."""

    source: str
    size: int
    mtime_ns: int
    entries: int
    accepted: float

    @property
    def stamp(self) -> Stamp:
        return (self.source, self.size, self.mtime_ns)


class FileGuard:
    """The last good copies of the path lists, in `folder`; one per server (it remembers rejected versions)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        #: list name -> the version of its file last rejected, and why (not read again until it changes)
        self._rejected: dict[str, tuple[Stamp, Problem]] = {}
        for stale in folder.glob(".*.new"):  # a candidate left by a crash (the folder is this server's own)
            with contextlib.suppress(OSError):
                stale.unlink()

    def copy_path(self, name: str) -> Path:
        return self.folder / f"{name}.txt"

    def prepare(self, cfg: ListConfig, *, force: bool = False) -> FileVersion:
        """Choose what to compile for `cfg` (a path list), copying a changed file (checked as it is copied)."""
        assert cfg.path is not None
        path = cfg.path
        good = self._good(cfg.name)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return self._fallback(cfg, good, Problem("no such file"), failed=True)
        except OSError as exc:
            return self._fallback(cfg, good, Problem(f"cannot read it: {exc.strerror or exc}"), failed=True)
        if stat.S_ISDIR(info.st_mode):
            return self._fallback(cfg, good, Problem("is a directory, not a list file"), failed=True)
        if not stat.S_ISREG(info.st_mode):
            return self._fallback(cfg, good, Problem("is not a regular file"), failed=True)
        stamp: Stamp = (str(path), info.st_size, info.st_mtime_ns)
        if good is not None and good.stamp == stamp and self.copy_path(cfg.name).is_file():
            self._rejected.pop(cfg.name, None)
            return FileVersion(self.copy_path(cfg.name), ("file", *stamp))
        rejected = self._rejected.get(cfg.name)
        if rejected is not None and rejected[0] == stamp and not force:
            return self._fallback(cfg, good, rejected[1], stamp=stamp)
        if info.st_size > cfg.max_bytes:
            problem = Problem(f"{info.st_size} bytes, over max_bytes")
            return self._reject(cfg, good, stamp, problem)
        return self._copy(cfg, good)

    def verify(
        self, cfg: ListConfig, version: FileVersion, entries: int, read: int, skipped: Skipped, *, force: bool = False
    ) -> Problem | None:
        """After compiling a candidate: the rules on its counts, against the last good copy. A file of only
        comments and blank lines is taken when the list had no names to lose."""
        good = self._good(cfg.name)
        last = good.entries if good is not None else 0
        problem = count_problem(read, skipped)
        if problem is not None and not (last == 0 and read == 0 and skipped.count == 0):
            return problem
        if last >= SHRINK_MIN:
            return shrink_problem(entries, last, cfg.shrink_guard, force=force, name=cfg.name)
        return None

    def accept(self, cfg: ListConfig, version: FileVersion, entries: int) -> None:
        """The candidate becomes the last good copy."""
        assert version.candidate and version.path is not None and version.stamp is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(version.path, self.copy_path(cfg.name))
        source, size, mtime_ns = version.stamp
        good = _Good(source, size, mtime_ns, entries, time.time())
        text = json.dumps(dataclasses.asdict(good), indent=2) + "\n"
        atomic_write(self.folder / f"{cfg.name}.json", text.encode())
        self._rejected.pop(cfg.name, None)

    def reject(self, cfg: ListConfig, version: FileVersion, problem: Problem) -> FileVersion:
        """The candidate failed `verify`: forget it, remember why, and say what is compiled instead."""
        assert version.stamp is not None
        discard(version)
        return self._reject(cfg, self._good(cfg.name), version.stamp, problem)

    # --- helpers ---------------------------------------------------------------------------------------------

    def _copy(self, cfg: ListConfig, good: _Good | None) -> FileVersion:
        """Copy the file to a candidate, checking its bytes on the way."""
        assert cfg.path is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        candidate = self.folder / f".{cfg.name}.{secrets.token_hex(4)}.new"
        check = TextCheck(cfg.max_bytes, "file")
        problem = None
        try:
            with cfg.path.open("rb") as source, candidate.open("wb") as copy:
                os.fchmod(copy.fileno(), 0o640)
                while chunk := source.read(_CHUNK):
                    problem = check.feed(chunk)
                    if problem is not None:
                        break
                    copy.write(chunk)
                info = os.fstat(source.fileno())  # the version copied, should it have changed meanwhile
        except OSError as exc:
            with contextlib.suppress(OSError):
                candidate.unlink()
            return self._fallback(cfg, good, Problem(f"cannot read it: {exc.strerror or exc}"), failed=True)
        stamp: Stamp = (str(cfg.path), info.st_size, info.st_mtime_ns)
        problem = problem or check.finish()
        if problem is not None and problem.reason.startswith("empty") and (good is None or good.entries == 0):
            problem = None  # an empty file where there were no names: nothing to lose
        if problem is not None:
            with contextlib.suppress(OSError):
                candidate.unlink()
            return self._reject(cfg, good, stamp, problem)
        return FileVersion(candidate, ("file", *stamp), candidate=True, stamp=stamp)

    def _reject(self, cfg: ListConfig, good: _Good | None, stamp: Stamp, problem: Problem) -> FileVersion:
        self._rejected[cfg.name] = (stamp, problem)
        return self._fallback(cfg, good, problem, stamp=stamp)

    def _fallback(
        self, cfg: ListConfig, good: _Good | None, problem: Problem, *, failed: bool = False, stamp: Stamp | None = None
    ) -> FileVersion:
        """The last good copy (or nothing) in place of the file, said loudly."""
        copy = self.copy_path(cfg.name)
        where = f"{cfg.path}:{problem.line}" if problem.line is not None else str(cfg.path)
        hint = f"; {problem.hint}" if problem.hint else ""
        if good is not None and copy.is_file():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(good.accepted))
            keeps = f"its last good version ({good.entries} names, read {when}) stays in use"
            # the key of the version the copy holds: the lists compiled from it (in use) need no compile again
            version = FileVersion(copy, ("file", *good.stamp), stamp=stamp, problem=problem)
        else:
            keeps = "it has no good version yet: the list blocks nothing until the file can be used"
            version = FileVersion(None, ("none",), stamp=stamp, problem=problem)
        what = "cannot be used" if failed else "is not used"
        (log.error if failed else log.warning)(
            "list %s: %s: %s: the file %s; %s%s", cfg.name, where, problem.reason, what, keeps, hint
        )
        return version

    def _good(self, name: str) -> _Good | None:
        try:
            data = json.loads((self.folder / f"{name}.json").read_text(encoding="utf-8"))
            return _Good(
                str(data["source"]),
                int(data["size"]),
                int(data["mtime_ns"]),
                int(data["entries"]),
                float(data["accepted"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("list %s: ignoring %s (%s)", name, self.folder / f"{name}.json", exc)
            return None


def discard(version: FileVersion) -> None:
    """Remove a candidate's copy (a version not taken after all)."""
    if version.candidate and version.path is not None:
        with contextlib.suppress(OSError):
            version.path.unlink()
