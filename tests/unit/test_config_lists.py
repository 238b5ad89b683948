"""Config for list subscriptions: `lists[].url` and its keys, `state_dir`, and the size units."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from filterd.config.load import load_embedded, parse_config, state_dir_path, url_list_name, url_problem
from filterd.config.schema import DEFAULT_STATE_DIR, ListConfig
from filterd.config.units import format_duration, format_size, parse_size
from filterd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HEAD = "dns:\n  listen: [127.0.0.1]\n"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(HEAD + textwrap.dedent(text), "f.yaml", base_dir=ROOT)
    return info.value.problems


def lists(text: str) -> tuple[ListConfig, ...]:
    return parse_config(HEAD + textwrap.dedent(text), "f.yaml", base_dir=ROOT).lists


def test_a_url_list_and_its_defaults() -> None:
    [sub] = lists("lists:\n  - url: https://raw.githubusercontent.com/hagezi/dns-blocklists/main/domains/pro.txt\n")
    assert (sub.name, sub.category, sub.url) == ("pro", "pro", sub.url)
    assert (sub.refresh, sub.max_bytes, sub.shrink_guard, sub.timeout) == (86400, 64 * 1024 * 1024, 0.5, 300)
    assert sub.path is None and sub.builtin is None and sub.source == sub.url


def test_url_list_keys() -> None:
    [sub] = lists("""\
        lists:
          - name: hagezi-pro
            url: http://lists.example.org:8080/pro.txt
            refresh: 6h
            timeout: 90s
            max_bytes: 512KB
            shrink_guard: 0.8
        """)
    assert (sub.name, sub.refresh, sub.timeout, sub.max_bytes, sub.shrink_guard) == (
        "hagezi-pro",
        6 * 3600,
        90,
        512 * 1024,
        0.8,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lists:\n  - {url: x, path: y}\n", "f.yaml:4: lists[0]: needs exactly one of: path, builtin, url"),
        ("lists:\n  - {url: 'ftp://x/y.txt'}\n", "lists[0].url: 'ftp://x/y.txt': only http:// and https://"),
        ("lists:\n  - {url: 'file:///etc/hosts'}\n", "lists[0].url: 'file:///etc/hosts': only http:// and https://"),
        ("lists:\n  - {url: 'http:///x.txt'}\n", "lists[0].url: 'http:///x.txt' has no host name"),
        ("lists:\n  - {url: 'http://x:99999/a'}\n", "lists[0].url: 'http://x:99999/a' is not a valid URL"),
        ("lists:\n  - {url: 'http://x/a', refresh: 5x}\n", "lists[0].refresh: '5x' is not a duration: write"),
        ("lists:\n  - {url: 'http://x/a', refresh: 0}\n", "lists[0].refresh: must be from 1 to 2592000 seconds"),
        ("lists:\n  - {url: 'http://x/a', timeout: 2h}\n", "lists[0].timeout: must be from 1 to 3600 seconds"),
        ("lists:\n  - {url: 'http://x/a', max_bytes: 0}\n", "lists[0].max_bytes: must be from 1 byte to 1 GB"),
        ("lists:\n  - {url: 'http://x/a', max_bytes: 2TB}\n", "lists[0].max_bytes: '2TB' is not a size: write"),
        ("lists:\n  - {url: 'http://x/a', max_bytes: 2GB}\n", "lists[0].max_bytes: must be from 1 byte to 1 GB"),
        ("lists:\n  - {url: 'http://x/a', shrink_guard: 1.5}\n", "lists[0].shrink_guard: must be a number from 0 to 1"),
        (
            "lists:\n  - {builtin: chat-roulette, refresh: 1d}\n",
            "f.yaml:4: lists[0].refresh: applies only to a list with a url",
        ),
        (
            "lists:\n  - {builtin: chat-roulette, shrink_guard: 0.9}\n",
            "f.yaml:4: lists[0].shrink_guard: applies only to a list with a url (or, this one, a path)",
        ),
        ("lists:\n  - {builtin: chat-roulette, allow_suffixes: 1}\n", "lists[0].allow_suffixes: must be true or"),
        (
            "lists:\n  - {url: 'http://a/x.txt'}\n  - {url: 'http://b/x.txt'}\n",
            "lists[1].name: 'x' is used by another list already",
        ),
        ("state_dir: ''\n", "f.yaml:3: state_dir: must be a non-empty string"),
        ("state_dir: [a]\n", "f.yaml:3: state_dir: must be a non-empty string"),
    ],
)
def test_errors(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://raw.githubusercontent.com/hagezi/dns-blocklists/main/domains/pro.plus.txt", "pro.plus"),
        ("https://big.oisd.nl/domainswild", "domainswild"),
        ("https://example.org/lists/", "lists"),
        ("https://example.org/", "example.org"),
        ("https://example.org/a%20b.txt?x=1", "a b"),
    ],
)
def test_url_list_name(url: str, name: str) -> None:
    assert url_list_name(url) == name
    assert url_problem(url) is None


@pytest.mark.parametrize(
    ("text", "size"),
    [(1, 1), (65536, 65536), ("512KB", 524288), ("64MB", 67108864), ("64 mb", 67108864), ("1.5KB", 1536)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["", "MB", "64 MiB", "-1", "1e6", True, 1.5])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="is not a size: write a number of bytes, or a number with a unit KB"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("seconds", "text"), [(86400, "1d"), (21600, "6h"), (1800, "30m"), (90, "90s"), (0.5, "0.5s"), (3601, "3601s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_size() -> None:
    assert [format_size(n) for n in (64 * 1024**2, 2048, 1000, 1024**3)] == ["64 MB", "2 KB", "1000 bytes", "1 GB"]


def test_state_dir() -> None:
    assert parse_config(HEAD, "f").state_dir == DEFAULT_STATE_DIR == Path("/var/lib/filterd")
    cfg = parse_config(HEAD + "state_dir: state\n", "f", base_dir=Path("/etc/filterd"))
    assert cfg.state_dir == Path("/etc/filterd/state")


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("~/.local/state/filterd", {}, Path.home() / ".local/state/filterd"),
        ("~/.local/state/filterd", {"XDG_STATE_HOME": "/xdg"}, Path("/xdg/filterd")),
        ("~/.local/state/filterd", {"XDG_STATE_HOME": "relative"}, Path.home() / ".local/state/filterd"),
        ("/var/lib/filterd", {"XDG_STATE_HOME": "/xdg"}, Path("/var/lib/filterd")),
        ("~/.local/stateful", {"XDG_STATE_HOME": "/xdg"}, Path.home() / ".local/stateful"),
    ],
)
def test_state_dir_follows_xdg_state_home(text: str, env: dict[str, str], expected: Path) -> None:
    assert state_dir_path(text, Path("/cfg"), env) == expected


def test_the_embedded_default_keeps_state_where_the_user_may_write(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert load_embedded().state_dir == Path.home() / ".local" / "state" / "filterd"
    monkeypatch.setenv("XDG_STATE_HOME", "/tmp/xdg-state")
    assert load_embedded().state_dir == Path("/tmp/xdg-state/filterd")


def test_path_list_keys(tmp_path: Path) -> None:
    """A path list is checked like a download (blocklists/guard.py): it takes max_bytes and shrink_guard too;
    any list takes allow_suffixes."""
    (tmp_path / "extra.txt").write_text("a.example\n")
    [extra, shipped] = parse_config(
        HEAD + "lists:\n  - {path: extra.txt, max_bytes: 1MB, shrink_guard: 0, allow_suffixes: true}\n"
        "  - builtin: chat-roulette\n",
        "f.yaml",
        base_dir=tmp_path,
    ).lists
    assert (extra.max_bytes, extra.shrink_guard, extra.allow_suffixes) == (1024 * 1024, 0.0, True)
    assert (shipped.shrink_guard, shipped.allow_suffixes) == (0.5, False)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_list_file_that_cannot_be_read_is_an_error_only_for_config_check(tmp_path: Path, kind: str) -> None:
    """`filterd config check` says so; the server (check_files=False) starts without that list and keeps trying."""
    if kind == "directory":
        (tmp_path / "extra.txt").mkdir()
    text = HEAD + "lists:\n  - {path: extra.txt}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", base_dir=tmp_path)
    expected = "is a directory, not a list file" if kind == "directory" else "no such file"
    assert any(p.startswith("f.yaml:4: lists[0].path: ") and expected in p for p in info.value.problems)
    [extra] = parse_config(text, "f.yaml", base_dir=tmp_path, check_files=False).lists
    assert extra.path == tmp_path / "extra.txt"
