"""Domain-name helpers shared by the stages, the config and the pages (pure)."""

from __future__ import annotations

import ipaddress
from collections.abc import Container


def is_address(text: str) -> bool:
    """Whether `text` is an IPv4 or IPv6 address (not a name)."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


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
