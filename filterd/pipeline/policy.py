"""PolicyStage: names on a blocklist get the sinkhole reply; `allow` wins over every list.

Checks the query name at once (synchronously); a blocked name is never sent upstream. The CNAME chain of a
forwarded answer is checked by `CnameStage` with the same `decide`.
"""

from __future__ import annotations

from collections.abc import Iterable

from filterd.blocklists.matcher import Match, Matcher
from filterd.pipeline.base import Answer, Decision, PassThrough, Query
from filterd.sinkhole import BlockedReplies


class AllowList:
    """Names never blocked, each with everything under it: one set lookup per label."""

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(names)

    def covers(self, qname: str) -> str | None:
        names = self._names
        if not names:
            return None
        name = qname
        while True:
            if name in names:
                return name
            dot = name.find(".")
            if dot < 0:
                return None
            name = name[dot + 1 :]


class PolicyStage(PassThrough):
    name = "policy"

    def __init__(self, matcher: Matcher, allow: AllowList, replies: BlockedReplies) -> None:
        #: Replaced whole on reload; a query sees either the old or the new matcher, never a mix.
        self.matcher = matcher
        self.allow = allow
        self.replies = replies

    def decide(self, qname: str) -> Match | None:
        """The block decision for a name: the same lookup for DNS, the block page and `filterd check`."""
        if self.allow.covers(qname) is not None:
            return None
        return self.matcher.match(qname)

    def answer_now(self, query: Query) -> Answer | None:
        match = self.decide(query.question.qname)
        if match is None:
            return None
        return Answer(self.replies.reply(query.question, match.entry, match.list), Decision.BLOCKED, match.list)
