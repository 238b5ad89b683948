"""Blocked replies (`sinkhole.py`): a reply made once for each kind of query is, for every later query of that
kind, the reply built for it from nothing: the client's ID, flags, question bytes (0x20 case) and EDNS."""

from __future__ import annotations

import itertools

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest

from filterd.config.schema import BlockingConfig, BlockingMode
from filterd.dns import wire
from filterd.sinkhole import BlockedReplies


def _question(
    name: str, rdtype: str, qid: int, edns: int | None, do: bool, cd: bool, rdclass: str = "IN"
) -> wire.Question:
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, want_dnssec=do)
    q.id = qid
    if cd:
        q.flags |= dns.flags.CD
    return wire.parse_query(q.to_wire())


@pytest.mark.parametrize("mode", list(BlockingMode))
def test_a_reply_made_before_is_the_reply_made_anew(mode: BlockingMode) -> None:
    kept = BlockedReplies(BlockingConfig(mode=mode))
    kinds = itertools.product(
        ["A", "AAAA", "HTTPS", "TXT", "MX"],
        [None, 0],
        [False, True],
        [False, True],
        [("chat.example", "chat.example"), ("www.Chat.example", "chat.example"), ("Omegle.example", "omegle.example")],
        ["chat", "other-list"],
    )
    for rdtype, edns, do, cd, (name, entry), list_name in kinds:
        for qid in (1, 4242, 65535):  # the first made, the next from what was kept
            q = _question(name, rdtype, qid, edns, do and edns is not None, cd)
            fresh = BlockedReplies(BlockingConfig(mode=mode)).reply(q, entry, list_name)
            assert kept.reply(q, entry, list_name) == fresh, (rdtype, edns, do, cd, name, entry, list_name, qid)
    chaos = _question("chat.example", "TXT", 7, 0, False, False, rdclass="CH")
    assert kept.reply(chaos, "chat.example", "chat") == BlockedReplies(BlockingConfig(mode=mode)).reply(
        chaos, "chat.example", "chat"
    )


def test_the_reply_names_the_list_and_echoes_the_clients_question() -> None:
    replies = BlockedReplies(BlockingConfig(mode=BlockingMode.NXDOMAIN))
    replies.reply(_question("chat.example", "A", 1, 0, False, False), "chat.example", "chat")
    reply = dns.message.from_wire(
        replies.reply(_question("ChAt.example", "A", 99, 0, True, False), "chat.example", "chat")
    )
    assert reply.id == 99 and reply.rcode() == dns.rcode.NXDOMAIN
    assert str(reply.question[0].name) == "ChAt.example."
    assert reply.authority[0].name == reply.question[0].name  # the SOA's owner: the listed name, the query's own
    assert reply.ednsflags & dns.flags.DO
    assert [(o.code, o.text) for o in reply.options] == [(wire.EDE_BLOCKED, "filterd: chat")]  # type: ignore[attr-defined]
