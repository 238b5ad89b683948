"""One logged query, and how a client's identity is stored under each privacy mode (pure)."""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass


class Privacy(enum.StrEnum):
    #: every query, with the client's IP, MAC and name
    FULL = "full"
    #: every query; the client's IP, MAC and name replaced by a keyed hash (the same device, the same hash)
    HASH_CLIENTS = "hash-clients"
    #: only blocked queries (what a safeguarding lead needs), with the client's IP, MAC and name
    BLOCKED_ONLY = "blocked-only"
    #: nothing is written
    OFF = "off"


@dataclass(frozen=True, slots=True)
class Record:
    """One answered query, as the log keeps it."""

    time: float  # seconds since 1970
    client: str  # IP address, or its keyed hash
    mac: str  # "" when unknown
    device: str  # a name of the client ("" when unknown)
    group: str  # "" for no group
    name: str  # the query name
    qtype: str
    decision: str  # blocked, cached, forwarded, local, refused, error
    list: str  # for a block: the list (or bypass-protection, group:..., schedule:...)
    category: str
    ms: float  # answer time in milliseconds (the average, for a row that counts several)
    #: how many times this client asked this, with this answer, within the row's one-second write interval
    count: int = 1


def pseudonym(key: bytes, value: str) -> str:
    """A keyed hash of a client identifier: stable for one key, useless without it (16 hex digits)."""
    if not value:
        return ""
    return "h:" + hmac.new(key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]
