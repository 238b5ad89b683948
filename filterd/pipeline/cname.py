"""CnameStage: a forwarded answer whose CNAME (or DNAME) chain reaches a blocked name is blocked like
the name itself, as Pi-hole, AdGuard Home and Blocky do. Inside the cache, so only answers that passed
this check are cached; it uses the policy stage's own `decide`, the one lookup every part shares."""

from __future__ import annotations

from filterd.pipeline.base import Answer, CallNext, Decision, PassThrough, Query
from filterd.pipeline.policy import PolicyStage


class CnameStage(PassThrough):
    name = "cname"

    def __init__(self, policy: PolicyStage) -> None:
        self.policy = policy

    async def handle(self, query: Query, call_next: CallNext) -> Answer:
        answer = await call_next(query)
        if answer.response is None or not answer.response.cnames:
            return answer
        for target in answer.response.cnames:
            match = self.policy.decide(target, query.group)
            if match is not None:
                reply = self.policy.reply(query.question, match)
                return Answer(reply, Decision.BLOCKED, match.list, category=match.category)
        return answer
