"""AccessStage: only clients in `dns.allow_clients` are answered; everyone else gets REFUSED.

First in the chain, so an outsider learns nothing (not even what is blocked) and costs no upstream query.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from filterd.config.schema import IPNetwork
from filterd.dns import wire
from filterd.pipeline.base import Answer, Decision, PassThrough, Query

_MEMO_LIMIT = 4096


class AccessStage(PassThrough):
    name = "access"

    def __init__(self, allow: Sequence[IPNetwork]) -> None:
        self._allow = tuple(allow)
        self._memo: dict[str, bool] = {}

    def allowed(self, client_ip: str) -> bool:
        verdict = self._memo.get(client_ip)
        if verdict is None:
            address = ipaddress.ip_address(client_ip.partition("%")[0])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            verdict = any(address in net for net in self._allow)
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[client_ip] = verdict
        return verdict

    def answer_now(self, query: Query) -> Answer | None:
        if self.allowed(query.client_ip):
            return None
        reply = wire.build_reply(query.question, wire.REFUSED, ede=(wire.EDE_PROHIBITED, "filterd: client not allowed"))
        return Answer(reply, Decision.REFUSED, "client not allowed")
