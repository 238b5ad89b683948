"""ClientStage: which group a query's client is in (`query.group`), before anything depends on it.

The first group (in config order) whose `clients` match wins: by IP or CIDR, by MAC (from the neighbour table and
DHCP leases) or by name (dns.records, DHCP leases, reverse lookups). MACs and names come from a `Directory`
refreshed in the background (`groups/sources.py`); here it is only read, and the verdict per client address is
memoised until the directory or the groups change, so the query path costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from filterd.groups.model import Directory, Group, find_group
from filterd.pipeline.base import Answer, PassThrough, Query

_MEMO_LIMIT = 4096
_NONE = object()


class ClientStage(PassThrough):
    name = "client"

    def __init__(self, groups: Sequence[Group], directory: Directory | None = None) -> None:
        self.groups = tuple(groups)
        self.directory = directory if directory is not None else Directory()
        self._memo: dict[str, Group | None] = {}
        #: Client addresses seen (kept across directory changes, bounded), for reverse lookups and new-device pokes.
        self._seen: dict[str, None] = {}
        #: Called when a client address is seen for the first time (the directory looks again soon).
        self.on_new_client: Callable[[], None] | None = None

    def set_directory(self, directory: Directory) -> None:
        """A new snapshot of who is who: forget every verdict made with the old one."""
        self.directory = directory
        self._memo = {}

    def group_of(self, client_ip: str) -> Group | None:
        found = self._memo.get(client_ip, _NONE)
        if found is _NONE:
            found = find_group(self.groups, client_ip, self.directory)
            if client_ip not in self._seen:
                if len(self._seen) >= _MEMO_LIMIT:
                    self._seen = {}
                self._seen[client_ip] = None
                if self.on_new_client is not None:
                    self.on_new_client()
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo = {}
            self._memo[client_ip] = found
        return found  # type: ignore[return-value]

    def seen(self) -> list[str]:
        """The client addresses seen, most recent last (for reverse lookups)."""
        return list(self._seen)[::-1]

    def answer_now(self, query: Query) -> Answer | None:
        if self.groups:
            query.group = self.group_of(query.client_ip)
        return None
