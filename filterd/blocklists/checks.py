"""Is this still a list? The checks a new version of a list must pass before it replaces the good one in use:
a download (refresh.py) or a list file read again at a reload (guard.py). Pure: bytes and counts in, a Problem
or None out.

The rules, in order:

* over `max_bytes`;
* empty: no bytes, or only whitespace;
* binary: a NUL byte anywhere (garbage, an image, a compressed file served as text);
* not text: more than 1% of the bytes are not UTF-8;
* an HTML or XML page (a login, captive-portal or error page);
* no entries: nothing but comments, blank lines and invalid lines;
* mostly invalid: more lines (or hosts-line names) skipped than read as entries;
* shrank: fewer than `shrink_guard` x the last good copy's entries (an admin can force it).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from filterd.blocklists.parse import Skipped
from filterd.config.units import format_size

__all__ = ["MAX_UNDECODABLE", "Problem", "TextCheck", "count_problem", "shrink_problem"]

#: At most this share of undecodable bytes (not UTF-8) in a list that is still read as text.
MAX_UNDECODABLE = 0.01
FORCE_HINT = "a forced update (`filterd lists update --force {name}`) accepts it"
_HTML_STARTS = ("<!doctype html", "<html", "<?xml", "<head", "<body", "<!--")
_HEAD = 4096
_REPLACEMENT = "\ufffd".encode()


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a new version of a list is not used; `line` points into it when one line shows it (else None)."""

    reason: str
    line: int | None = None
    #: What the admin can do about it, said last.
    hint: str | None = None

    def where(self, name: str) -> str:
        return f"{name}:{self.line}" if self.line is not None else name


class TextCheck:
    """The byte-level rules (size, empty, binary, not UTF-8, HTML), fed in chunks, so a file can be checked while
    it is copied and never be held whole in memory. `what` names it in the messages ("download", "file")."""

    def __init__(self, max_bytes: int, what: str = "download") -> None:
        self.max_bytes = max_bytes
        self.what = what
        self.size = 0
        self.lines = 0  # newlines seen so far
        self._blank = True
        self._head = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._undecodable = 0
        self._first_undecodable: int | None = None
        self.problem: Problem | None = None

    def feed(self, chunk: bytes) -> Problem | None:
        """Check the next chunk; the first problem found (then stop feeding), else None."""
        if self.problem is not None:
            return self.problem
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.problem = Problem(f"{self.size} bytes, over max_bytes ({format_size(self.max_bytes)})")
            return self.problem
        if self._blank and chunk.strip():
            self._blank = False
        if len(self._head) < _HEAD:
            self._head += chunk[: _HEAD - len(self._head)]
        nul = chunk.find(b"\0")
        if nul >= 0:
            line = self.lines + chunk.count(b"\n", 0, nul) + 1
            self.problem = Problem("binary data (a NUL byte), not a text list", line)
            return self.problem
        text = self._decoder.decode(chunk)
        bad = text.count("\ufffd") - chunk.count(_REPLACEMENT)
        if bad > 0:
            if self._first_undecodable is None:
                self._first_undecodable = self.lines + text.count("\n", 0, text.find("\ufffd")) + 1
            self._undecodable += bad
        self.lines += chunk.count(b"\n")
        return None

    def finish(self) -> Problem | None:
        """After the last chunk: the first problem of the whole text, else None."""
        if self.problem is not None:
            return self.problem
        self._undecodable += self._decoder.decode(b"", final=True).count("\ufffd")
        if self._blank:
            return Problem(f"empty {self.what} ({self.size} bytes)")
        if self._undecodable > MAX_UNDECODABLE * self.size:
            return Problem(
                f"not UTF-8 text ({self._undecodable} of {self.size} bytes undecodable)", self._first_undecodable
            )
        head = self._head.decode("utf-8", "replace")
        stripped = head.lstrip("\ufeff \t\r\n")
        if stripped[:64].lower().startswith(_HTML_STARTS):
            first = head.count("\n", 0, len(head) - len(stripped)) + 1
            return Problem("an HTML page, not a list (a login, portal or error page?)", first)
        return None


def count_problem(read: int, skipped: Skipped) -> Problem | None:
    """The rules on what parsing found: `read` rules (entries, exceptions and repeats) against `skipped` lines."""
    if not read:
        if skipped.count:
            return Problem(
                f"no entries: all {skipped.count} rules skipped, e.g. {skipped.sample_reason}", skipped.sample_line
            )
        return Problem("no entries (only comments and blank lines)")
    if skipped.count > read:
        return Problem(
            f"mostly invalid: {skipped.count} rules skipped and only {read} read, e.g. {skipped.sample_reason}",
            skipped.sample_line,
        )
    return None


def shrink_problem(entries: int, last_good: int, guard: float, *, force: bool, name: str) -> Problem | None:
    """A version with fewer than `guard` x `last_good` entries is held back unless forced (guard 0: never)."""
    if force or guard <= 0 or last_good <= 0 or entries >= guard * last_good:
        return None
    share = entries / last_good
    return Problem(
        f"shrank from {last_good} to {entries} names ({share:.0%} of the last good copy, under shrink_guard {guard:g})",
        hint=FORCE_HINT.format(name=name),
    )
