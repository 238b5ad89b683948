"""The raw-bytes reader and writer, checked against dnspython (an independent implementation)."""

from __future__ import annotations

import contextlib
import struct

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.dns import wire


def make(name: str = "Www.Example.ORG", rdtype: str = "A", **kwargs: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    q.id = 0x1234
    return q.to_wire()


def test_parse_plain_query() -> None:
    q = wire.parse_query(make(use_edns=False))
    assert (q.id, q.qname, q.qtype, q.qclass, q.edns) == (0x1234, "www.example.org", 1, 1, None)
    assert q.question == make(use_edns=False)[12:]
    assert q.max_udp == 512


def test_parse_edns() -> None:
    q = wire.parse_query(make(use_edns=0, want_dnssec=True, payload=4096))
    assert q.edns is not None and q.edns.do and q.edns.udp_size == 4096 and q.edns.version == 0
    assert q.max_udp == 1232
    small = wire.parse_query(make(use_edns=0, payload=100))
    assert small.max_udp == 512


@pytest.mark.parametrize(
    ("packet", "rcode", "reason"),
    [
        (b"\x00" * 11, None, "shorter than a DNS header"),
        (make()[:2] + b"\x81\x00" + make()[4:], None, "a response"),
        (make()[:2] + b"\x28\x00" + make()[4:], wire.NOTIMP, "opcode 5"),
        (make()[:4] + b"\x00\x02" + make()[6:], wire.FORMERR, "2 questions"),
        (make()[:4] + b"\x00\x00" + make()[6:], wire.FORMERR, "0 questions"),
        (make()[:20], wire.FORMERR, "past the end"),
        (make()[:12] + b"\xc0\x0c\x00\x01\x00\x01", wire.FORMERR, "compressed question"),
        (make()[:12] + b"\x40abc\x00\x00\x01\x00\x01", wire.FORMERR, "unknown label type"),
    ],
)
def test_bad_packets(packet: bytes, rcode: int | None, reason: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.parse_query(packet)
    assert info.value.rcode == rcode and reason in info.value.reason


def test_badvers_keeps_the_question() -> None:
    q = dns.message.make_query("example.org", "A", use_edns=1)
    with pytest.raises(wire.BadVersion) as info:
        wire.parse_query(q.to_wire())
    reply = dns.message.from_wire(wire.build_reply(info.value.question, wire.BADVERS))
    assert reply.rcode() == dns.rcode.BADVERS


def test_two_opt_records_is_formerr() -> None:
    packet = make(use_edns=0)
    opt = packet[-11:]
    doubled = packet[:10] + struct.pack("!H", 2) + packet[12:] + opt
    with pytest.raises(wire.WireError) as info:
        wire.parse_query(doubled)
    assert info.value.rcode == wire.FORMERR


def test_unusual_label_bytes_are_escaped_not_matched() -> None:
    packet = make()[:12] + b"\x05a.b\xffc\x03com\x00\x00\x01\x00\x01"
    assert wire.parse_query(packet).qname == "a\\046b\\255c.com"


def test_build_reply_is_valid_dns() -> None:
    q = wire.parse_query(make(use_edns=0, want_dnssec=True))
    answer = wire.rr(wire.NAME_PTR, wire.T_A, 42, bytes([192, 0, 2, 1]))
    reply = dns.message.from_wire(wire.build_reply(q, answers=(answer,), ede=(15, "filterd: x")))
    assert reply.id == 0x1234 and reply.answer[0][0].address == "192.0.2.1" and reply.answer[0].ttl == 42
    assert reply.question[0].name.to_text() == "Www.Example.ORG."
    assert reply.ednsflags & dns.flags.DO
    assert [(o.code, o.text) for o in reply.options] == [(15, "filterd: x")]  # type: ignore[attr-defined]


def test_truncate_sets_tc_and_keeps_question() -> None:
    q = wire.parse_query(make())
    answers = tuple(wire.rr(wire.NAME_PTR, wire.T_TXT, 1, b"\xff" + b"x" * 255) for _ in range(4))
    reply = wire.build_reply(q, answers=answers)
    cut = dns.message.from_wire(wire.truncate(reply, len(q.question)))
    assert cut.flags & dns.flags.TC and cut.answer == [] and cut.question[0].name.to_text() == "Www.Example.ORG."


def test_answer_names_reads_cnames_through_compression() -> None:
    r = dns.message.make_response(dns.message.make_query("a.example.org", "A"))
    r.answer.append(dns.rrset.from_text("a.example.org.", 60, "IN", "CNAME", "b.Example.org."))
    r.answer.append(dns.rrset.from_text("b.example.org.", 60, "IN", "CNAME", "front.omegle.com."))
    r.answer.append(dns.rrset.from_text("front.omegle.com.", 60, "IN", "A", "192.0.2.1"))
    assert wire.answer_names(r.to_wire()) == [(5, "b.example.org"), (5, "front.omegle.com")]
    assert wire.answer_names(b"\x00" * 5) == []


def test_compression_loop_is_an_error_not_a_hang() -> None:
    query = make(use_edns=False)
    start = len(query)  # the answer's owner name points at itself
    header = query[:6] + struct.pack("!H", 1) + query[8:12]
    rr = struct.pack("!H", 0xC000 | start) + struct.pack("!HHIH", 5, 1, 0, 2) + struct.pack("!H", 0xC000 | start)
    packet = header + query[12:] + rr
    with pytest.raises(wire.WireError, match="loop"):
        wire.read_name(packet, start)
    assert wire.answer_names(packet) == []


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise_anything_but_wire_error(data: bytes) -> None:
    with contextlib.suppress(wire.WireError):
        wire.parse_query(data)
    wire.error_reply(data, wire.FORMERR)
    wire.answer_names(data)


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_mutated_queries_never_raise(data: st.DataObject) -> None:
    packet = bytearray(make(use_edns=0, want_dnssec=True))
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        position = data.draw(st.integers(0, max(len(packet) - 1, 0)))
        if op == "flip" and packet:
            packet[position] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del packet[position:]
        else:
            packet[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        q = wire.parse_query(bytes(packet))
    except wire.WireError:
        return
    reply = wire.build_reply(q, wire.NOERROR, ede=(15, "x"))
    assert wire.response_header(reply) is not None
