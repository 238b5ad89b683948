"""The compiled snapshot answers exactly as the in-memory Matcher does, from a mapped file."""

from __future__ import annotations

import itertools
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from filterd.blocklists.builtin import builtin_path
from filterd.blocklists.compiled import SPILL, CompiledMatcher, CompileError, ListFile, compile_lists
from filterd.blocklists.matcher import ListSource, Matcher
from filterd.blocklists.parse import parse_list

SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "domains-samples"


def _both(tmp_path: Path, files: list[tuple[str, str, str]]) -> tuple[Matcher, CompiledMatcher]:
    """files: (list name, format, text)"""
    specs = []
    sources = []
    for name, fmt, text in files:
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        specs.append(ListFile(name, f"{name}-cat", path, fmt))
        sources.append(ListSource(name, f"{name}-cat", parse_list(text, fmt=fmt)))
    out = tmp_path / "snapshot.bin"
    compile_lists(specs, out)
    return Matcher.build(sources), CompiledMatcher(out)


LISTS = [
    ("ads", "domains", "# category: tracking\nads.example\n*.wild.example\n# category: other\nexact.example\n"),
    ("hosts", "hosts", "0.0.0.0 h1.example h2.example\n127.0.0.1 deep.ads.example\n"),
    ("ab", "adblock", "||ab.example^\n@@||ok.ab.example^\n|only.example^\n@@|ads.example^\n||x.com^$third-party\n"),
]
QUERIES = [
    "ads.example",
    "x.ads.example",
    "wild.example",
    "a.wild.example",
    "exact.example",
    "sub.exact.example",
    "h1.example",
    "sub.h1.example",
    "deep.ads.example",
    "ab.example",
    "ok.ab.example",
    "z.ok.ab.example",
    "only.example",
    "sub.only.example",
    "x.com",
    "nothing.example",
    "example",
    "",
    "b\u00fc.ads.example",  # not a query's text (that escapes such bytes), but the block page may ask
    "b\udcff.ads.example",  # a byte a Host header could not decode
    "\u00fc.example",
]


@pytest.mark.parametrize("qname", QUERIES)
def test_same_answers_as_the_matcher(tmp_path: Path, qname: str) -> None:
    matcher, compiled = _both(tmp_path, LISTS)
    assert compiled.match(qname) == matcher.match(qname)
    assert compiled.entry_counts() == matcher.entry_counts()


def test_builtin_list_compiles_and_matches(tmp_path: Path) -> None:
    out = tmp_path / "s.bin"
    report = compile_lists(
        [ListFile("chat-roulette", "chat-roulette", builtin_path("chat-roulette"), "domains", True)], out
    )
    compiled = CompiledMatcher(out)
    match = compiled.match("front7.omegle.com")
    assert match is not None and (match.list, match.entry) == ("chat-roulette", "omegle.com")
    assert match.category == "chat-roulette-video"
    lines = builtin_path("chat-roulette").read_text().splitlines()
    assert lines[match.line - 1] == "omegle.com"
    assert report.entries["chat-roulette"] == compiled.entry_counts()["chat-roulette"] > 200


def test_not_a_snapshot_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"hello")
    with pytest.raises(CompileError):
        CompiledMatcher(bad)


names = st.from_regex(r"[a-c]{1,2}(\.[a-c]{1,2}){0,2}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["", "*.", "||", "@@||", "|"]), names), max_size=12),
    st.lists(st.tuples(st.sampled_from(["", "*."]), names), max_size=8),
    st.lists(names, max_size=20),
    st.booleans(),
    st.sampled_from([None, frozenset({"one"}), frozenset({"two"}), frozenset({"one", "two"}), frozenset()]),
)
def test_property_same_as_matcher(
    tmp_path_factory: pytest.TempPathFactory,
    adblock: list[tuple[str, str]],
    domains: list[tuple[str, str]],
    queries: list[str],
    domains_first: bool,
    lists: frozenset[str] | None,
) -> None:
    """Either list first (a list without exceptions first: the listed name's own block ends the lookup), and for
    a group's lists as well as all of them."""
    tmp = tmp_path_factory.mktemp("p")
    ab_text = "".join(f"{p}{n}{'^' if p in ('||', '@@||', '|') else ''}\n" for p, n in adblock)
    d_text = "".join(f"{p}{n}\n" for p, n in domains)
    files = [("one", "adblock", ab_text), ("two", "domains", d_text)]
    matcher, compiled = _both(tmp, files[::-1] if domains_first else files)
    for q in queries:
        assert compiled.match(q, lists) == matcher.match(q, lists), q
    assert compiled.entry_counts() == matcher.entry_counts()


def test_real_lists_agree(tmp_path: Path) -> None:
    if not SAMPLES.is_dir():
        pytest.skip("../shared/domains-samples not present (only in the development workspace)")
    files = ["blocklistproject-basic.hosts.txt", "ut1-chat.domains.txt", "blocklistproject-basic.adblock.txt"]
    specs = [ListFile(f, f, SAMPLES / f) for f in files]
    sources = [ListSource(f, f, parse_list((SAMPLES / f).read_text(encoding="utf-8-sig"))) for f in files]
    out = tmp_path / "real.bin"
    compile_lists(specs, out)
    compiled, matcher = CompiledMatcher(out), Matcher.build(sources)
    assert compiled.entry_counts() == matcher.entry_counts()
    names = [line.split()[-1] for line in (SAMPLES / files[0]).read_text().splitlines()[:3000] if line[:1].isdigit()]
    for name in [*names, *(f"sub.{n}" for n in names[:500]), "example.org"]:
        assert compiled.match(name) == matcher.match(name), name


def test_load_lists_reuses_an_unchanged_snapshot(tmp_path: Path) -> None:
    from filterd.blocklists.load import load_lists
    from filterd.config.schema import ListConfig

    (tmp_path / "a.txt").write_text("a.example\n")
    configs = [ListConfig(name="a", path=tmp_path / "a.txt")]
    snapshot = tmp_path / "lists.snapshot"
    first = load_lists(configs, None, snapshot)
    built = snapshot.stat().st_mtime_ns
    again = load_lists(configs, None, snapshot)
    assert snapshot.stat().st_mtime_ns == built  # mapped, not compiled again
    assert again.matcher.match("x.a.example") == first.matcher.match("x.a.example") is not None
    (tmp_path / "a.txt").write_text("b.example\n")
    changed = load_lists(configs, None, snapshot)
    assert changed.matcher.match("a.example") is None and changed.matcher.match("b.example") is not None
    assert first.matcher.match("a.example") is not None  # the old mapping still answers until dropped


def test_an_isolated_compile_gives_the_same_snapshot(tmp_path: Path) -> None:
    """Compiled in a child process (a server that is answering), the lists are the same, report included."""
    from filterd.blocklists.compiled import compile_and_open

    (tmp_path / "a.txt").write_text("# category: x\na.example\ncom\nbad..name\n@@||b.a.example^\n")
    (tmp_path / "b.txt").write_text("0.0.0.0 c.example d.example\n")
    specs = [ListFile("a", "a-cat", tmp_path / "a.txt", "adblock"), ListFile("b", "b-cat", tmp_path / "b.txt")]
    here, here_matcher = compile_and_open(specs, tmp_path / "here.snapshot", fingerprint="f", seed=7)
    child, child_matcher = compile_and_open(specs, tmp_path / "child.snapshot", fingerprint="f", isolated=True, seed=7)
    assert child == here and child.skipped["a"].count == 2
    assert (tmp_path / "child.snapshot").read_bytes() == (tmp_path / "here.snapshot").read_bytes()
    for name in ("a.example", "x.a.example", "b.a.example", "c.example", "com", "x.com"):
        assert child_matcher.match(name) == here_matcher.match(name), name
    assert child_matcher.fingerprint == "f" and not list(tmp_path.glob("*.tmp"))


def test_an_isolated_compile_falls_back_to_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No usable interpreter for the child (a frozen build, a sandbox): compiled here, with a warning."""
    import sys

    from filterd.blocklists.compiled import compile_and_open

    (tmp_path / "a.txt").write_text("a.example\n")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    report, matcher = compile_and_open([ListFile("a", "a", tmp_path / "a.txt")], tmp_path / "s", isolated=True)
    assert report.entries == {"a": 1} and matcher.match("a.example") is not None
    assert "compiling in a child process failed" in caplog.text


def test_an_isolated_compile_reports_an_unreadable_list(tmp_path: Path) -> None:
    from filterd.blocklists.compiled import compile_and_open

    with pytest.raises(CompileError, match="No such file"):
        compile_and_open([ListFile("a", "a", tmp_path / "missing.txt")], tmp_path / "s", isolated=True)


def test_the_table_is_ordered_and_finds_every_name_and_no_other(tmp_path: Path) -> None:
    """20,000 names at a load of 0.7: every run of used slots is in hash order (what lets a lookup stop early),
    the runs that reach the end spill into the spare slots instead of wrapping, the last slot stays empty, and
    every name is found while 20,000 others are not."""
    listed = [f"n{i}.example" for i in range(20_000)]
    path = tmp_path / "many.txt"
    path.write_text("\n".join(listed) + "\n")
    out = tmp_path / "s.bin"
    compile_lists([ListFile("many", "cat", path, "domains", False)], out)
    compiled = CompiledMatcher(out)
    hashes = list(compiled._hashes)
    assert compiled.slots == compiled.span + SPILL and hashes[-1] == 0
    assert sum(1 for h in hashes if h) == 20_000
    for previous, current in itertools.pairwise(hashes):
        assert not (previous and current) or previous <= current
    assert all(compiled.match(name) is not None for name in listed)
    assert not any(compiled.match(f"m{i}.example") for i in range(20_000))
    assert not any(compiled.match(f"x.n{i}.example") for i in range(2_000))  # not subtree entries


def test_names_with_the_same_hash_in_several_lists_are_all_found(tmp_path: Path) -> None:
    """The same name in two lists is two slots with one hash, side by side in the run; an exception in the
    second list does not hide the first list's block, and a group with only the second list is not blocked."""
    matcher, compiled = _both(
        tmp_path,
        [("one", "domains", "same.example\nother.example\n"), ("two", "adblock", "@@||same.example^\n")],
    )
    for qname in ("same.example", "x.same.example", "other.example"):
        assert compiled.match(qname) == matcher.match(qname)
    assert compiled.match("same.example", frozenset({"two"})) is None
    found = compiled.match("same.example", frozenset({"one"}))
    assert found is not None and found.list == "one"


def test_a_snapshot_of_the_old_layout_is_compiled_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from filterd.blocklists.load import load_lists
    from filterd.config.schema import ListConfig

    (tmp_path / "a.txt").write_text("a.example\n")
    snapshot = tmp_path / "lists.snapshot"
    snapshot.write_bytes(b"FDSNAP2\x00" + bytes(24) + bytes(12 * 16) + b"{}")  # an older filterd's snapshot
    with pytest.raises(CompileError, match="another version"):
        CompiledMatcher(snapshot)
    loaded = load_lists([ListConfig(name="a", path=tmp_path / "a.txt")], None, snapshot)
    assert loaded.matcher.match("a.example") is not None
    assert "compiling again" in caplog.text


def test_every_compile_hashes_with_a_secret_seed_of_its_own(tmp_path: Path) -> None:
    """The table's hash (XXH3, not a cryptographic one) is seeded with 64 random bits drawn for each compile, so no
    one who writes a list can make a name that collides with another under a seed they cannot read: the same lists
    compiled twice give other hashes (and another file), and the same answers."""
    (tmp_path / "a.txt").write_text("a.example\n@@||ok.a.example^\n||b.example^\n")
    specs = [ListFile("a", "a", tmp_path / "a.txt", "adblock")]
    compile_lists(specs, tmp_path / "one.bin")
    compile_lists(specs, tmp_path / "two.bin")
    one, two = CompiledMatcher(tmp_path / "one.bin"), CompiledMatcher(tmp_path / "two.bin")
    assert one.seed != two.seed
    assert (tmp_path / "one.bin").read_bytes() != (tmp_path / "two.bin").read_bytes()
    for name in ("a.example", "x.a.example", "ok.a.example", "b.example", "c.b.example", "example", "z.example"):
        assert one.match(name) == two.match(name), name
    assert one.match("b.example") is not None and one.match("ok.a.example") is None


def test_a_snapshot_whose_probes_could_run_off_the_end_is_refused(tmp_path: Path) -> None:
    """A damaged snapshot (its last slot used, or a span that does not fit its slots) is refused at load, so no
    lookup can read past the table; filterd then compiles the lists again."""
    good = tmp_path / "good.bin"
    (tmp_path / "a.txt").write_text("a.example\n")
    compile_lists([ListFile("a", "a", tmp_path / "a.txt", "domains")], good)
    data = bytearray(good.read_bytes())
    header = struct.Struct("<8sQQQQ")
    _, _, slots, _, seed = header.unpack_from(data)
    last = header.size + (slots - 1) * 8
    used = bytearray(data)
    used[last : last + 8] = (12345).to_bytes(8, "little")
    (tmp_path / "used.bin").write_bytes(used)
    with pytest.raises(CompileError, match="last slot"):
        CompiledMatcher(tmp_path / "used.bin")
    wide = bytearray(data)
    header.pack_into(wide, 0, b"FDSNAP3\x00", slots, slots, len(data) - header.size - slots * 12, seed)
    (tmp_path / "wide.bin").write_bytes(wide)
    with pytest.raises(CompileError, match="span"):
        CompiledMatcher(tmp_path / "wide.bin")
    assert CompiledMatcher(good).match("a.example") is not None


def _parallel_sample(fmt: str, newline: str, n: int = 3000) -> str:
    """A list whose second part depends on its first: the category in force carries over, names and rules repeat
    across the split (the first line stands), exceptions, public suffixes refused, bad lines, every line ending."""
    if fmt == "adblock":
        entry, exception, rule = "||{}^", "@@||{}^", "||omegle{}.*^"
        extra = ["||co.uk^", "||bad..name^", "/chat-?roulette{}/", "@@/^ok{}\\./", "||x.com^$third-party"]
    elif fmt == "hosts":
        entry, exception, rule = "0.0.0.0 {} www.{}", "0.0.0.0 {}", "0.0.0.0 {}"
        extra = ["0.0.0.0 bad..name", "0.0.0.0 hopto.org", "127.0.0.1 localhost"]
    else:
        entry, exception, rule = "{}", "*.{}", "omegle{}.*"
        extra = ["*.co.uk", "bad..name", "/roulette{}/", "b\u00fc{}.example"]
    lines = ["# a list", "# category: first"]
    for i in range(n):
        name = f"n{i % (n // 3)}.example"  # each name three times: the later ones are duplicates
        lines.append(entry.format(name, name))
        if i % 97 == 0:
            lines.append(exception.format(f"e{i}.example", f"e{i}.example"))
        if i % 211 == 0:
            lines.append(rule.format(i % 400, i % 400))
        if i % 131 == 0:
            lines.append(extra[i % len(extra)].format(i % 400))
        if i % 700 == 0 and i:
            lines.append(f"# category: c{i // 1000}" if i % 1400 else "# category:")
    if newline == "mixed":  # a lone \r ends a line too (text mode's universal newlines)
        return "\ufeff" + "".join(line + ("\r" if i % 5 == 0 else "\n") for i, line in enumerate(lines))
    return "\ufeff" + newline.join(lines) + newline


@pytest.mark.parametrize("newline", ["\n", "\r\n", "mixed"])  # (only \r: one reader, below)
@pytest.mark.parametrize("fmt", ["domains", "hosts", "adblock", "auto"])
def test_a_large_list_read_by_two_processes_compiles_to_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, newline: str
) -> None:
    from filterd.blocklists import compiled

    text = _parallel_sample("adblock" if fmt == "auto" else fmt, newline)
    (tmp_path / "big.txt").write_bytes(text.encode())
    (tmp_path / "small.txt").write_text("small.example\nn1.example\n")
    lists = [
        ListFile("small", "s", tmp_path / "small.txt", "domains"),
        ListFile("big", "fallback-cat", tmp_path / "big.txt", fmt),
    ]
    serial = tmp_path / "serial.snapshot"
    report = compiled.write_snapshot(lists, serial, "fp", seed=7)
    monkeypatch.setattr(compiled, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(compiled, "_CHUNK", 97)  # handed over in many chunks, placed as they come
    monkeypatch.setattr(compiled.os, "cpu_count", lambda: 2)
    helpers: list[object] = []
    start = compiled._Part.start

    def spy(lists: list[ListFile], out: Path, seed: int) -> object:
        part = start(lists, out, seed)
        helpers.append(part.helper if part is not None else None)
        return part

    monkeypatch.setattr(compiled._Part, "start", spy)
    parallel = tmp_path / "parallel.snapshot"
    assert compiled.write_snapshot(lists, parallel, "fp", parallel=True, seed=7) == report
    assert helpers and helpers[0] is not None  # a helper process read the big list's rest
    assert parallel.read_bytes() == serial.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.txt",
        "parallel.snapshot",
        "serial.snapshot",
        "small.txt",
    ]
    assert report.entries["big"] > 1000 and report.skipped["big"].count > 0


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/bin/false"])
def test_when_the_helper_cannot_help_this_process_reads_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executable: str
) -> None:
    from filterd.blocklists import compiled

    (tmp_path / "big.txt").write_text(_parallel_sample("domains", "\n"))
    lists = [ListFile("big", "c", tmp_path / "big.txt", "domains")]
    serial = tmp_path / "serial.snapshot"
    compiled.write_snapshot(lists, serial, "", seed=7)
    monkeypatch.setattr(compiled, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(compiled.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(compiled.sys, "executable", executable)
    parallel = tmp_path / "parallel.snapshot"
    compiled.write_snapshot(lists, parallel, "", parallel=True, seed=7)
    assert parallel.read_bytes() == serial.read_bytes()


@pytest.mark.parametrize("how", ["exits", "garbles", "hangs"])
def test_a_helper_that_fails_after_handing_some_over_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """The helper hands over two chunks, then exits, writes a bad record, or stops answering: this process places
    what it was given, reads the part itself and places the rest; the snapshot is the same byte for byte."""
    import sys

    from filterd.blocklists import compiled

    (tmp_path / "big.txt").write_text(_parallel_sample("domains", "\n"))
    lists = [ListFile("big", "c", tmp_path / "big.txt", "domains")]
    serial = tmp_path / "serial.snapshot"
    compiled.write_snapshot(lists, serial, "", seed=7)
    failing = tmp_path / "failing_helper.py"
    failing.write_text(f"""
import os, sys, time
sys.argv = sys.argv[sys.argv.index("--part"):]
sys.argv.insert(0, "helper")
from filterd.blocklists import compiled
hand_over = compiled._PartSink.hand_over
def fail(self):
    hand_over(self)
    if self.written >= 2 * self.chunk:
        if {how!r} == "exits":
            os._exit(3)
        if {how!r} == "garbles":
            sys.stdout.buffer.write(b"X" * 9)
            sys.stdout.flush()
            time.sleep(30)
        time.sleep(30)
compiled._PartSink.hand_over = fail
sys.exit(compiled._child_main())
""")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {failing} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(compiled, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(compiled, "_CHUNK", 50)
    monkeypatch.setattr(compiled, "CHILD_TIMEOUT", 3.0)
    monkeypatch.setattr(compiled.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(compiled.sys, "executable", str(wrapper))
    parallel = tmp_path / "parallel.snapshot"
    compiled.write_snapshot(lists, parallel, "", parallel=True, seed=7)
    assert parallel.read_bytes() == serial.read_bytes()
    assert "the helper reading the rest of" in caplog.text
    assert not (tmp_path / "parallel.snapshot.part").exists()


@pytest.mark.parametrize(
    "text",
    ["a.example\n" * 500 + "last.example", "x" * 5000, "a.example\r" * 500],
    ids=["no-final-line-end", "one-long-line", "only-cr"],
)
def test_where_the_list_cannot_be_split_one_reader_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    from filterd.blocklists import compiled

    (tmp_path / "l.txt").write_text(text, newline="")
    lists = [ListFile("l", "c", tmp_path / "l.txt", "domains")]
    serial = tmp_path / "serial.snapshot"
    report = compiled.write_snapshot(lists, serial, "", seed=7)
    monkeypatch.setattr(compiled, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(compiled.os, "cpu_count", lambda: 2)
    parallel = tmp_path / "parallel.snapshot"
    assert compiled.write_snapshot(lists, parallel, "", parallel=True, seed=7) == report
    assert parallel.read_bytes() == serial.read_bytes()
    assert report.read["l"] + report.skipped["l"].count >= 1
