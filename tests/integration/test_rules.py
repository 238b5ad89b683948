"""Brand rules and name patterns on a running server, queried by dig and dnspython, explained by `filterd check`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses, ede

FILTERD = [sys.executable, "-m", "filterd"]

RULES = """\
# category: chat-roulette-video
omegle.*
/(^|[.-])video-?roulette/
"""
ADBLOCK = """\
||camzey.*^
@@||help.camzey.net^
/^([a-z0-9-]{1,20}\\.)?ruletka[a-z0-9-]*\\./
"""


def _config(tmp_path: Path, dnsmasq: Dnsmasq) -> Path:
    (tmp_path / "rules.txt").write_text(RULES)
    (tmp_path / "more.txt").write_text(ADBLOCK)
    path = tmp_path / "filterd.yaml"
    path.write_text(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{dnsmasq.address}"]
lists:
  - {{name: mine, path: rules.txt, category: chat}}
  - {{name: more, path: more.txt, format: adblock}}
""")
    return path


@pytest.fixture
def server(tmp_path: Path, dnsmasq: Dnsmasq, start_filterd: Callable[..., RunningFilterd]) -> RunningFilterd:
    return start_filterd(_config(tmp_path, dnsmasq).read_text())


@pytest.mark.parametrize(
    ("name", "list_name"),
    [
        ("omegle.onl", "mine"),
        ("www.omegle.co.uk", "mine"),
        ("omegle.chat", "mine"),
        ("best-videoroulette.net", "mine"),
        ("camzey.fr", "more"),
        ("ruletka.ru", "more"),
        ("www.ruletka-chat.com", "more"),
    ],
)
def test_rules_block_names_no_list_spells_out(server: RunningFilterd, name: str, list_name: str) -> None:
    reply = server.query(name, "A")
    assert addresses(reply) == ["127.0.0.1"]
    assert ede(reply) == [(15, f"filterd: {list_name}")]


@pytest.mark.parametrize("name", ["example.org", "www.example.org"])
def test_names_no_rule_matches_resolve(server: RunningFilterd, name: str) -> None:
    assert addresses(server.query(name, "A"))[0].startswith("192.0.2.")


def test_an_exception_beats_its_own_lists_brand_rule(server: RunningFilterd) -> None:
    reply = server.query("help.camzey.net", "A")  # forwarded: the test upstream does not know it (REFUSED)
    assert addresses(reply) == [] and all(code != 15 for code, _ in ede(reply))
    assert addresses(server.query("camzey.net", "A")) == ["127.0.0.1"]


def test_dig_sees_a_brand_rule_block(server: RunningFilterd) -> None:
    dig = shutil.which("dig")
    if dig is None:
        pytest.fail("dig is not installed: `apt-get install bind9-dnsutils` (the README's test command does it)")
    out = subprocess.run(
        [dig, "@127.0.0.1", "-p", str(server.port), "+short", "omegle.cc", "A"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.stdout.split() == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("name", "rule", "line", "entry"),
    [
        ("front2.omegle.life", "brand rule", 2, "omegle.*"),
        ("videoroulette.de", "name pattern", 3, "/(^|[.-])video-?roulette/"),
    ],
)
def test_check_offline_names_the_rule_its_file_and_line(
    tmp_path: Path, dnsmasq: Dnsmasq, name: str, rule: str, line: int, entry: str
) -> None:
    config = _config(tmp_path, dnsmasq)
    run = subprocess.run(
        [*FILTERD, "--config", str(config), "check", "--offline", name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["decision"] == "blocked"
    assert (result["list"], result["rule"], result["line"], result["entry"]) == ("mine", rule, line, entry)
    assert result["file"] == str(tmp_path / "rules.txt") and result["text"] == entry
    human = subprocess.run(
        [*FILTERD, "--config", str(config), "check", "--offline", name], capture_output=True, text=True, timeout=60
    )
    assert f"blocked by the {rule} {entry} of list mine (chat-roulette-video), {tmp_path / 'rules.txt'}:{line}" in (
        human.stdout
    )


def test_a_bad_pattern_is_reported_with_its_file_and_line(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _config(tmp_path, dnsmasq)
    (tmp_path / "rules.txt").write_text(RULES + "/unclosed(/\n")
    run = subprocess.run(
        [*FILTERD, "--config", str(config), "check", "--offline", "omegle.onl"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0
    assert "blocked by the brand rule omegle.*" in run.stdout  # the good rules still work
    assert f"{tmp_path / 'rules.txt'}:4: invalid pattern" in run.stderr
