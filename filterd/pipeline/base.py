"""The one interface every stage implements, and the chain that runs them in order.

A stage answers a query or passes it on. Most answers (blocked names, refusals, local names, later cache
hits) are known at once, so each stage has two halves:

- `answer_now(query)`: synchronous, pure; returns an Answer or None. The UDP transport calls the
  pipeline's `answer_now` straight from `datagram_received`, so the common case never awaits.
- `handle(query, call_next)`: the async half, run only when no stage answered at once. A stage awaits
  `call_next(query)` and may look at or change the answer (the policy stage checks CNAME chains, the
  cache stores answers).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from filterd.dns.response import Response
from filterd.dns.wire import Question
from filterd.groups.model import Group


class Decision(enum.StrEnum):
    """What happened to a query: exactly one per query, the `decision` label of filterd_queries_total."""

    BLOCKED = "blocked"
    CACHED = "cached"
    FORWARDED = "forwarded"
    LOCAL = "local"
    REFUSED = "refused"
    ERROR = "error"
    #: Over the client network's rate limit: an empty TC=1 reply (a "slip"; the client retries over TCP).
    RATELIMITED = "ratelimited"
    #: No reply at all (over the rate limit, not slipped): the transport sends nothing; the Answer's wire is empty.
    DROPPED = "dropped"


@dataclass(slots=True)
class Query:
    raw: bytes
    question: Question
    client_ip: str
    protocol: str  # "udp" | "tcp"
    #: The client's group (set by the client stage); None: the top-level rules.
    group: Group | None = None
    #: When the query arrived (time.perf_counter()), set only while the query log needs answer times.
    received: float = 0.0
    #: False: a load balancer's own health check (a LOCAL PROXY header), kept out of the query log and alerts.
    logged: bool = True
    #: True: the policy stage's decision for this query is already made, and it is "not blocked" (the packet
    #: cache's quick check, `transport/fastpath.py`, made it a moment ago); the policy stage does not decide again.
    policy_passed: bool = False


class Answer(NamedTuple):
    wire: bytes
    decision: Decision
    #: Short and bounded: a list name, an upstream, a rule; for logs and `filterd check`.
    reason: str = ""
    #: The upstream's response as read (client-independent), for the stages that cache or inspect it.
    response: Response | None = None
    #: For a block: the category of what matched (the query log and the safeguarding alerts count by it).
    category: str = ""


#: The reason of an error answer when every upstream answered SERVFAIL: the cache remembers those briefly.
SERVFAIL_REASON = "upstreams answered SERVFAIL"

CallNext = Callable[[Query], Awaitable[Answer]]


class Stage(Protocol):
    name: str

    def answer_now(self, query: Query) -> Answer | None: ...

    def quiet(self, qname: str, qtype: int) -> bool: ...

    async def handle(self, query: Query, call_next: CallNext) -> Answer: ...


class Resolver(Protocol):
    """The end of the chain: always answers (the upstream forwarder)."""

    name: str

    async def resolve(self, query: Query) -> Answer: ...


class PassThrough:
    """Defaults for a stage: nothing to say at once, and nothing to add to the answer."""

    name = "pass"

    def answer_now(self, query: Query) -> Answer | None:
        return None

    def quiet(self, qname: str, qtype: int) -> bool:
        """True only when `answer_now` returns None for every query of this name and type, from any client: the
        packet cache's quick lane then goes past this stage without a `Query` (`transport/fastpath.py`). A stage
        that answers at once must say so for itself; False is always safe (the query takes the stages)."""
        return type(self).answer_now is PassThrough.answer_now

    async def handle(self, query: Query, call_next: CallNext) -> Answer:
        return await call_next(query)


class Pipeline:
    """Stages in order, then the resolver; built once, shared by every transport."""

    def __init__(self, stages: Sequence[Stage], resolver: Resolver) -> None:
        self.stages = tuple(stages)
        self.resolver = resolver
        self._now = tuple(s.answer_now for s in self.stages)
        call: CallNext = resolver.resolve
        for stage in reversed(self.stages):
            if getattr(type(stage), "handle", None) is PassThrough.handle:
                continue  # nothing to add on the way down or up: not a frame in every forwarded query's chain
            call = functools.partial(stage.handle, call_next=call)
        self._resolve = call

    def answer_now(self, query: Query) -> Answer | None:
        for answer_now in self._now:
            answer = answer_now(query)
            if answer is not None:
                return answer
        return None

    def resolve(self, query: Query) -> Awaitable[Answer]:
        """The async path (the first stage's `handle`, awaiting the next, down to the resolver); call it only
        after `answer_now` returned None for this query."""
        return self._resolve(query)

    def describe(self) -> str:
        return " → ".join([*(s.name for s in self.stages), self.resolver.name])
