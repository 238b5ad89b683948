"""The packet cache's quick check of a new name (`PacketCache.quick`, `fastpath.quick_question`): a name the lists
block is answered without the full parse and the stages that cannot answer for it, and the answer is exactly the
slow path's, byte for byte, for every kind of name, type, EDNS, client group and blocking mode."""

from __future__ import annotations

import contextlib
import copy
import inspect
import ipaddress
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from filterd.app import App
from filterd.config.load import load_config
from filterd.dns import wire
from filterd.metrics import Metrics
from filterd.pipeline.base import Answer, Decision, PassThrough, Pipeline, Query
from filterd.pipeline.bypass import BypassStage
from filterd.pipeline.ddr import DdrStage, Designation
from filterd.pipeline.local import LocalStage
from filterd.querylog.events import QueryEvents, entry_tail
from filterd.querylog.store import Tail
from filterd.transport import fastpath
from filterd.transport.fastpath import Entry, packet_key, quick_question
from filterd.transport.handler import QueryHandler
from tests.support import mutated

# --- the question, read quickly ---------------------------------------------------------------------------------


def _query(name: str, rdtype: str = "A", **kw: object) -> bytes:
    q = dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]
    q.id = 4242
    return q.to_wire()


def _quick(data: bytes) -> wire.Question | None:
    keyed = packet_key(data, b"\x00\x00")
    return None if keyed is None else quick_question(data, keyed[0], keyed[1], keyed[2])


PADDING = dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 8)


@pytest.mark.parametrize(
    "packet",
    [
        _query("Chat.Example"),
        _query("chat.example", "AAAA", use_edns=0),
        _query("chat.example", "HTTPS", use_edns=0, want_dnssec=True, payload=4096),
        _query("chat.example", "A", use_edns=0, options=[PADDING]),
        _query("."),
        _query("a\\.b.example"),  # a dot inside a label: escaped in the text, as the full parse escapes it
        _query("a\\032b.example"),  # a space: the byte of a label 32 long, escaped in the text
        # a label longer than 32 (its length byte printable) with a byte that a length byte of 32 or less would
        # be (a space, a dot): one dot a label all the same, and yet not the text of plain labels
        _query("x" * 44 + "\\032" + ".example"),
        _query("x" * 45 + "\\..example"),
        _query("x" * 33 + "\\046y" + ".Example"),
        _query("Www." + "x" * 46 + ".example"),  # the length byte of 46 is itself a dot
        _query("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61),  # 255 bytes
    ],
)
def test_the_usual_queries_are_read_quickly_and_as_the_full_parse_reads_them(packet: bytes) -> None:
    quick = _quick(packet)
    assert quick is not None
    assert quick == wire.parse_query(packet)


def test_the_rest_is_left_to_the_full_parse() -> None:
    plain = bytearray(_query("chat.example"))
    response = bytes([*plain[:2], plain[2] | 0x80, *plain[3:]])
    notify = bytes([*plain[:2], plain[2] | 0x20, *plain[3:]])  # opcode 4
    badvers = bytearray(_query("chat.example", use_edns=0))
    badvers[-5] = 1  # the OPT's version
    two_opts = _query("chat.example", use_edns=0)
    two_opts = two_opts[:11] + b"\x02" + two_opts[12:] + two_opts[-11:]
    trailing = bytes(plain) + b"\x00"
    for packet in (response, notify, bytes(badvers), two_opts, trailing):
        assert _quick(packet) is None, packet


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_a_quick_read_is_the_full_parse_or_nothing(data: st.DataObject) -> None:
    """Mutated queries (flipped, cut and inserted bytes): whenever the quick read gives a question, it is the
    one the full parse gives."""
    rdtype = data.draw(st.sampled_from(["A", "AAAA", "TXT", "HTTPS", "ANY"]))
    edns = data.draw(st.sampled_from([None, 0]))
    name = data.draw(st.sampled_from(["chat.example", "a.b.c", "x"]))
    raw = mutated(data, _query(name, rdtype, use_edns=edns), st.integers(0, 4))
    if len(raw) < 12:
        return
    quick = _quick(raw)
    if quick is None:
        return
    assert quick == wire.parse_query(raw)


_LABEL = st.one_of(
    st.binary(min_size=1, max_size=63),  # any byte: dots, spaces, escapes, length-like bytes
    st.text(alphabet="abcXYZ019-_", min_size=1, max_size=63).map(str.encode),  # the usual: read quickly
    # a long label with one byte a short label's length byte would be (or a dot): one dot a label all the same
    st.builds(
        lambda text, odd, at: text[:at] + odd + text[at:],
        st.text(alphabet="abc", min_size=32, max_size=62).map(str.encode),
        st.sampled_from([b" ", b".", b"\x01", b"\x1f"]),
        st.integers(0, 62),
    ),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_LABEL, max_size=5), st.sampled_from([1, 28, 65, 255]))
def test_a_name_of_any_labels_is_read_quickly_as_the_full_parse_reads_it(labels: list[bytes], qtype: int) -> None:
    """Labels of every length (a label over 32 bytes has a printable length byte) and every byte: the quick read
    gives the full parse's question, text included; it gives up only on what the full parse refuses."""
    name = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    raw = bytes.fromhex("109201000001000000000000") + name + qtype.to_bytes(2, "big") + b"\x00\x01"
    try:
        full: wire.Question | None = wire.parse_query(raw)
    except wire.WireError:
        full = None
    assert _quick(raw) == full  # (None both ways: a name over 255 bytes, which the full parse refuses)


# --- the whole handler: the quick check against the slow path ---------------------------------------------------

LIST = """\
chat.example
*.wild.example
use-application-dns.net
mask.icloud.com
localhost
printer.lan
ok.chat.example
"""


@contextlib.asynccontextmanager
async def _app(tmp_path: Path, mode: str) -> AsyncIterator[App]:
    (tmp_path / "chat.txt").write_text(LIST)
    config = tmp_path / "filterd.yaml"
    config.write_text(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["127.0.0.1:9"]
  records: {{printer.lan: 192.168.1.9}}
state_dir: {tmp_path / "state"}
lists:
  - {{name: chat, path: chat.txt}}
allow: [ok.chat.example]
blocking: {{mode: "{mode}"}}
groups:
  - {{name: children, clients: [127.0.0.2], lists: [chat], block: [games.example]}}
  - {{name: adults, clients: [127.0.0.3], lists: []}}
""")
    app = App(load_config(config))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def _handler(app: App) -> QueryHandler:
    assert app.handler is not None
    return app.handler


def _answer(handler: QueryHandler, packet: bytes, client: str) -> bytes | None:
    """The reply given at once, or None when the query went on to the upstream (which is never asked)."""
    result = handler.handle(packet, client, "udp")
    if inspect.isawaitable(result):
        result.close()  # type: ignore[attr-defined]
        return None
    return result


NAMES = [
    "chat.example",
    "Www.Chat.EXAMPLE",
    "ok.chat.example",
    "x.ok.chat.example",
    "a.wild.example",
    "wild.example",
    "games.example",
    "use-application-dns.net",
    "mask.icloud.com",
    "localhost",
    "x.localhost",
    "printer.lan",
    "nothing.example",
    "_dns.resolver.arpa",
    "1.0.168.192.in-addr.arpa",
]
TYPES = ["A", "AAAA", "HTTPS", "TXT", "ANY", "SVCB", "PTR", "AXFR"]


class Told(QueryEvents):
    """What the query log and the alerts are told, in order: (client, log tail)."""

    def __init__(self) -> None:
        super().__init__(None, None, lambda alerts: None)
        self.rows: list[tuple[str, Tail]] = []

    @property
    def enabled(self) -> bool:
        return True

    def note(self, client_ip: str, tail: Tail, ms: float) -> None:
        self.rows.append((client_ip, tail))

    def hit(self, entry: Entry, client_ip: str) -> None:
        self.rows.append((client_ip, entry_tail(entry)))


@pytest.mark.parametrize("mode", ["sinkhole", "null", "nxdomain", "refused"])
async def test_every_quick_answer_is_the_slow_paths_answer(tmp_path: Path, mode: str) -> None:
    """The same reply, byte for byte, the same count in the metrics and the same row for the query log."""
    async with _app(tmp_path, mode) as app:
        quick = _handler(app)
        assert quick.fast is not None and quick.fast.policy is not None
        slow = QueryHandler(quick.pipeline, Metrics(CollectorRegistry(), "slow"))
        slow.fast = None
        quick.events, slow.events = Told(), Told()
        answered = 0
        for client in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            for name in NAMES:
                for rdtype in TYPES:
                    for kw in ({}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}):
                        packet = _query(name, rdtype, **kw)
                        for _ in range(3):  # new, remembered once, then kept by the packet cache
                            expected = _answer(slow, packet, client)
                            assert _answer(quick, packet, client) == expected, (client, name, rdtype, kw)
                            answered += expected is not None
        assert answered > 1000
        assert quick.metrics.queries.counts == slow.metrics.queries.counts
        assert sum(quick.metrics.queries.counts.values()) == answered
        assert quick.events.rows == slow.events.rows  # type: ignore[union-attr]
        assert len(slow.events.rows) == answered  # type: ignore[union-attr]


async def test_a_new_blocked_name_takes_no_full_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []
    full_parse = wire.parse_query

    def counting(data: bytes) -> wire.Question:
        parsed.append(data)
        return full_parse(data)

    made: list[Query] = []

    class Counted(Query):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(wire, "parse_query", counting)  # (the handler calls it as wire.parse_query)
    monkeypatch.setattr(fastpath, "Query", Counted)
    async with _app(tmp_path, "sinkhole") as app:
        for i in range(20):
            reply = _answer(_handler(app), _query(f"n{i}.chat.example", use_edns=0), "127.0.0.1")
            assert reply is not None and dns.message.from_wire(reply).answer
        assert parsed == []
        assert made == []  # answered whole by the quick check: no `Query`, no stage
        # its second time, the slow path's stages answer it (and the packet cache keeps the reply)
        assert _answer(_handler(app), _query("n0.chat.example", use_edns=0), "127.0.0.1") is not None
        assert [q.question.qname for q in made] == ["n0.chat.example"]
        made.clear()
        # a local name, a bypass signal and a name that is not blocked go the slow way, with the quick question
        for name in ("localhost", "use-application-dns.net"):
            assert _answer(_handler(app), _query(name), "127.0.0.1") is not None
        assert _answer(_handler(app), _query("nothing.example"), "127.0.0.1") is None
        assert parsed == []
        # an odd query (two questions' worth of header) is read by the full parse, which answers FORMERR
        odd = bytearray(_query("chat.example"))
        odd[5] = 2
        reply = _answer(_handler(app), bytes(odd), "127.0.0.1")
        assert reply is not None and reply[3] & 0xF == wire.FORMERR and len(parsed) == 1


async def test_a_name_passed_by_the_quick_check_is_not_judged_again(tmp_path: Path) -> None:
    async with _app(tmp_path, "sinkhole") as app:
        policy = app.policy
        assert policy is not None
        decided: list[str] = []
        decide = policy.decide

        def counting(qname: str, group: object = None) -> object:
            decided.append(qname)
            return decide(qname, group)  # type: ignore[arg-type]

        policy.decide = counting  # type: ignore[assignment,method-assign]
        assert _answer(_handler(app), _query("nothing.example"), "127.0.0.1") is None
        assert decided == ["nothing.example"]


class Answers(PassThrough):
    """A stage of someone's own that answers a name at once, and has no `quiet` of its own."""

    name = "own"

    def answer_now(self, query: Query) -> Answer | None:
        if query.question.qname != "n1.chat.example":
            return None
        return Answer(wire.build_reply(query.question, wire.REFUSED), Decision.LOCAL, "own")


def test_a_stage_is_quiet_only_if_it_never_answers_at_once() -> None:
    assert PassThrough().quiet("chat.example", 1)
    assert not Answers().quiet("x.example", 1)


async def test_a_stage_before_the_policy_that_answers_is_never_skipped(tmp_path: Path) -> None:
    async with _app(tmp_path, "sinkhole") as app:
        handler = _handler(app)
        stages = list(handler.pipeline.stages)
        at = next(i for i, stage in enumerate(stages) if stage.name == "policy")
        handler.pipeline = Pipeline([*stages[:at], Answers(), *stages[at:]], handler.pipeline.resolver)
        reply = _answer(handler, _query("n1.chat.example"), "127.0.0.1")
        assert reply is not None and reply[3] & 0xF == wire.REFUSED  # the stage's answer, not the list's
        reply = _answer(handler, _query("n2.chat.example"), "127.0.0.1")
        assert reply is not None and dns.message.from_wire(reply).answer  # the list's


def test_quiet_stages_never_answer_at_once() -> None:
    """`quiet` (the quick check's skip, and each stage's own first look) against the rest of `answer_now`, for
    every stage before the policy that answers at once: whenever it says quiet, the stage's whole chain of checks
    gives no answer; and it is quiet for ordinary names."""
    ddr = DdrStage()
    ddr.designate(Designation("dns.example.net", (853,), (443,), ()), ["dns.example.net"])
    stages = [
        ddr,
        BypassStage(300, ["dns.example.net"]),
        LocalStage({"printer.lan": [ipaddress.ip_address("192.168.1.9")], "nas.example": []}, ["corp.example"]),
    ]
    names = [
        *NAMES,
        "_dns.dns.example.net",
        "_853._dns.dns.example.net",
        "nas.example",
        "9.1.168.192.in-addr.arpa",
        "x.corp.example",
        "corp",
        "lan",
        "",
        "home.arpa",
        "x.local",
        "a.b.invalid",
    ]
    said = 0
    for stage in stages:
        for name in names:
            for rdtype in [*TYPES, "IXFR", "NS", "SOA", "DS"]:
                packet = dns.message.make_query(name or ".", rdtype).to_wire()
                q = wire.parse_query(packet)
                if stage.quiet(q.qname, q.qtype):
                    whole = copy.copy(stage)
                    whole.quiet = lambda qname, qtype: False  # type: ignore[method-assign]
                    assert whole.answer_now(Query(packet, q, "127.0.0.1", "udp")) is None, (stage.name, name, rdtype)
                else:
                    said += 1
        assert stage.quiet("www.chat.example", wire.T_A) and stage.quiet("www.chat.example", wire.T_HTTPS)
    assert said > 50


def _mangled(rng: random.Random, packet: bytes) -> bytes:
    """A packet with a few random edits: a byte flipped, the rest cut off, or bytes inserted."""
    out = bytearray(packet)
    for _ in range(rng.randint(0, 3)):
        op = rng.choice(["flip", "cut", "insert"])
        position = rng.randrange(max(len(out), 1))
        if op == "flip" and out:
            out[position] = rng.randrange(256)
        elif op == "cut":
            del out[position:]
        else:
            out[position:position] = rng.randbytes(rng.randint(1, 8))
    return bytes(out)


async def test_a_hostile_query_gets_the_slow_paths_answer_or_none(tmp_path: Path) -> None:
    """Mutated queries for blocked and other names, each asked three times (new, remembered, kept), from clients in
    every group: the same reply as the slow path's, or nothing from either; the same counts and log rows."""
    rng = random.Random(20261202)
    async with _app(tmp_path, "nxdomain") as app:
        quick = _handler(app)
        slow = QueryHandler(quick.pipeline, Metrics(CollectorRegistry(), "slow"))
        slow.fast = None
        quick.events, slow.events = Told(), Told()
        answered = 0
        for i in range(1500):
            name = rng.choice([*NAMES, f"n{i}.chat.example", f"x{i}.wild.example"])
            kw = rng.choice([{}, {"use_edns": 0}, {"use_edns": 0, "want_dnssec": True}])
            packet = _mangled(rng, _query(name, rng.choice(TYPES), **kw))
            client = rng.choice(["127.0.0.1", "127.0.0.2", "127.0.0.3"])
            for _ in range(3):
                expected = _answer(slow, packet, client)
                assert _answer(quick, packet, client) == expected, (packet, client)
                answered += expected is not None
        assert answered > 2000
        assert quick.metrics.queries.counts == slow.metrics.queries.counts
        assert quick.events.rows == slow.events.rows  # type: ignore[union-attr]
