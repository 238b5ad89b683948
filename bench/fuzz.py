#!/usr/bin/env python3
"""Fuzz a real filterd on loopback and check that every reply it sends parses.

    .venv/bin/python bench/fuzz.py [--packets N] [--seconds S] [--seed N] [--tcp-share F] [--workers N] [--out FILE]

Starts a fake upstream (this file with --upstream: raw bytes, an answer for every query) and filterd
(`python -m filterd serve`, its own process, on a free 127.0.0.1 port), then sends N packets over UDP and TCP
from 127.0.0.1, .2 and .3 (the top-level rules, a group with safe search and its own block entry, a group whose
schedule blocks everything): mutated real queries, random bytes, names holding every byte value, compression
pointers, bad counts, EDNS oddities and odd headers (`Fuzzer.packet`). Every reply is checked (`check_reply`):
it parses with dnspython (`dns.message.from_wire`) and, independently, with dnslib; its ID is the query's; its
question is the query's own bytes; every SOA in it is owned by the query name or a parent of it; a UDP reply
fits the client's buffer. A packet that should get a reply (12 bytes or more, QR=0) and gets none is lost. At the
end filterd must still be running, answer a normal query right, and have logged no traceback.

dnslib refuses any name with a label that is not UTF-8 ("Invalid label"), which DNS allows (RFC 2181 11) and
dnspython, dig and every resolver read. Those replies are counted apart (`dnslib_non_utf8`), and only when
dnspython read them and one of their names does have such a label; any other dnslib error is a failure.

Bounded: at most N packets and S seconds; at most WINDOW UDP queries in flight; every packet goes to
127.0.0.0/8; the processes started here are stopped by their PID. bench/README.md has the figures.
Exit status 0 when nothing failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dnslib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"  # filterd and the upstream listen here; clients send from CLIENTS: loopback only
CLIENTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
#: UDP queries in flight at once: far below filterd's 2,048 and what a socket buffer holds.
WINDOW = 96
#: How long a reply may take (filterd's dns.timeout is 1 s) before its query counts as lost.
REPLY_WAIT = 4.0
UPSTREAM_A = bytes([192, 0, 2, 1])
UPSTREAM_AAAA = bytes.fromhex("20010db8000000000000000000000001")
SINKHOLE_V4 = "127.0.0.1"

CONFIG = """\
dns:
  listen: ["{host}:{port}"]
  upstreams: ["{host}:{upstream}"]
  timeout: 1
  workers: {workers}
  records:
    fuzz.lan: 127.0.0.54
groups:
  - name: safe
    clients: [127.0.0.2]
    safe_search: true
    block: [example.net]
  - name: night
    clients: [127.0.0.3]
    schedules: [always]
schedules:
  always:
    when: ["daily 00:00-12:00", "daily 12:00-00:00"]
    block: all
"""

# ------------------------------------------------------------------------------------------------ packets

_SEED_QUESTIONS = [
    ("example.org", "A"),
    ("Www.Example.ORG", "AAAA"),
    ("a.b.c.example.net", "TXT"),
    ("omegle.com", "A"),
    ("front7.omegle.com", "HTTPS"),
    ("omegle.co.uk", "MX"),
    ("www.google.com", "A"),
    ("www.youtube.com", "HTTPS"),
    ("use-application-dns.net", "A"),
    ("mask.icloud.com", "AAAA"),
    ("_dns.resolver.arpa", "SVCB"),
    ("localhost", "A"),
    ("wpad", "A"),
    ("printer.home.arpa", "A"),
    ("fuzz.lan", "AAAA"),
    ("54.0.0.127.in-addr.arpa", "PTR"),
    ("1.1.168.192.in-addr.arpa", "PTR"),
    ("example.org", "ANY"),
    ("example.org", "AXFR"),
    ("com", "NS"),
    (".", "SOA"),
]
_SUFFIXES = (
    "",
    "home.arpa",
    "local",
    "omegle.com",
    "example.org",
    "example.net",
    "use-application-dns.net",
    "resolver.arpa",
    "168.192.in-addr.arpa",
    "localhost",
    "fuzz.lan",
)
_QTYPES = (1, 28, 16, 65, 64, 255, 252, 251, 12, 6, 2, 5, 15, 33, 41, 0, 250, 65535)

_COOKIE = dns.edns.OptionType.COOKIE  # (option 10)


def _wire_name(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"


def _opt(udp: int = 1232, ttl: int = 0, options: bytes = b"", owner: bytes = b"\x00") -> bytes:
    return owner + struct.pack("!HHIH", 41, udp, ttl, len(options)) + options


def _header(qid: int = 0, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


class Fuzzer:
    """Packets of every kind, from one seeded random source: the same run on every machine."""

    KINDS = (
        ("mutated", 34),
        ("names", 22),
        ("pointers", 10),
        ("counts", 9),
        ("edns", 12),
        ("header", 5),
        ("random", 8),
    )

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seeds = self._seeds()
        self.next_byte = 0  # names: every byte value in turn
        self.kinds = [k for k, _ in self.KINDS]
        self.weights = [w for _, w in self.KINDS]

    def _seeds(self) -> list[bytes]:
        out = []
        for name, rdtype in _SEED_QUESTIONS:
            for edns in (False, 0):
                for dnssec in (False, True) if edns is not False else (False,):
                    q = dns.message.make_query(name, rdtype, use_edns=edns, want_dnssec=dnssec)
                    if dnssec:
                        q.flags |= dns.flags.CD | dns.flags.AD
                    out.append(q.to_wire())
        cookie = dns.message.make_query(
            "example.org", "A", use_edns=0, options=[dns.edns.GenericOption(_COOKIE, b"c" * 8)]
        )
        ecs = dns.message.make_query("example.org", "A", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
        out += [cookie.to_wire(), ecs.to_wire()]
        return out

    def packet(self) -> tuple[str, bytes]:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        data: bytes = getattr(self, f"_{kind}")()
        return kind, data

    def _mutated(self) -> bytes:
        rng = self.rng
        packet = bytearray(rng.choice(self.seeds))
        for _ in range(rng.randint(1, 5)):
            op = rng.random()
            pos = rng.randrange(len(packet)) if packet else 0
            if op < 0.5 and packet:
                packet[pos] = rng.randrange(256)
            elif op < 0.6 and packet:
                packet[pos] ^= 1 << rng.randrange(8)
            elif op < 0.75:
                del packet[pos : pos + rng.randint(1, 64)]
            elif op < 0.9:
                packet[pos:pos] = rng.randbytes(rng.randint(1, 16))
            else:
                start = rng.randrange(len(packet)) if packet else 0
                packet[pos:pos] = packet[start : start + rng.randint(1, 32)]
        return bytes(packet)

    def _label(self) -> bytes:
        """A label holding the next byte value of the 256 (in turn), or random bytes of any value."""
        rng = self.rng
        byte = self.next_byte
        self.next_byte = (self.next_byte + 1) % 256
        shape = rng.random()
        if shape < 0.3:
            return bytes([byte]) * rng.choice((1, 2, 16, 63))
        if shape < 0.6:
            return b"ab" + bytes([byte]) + b"cd"
        if shape < 0.7:
            return bytes([byte]) + rng.choice((b".", b"\\", b" ", b"\\255", b"\\046", b"*", b"-"))
        return rng.randbytes(rng.randint(1, 63))

    def _names(self) -> bytes:
        rng = self.rng
        labels = [self._label() for _ in range(rng.choice((1, 1, 1, 2, 3)))]
        suffix = rng.choice(_SUFFIXES)
        labels += [p.encode() for p in suffix.split(".") if p]
        if rng.random() < 0.05:  # the longest name there is: 255 bytes
            labels = [rng.randbytes(63) for _ in range(3)] + [rng.randbytes(61)]
        while sum(len(label) + 1 for label in labels) > 254:
            labels.pop(0)
        qtype = rng.choice(_QTYPES) if rng.random() < 0.9 else rng.randrange(65536)
        qclass = 1 if rng.random() < 0.85 else rng.choice((3, 4, 254, 255, rng.randrange(65536)))
        question = _wire_name(labels) + struct.pack("!HH", qtype, qclass)
        if rng.random() < 0.5:
            do = 0x8000 if rng.random() < 0.5 else 0
            return _header(ar=1) + question + _opt(rng.choice((512, 1232, 4096)), do)
        return _header() + question

    def _pointers(self) -> bytes:
        rng = self.rng
        tail = struct.pack("!HH", rng.choice((1, 28, 16, 65)), 1)
        ptr = struct.pack("!H", 0xC000 | rng.choice((0, 2, 6, 11, 12, 13, 20, 40, 200, 0x3FFF)))
        choice = rng.randrange(8)
        if choice == 0:  # the question name is only a pointer
            return _header() + ptr + tail
        if choice == 1:  # labels, then a pointer (into the header, at itself, forward, past the end)
            return _header() + b"\x03www" + ptr + tail
        if choice == 2:  # a pointer forward to a name in the additional section
            question = b"\x03www\xc0\x16" + tail
            return _header(ar=1) + question + b"\x07example\x03org\x00" + struct.pack("!HHIH", 1, 1, 0, 0)
        if choice == 3:  # a legitimate pointer: an additional record owned by the question name
            question = b"\x07example\x03org\x00" + tail
            return _header(ar=2) + question + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + UPSTREAM_A + _opt()
        if choice == 4:  # the OPT record's owner is a pointer
            return _header(ar=1) + b"\x07example\x03org\x00" + tail + _opt(owner=b"\xc0\x0c")
        if choice == 5:  # a record whose owner points at itself (a loop)
            question = b"\x07example\x03org\x00" + tail
            at = 12 + len(question)
            return _header(ar=1) + question + struct.pack("!H", 0xC000 | at) + struct.pack("!HHIH", 1, 1, 0, 0)
        if choice == 6:  # reserved label types (0x40, 0x80)
            return _header() + bytes([rng.choice((0x40, 0x80, 0x41, 0xBF))]) + b"abc\x00" + tail
        return _header(ar=1) + b"\x07example\x03org\x00" + tail + ptr + struct.pack("!HHIH", 1, 1, 0, 0)

    def _counts(self) -> bytes:
        rng = self.rng
        packet = bytearray(rng.choice(self.seeds))
        field_at = rng.choice((4, 6, 8, 10))
        struct.pack_into("!H", packet, field_at, rng.choice((0, 2, 3, 255, 4096, 65535, rng.randrange(65536))))
        if rng.random() < 0.5:
            packet += rng.choice((b"", b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + UPSTREAM_A, rng.randbytes(20)))
        return bytes(packet)

    def _edns(self) -> bytes:
        rng = self.rng
        question = b"\x07example\x03org\x00" + struct.pack("!HH", rng.choice((1, 28, 65)), 1)
        udp = rng.choice((0, 1, 511, 512, 1232, 4096, 65535))
        ttl = (
            (rng.choice((0, 0, 1, 2, 255)) << 16) | rng.choice((0, 0x8000, 0x7FFF, 0xFFFF)) | (rng.randrange(256) << 24)
        )
        option = rng.choice(
            (
                b"",
                struct.pack("!HH", 10, 8) + b"c" * 8,  # COOKIE
                struct.pack("!HH", 10, 3) + b"bad",  # a COOKIE of the wrong size
                struct.pack("!HHHBB", 8, 4, 1, 33, 0),  # ECS with a prefix longer than its address
                struct.pack("!HH", 12, 400) + b"\x00" * 400,  # padding
                struct.pack("!HHH", 15, 2, 15),  # an EDE from a client
                struct.pack("!HH", rng.randrange(65536), 50) + b"x" * 3,  # an option running past its record
                rng.randbytes(rng.randint(1, 12)),
            )
        )
        opt = _opt(udp, ttl, option)
        choice = rng.randrange(7)
        if choice == 0:  # two OPT records
            return _header(ar=2) + question + opt + opt
        if choice == 1:  # OPT in the answer section
            return _header(an=1) + question + opt
        if choice == 2:  # OPT whose rdata runs past the end
            return _header(ar=1) + question + opt[:-1] if option else _header(ar=1) + question + _opt()[:-3]
        if choice == 3:  # an OPT that is not the last record
            return _header(ar=2) + question + opt + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + UPSTREAM_A
        if choice == 4:  # an OPT record with a name as its owner
            return _header(ar=1) + question + _opt(udp, ttl, option, owner=b"\x01x\x00")
        return _header(ar=1) + question + opt

    def _header(self) -> bytes:
        rng = self.rng
        packet = bytearray(rng.choice(self.seeds))
        flags = rng.randrange(65536) if rng.random() < 0.3 else (rng.randrange(16) << 11) | 0x0100
        struct.pack_into("!H", packet, 2, flags)
        return bytes(packet)

    def _random(self) -> bytes:
        rng = self.rng
        data = bytearray(rng.randbytes(rng.choice((rng.randint(0, 12), rng.randint(12, 64), rng.randint(12, 600)))))
        if len(data) >= 6 and rng.random() < 0.5:  # a plausible query header in front of the garbage
            data[2:6] = b"\x01\x00\x00\x01"
        return bytes(data)


def expects_reply(packet: bytes) -> bool:
    """filterd drops only packets shorter than a header and responses (QR=1); everything else is answered."""
    return len(packet) >= 12 and not packet[2] & 0x80


# ------------------------------------------------------------------------------------------------ checks


@dataclass
class Tally:
    sent: int = 0
    udp: int = 0
    tcp: int = 0
    tcp_connections: int = 0
    expected: int = 0
    replies: int = 0
    lost: int = 0
    unexpected: int = 0
    dnspython_ok: int = 0
    dnslib_ok: int = 0
    #: Replies dnslib refuses only because one of their names has a label that is not UTF-8.
    dnslib_non_utf8: int = 0
    failures: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    rcodes: Counter[str] = field(default_factory=Counter)
    #: The first failures: what was wrong, the query and the reply (hex).
    samples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {f.name: dict(v) if isinstance(v := getattr(self, f.name), Counter) else v for f in fields(self)}

    def fail(self, problem: str, query: bytes, reply: bytes | None) -> None:
        self.failures += 1
        if len(self.samples) < 25:
            self.samples.append({"problem": problem, "query": query.hex(), "reply": (reply or b"").hex()})


def _non_utf8_label(msg: dns.message.Message) -> bool:
    names = [rrset.name for section in msg.sections for rrset in section]
    for name in names:
        for label in name.labels:
            try:
                label.decode("utf-8")
            except UnicodeDecodeError:
                return True
    return False


def _query_limit(query: bytes) -> int | None:
    """The UDP reply size this query allows, when dnspython can read the query."""
    try:
        msg = dns.message.from_wire(query)
    except Exception:
        return None
    return 512 if msg.edns < 0 else min(max(msg.payload, 512), 1232)


def check_reply(query: bytes, reply: bytes, transport: str, tally: Tally) -> None:
    """Every check of one reply; failures go to the tally."""
    tally.replies += 1
    try:
        msg = dns.message.from_wire(reply)
    except Exception as exc:
        tally.fail(f"dnspython: {type(exc).__name__}: {exc}", query, reply)
        return
    tally.dnspython_ok += 1
    try:
        dnslib.DNSRecord.parse(reply)
        tally.dnslib_ok += 1
    except Exception as exc:
        if "Invalid label" in str(exc) and _non_utf8_label(msg):
            tally.dnslib_non_utf8 += 1
        else:
            tally.fail(f"dnslib: {type(exc).__name__}: {exc}", query, reply)
    tally.rcodes[str(msg.rcode())] += 1
    if msg.id != struct.unpack_from("!H", query)[0] or not msg.flags & dns.flags.QR:
        tally.fail("reply ID or QR", query, reply)
    if msg.question:
        qname = msg.question[0].name
        name_wire = qname.to_wire()
        assert name_wire is not None  # (None only when written to a file)
        length = len(name_wire) + 4
        if reply[12 : 12 + length] != query[12 : 12 + length] or reply[12 : 12 + length - 4] != name_wire:
            tally.fail("the question is not the query's own bytes", query, reply)
        for rrset in msg.authority:
            if rrset.rdtype == dns.rdatatype.SOA and not qname.is_subdomain(rrset.name):
                tally.fail(f"SOA owner {rrset.name} is not {qname} or a parent of it", query, reply)
    if transport == "udp":
        limit = _query_limit(query)
        if limit is not None and len(reply) > limit:
            tally.fail(f"a UDP reply of {len(reply)} bytes for a client that takes {limit}", query, reply)


# ------------------------------------------------------------------------------------------------ the run


def _bound_udp(source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.bind((source, 0))
    sock.setblocking(False)
    return sock


def _tcp_exchange(port: int, source: str, packets: list[bytes], framing: str, tally: Tally) -> None:
    """One connection: the packets, length-prefixed and pipelined; then the replies until filterd closes.

    `framing`: "plain"; "empty-frames" (a zero-length frame before each packet); "dribble" (the stream written a
    few bytes at a time); "short-frame" (a last frame that announces more bytes than come). Every byte sent is in
    a frame of known content, so each reply has exactly one query."""
    empty = struct.pack("!H", 0) if framing == "empty-frames" else b""
    stream = b"".join(empty + struct.pack("!H", len(p)) + p for p in packets)
    expected = {struct.unpack_from("!H", p)[0]: p for p in packets if expects_reply(p)}
    if framing == "short-frame":
        stream += struct.pack("!H", 300) + b"\x00" * 20
    tally.tcp_connections += 1
    tally.expected += len(expected)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(REPLY_WAIT)
        sock.bind((source, 0))
        try:
            sock.connect((HOST, port))
            if framing == "dribble":
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for at in range(0, len(stream), 7):
                    sock.sendall(stream[at : at + 7])
            else:
                sock.sendall(stream)
            sock.shutdown(socket.SHUT_WR)  # EOF: filterd answers what it has, then closes
            buffer = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        except OSError as exc:
            tally.fail(f"tcp: {type(exc).__name__}: {exc}", stream[:512], None)
            buffer = b""
    pos = 0
    while pos + 2 <= len(buffer):
        length = struct.unpack_from("!H", buffer, pos)[0]
        reply = buffer[pos + 2 : pos + 2 + length]
        pos += 2 + length
        query = expected.pop(struct.unpack_from("!H", reply)[0], None) if len(reply) >= 2 else None
        if query is None:
            tally.unexpected += 1
            tally.fail("tcp: a reply to no query of this connection", b"", reply)
            continue
        check_reply(query, reply, "tcp", tally)
    if pos != len(buffer):
        tally.fail("tcp: a reply cut short", b"", buffer[pos:])
    tally.lost += len(expected)


def run(port: int, packets: int, seconds: float, seed: int = 1, tcp_share: float = 0.1) -> Tally:
    """Send `packets` packets (a `tcp_share` of them over TCP) within `seconds`, checking every reply."""
    fuzzer = Fuzzer(seed)
    rng = random.Random(seed + 1)
    tally = Tally()
    socks = [_bound_udp(source) for source in CLIENTS]
    by_fd = {sock.fileno(): (index, sock) for index, sock in enumerate(socks)}
    #: (client index, query ID) -> (query, time sent)
    pending: dict[tuple[int, int], tuple[bytes, float]] = {}
    qid = 0
    started = time.monotonic()
    deadline = started + seconds

    def drain(wait: float) -> None:
        readable, _, _ = select.select(socks, [], [], wait)
        for sock in readable:
            index = by_fd[sock.fileno()][0]
            while True:
                try:
                    reply = sock.recv(65535)
                except BlockingIOError:
                    break
                sent = pending.pop((index, struct.unpack_from("!H", reply)[0]), None) if len(reply) >= 2 else None
                if sent is None:
                    tally.unexpected += 1
                    tally.fail("udp: a reply to no query in flight", b"", reply)
                    continue
                check_reply(sent[0], reply, "udp", tally)

    def expire(now: float) -> None:
        for key, (_, at) in list(pending.items()):
            if now - at > REPLY_WAIT:
                del pending[key]
                tally.lost += 1

    try:
        while tally.sent < packets and time.monotonic() < deadline:
            if tally.tcp < tally.sent * tcp_share:  # a connection of 1-15 packets, so tcp_share of them all
                batch = []
                for _ in range(min(rng.randint(1, 15), packets - tally.sent)):
                    kind, data = fuzzer.packet()
                    data = _with_id(data, qid)
                    qid = (qid + 1) & 0xFFFF
                    batch.append(data)
                    tally.by_kind[kind] += 1
                framing = rng.choices(("plain", "empty-frames", "dribble", "short-frame"), (7, 1, 1, 1))[0]
                _tcp_exchange(port, rng.choice(CLIENTS), batch, framing, tally)
                tally.sent += len(batch)
                tally.tcp += len(batch)
                continue
            while len(pending) < WINDOW and tally.sent < packets:
                kind, data = fuzzer.packet()
                index = rng.randrange(len(socks))
                key = (index, qid)
                data = _with_id(data, qid)
                qid = (qid + 1) & 0xFFFF
                if key in pending:  # the ID came round again with its reply still missing
                    del pending[key]
                    tally.lost += 1
                with contextlib.suppress(BlockingIOError):
                    socks[index].sendto(data, (HOST, port))
                tally.sent += 1
                tally.udp += 1
                tally.by_kind[kind] += 1
                if expects_reply(data):
                    tally.expected += 1
                    pending[key] = (data, time.monotonic())
            drain(0.05)
            expire(time.monotonic())
        end = time.monotonic() + REPLY_WAIT
        while pending and time.monotonic() < end:
            drain(0.05)
        tally.lost += len(pending)
    finally:
        for sock in socks:
            sock.close()
    tally.seconds = round(time.monotonic() - started, 1)
    return tally


def _with_id(packet: bytes, qid: int) -> bytes:
    return struct.pack("!H", qid) + packet[2:] if len(packet) >= 2 else packet


# ------------------------------------------------------------------------------------------------ processes


def serve_upstream() -> None:
    """The fake upstream (run as `fuzz.py --upstream`): prints its port, answers every query at once over UDP
    (A 192.0.2.1; AAAA 2001:db8::1; TXT three strings of 200 bytes, so a reply to a client without EDNS is cut
    to TC=1; else NODATA with an SOA owned by the query name), until its stdin closes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    print(sock.getsockname()[1], flush=True)
    soa_rdata = b"\x02ns\x04fake\x00\x04host\x04fake\x00" + struct.pack("!IIIII", 1, 1800, 900, 604800, 60)
    txt_rdata = (bytes([200]) + b"t" * 200) * 3
    records = {
        1: b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + UPSTREAM_A,
        28: b"\xc0\x0c" + struct.pack("!HHIH", 28, 1, 60, 16) + UPSTREAM_AAAA,
        16: b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, len(txt_rdata)) + txt_rdata,
    }
    soa = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 60, len(soa_rdata)) + soa_rdata
    while True:
        readable, _, _ = select.select([sock, sys.stdin], [], [])
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return
        if sock not in readable:
            continue
        data, addr = sock.recvfrom(65535)
        end = 12  # filterd's questions are never compressed
        while end < len(data) and data[end]:
            end += 1 + data[end]
        end += 5
        if len(data) < 12 or end > len(data) or data[2] & 0x80:
            continue
        qtype, qclass = struct.unpack_from("!HH", data, end - 4)
        answer = records.get(qtype) if qclass == 1 else None
        qid, flags = struct.unpack_from("!HH", data)
        header = struct.pack("!HHHHHH", qid, 0x8080 | (flags & 0x0110), 1, 1 if answer else 0, 0 if answer else 1, 0)
        sock.sendto(header + data[12:end] + (answer or soa), addr)


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    """The fake upstream in its own process; yields its port."""
    proc = subprocess.Popen([sys.executable, __file__, "--upstream"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        _stop(proc)


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@dataclass
class Filterd:
    """filterd in its own process (`python -m filterd serve`), its log in a file."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def answers_normally(self) -> list[str]:
        """What is wrong with filterd's answers to two normal queries (a forwarded name, a blocked one): []."""
        problems = []
        if self.proc.poll() is not None:
            return [f"filterd exited with status {self.proc.returncode}"]
        for name, want in (("example.org", "192.0.2.1"), ("omegle.com", SINKHOLE_V4)):
            for tcp in (False, True):
                q = dns.message.make_query(name, "A", use_edns=0)
                try:
                    send = dns.query.tcp if tcp else dns.query.udp
                    r = send(q, HOST, port=self.port, timeout=3)
                    got = [rd.to_text() for rrset in r.answer for rd in rrset]
                except dns.exception.DNSException as exc:
                    got = [f"{type(exc).__name__}"]
                if got != [want]:
                    problems.append(f"{name} over {'TCP' if tcp else 'UDP'}: {got}, not [{want}]")
        return problems

    def tracebacks(self) -> str:
        """A traceback in the log (the workers' included: they share its stderr), or a worker that exited."""
        text = self.log.read_text(errors="replace")
        for mark in ("Traceback", "exited (status"):
            if mark in text:
                start = text.rfind("\n", 0, text.find(mark)) + 1
                return text[start:][:3000]
        return ""


@contextlib.contextmanager
def filterd(workdir: Path, upstream_port: int, python: str = sys.executable, workers: int = 1) -> Iterator[Filterd]:
    """filterd on a free 127.0.0.1 port, forwarding to the fake upstream; stopped by its PID afterwards."""
    port = free_port()
    config = workdir / "fuzz.yaml"
    config.write_text(CONFIG.format(host=HOST, port=port, upstream=upstream_port, workers=workers))
    log = workdir / "filterd.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen([python, "-m", "filterd", "serve", "-c", str(config)], stderr=out, env=env, cwd=ROOT)
    server = Filterd(proc, port, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                dns.query.udp(dns.message.make_query("example.org", "A"), HOST, port=port, timeout=0.2)
                break
            except dns.exception.DNSException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"filterd did not start: {log.read_text()[-2000:]}") from None
        yield server
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=1800, help="stop sending after this long (default 1800)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--tcp-share", type=float, default=0.1, help="the share of packets sent over TCP")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs filterd")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fuzz-latest.json")
    parser.add_argument("--workers", type=int, default=1, help="filterd's dns.workers (the packets spread over them)")
    parser.add_argument("--upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        serve_upstream()
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="filterd-fuzz-") as work,
        upstream() as upstream_port,
        filterd(Path(work), upstream_port, args.python, args.workers) as server,
    ):
        rss_before = server.rss_kib()
        tally = run(server.port, args.packets, args.seconds, args.seed, args.tcp_share)
        time.sleep(0.5)
        problems = server.answers_normally()
        rss_after = server.rss_kib() if server.proc.poll() is None else 0
        tracebacks = server.tracebacks()
    result: dict[str, Any] = {
        **tally.as_dict(),
        "seed": args.seed,
        "rss_kib": [rss_before, rss_after],
        "after": problems or "answers normally",
        "tracebacks": tracebacks,
        "uvloop": _uvloop(args.python),
        "workers": args.workers,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))
    for sample in tally.samples[:5]:
        print(sample)
    ok = tally.failures == 0 and tally.lost == 0 and not problems and not tracebacks and tally.sent == args.packets
    print(
        f"{'PASS' if ok else 'FAIL'}: {tally.sent} packets in {tally.seconds} s, {tally.replies} replies checked, "
        f"{tally.failures} failures, {tally.lost} lost"
    )
    return 0 if ok else 1


def _uvloop(python: str) -> bool:
    return subprocess.run([python, "-c", "import uvloop"], capture_output=True).returncode == 0


if __name__ == "__main__":
    sys.exit(main())
