"""The raw-bytes reader and writer, checked against dnspython (an independent implementation)."""

from __future__ import annotations

import contextlib
import struct

import dns.edns
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.dns import wire
from tests.support import mutated


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
        (make()[:12] + b"\x05abc\x00\x00\x01\x00\x01", wire.FORMERR, "label runs past the end"),
        # labels of 63 + 63 + 63 + 63 + 3 bytes, each with its length byte: 256 bytes before the root
        (make()[:12] + (b"\x3f" + b"a" * 63) * 4 + b"\x03abc\x00\x00\x01\x00\x01", wire.FORMERR, "longer than 255"),
    ],
)
def test_bad_packets(packet: bytes, rcode: int | None, reason: str) -> None:
    with pytest.raises(wire.WireError) as info:
        wire.parse_query(packet)
    assert info.value.rcode == rcode and reason in info.value.reason


def test_the_longest_name_is_read() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 255 bytes in wire format, the root included
    q = wire.parse_query(dns.message.make_query(name, "A").to_wire())
    assert q.qname == name and len(q.question) == 255 + 4


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
    packet = mutated(data, make(use_edns=0, want_dnssec=True), st.integers(1, 6))
    try:
        q = wire.parse_query(packet)
    except wire.WireError:
        return
    reply = wire.build_reply(q, wire.NOERROR, ede=(15, "x"))
    assert wire.response_header(reply) is not None


# Names as text and back (issue 13, defect 1): a query name's text must give the client's own labels again.


@pytest.mark.parametrize(
    ("text", "wire_name"),
    [
        ("", b"\x00"),
        ("example.org", b"\x07example\x03org\x00"),
        ("a\\046b.com", b"\x03a.b\x03com\x00"),
        ("a\\.b", b"\x03a.b\x00"),
        ("a\\032b", b"\x03a b\x00"),
        ("a\\092b", b"\x03a\\b\x00"),
        ("\\000", b"\x01\x00\x00"),
        ("\\255" * 63, b"\x3f" + b"\xff" * 63 + b"\x00"),
    ],
)
def test_encode_name_reads_escapes(text: str, wire_name: bytes) -> None:
    assert wire.encode_name(text) == wire_name


@pytest.mark.parametrize("text", ["a..b", "a.", ".a", "x" * 64, "\\255" * 64, "a\\25", "a\\256", "a\\", "é.com"])
def test_encode_name_refuses_what_is_not_a_name(text: str) -> None:
    with pytest.raises(ValueError):
        wire.encode_name(text)


def test_encode_name_refuses_names_over_255_bytes() -> None:
    wire.encode_name(".".join(["x" * 63] * 3 + ["x" * 61]))  # 255 bytes: the longest there is
    with pytest.raises(ValueError):
        wire.encode_name(".".join(["x" * 63] * 3 + ["x" * 62]))


_LABELS = st.lists(st.binary(min_size=1, max_size=63), max_size=6).filter(lambda ls: sum(len(x) + 1 for x in ls) < 255)


@settings(max_examples=3000, deadline=None)
@given(_LABELS)
def test_encode_name_is_the_exact_inverse_of_name_text(labels: list[bytes]) -> None:
    assert wire.encode_name(wire.name_text(labels)) == b"".join(bytes([len(x)]) + x.lower() for x in labels) + b"\x00"


def test_name_text_escapes_every_odd_byte() -> None:
    assert wire.name_text([b"a.b", b"\xff", b"C D"]) == "a\\046b.\\255.c\\032d"
    assert wire.name_text([b"Www", b"Example"]) == "www.example"


# Compression pointers (issue 13, defect 1): never in a question, and only pointing back elsewhere.


def _with_additional_name(question_name: bytes) -> bytes:
    """A query whose question name is `question_name` and whose additional section holds example.org (at 0x16
    when the question name is 6 bytes long)."""
    header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1)
    return header + question_name + b"\x00\x01\x00\x01" + b"\x07example\x03org\x00" + struct.pack("!HHIH", 1, 1, 0, 0)


def test_a_pointer_inside_the_question_name_is_formerr() -> None:
    packet = _with_additional_name(b"\x03www\xc0\x16")  # www + a pointer forward to example.org
    with pytest.raises(wire.WireError) as info:
        wire.parse_query(packet)
    assert info.value.rcode == wire.FORMERR and "compressed question name" in info.value.reason


def test_error_replies_never_echo_a_compressed_question() -> None:
    packet = _with_additional_name(b"\x03www\xc0\x16")
    reply = wire.error_reply(packet, wire.FORMERR)
    assert reply is not None and reply[4:6] == b"\x00\x00"
    parsed = dns.message.from_wire(reply)
    assert parsed.id == 0x1234 and parsed.rcode() == dns.rcode.FORMERR and parsed.question == []


def test_error_replies_to_another_opcode_are_the_header_alone() -> None:
    q = dns.message.make_query("example.org", "A")  # as an UPDATE its zone would have to be of type SOA
    q.set_opcode(dns.opcode.UPDATE)
    reply = wire.error_reply(q.to_wire(), wire.NOTIMP)
    assert reply is not None and len(reply) == 12
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOTIMP


@pytest.mark.parametrize(
    ("name_at", "data", "problem"),
    [
        (12, b"\x00" * 12 + b"\x03www\xc0\x14" + b"\x03org\x00", "point back"),  # forward
        (12, b"\x00" * 12 + b"\x03www\xc0\x0c", "point back"),  # at itself
        (18, b"\x00" * 12 + b"\x03www\xc0\x12" + b"\x03org\xc0\x0c", "point back"),  # back, then into itself
    ],
)
def test_pointers_must_point_back_to_another_name(name_at: int, data: bytes, problem: str) -> None:
    with pytest.raises(wire.WireError, match=problem):
        wire.read_name(data, name_at)


def test_pointers_back_are_read() -> None:
    data = b"\x00" * 12 + b"\x07example\x03org\x00" + b"\x03www\xc0\x0c" + b"\x01a\xc0\x19"
    assert wire.read_name(data, 25) == ([b"www", b"example", b"org"], 31)
    assert wire.read_name(data, 31) == ([b"a", b"www", b"example", b"org"], 35)


@settings(max_examples=2000, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 3),
    _LABELS,
    st.binary(max_size=40),
)
def test_every_error_reply_parses(flags: int, qdcount: int, labels: list[bytes], rest: bytes) -> None:
    """Whatever the header, the name (every byte value) and the bytes after it, an error reply parses."""
    name = b"".join(bytes([len(x)]) + x for x in labels) + b"\x00"
    packet = struct.pack("!HHHHHH", 7, flags & ~wire.QR, qdcount, 0, 0, 0) + name + rest
    reply = wire.error_reply(packet, wire.FORMERR)
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert parsed.id == 7 and parsed.rcode() == dns.rcode.FORMERR
