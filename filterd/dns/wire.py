"""Read queries and write replies straight from and to bytes.

This is the hot path: a blocked name or a locally answered query never goes through dnslib, whose full
parse costs about ten times as much. Everything here is pure (bytes in, values or bytes out) and never
raises anything but `WireError` on hostile input.
"""

from __future__ import annotations

import re
import struct
from typing import NamedTuple

# Header flag bits (RFC 1035 4.1.1, RFC 4035 3.2).
QR = 0x8000
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020
CD = 0x0010

# Response codes.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Types.
T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_HINFO, T_MX, T_TXT = 1, 2, 5, 6, 12, 13, 15, 16
T_AAAA, T_SRV, T_OPT, T_SVCB, T_HTTPS, T_IXFR, T_AXFR, T_ANY = 28, 33, 41, 64, 65, 251, 252, 255
C_IN = 1

# EDNS (RFC 6891) and Extended DNS Errors (RFC 8914).
EDNS_UDP_SIZE = 1232
OPT_EDE = 15
DO_BIT = 0x8000
EDE_STALE = 3
EDE_BLOCKED = 15
EDE_PROHIBITED = 18
EDE_NOT_READY = 14
EDE_NO_REACHABLE_AUTHORITY = 22
EDE_NETWORK_ERROR = 23

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
#: Compression pointers followed in one name, at most (dnspython's limit: a reply we relay must parse there too).
_MAX_POINTERS = 16


class WireError(Exception):
    """The packet cannot be answered normally; `rcode` is what to answer, or None to drop it."""

    def __init__(self, rcode: int | None, reason: str) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.reason = reason


class Edns(NamedTuple):
    udp_size: int
    do: bool
    version: int
    #: The raw OPTION-CODE/OPTION-LENGTH/data bytes of the client's OPT record.
    options: bytes


class Question(NamedTuple):
    """One parsed query: what every stage needs, read without dnslib."""

    id: int
    flags: int
    #: `name_text` of the question name: lower-case, no trailing dot, "" for the root, odd bytes \\DDD escaped.
    qname: str
    qtype: int
    qclass: int
    #: The question section as the client sent it (echoed in replies, 0x20 case included).
    question: bytes
    edns: Edns | None
    #: Offset just past the question section.
    end: int

    @property
    def max_udp(self) -> int:
        """The largest UDP reply this client takes (RFC 6891 6.2.5: under 512 counts as 512)."""
        if self.edns is None:
            return 512
        return min(max(self.edns.udp_size, 512), EDNS_UDP_SIZE)


#: A name that is its own text: printable ASCII without a space or a backslash (the dots checked apart: a label
#: may hold one, and then it must be escaped); the empty root too.
_PLAIN_TEXT = re.compile(rb"[!-\[\]-~]*")


def name_text(labels: list[bytes]) -> str:
    """A name as filterd's text: lower-case, dot-separated, no trailing dot ("" for the root).

    Plain printable ASCII is kept as it is; a name with any other byte (a space, a backslash, a dot inside a
    label, a control or non-ASCII byte) has every byte outside letters, digits, `-` and `_` written `\\DDD`
    (RFC 1035 5.1). The text is unambiguous and `encode_name` is its exact inverse."""
    joined = b".".join(labels)
    if _PLAIN_TEXT.fullmatch(joined) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii").lower()
    return ".".join("".join(_escape(b) for b in label.lower()) for label in labels)


def _escape(byte: int) -> str:
    ch = chr(byte)
    return ch if ch.isascii() and (ch.isalnum() or ch in "-_") else f"\\{byte:03d}"


def read_name(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """Read a possibly compressed name; return its labels and the offset just past it where it started.

    Pointers follow dnspython's rules, so a reply relayed from a name read here parses there too: each one
    points before the part of the name it was read from (so no loop and no forward reference), what it points
    to ends before that part, and a name follows at most 16 of them."""
    labels: list[bytes] = []
    end = -1
    start = offset  # where the part of the name being read starts
    limit = len(data)  # and where it must end
    jumps = 0
    total = 0
    while True:
        if offset >= limit:
            raise WireError(FORMERR, "name runs past the end of the packet")
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length & 0xC0 == 0xC0:
            if offset + 1 >= limit:
                raise WireError(FORMERR, "truncated compression pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if target >= start:
                raise WireError(FORMERR, "compression pointer that does not point back (a loop or a forward reference)")
            jumps += 1
            if jumps > _MAX_POINTERS:
                raise WireError(FORMERR, f"more than {_MAX_POINTERS} compression pointers in a name")
            if end < 0:
                end = offset + 2
            limit, start, offset = start, target, target
            continue
        if length & 0xC0:
            raise WireError(FORMERR, "unknown label type")
        if offset + 1 + length > limit:
            raise WireError(FORMERR, "label runs past the end of the packet")
        total += length + 1
        if total > 254:
            raise WireError(FORMERR, "name longer than 255 bytes")
        labels.append(data[offset + 1 : offset + 1 + length])
        offset += 1 + length
    return labels, (end if end >= 0 else offset)


def read_question_name(data: bytes, offset: int) -> tuple[list[bytes], int]:
    """Read a question's name, which must not be compressed: a pointer there can only point into the header,
    at the name itself or forward (RFC 1035 4.1.4: to a prior occurrence), and bytes holding one could not be
    echoed in a reply or forwarded as they are."""
    labels: list[bytes] = []
    start = offset
    size = len(data)
    while True:
        if offset >= size:
            raise WireError(FORMERR, "name runs past the end of the packet")
        length = data[offset]
        if length == 0:
            return labels, offset + 1
        if length > 63:
            raise WireError(FORMERR, "compressed question name" if length >= 0xC0 else "unknown label type")
        offset += 1 + length
        if offset > size:
            raise WireError(FORMERR, "label runs past the end of the packet")
        if offset - start > 254:
            raise WireError(FORMERR, "name longer than 255 bytes")
        labels.append(data[offset - length : offset])


def _skip_rr(data: bytes, offset: int) -> int:
    _, offset = read_name(data, offset)
    if offset + 10 > len(data):
        raise WireError(FORMERR, "resource record runs past the end of the packet")
    rdlength = _H.unpack_from(data, offset + 8)[0]
    offset += 10 + rdlength
    if offset > len(data):
        raise WireError(FORMERR, "rdata runs past the end of the packet")
    return offset


def parse_query(data: bytes) -> Question:
    """Parse a query. Raises WireError with the rcode to answer (FORMERR, NOTIMP, BADVERS) or None to drop."""
    if len(data) < 12:
        raise WireError(None, "shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & QR:
        raise WireError(None, "a response, not a query")
    if (flags >> 11) & 0xF != 0:
        raise WireError(NOTIMP, f"opcode {(flags >> 11) & 0xF} is not QUERY")
    if qdcount != 1:
        raise WireError(FORMERR, f"{qdcount} questions (exactly one is supported)")
    labels, offset = read_question_name(data, 12)
    if offset + 4 > len(data):
        raise WireError(FORMERR, "question runs past the end of the packet")
    qtype, qclass = _HH.unpack_from(data, offset)
    end = offset + 4
    edns = None
    if arcount:
        pos = end
        for _ in range(ancount + nscount):
            pos = _skip_rr(data, pos)
        for _ in range(arcount):
            if data[pos : pos + 3] == b"\x00\x00\x29":  # root owner, type OPT
                if edns is not None:
                    raise WireError(FORMERR, "more than one OPT record")
                if pos + 11 > len(data):
                    raise WireError(FORMERR, "truncated OPT record")
                udp_size, ttl, rdlength = struct.unpack_from("!HIH", data, pos + 3)
                options = data[pos + 11 : pos + 11 + rdlength]
                if len(options) != rdlength:
                    raise WireError(FORMERR, "OPT rdata runs past the end of the packet")
                edns = Edns(udp_size, bool(ttl & DO_BIT), (ttl >> 16) & 0xFF, options)
                pos += 11 + rdlength
            else:
                pos = _skip_rr(data, pos)
    question = Question(qid, flags, name_text(labels), qtype, qclass, data[12:end], edns, end)
    if edns is not None and edns.version != 0:
        raise BadVersion(question)
    return question


class BadVersion(WireError):
    """EDNS version other than 0 (RFC 6891 6.1.3): answer BADVERS, keeping the parsed question."""

    def __init__(self, question: Question) -> None:
        super().__init__(BADVERS, "EDNS version is not 0")
        self.question = question


def encode_name(name: str) -> bytes:
    """A name in filterd's text (`name_text`; list entries and config names are plain hostnames) -> wire format.
    `\\DDD` (and `\\X`) escapes are read back, so a query name's text gives the client's own labels again.
    ValueError for what is not a name (an empty or over-long label, a bad escape, over 255 bytes): never a
    malformed owner in a reply."""
    if not name:
        return b"\x00"
    if "\\" not in name:
        labels = [label.encode("ascii") for label in name.split(".")]
    else:
        labels = [_unescape(label) for label in _split_text(name)]
    out = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    if len(out) > 255 or any(not 0 < len(label) < 64 for label in labels):
        raise ValueError(f"not a domain name: {name!r}")
    return out


def _split_text(name: str) -> list[str]:
    """Labels of an escaped name: split at the dots that are not escaped."""
    labels: list[str] = []
    start = i = 0
    while i < len(name):
        if name[i] == "\\":
            i += 2 if i + 1 < len(name) and not name[i + 1].isdigit() else 4
            continue
        if name[i] == ".":
            labels.append(name[start:i])
            start = i + 1
        i += 1
    labels.append(name[start:])
    return labels


def _unescape(label: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(label):
        ch = label[i]
        if ch != "\\":
            out += ch.encode("ascii")
            i += 1
            continue
        digits = label[i + 1 : i + 4]
        if len(digits) == 3 and digits.isdigit() and digits.isascii() and int(digits) < 256:
            out.append(int(digits))
            i += 4
        elif i + 1 < len(label) and not label[i + 1].isdigit():
            out += label[i + 1].encode("ascii")
            i += 2
        else:
            raise ValueError(f"bad escape in {label!r}")
    return bytes(out)


def rr(owner: bytes, rtype: int, ttl: int, rdata: bytes, rclass: int = C_IN) -> bytes:
    """One resource record; `owner` is wire-format (b'\\xc0\\x0c' points at the question name)."""
    return owner + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


NAME_PTR = b"\xc0\x0c"


def soa_rdata(mname: bytes, rname: bytes, minimum: int, serial: int = 1) -> bytes:
    return mname + rname + struct.pack("!IIIII", serial, 1800, 900, 604800, minimum)


def opt_record(ede: tuple[int, str] | None, do: bool, ext_rcode: int = 0) -> bytes:
    """Our OPT record: 1232-byte buffer, DO echoed, and an Extended DNS Error if given."""
    rdata = b""
    if ede is not None:
        text = ede[1].encode("utf-8")
        rdata = _H.pack(OPT_EDE) + _H.pack(2 + len(text)) + _H.pack(ede[0]) + text
    ttl = (ext_rcode << 24) | (DO_BIT if do else 0)
    return b"\x00" + _RR_FIXED.pack(T_OPT, EDNS_UDP_SIZE, ttl, len(rdata)) + rdata


def build_reply(
    q: Question,
    rcode: int = NOERROR,
    answers: tuple[bytes, ...] = (),
    authority: tuple[bytes, ...] = (),
    ede: tuple[int, str] | None = None,
) -> bytes:
    """A reply synthesized by filterd: RA=1 (RA=0 with REFUSED: no recursion for this query), AA=0, AD=0, RD and
    CD copied; EDNS only if the query had it."""
    flags = QR | (RA if rcode != REFUSED else 0) | (q.flags & (RD | CD)) | (rcode & 0xF)
    additional = b""
    if q.edns is not None:
        additional = opt_record(ede, q.edns.do, rcode >> 4)
    header = _HEADER.pack(q.id, flags, 1, len(answers), len(authority), 1 if additional else 0)
    return b"".join((header, q.question, *answers, *authority, additional))


def error_reply(data: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP for a packet we could not parse fully: the header echoed, and the question when it is one
    well-formed uncompressed question of a QUERY. Of another opcode only the header is known to have this
    layout (RFC 8906 3.1.4; an UPDATE's zone must be of type SOA), so it gets the header alone."""
    if len(data) < 12:
        return None
    qid, flags, qdcount = struct.unpack_from("!HHH", data)
    question = b""
    if qdcount == 1 and not flags & (0xF << 11):
        try:
            _, offset = read_question_name(data, 12)  # never a compressed name: its pointer would point nowhere
            if offset + 4 <= len(data):
                question = data[12 : offset + 4]
        except WireError:
            pass
    out_flags = QR | RA | (flags & (0xF << 11)) | (flags & (RD | CD)) | (rcode & 0xF)
    return _HEADER.pack(qid, out_flags, 1 if question else 0, 0, 0, 0) + question


def response_header(data: bytes) -> tuple[int, int, int] | None:
    """(id, flags, rcode) of a response, or None if it is too short to be one."""
    if len(data) < 12:
        return None
    qid, flags = struct.unpack_from("!HH", data)
    return qid, flags, flags & 0xF


def question_matches(response: bytes, question: bytes) -> bool:
    """The response carries exactly our question (names compared case-insensitively)."""
    if len(response) < 12 + len(question) or _HEADER.unpack_from(response)[2] != 1:
        return False
    return response[12 : 12 + len(question)].lower() == question.lower()


def with_id_and_question(response: bytes, qid: int, question: bytes) -> bytes:
    """The upstream's response re-addressed to the client: its ID and its question bytes (0x20 case)."""
    return _H.pack(qid) + response[2:12] + question + response[12 + len(question) :]


def truncate(reply: bytes, question_len: int, edns: Edns | None = None) -> bytes:
    """A TC=1 reply with only the header, the question and (for an EDNS client) our OPT, for a UDP client
    whose buffer is too small: it retries over TCP."""
    qid, flags = struct.unpack_from("!HH", reply)
    opt = opt_record(None, edns.do) if edns is not None else b""
    return _HEADER.pack(qid, flags | TC, 1, 0, 0, 1 if opt else 0) + reply[12 : 12 + question_len] + opt


def answer_names(response: bytes) -> list[tuple[int, str]]:
    """(type, target) for each CNAME (and DNAME) in the answer section; [] when unreadable."""
    try:
        qdcount, ancount = struct.unpack_from("!HH", response, 4)
        pos = 12
        for _ in range(qdcount):
            _, pos = read_name(response, pos)
            pos += 4
        out: list[tuple[int, str]] = []
        for _ in range(ancount):
            _, pos = read_name(response, pos)
            rtype, _, _, rdlength = _RR_FIXED.unpack_from(response, pos)
            pos += 10
            if rtype in (T_CNAME, 39):
                labels, _ = read_name(response, pos)
                out.append((rtype, name_text(labels)))
            pos += rdlength
        return out
    except (WireError, struct.error):
        return []


#: Types named in metrics; every other type is "other" so the label set stays small.
QTYPE_LABELS: dict[int, str] = {
    T_A: "A",
    T_AAAA: "AAAA",
    T_HTTPS: "HTTPS",
    T_CNAME: "CNAME",
    T_MX: "MX",
    T_TXT: "TXT",
    T_PTR: "PTR",
    T_SRV: "SRV",
    T_SOA: "SOA",
    T_NS: "NS",
    T_ANY: "ANY",
}


def qtype_label(qtype: int) -> str:
    return QTYPE_LABELS.get(qtype, "other")
