"""What every generator of a shipped list shares: the name rules and the file layout (stdlib only).

A list file is a header of `# key: value` lines (name, description, version, license, homepage, one `# source:`
line per source), a `#` note on how entries were chosen, then `# category:` sections of sorted names.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

_LABEL = re.compile(r"[a-z0-9_-]{1,63}")


class BuildError(Exception):
    """The input table cannot make a valid list; the message says which row and why."""


def normalize(raw: str) -> str:
    """Lower-case, strip a trailing dot and convert an IDN to A-labels; raise ValueError if invalid."""
    name = raw.strip().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"not a valid IDN: {exc}") from None
    name = name.lower()
    labels = name.split(".")
    if len(name) > 253:
        raise ValueError("longer than 253 characters")
    if len(labels) < 2:
        raise ValueError("a single label would block a whole top-level domain")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"bad label {label!r} (allowed: a-z 0-9 _ -, 1-63 characters)")
    if labels[-1].isdigit():
        raise ValueError("looks like an IP address, not a hostname")
    return name


def render(
    *,
    name: str,
    description: str,
    version: str,
    license: str,
    homepage: str,
    sources: list[str],
    note: str,
    sections: dict[str, list[str]],
) -> str:
    """The list file's text: the header, the note, and each category's entries in the order given (the
    generators sort names, then add brand rules and patterns after them)."""
    out = [
        f"# name: {name}",
        f"# description: {description}",
        f"# version: {version}",
        f"# license: {license}",
        f"# homepage: {homepage}",
    ]
    out += [f"# source: {line}" for line in sources]
    out.append("#")
    out += [f"# {line}" for line in note.splitlines()]
    for category, entries in sections.items():
        out += ["", f"# category: {category}"]
        out += entries
    return "\n".join(out) + "\n"


def write(text: str, output: str) -> None:
    """To the file named, or standard output for '-' (LF line ends whatever the platform)."""
    if output == "-":
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8", newline="\n")
