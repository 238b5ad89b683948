"""PolicyStage: names on a blocklist get the sinkhole reply; `allow` wins over every list.

The order of the decision: the config's `allow` (and the client group's), then the admin's local entries
(`filterd allow` before `filterd block`, the most specific name first), then for a client in a group its own
`block` entries and a schedule that blocks everything, then the lists in their configured order (a group's
lists only, plus those its open schedules switch on).

Checks the query name at once (synchronously); a blocked name is never sent upstream. The CNAME chain of a
forwarded answer is checked by `CnameStage` with the same `decide`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from filterd.blocklists.local import LOCAL_LIST, LocalLists
from filterd.blocklists.matcher import BlockIndex, Match
from filterd.blocklists.rules import rule_kind
from filterd.dns.names import covering
from filterd.dns.wire import Question
from filterd.groups.model import Group, stay_healthy_names
from filterd.pipeline.base import Answer, Decision, PassThrough, Query
from filterd.sinkhole import BlockedReplies


class AllowList:
    """Names never blocked, each with everything under it: one set lookup per label."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)

    def covers(self, qname: str) -> str | None:
        return covering(qname, self._names) if self._names else None


_new = tuple.__new__

#: The category of a block by a group's own `block` entries, and by a schedule that blocks everything.
GROUP_CATEGORY = "group"
SCHEDULE_CATEGORY = "schedule"


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
        #: Answered while a schedule blocks everything: connectivity checks, time, OS updates (shipped).
        self.healthy = stay_healthy_names()

    def replace_matcher(self, matcher: BlockIndex) -> None:
        """Swap in new lists: one reference assignment, so a query sees the old lists or the new, never a mix."""
        self.matcher = matcher
        self.changed()

    def changed(self) -> None:
        for callback in self.on_change:
            callback()

    def decide(self, qname: str, group: Group | None = None) -> Match | None:
        """The block decision for a name (for a client in `group`, or under the top-level rules): the same
        lookup for DNS, the block page and `filterd check`."""
        if self.allow.covers(qname) is not None:
            return None
        if group is not None and group.allow and group.allows(qname) is not None:
            return None
        local = self.local.match(qname)
        if local is not None:
            return Match(LOCAL_LIST, local.entry, 0, LOCAL_LIST, True) if local.blocked else None
        if group is None:
            return self.matcher.match(qname)
        if group.block:
            entry = group.blocks(qname)
            if entry is not None:
                return Match(f"group:{group.name}", entry, 0, GROUP_CATEGORY, True)
        if group.block_all:
            if covering(qname, self.healthy) is not None:
                return None  # connectivity checks, time and OS updates keep working
            return Match(f"schedule:{','.join(sorted(group.active))}", qname, 0, SCHEDULE_CATEGORY, True)
        return self.matcher.match(qname, group.lists)

    def reply(self, q: Question, match: Match) -> bytes:
        """The blocked reply; a negative answer's SOA is owned by the listed name, or the query name when a brand
        rule or a pattern matched."""
        entry = match.entry
        if entry != q.qname and rule_kind(entry) != "name":
            entry = q.qname
        return self.replies.reply(q, entry, match.list)

    def answer_now(self, query: Query) -> Answer | None:
        if query.policy_passed:
            return None
        match = self.decide(query.question.qname, query.group)
        if match is None:
            return None
        return self.blocked(query, match)

    def blocked(self, query: Query, match: Match) -> Answer:
        # (made from a tuple: a NamedTuple's generated __new__ would cost half as much as the reply itself)
        return _new(Answer, (self.reply(query.question, match), Decision.BLOCKED, match.list, None, match.category))
