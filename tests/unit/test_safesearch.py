"""Safe search: the shipped mapping, the `safe_search` setting, and the stage against a fake resolver (its answers
read back with dnspython). The real server against a real upstream is in tests/integration/test_safesearch.py."""

from __future__ import annotations

import csv
import textwrap
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from filterd.config.load import parse_config
from filterd.config.schema import SafeSearchConfig, YoutubeRestriction
from filterd.dns import wire
from filterd.dns.response import parse_response, render
from filterd.errors import ConfigError
from filterd.pipeline.base import Answer, Decision, Query
from filterd.pipeline.safesearch import (
    DATA_FILE,
    PROVIDERS,
    SafeSearchRules,
    SafeSearchStage,
    parse_rewrites,
    shipped_rewrites,
)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "filterd" / "data" / DATA_FILE
REFERENCE = ROOT.parent / "shared" / "reference" / "safesearch-rewrites.tsv"
ON = SafeSearchConfig(enabled=True)

# --- the shipped mapping ------------------------------------------------------------------------------------


def test_shipped_mapping_has_every_provider_and_level() -> None:
    rows = shipped_rewrites()
    by_provider = {p: [r for r in rows if r.provider == p] for p in PROVIDERS}
    assert all(by_provider.values()), "every `safe_search` switch has rows"
    google = by_provider["google"]
    assert len(google) == 2 * 194 and {r.target for r in google} == {"forcesafesearch.google.com"}
    assert {"www.google.com", "google.com", "www.google.co.uk", "google.co.uk", "www.google.cat"} <= {
        r.host for r in google
    }
    youtube = {(r.host, r.level): r.target for r in by_provider["youtube"]}
    hosts = ["www.youtube.com", "m.youtube.com", "youtubei.googleapis.com", "youtube.googleapis.com"]
    for host in [*hosts, "www.youtube-nocookie.com"]:
        assert youtube[(host, "strict")] == "restrict.youtube.com"
        assert youtube[(host, "moderate")] == "restrictmoderate.youtube.com"
    assert len(youtube) == 10
    assert {r.kind for r in by_provider["yandex"]} == {"A"} and len(by_provider["yandex"]) == 52


def test_shipped_mapping_says_where_it_comes_from() -> None:
    header = "\n".join(line for line in DATA.read_text().splitlines() if line.startswith("#"))
    for needed in ("AdguardTeam/AdGuardHome", "75e43ab5", "GPL-3.0", "support.google.com/a/answer/6214622"):
        assert needed in header
    codes = {code.split(":")[0] for row in shipped_rewrites() for code in row.source.split(",")}
    assert codes == {"agh", "google", "codexdns"}
    for code in codes:
        assert f"#   {code}" in header  # each source code is explained


@pytest.mark.skipif(not REFERENCE.exists(), reason="the research notes (../shared/reference) are not beside the repo")
def test_shipped_mapping_covers_the_reference_table() -> None:
    rows = {(r.host, r.level): r for r in shipped_rewrites()}
    with REFERENCE.open(encoding="utf-8") as handle:
        reference = list(csv.DictReader(handle, delimiter="\t"))
    assert len(reference) == 258
    for ref in reference:
        level = "moderate" if ref["engine"] == "youtube" else "strict"  # AdGuard Home's YouTube rows are moderate
        row = rows[(ref["host"], level)]
        assert (row.provider, row.kind, row.target) == (ref["engine"], ref["rewrite_type"], ref["target"])


def test_no_safe_host_is_itself_rewritten() -> None:
    rows = shipped_rewrites()
    assert not {r.target for r in rows} & {r.host for r in rows}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("www.example\tgoogle\tstrict\tCNAME\tsafe.example", "expected 6 tab-separated fields"),
        ("www.example\taltavista\tstrict\tCNAME\tsafe.example\tx", "unknown provider 'altavista'"),
        ("www.example\tbing\tmoderate\tCNAME\tsafe.example\tx", "level 'moderate': strict, or moderate for youtube"),
        ("www.example\tyandex\tstrict\tA\t1.2.3\tx", "'1.2.3' is not an IPv4 address"),
        ("www.example\tbing\tstrict\tMX\tsafe.example\tx", "type 'MX'"),
        ("WWW.example\tbing\tstrict\tCNAME\tsafe.example\tx", "not a lower-case host name"),
    ],
)
def test_a_bad_row_names_its_line(line: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^safesearch.tsv:3: ") as info:
        parse_rewrites(f"# comment\n\n{line}\n")
    assert problem in str(info.value)


def test_a_host_twice_at_one_level_is_an_error() -> None:
    row = "www.example\tbing\tstrict\tCNAME\tsafe.example\tx\n"
    with pytest.raises(ValueError, match=r"safesearch.tsv:2: www.example is listed twice"):
        parse_rewrites(row + row)


# --- which names a setting rewrites ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "name", "target"),
    [
        (ON, "www.google.co.uk", "forcesafesearch.google.com"),
        (ON, "google.fr", "forcesafesearch.google.com"),
        (ON, "mail.google.com", None),  # exact names only
        (ON, "www.youtube.com", "restrict.youtube.com"),
        (
            SafeSearchConfig(True, youtube=YoutubeRestriction.MODERATE),
            "www.youtube.com",
            "restrictmoderate.youtube.com",
        ),
        (SafeSearchConfig(True, youtube=YoutubeRestriction.OFF), "www.youtube.com", None),
        (ON, "youtube.com", None),
        (ON, "www.bing.com", "strict.bing.com"),
        (SafeSearchConfig(True, bing=False), "www.bing.com", None),
        (SafeSearchConfig(True, bing=False), "www.google.com", "forcesafesearch.google.com"),
        (ON, "duckduckgo.com", "safe.duckduckgo.com"),
        (ON, "pixabay.com", "safesearch.pixabay.com"),
        (ON, "yandex.ru", "213.180.193.56"),
        (SafeSearchConfig(False), "www.google.com", None),
        (None, "www.google.com", None),
        (ON, "example.org", None),
    ],
)
def test_lookup(settings: SafeSearchConfig | None, name: str, target: str | None) -> None:
    found = SafeSearchRules(shipped_rewrites()).lookup(name, settings)
    assert (found.target if found is not None else None) == target


# --- the safe_search key --------------------------------------------------------------------------------------


def load(text: str) -> SafeSearchConfig:
    return parse_config("dns: {listen: [127.0.0.1]}\n" + textwrap.dedent(text), "f.yaml").safe_search


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SafeSearchConfig()),
        ("safe_search: true", ON),
        ("safe_search: false", SafeSearchConfig()),
        ("safe_search:", SafeSearchConfig()),
        ("safe_search: {}", ON),
        ("safe_search: {enabled: false, youtube: moderate}", SafeSearchConfig(youtube=YoutubeRestriction.MODERATE)),
        ("safe_search:\n  youtube: moderate\n", SafeSearchConfig(True, youtube=YoutubeRestriction.MODERATE)),
        ("safe_search: {youtube: strict}", ON),
        ("safe_search: {youtube: true}", ON),
        ("safe_search: {youtube: false}", SafeSearchConfig(True, youtube=YoutubeRestriction.OFF)),
        ("safe_search: {youtube: 'off'}", SafeSearchConfig(True, youtube=YoutubeRestriction.OFF)),
        ("safe_search: {bing: false, yandex: false}", SafeSearchConfig(True, bing=False, yandex=False)),
    ],
)
def test_safe_search_key(text: str, expected: SafeSearchConfig) -> None:
    assert load(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("safe_search: strict\n", "f.yaml:2: safe_search: must be true, false or a mapping"),
        ("safe_search:\n  youtube: lax\n", "f.yaml:3: safe_search.youtube: 'lax' is not one of: strict, moderate, off"),
        ("safe_search:\n  google: 1\n", "f.yaml:3: safe_search.google: must be true or false, not 1"),
        ("safe_search:\n  enabled: yes please\n", "f.yaml:3: safe_search.enabled: must be true or false"),
        ("safe_search:\n  bign: false\n", "f.yaml:3: safe_search.bign: unknown key (expected one of: bing, "),
        ("safe_search: [google]\n", "f.yaml:2: safe_search: must be true, false or a mapping"),
    ],
)
def test_safe_search_errors_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(text)
    assert any(problem.startswith(expected) for problem in info.value.problems), info.value.problems


# --- the stage, against a fake resolver ------------------------------------------------------------------------


class FakeResolver:
    """Answers from dnspython rrsets (with name compression, as a real server sends them), and records what it was
    asked. `fail` makes it answer as UpstreamResolver does when every upstream failed."""

    name = "fake"

    def __init__(self, answers: dict[tuple[str, str], list[dns.rrset.RRset]]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int, bool]] = []
        self.fail = False

    async def resolve(self, query: Query) -> Answer:
        q = query.question
        self.asked.append((q.qname, q.qtype, q.edns is not None and q.edns.do))
        if self.fail:
            return Answer(wire.build_reply(q, wire.SERVFAIL), Decision.ERROR, "upstreams failed")
        request = dns.message.from_wire(query.raw)
        response = dns.message.make_response(request)
        response.answer = self.answers.get((q.qname, dns.rdatatype.RdataType(q.qtype).name), [])
        parsed = parse_response(response.to_wire(), len(q.question))
        return Answer(render(parsed, q), Decision.FORWARDED, "fake", parsed)


def rrset(owner: str, ttl: int, rdtype: str, *data: str) -> dns.rrset.RRset:
    return dns.rrset.from_text(owner, ttl, "IN", rdtype, *data)


def query(name: str, rdtype: str = "A", **kwargs: object) -> Query:
    raw = dns.message.make_query(name, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]
    return Query(raw, wire.parse_query(raw), "127.0.0.1", "udp")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stage_with(resolver: FakeResolver, settings: SafeSearchConfig = ON) -> tuple[SafeSearchStage, Clock]:
    clock = Clock()
    return SafeSearchStage(settings, resolver, SafeSearchRules(shipped_rewrites()), clock), clock


def parsed(answer: Answer) -> list[tuple[str, str, int, str]]:
    reply = dns.message.from_wire(answer.wire)
    return [(r.name.to_text(), dns.rdatatype.to_text(r.rdtype), r.ttl, rd.to_text()) for r in reply.answer for rd in r]


async def forwarded(query: Query) -> Answer:
    return Answer(b"forwarded", Decision.FORWARDED, "next")


BING = {
    ("strict.bing.com", "A"): [
        rrset("strict.bing.com.", 300, "CNAME", "strict.edge.example."),
        rrset("strict.edge.example.", 40, "A", "192.0.2.5", "192.0.2.6"),
    ],
    ("strict.bing.com", "AAAA"): [rrset("strict.bing.com.", 300, "CNAME", "strict.edge.example.")],
}


async def test_cname_chain_is_copied_decompressed_with_the_smallest_ttl_on_our_cname() -> None:
    resolver = FakeResolver(BING)
    stage, _ = stage_with(resolver)
    q = query("WWW.Bing.com", "A", use_edns=0, want_dnssec=True)
    assert stage.answer_now(q) is None  # nothing known yet: resolved on the async path
    answer = await stage.handle(q, forwarded)
    assert answer.decision is Decision.LOCAL and answer.reason == "safe-search bing" and answer.response is None
    rows = parsed(answer)
    assert rows[:2] == [
        ("WWW.Bing.com.", "CNAME", 40, "strict.bing.com."),  # the client's spelling, as in its question
        ("strict.bing.com.", "CNAME", 300, "strict.edge.example."),
    ]
    assert sorted(rows[2:]) == [
        ("strict.edge.example.", "A", 40, "192.0.2.5"),
        ("strict.edge.example.", "A", 40, "192.0.2.6"),
    ]
    assert resolver.asked == [("strict.bing.com", wire.T_A, False)]  # filterd's own question: no DO
    reply = dns.message.from_wire(answer.wire)
    assert reply.id == q.question.id and reply.rcode() == dns.rcode.NOERROR
    assert [(o.code, o.text) for o in reply.options if o.otype == 15] == [(4, "filterd: safe-search bing")]


async def test_kept_records_answer_at_once_counting_down_until_they_expire() -> None:
    resolver = FakeResolver(BING)
    stage, clock = stage_with(resolver)
    await stage.handle(query("www.bing.com"), forwarded)
    clock.now += 15
    again = stage.answer_now(query("edgeservices.bing.com"))  # another host, the same safe host
    assert again is not None and [ttl for _, _, ttl, _ in parsed(again)] == [25, 285, 25, 25]
    clock.now += 25
    assert stage.answer_now(query("www.bing.com")) is None  # expired: asked again
    await stage.handle(query("www.bing.com"), forwarded)
    assert len(resolver.asked) == 2


async def test_empty_answer_keeps_the_cname_and_the_upstreams_rcode() -> None:
    stage, _ = stage_with(FakeResolver(BING))
    answer = await stage.handle(query("www.bing.com", "AAAA"), forwarded)
    assert parsed(answer) == [
        ("www.bing.com.", "CNAME", 300, "strict.bing.com."),
        ("strict.bing.com.", "CNAME", 300, "strict.edge.example."),
    ]


async def test_failure_is_servfail_never_the_real_name() -> None:
    resolver = FakeResolver(BING)
    resolver.fail = True
    stage, _ = stage_with(resolver)
    answer = await stage.handle(query("www.bing.com"), forwarded)
    assert answer.decision is Decision.ERROR
    reply = dns.message.from_wire(answer.wire)
    assert reply.rcode() == dns.rcode.SERVFAIL and reply.answer == []
    assert stage.answer_now(query("www.bing.com")) is None  # nothing kept from a failure


@pytest.mark.parametrize(
    ("settings", "name", "rdtype"),
    [
        (ON, "www.google.com", "MX"),
        (ON, "www.google.com", "TXT"),
        (ON, "www.google.com", "CNAME"),
        (ON, "example.org", "A"),
        (SafeSearchConfig(), "www.google.com", "A"),
        (SafeSearchConfig(True, google=False), "www.google.com", "HTTPS"),
    ],
)
async def test_what_is_not_rewritten_goes_on(settings: SafeSearchConfig, name: str, rdtype: str) -> None:
    resolver = FakeResolver({})
    stage, _ = stage_with(resolver, settings)
    assert stage.answer_now(query(name, rdtype)) is None
    assert (await stage.handle(query(name, rdtype), forwarded)).reason == "next"
    assert resolver.asked == []


@pytest.mark.parametrize("rdtype", ["HTTPS", "SVCB"])
def test_https_and_svcb_get_nodata_at_once(rdtype: str) -> None:
    stage, _ = stage_with(FakeResolver({}))
    answer = stage.answer_now(query("www.youtube.com", rdtype))
    assert answer is not None and answer.decision is Decision.LOCAL
    reply = dns.message.from_wire(answer.wire)
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA and reply.authority[0].ttl == 300


def test_settings_are_looked_up_per_query() -> None:
    """`settings_for` is the one hook a per-client setting replaces."""
    by_client: dict[str, SafeSearchConfig | None] = {"127.0.0.1": None, "127.0.0.2": ON}

    class PerClient(SafeSearchStage):
        def settings_for(self, query: Query) -> SafeSearchConfig | None:
            return by_client[query.client_ip]

    stage = PerClient(SafeSearchConfig(), FakeResolver({}))
    plain = query("www.google.com", "HTTPS")
    assert stage.answer_now(plain) is None
    plain.client_ip = "127.0.0.2"
    assert stage.answer_now(plain) is not None


def test_a_nonstandard_class_is_left_alone() -> None:
    stage, _ = stage_with(FakeResolver({}))
    raw = dns.message.make_query("www.google.com", "HTTPS", rdclass="CH").to_wire()
    assert stage.answer_now(Query(raw, wire.parse_query(raw), "127.0.0.1", "udp")) is None


def test_data_file_ships_inside_the_package() -> None:
    """`importlib.resources` finds it where the package is installed (the wheel check is in tests/deploy)."""
    from importlib import resources

    assert resources.files("filterd.data").joinpath(DATA_FILE).is_file()
