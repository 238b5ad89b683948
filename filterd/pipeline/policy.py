"""PolicyStage: names on a blocklist get the sinkhole reply; `allow` wins over every list.

The order of the decision: the config's `allow`, then the admin's local entries (`filterd allow` before
`filterd block`, the most specific name first), then the lists in their configured order.

Checks the query name at once (synchronously); a blocked name is never sent upstream. The CNAME chain of a
forwarded answer is checked by `CnameStage` with the same `decide`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from filterd.blocklists.local import LOCAL_LIST, LocalLists
from filterd.blocklists.matcher import BlockIndex, Match
from filterd.dns.names import covering
from filterd.pipeline.base import Answer, Decision, PassThrough, Query
from filterd.sinkhole import BlockedReplies


class AllowList:
    """Names never blocked, each with everything under it: one set lookup per label."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)

    def covers(self, qname: str) -> str | None:
        return covering(qname, self._names) if self._names else None


class PolicyStage(PassThrough):
    name = "policy"

    def __init__(
        self, matcher: BlockIndex, allow: AllowList, replies: BlockedReplies, local: LocalLists | None = None
    ) -> None:
        #: Replaced whole when lists change; a query sees either the old or the new matcher, never a mix.
        self.matcher = matcher
        self.allow = allow
        self.replies = replies
        self.local = local if local is not None else LocalLists(None)
        #: Called after the lists change (the cache flushes: a cached answer may alias a newly blocked name).
        self.on_change: list[Callable[[], None]] = []

    def replace_matcher(self, matcher: BlockIndex) -> None:
        """Swap in new lists: one reference assignment, so a query sees the old lists or the new, never a mix."""
        self.matcher = matcher
        self.changed()

    def changed(self) -> None:
        for callback in self.on_change:
            callback()

    def decide(self, qname: str) -> Match | None:
        """The block decision for a name: the same lookup for DNS, the block page and `filterd check`."""
        if self.allow.covers(qname) is not None:
            return None
        local = self.local.match(qname)
        if local is not None:
            return Match(LOCAL_LIST, local.entry, 0, LOCAL_LIST, True) if local.blocked else None
        return self.matcher.match(qname)

    def answer_now(self, query: Query) -> Answer | None:
        match = self.decide(query.question.qname)
        if match is None:
            return None
        return Answer(self.replies.reply(query.question, match.entry, match.list), Decision.BLOCKED, match.list)
