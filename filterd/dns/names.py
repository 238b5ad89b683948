"""Domain-name helpers shared by the stages (pure)."""

from __future__ import annotations

from collections.abc import Container


def covering(name: str, names: Container[str]) -> str | None:
    """`name` itself or its nearest parent that is in `names` (most specific first), else None.

    One set lookup per label; names are lower-case without the trailing dot."""
    while True:
        if name in names:
            return name
        dot = name.find(".")
        if dot < 0:
            return None
        name = name[dot + 1 :]
