"""The config loader: every error names the file, the line and the dotted key; valid configs load."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from filterd.config.load import embedded_config_text, load_config, load_embedded, parse_config
from filterd.config.schema import BlockingMode, Endpoint
from filterd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "f.yaml", base_dir=ROOT)
    return info.value.problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dns:\n  listen: [127.0.0.1]\nblocking:\n  sinkhole:\n    ipv4: 1.2.3\n",
            "f.yaml:5: blocking.sinkhole.ipv4: '1.2.3' is not an IPv4 address",
        ),
        (
            "dns:\n  listen: [127.0.0.1]\nblocking:\n  sinkhole: {ipv6: 10.0.0.1}\n",
            "f.yaml:4: blocking.sinkhole.ipv6: '10.0.0.1' is not an IPv6 address",
        ),
        ("dns:\n  listen: [127.0.0.1]\n  lisen: x\n", "f.yaml:3: dns.lisen: unknown key"),
        ("dns:\n  listen: [127.0.0.1]\nblockign: {}\n", "f.yaml:3: blockign: unknown key"),
        ("blocking: {}\n", "f.yaml:1: dns: is required"),
        ("dns: {}\n", "f.yaml:1: dns.listen: is required"),
        ("dns:\n  listen: [127.0.0.1:99999]\n", "f.yaml:2: dns.listen[0]: port 99999 is out of range"),
        ("dns:\n  listen: [router.lan]\n", "dns.listen[0]: 'router.lan' is not an IP address"),
        (
            "dns:\n  listen: [127.0.0.1]\n  upstreams:\n    - 1.1.1.1\n    - nope\n",
            "f.yaml:5: dns.upstreams[1]: 'nope' is not an IP address",
        ),
        ("dns:\n  listen: [127.0.0.1]\n  timeout: 0\n", "f.yaml:3: dns.timeout: must be a number from 0.1 to 60"),
        (
            "dns:\n  listen: [127.0.0.1]\n  allow_clients: [10.0.0.0/33]\n",
            "dns.allow_clients[0]: '10.0.0.0/33' is not an IP network",
        ),
        (
            "dns:\n  listen: [127.0.0.1]\nblocking: {mode: block}\n",
            "f.yaml:3: blocking.mode: 'block' is not one of: sinkhole, null, nxdomain, refused",
        ),
        ("dns:\n  listen: [127.0.0.1]\nblocking: {ttl: -1}\n", "blocking.ttl: must be a whole number from 0 to 86400"),
        ("dns:\n  listen: [127.0.0.1]\nlists:\n  - {name: x}\n", "f.yaml:4: lists[0]: needs exactly one of"),
        ("dns:\n  listen: [127.0.0.1]\nlists:\n  - {builtin: nope}\n", "lists[0].builtin: no built-in list 'nope'"),
        (
            "dns:\n  listen: [127.0.0.1]\nlists:\n  - builtin: chat-roulette\n    format: csv\n",
            "f.yaml:5: lists[0].format: 'csv' is not one of: auto, hosts, domains, adblock",
        ),
        (
            "dns:\n  listen: [127.0.0.1]\nlists:\n  - {path: /nonexistent/list.txt}\n",
            "f.yaml:4: lists[0].path: no such file: /nonexistent/list.txt",
        ),
        (
            "dns:\n  listen: [127.0.0.1]\nlists:\n  - {builtin: chat-roulette}\n  - {builtin: chat-roulette}\n",
            "f.yaml:5: lists[1].name: 'chat-roulette' is used by another list already",
        ),
        ("dns:\n  listen: [127.0.0.1]\nallow: ['bad..name']\n", "f.yaml:3: allow[0]: 'bad..name' is not a valid"),
        ("dns:\n  listen: [127.0.0.1]\nmetrics: {listen: x}\n", "f.yaml:3: metrics.listen: 'x' is not an IP address"),
        ("dns:\n  listen: [127.0.0.1\n", "f.yaml:3: invalid YAML"),
        ("dns:\n  listen: [127.0.0.1]\ndns: {}\n", "f.yaml:3: dns: duplicate key"),
        (
            "dns:\n  listen: [127.0.0.1]\n  workers: 0\n",
            "f.yaml:3: dns.workers: must be a whole number from 1 to 64 or auto, not 0",
        ),
        ("dns:\n  listen: [127.0.0.1]\n  workers: many\n", "f.yaml:3: dns.workers: must be a whole number"),
        ("dns:\n  listen: [127.0.0.1]\n  workers: true\n", "f.yaml:3: dns.workers: must be a whole number"),
        ("dns:\n  listen: [127.0.0.1]\n  workers: 2.5\n", "f.yaml:3: dns.workers: must be a whole number"),
        ("", "f.yaml:1: the file is empty"),
        ("- 1\n", "f.yaml:1: (top level): must be a mapping"),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(expected in p for p in found), found


def test_every_error_is_reported_at_once() -> None:
    found = problems("""\
        dns:
          listen: [127.0.0.1]
          timeout: fast
        blocking:
          mode: nope
          sinkhole: {ipv4: x}
        """)
    assert [p.split(":")[1] for p in found] == ["3", "5", "6"]


def test_errors_come_in_line_order_whatever_the_section_order() -> None:
    """Sections are checked in a fixed order (dns first); the admin reads the file top to bottom."""
    found = problems("""\
        metrics:
          listen: nowhere
        blocking:
          mode: nope
        dns:
          listen: [127.0.0.1]
          timeout: fast
        """)
    assert [p.split(":")[1] for p in found] == ["2", "4", "7"]
    assert found[0] == "f.yaml:2: metrics.listen: 'nowhere' is not an IP address"


def test_endpoints_and_defaults() -> None:
    cfg = parse_config("dns:\n  listen: ['127.0.0.1', '[::1]:5353', '::1']\n  upstreams: [9.9.9.9:5353]\n", "f")
    assert cfg.dns.listen == (Endpoint("127.0.0.1", 53), Endpoint("::1", 5353), Endpoint("::1", 53))
    assert cfg.dns.upstreams == (Endpoint("9.9.9.9", 5353),)
    assert str(cfg.dns.listen[1]) == "[::1]:5353"
    assert cfg.blocking.mode is BlockingMode.SINKHOLE and cfg.blocking.ttl == 10
    assert cfg.dns.timeout == 2.0
    assert [lst.builtin for lst in cfg.lists] == ["chat-roulette"]  # absent lists: the shipped list
    assert cfg.metrics is None  # absent section: listener off


@pytest.mark.parametrize("value", ['"null"', "null", "~"])
def test_the_null_mode_unquoted(value: str) -> None:
    """YAML reads an unquoted null as no value; `mode: null` still means the null mode."""
    config = parse_config(f"dns:\n  listen: [127.0.0.1]\nblocking:\n  mode: {value}\n", "f.yaml", base_dir=ROOT)
    assert config.blocking.mode is BlockingMode.NULL


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("4", 4), ("auto", max(1, min(64, os.cpu_count() or 1)))])
def test_dns_workers(value: str, expected: int) -> None:
    config = parse_config(f"dns:\n  listen: [127.0.0.1]\n  workers: {value}\n", "f.yaml", base_dir=ROOT)
    assert config.dns.workers == expected
    assert parse_config("dns:\n  listen: [127.0.0.1]\n", "f.yaml", base_dir=ROOT).dns.workers == 1


def test_present_lists_replace_the_default(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("x.example\n")
    cfg = load_config(_write(tmp_path, "dns: {listen: [127.0.0.1]}\nlists: [{path: mine.txt}]\n"))
    assert [(lst.name, lst.path) for lst in cfg.lists] == [("mine", tmp_path / "mine.txt")]


def test_embedded_default_matches_the_copy_in_config() -> None:
    assert embedded_config_text() == (ROOT / "config" / "filterd.yaml").read_text()
    cfg = load_embedded()
    assert [str(e) for e in cfg.dns.listen] == ["127.0.0.1:1053", "[::1]:1053"]
    assert cfg.metrics is not None and str(cfg.metrics.listen) == "127.0.0.1:9153"
    assert str(cfg.blocking.sinkhole.ipv4) == "127.0.0.1" and str(cfg.blocking.sinkhole.ipv6) == "::1"


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_example_configs_load(path: Path) -> None:
    load_config(path)


def _write(folder: Path, text: str) -> Path:
    path = folder / "c.yaml"
    path.write_text(text)
    return path
