"""`state_dir`: the downloaded copy of each url list and what is known about it, kept across restarts.

Layout: `lists/NAME.txt` (the last good download, byte for byte), `lists/NAME.json` (its metadata) and
`lock` (held with flock for the life of the process, so two filterd processes never share one directory).
Every file is written whole to a temporary file, fsynced and renamed over the old one: a crash or a full
disk leaves the previous version, never half of a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filterd.config.schema import Config
from filterd.errors import FilterdError

log = logging.getLogger(__name__)

__all__ = ["ListMeta", "StateDir", "StateError"]

_DIR_MODE = 0o750


class StateError(FilterdError):
    """state_dir cannot be used (not creatable, not writable, or locked by another filterd)."""


@dataclass(frozen=True, slots=True)
class ListMeta:
    """What is known about one url list: the validators of its stored copy and how the last refreshes went.

    Times are Unix timestamps (seconds). `etag`, `last_modified`, `size` and `entries` describe the stored
    copy; `last_error` is the last refresh's problem (None after a success).
    """

    url: str
    etag: str | None = None
    last_modified: str | None = None
    #: When a download was last accepted or confirmed unchanged (HTTP 304).
    last_success: float | None = None
    #: When a refresh was last tried, whatever its result.
    last_attempt: float | None = None
    last_error: str | None = None
    size: int = 0
    entries: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ListMeta:
        """Tolerant of unknown keys (written by a newer filterd) and missing ones (an older one)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class StateDir:
    """One state directory, opened (created and locked) by `open()` and released by `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lists = path / "lists"
        self._lock_fd: int | None = None

    def open(self) -> None:
        """Create the directory if needed and take its lock; StateError says why it cannot be used."""
        for folder in (self.path, self.lists):
            try:
                folder.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            except OSError as exc:
                raise StateError(
                    f"state_dir {self.path}: cannot create {folder}: {exc.strerror or exc} "
                    "(set state_dir to a directory filterd may write, e.g. /var/lib/filterd)"
                ) from None
        if not os.access(self.lists, os.W_OK | os.X_OK):
            raise StateError(f"state_dir {self.path}: {self.lists} is not writable by this user")
        lock_path = self.path / "lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StateError(f"state_dir {self.path}: cannot open {lock_path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise StateError(
                    f"state_dir {self.path} is in use by another filterd{who}: two instances must not share "
                    "one state_dir; stop the other one or give this one its own state_dir"
                ) from None
            raise StateError(f"state_dir {self.path}: cannot lock {lock_path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        for stale in self.lists.glob(".*.tmp"):  # left by a crash mid-write; ours alone now that we hold the lock
            with contextlib.suppress(OSError):
                stale.unlink()

    def close(self) -> None:
        """Release the lock (the files stay for the next start)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def copy_path(self, name: str) -> Path:
        return self.lists / f"{name}.txt"

    def meta_path(self, name: str) -> Path:
        return self.lists / f"{name}.json"

    def read_copy(self, name: str) -> bytes | None:
        """The stored copy, or None when there is none yet."""
        try:
            return self.copy_path(name).read_bytes()
        except FileNotFoundError:
            return None

    def read_meta(self, name: str) -> ListMeta | None:
        """The stored metadata, or None when there is none (or it is unreadable: then it is rebuilt)."""
        path = self.meta_path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("url"), str):
                raise ValueError("not a metadata object")
            return ListMeta.from_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            log.warning("%s: ignoring unreadable list metadata (%s)", path, exc)
            return None

    def write_copy(self, name: str, data: bytes) -> None:
        atomic_write(self.copy_path(name), data)

    def write_meta(self, name: str, meta: ListMeta) -> None:
        text = json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n"
        atomic_write(self.meta_path(name), text.encode("utf-8"))


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a reader (or a crash) sees the old file or the new, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def open_state(config: Config) -> StateDir | None:
    """The locked state_dir when any enabled list has a url, the admin API is on (its token and the local
    entries live there), or a `querylog` section or safeguarding alerts are configured; None otherwise."""
    wanted = (
        config.admin is not None
        or any(cfg.url and cfg.enabled for cfg in config.lists)
        or (config.querylog.configured and config.querylog.privacy != "off")  # the query log lives there too
        or bool(config.safeguarding.alerts)
    )
    if not wanted:
        return None
    state = StateDir(config.state_dir)
    state.open()
    return state
