"""The SOA in every negative reply filterd makes is owned by the right name, whatever bytes the query name holds
(issue 13, defect 1): the query name itself (its own bytes) or the listed or local zone above it. Checked with
dnspython, an independent reader."""

from __future__ import annotations

import struct

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.config.schema import BlockingConfig, BlockingMode
from filterd.dns import wire
from filterd.pipeline.base import Query
from filterd.pipeline.local import LocalStage
from filterd.sinkhole import BlockedReplies


def _query(labels: list[bytes], qtype: int = wire.T_A, edns: bool = False) -> wire.Question:
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    header = struct.pack("!HHHHHH", 0x4242, wire.RD, 1, 0, 0, 1 if edns else 0)
    packet = header + name + struct.pack("!HH", qtype, wire.C_IN)
    if edns:
        packet += wire.opt_record(None, False)
    return wire.parse_query(packet)


def _soa_owner(reply: bytes) -> tuple[dns.message.Message, dns.name.Name]:
    msg = dns.message.from_wire(reply)
    (soa,) = msg.authority
    assert soa.rdtype == dns.rdatatype.SOA
    return msg, soa.name


ODD_LABELS = [b"\xff" * 16, b"\xff" * 63, b"a b", b"a.b", b"a\\b", b"\x00", b"A\\046", b"\\255"]


@pytest.mark.parametrize("label", ODD_LABELS)
def test_a_single_label_gets_nxdomain_owned_by_itself(label: bytes) -> None:
    q = _query([label])
    answer = LocalStage().answer_now(Query(b"", q, "127.0.0.1", "udp"))
    assert answer is not None
    msg, owner = _soa_owner(answer.wire)
    assert msg.rcode() == dns.rcode.NXDOMAIN and owner == msg.question[0].name
    assert owner.labels == (label, b"")


@pytest.mark.parametrize("label", ODD_LABELS)
def test_a_name_under_a_local_zone_gets_the_zone_as_owner(label: bytes) -> None:
    answer = LocalStage().answer_now(Query(b"", _query([label, b"home", b"arpa"]), "127.0.0.1", "udp"))
    assert answer is not None
    assert _soa_owner(answer.wire)[1] == dns.name.from_text("home.arpa.")


@pytest.mark.parametrize("mode", [BlockingMode.NXDOMAIN, BlockingMode.SINKHOLE])
@pytest.mark.parametrize("label", ODD_LABELS)
def test_blocked_replies_are_owned_by_the_listed_name(mode: BlockingMode, label: bytes) -> None:
    replies = BlockedReplies(BlockingConfig(mode=mode))
    q = _query([label, b"omegle", b"com"], wire.T_TXT, edns=True)
    msg, owner = _soa_owner(replies.reply(q, "omegle.com", "chat-roulette"))
    assert owner == dns.name.from_text("omegle.com.")
    # A brand rule, a pattern or a schedule that blocks everything: the query name is the entry.
    msg, owner = _soa_owner(replies.reply(q, q.qname, "chat-roulette"))
    assert owner == msg.question[0].name and owner.labels[0] == label


def test_a_blocked_cname_target_owns_the_soa_with_its_own_bytes() -> None:
    """The CNAME check blocks with the target's name as text (escaped): encoded back, it is the same name."""
    replies = BlockedReplies(BlockingConfig(mode=BlockingMode.NXDOMAIN))
    q = _query([b"www", b"example", b"org"], wire.T_TXT)
    _, owner = _soa_owner(replies.reply(q, "x\\255.a\\046b.omegle.com", "chat-roulette"))
    assert owner.labels == (b"x\xff", b"a.b", b"omegle", b"com", b"")


_LABELS = st.lists(st.binary(min_size=1, max_size=63), min_size=1, max_size=4).filter(
    lambda ls: sum(len(x) + 1 for x in ls) < 240
)


@settings(max_examples=2000, deadline=None)
@given(_LABELS, st.sampled_from([[], [b"home", b"arpa"], [b"local"], [b"omegle", b"com"]]), st.booleans())
def test_every_negative_reply_parses_with_the_right_owner(labels: list[bytes], zone: list[bytes], edns: bool) -> None:
    q = _query(labels + zone, wire.T_TXT, edns)
    replies = [BlockedReplies(BlockingConfig(mode=BlockingMode.NXDOMAIN)).reply(q, q.qname, "x")]
    local = LocalStage().answer_now(Query(b"", q, "127.0.0.1", "udp"))
    if local is not None and local.wire[7] == 1:  # a local zone's NXDOMAIN (one authority record: its SOA)
        replies.append(local.wire)
    for reply in replies:
        msg, owner = _soa_owner(reply)
        assert msg.question[0].name.is_subdomain(owner)
