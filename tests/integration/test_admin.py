"""The admin API and the CLI an admin uses every day, against a running server; reload under load."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import dns.rcode
import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses, free_port, query

Start = Callable[..., RunningFilterd]
FILTERD = [sys.executable, "-m", "filterd"]


def _config(tmp_path: Path, dnsmasq: Dnsmasq, admin_port: int, extra: str = "") -> Path:
    (tmp_path / "extra.txt").write_text("# category: games\ngames.example\n")
    path = tmp_path / "filterd.yaml"
    path.write_text(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{dnsmasq.address}"]
state_dir: {tmp_path / "state"}
admin:
  listen: 127.0.0.1:{admin_port}
lists:
  - builtin: chat-roulette
  - {{name: extra, path: extra.txt}}
{extra}
""")
    return path


@pytest.fixture
def admin_server(tmp_path: Path, dnsmasq: Dnsmasq) -> tuple[RunningFilterd, Path]:
    config = _config(tmp_path, dnsmasq, free_port())
    server = RunningFilterd(config)
    server.start()
    yield server, config
    server.stop()


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FILTERD, "--config", str(config), *args], capture_output=True, text=True, timeout=60)


def _api(server: RunningFilterd, path: str, token: str | None, method: str = "GET") -> tuple[int, dict[str, object]]:
    assert server.app is not None and server.app.listening.admin is not None
    request = urllib.request.Request(f"http://127.0.0.1:{server.app.listening.admin.port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if method == "POST":
        request.data = json.dumps({"name": "example.org"}).encode()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_token_is_created_0600_and_required(admin_server: tuple[RunningFilterd, Path]) -> None:
    server, config = admin_server
    token_file = config.parent / "state" / "admin.token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert _api(server, "/api/lists", token)[0] == 200
    for bad in (None, "wrong", token + "x"):
        status, body = _api(server, "/api/lists", bad)
        assert status == 401 and "token" in str(body["error"])
        status, _ = _api(server, "/api/block", bad, method="POST")
        assert status == 401
    assert server.query("example.org", "A").rcode() == dns.rcode.NOERROR  # nothing was blocked
    assert addresses(server.query("example.org", "A")) == ["192.0.2.10"]


def test_cli_with_a_wrong_token_says_so(admin_server: tuple[RunningFilterd, Path]) -> None:
    _, config = admin_server
    (config.parent / "state" / "admin.token").write_text("not-the-token\n")
    result = cli(config, "lists", "show")
    assert result.returncode == 1
    assert "refused the token (401)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_without_a_server_says_so(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _config(tmp_path, dnsmasq, free_port())
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "admin.token").write_text("t\n")
    result = cli(config, "lists", "show")
    assert result.returncode == 1 and "cannot reach filterd's admin API" in result.stderr


def test_lists_show(admin_server: tuple[RunningFilterd, Path]) -> None:
    _, config = admin_server
    shown = cli(config, "lists", "show")
    assert shown.returncode == 0, shown.stderr
    assert "chat-roulette" in shown.stdout and "source:        builtin:chat-roulette" in shown.stdout
    assert "extra" in shown.stdout and "entries:       1 names" in shown.stdout
    assert "local" in shown.stdout
    rows = json.loads(cli(config, "lists", "show", "--json").stdout)
    by_name = {row["name"]: row for row in rows}
    assert set(by_name) == {"chat-roulette", "extra", "local"}
    assert by_name["chat-roulette"]["entries"] > 200 and by_name["chat-roulette"]["last_success"] > 0
    assert {"source", "entries", "last_success", "last_error", "next_refresh"} <= set(by_name["extra"])


def test_check_names_list_line_and_text(admin_server: tuple[RunningFilterd, Path]) -> None:
    _, config = admin_server
    out = cli(config, "check", "Front7.Omegle.com.")
    assert out.returncode == 0
    assert out.stdout.startswith("front7.omegle.com: blocked: blocked by list chat-roulette (chat-roulette-video)")
    assert "chat-roulette.txt:" in out.stdout and "'omegle.com'" in out.stdout
    data = json.loads(cli(config, "check", "front7.omegle.com", "--json").stdout)
    assert data["decision"] == "blocked" and data["entry"] == "omegle.com" and data["text"] == "omegle.com"
    assert Path(data["file"]).read_text().splitlines()[data["line"] - 1] == "omegle.com"
    forwarded = json.loads(cli(config, "check", "example.org", "--json").stdout)
    assert forwarded["decision"] == "forwarded" and forwarded["upstreams"]
    local = json.loads(cli(config, "check", "printer.local", "--json").stdout)
    assert local["decision"] == "local"
    bad = cli(config, "check", "bad..name")
    assert bad.returncode == 1 and "not a valid domain name" in bad.stderr


def test_offline_check_needs_no_server(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _config(tmp_path, dnsmasq, free_port(), extra="allow: [ok.games.example]")
    blocked = json.loads(cli(config, "check", "--offline", "x.games.example", "--json").stdout)
    assert blocked["decision"] == "blocked" and blocked["list"] == "extra" and blocked["line"] == 2
    assert blocked["category"] == "games" and blocked["text"] == "games.example"
    allowed = json.loads(cli(config, "check", "--offline", "a.ok.games.example", "--json").stdout)
    assert allowed["decision"] == "allowed" and allowed["entry"] == "ok.games.example"
    human = cli(config, "check", "--offline", "example.org")
    assert human.returncode == 0 and human.stdout.startswith("example.org: forwarded: not blocked: forwarded to")


def test_block_allow_reset_survive_a_restart(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _config(tmp_path, dnsmasq, free_port())
    server = RunningFilterd(config)
    server.start()
    try:
        assert addresses(server.query("www.example.org", "A")) == ["192.0.2.11"]
        assert cli(config, "block", "example.org").stdout.strip() == "example.org: blocked (with everything under it)"
        assert addresses(server.query("www.example.org", "A")) == ["127.0.0.1"]  # at once, cache flushed
        assert cli(config, "allow", "omegle.com").returncode == 0
        assert addresses(server.query("front7.omegle.com", "A")) != ["127.0.0.1"]
        shown = cli(config, "lists", "show")
        assert "1 blocked, 1 allowed" in shown.stdout
        why = json.loads(cli(config, "check", "www.example.org", "--json").stdout)
        assert why["decision"] == "blocked" and why["list"] == "local" and why["entry"] == "example.org"
    finally:
        server.stop()
    server = RunningFilterd(config)  # a restart: the local entries are still there
    server.start()
    try:
        assert addresses(server.query("www.example.org", "A")) == ["127.0.0.1"]
        assert addresses(server.query("omegle.com", "A")) != ["127.0.0.1"]
        assert cli(config, "reset", "example.org").stdout.strip() == "example.org: removed from the local entries"
        assert cli(config, "reset", "omegle.com").returncode == 0
        assert addresses(server.query("www.example.org", "A")) == ["192.0.2.11"]
        assert addresses(server.query("omegle.com", "A")) == ["127.0.0.1"]
        assert cli(config, "reset", "example.org").stdout.strip() == "example.org: was not in the local entries"
        rows = json.loads(cli(config, "lists", "show", "--json").stdout)
        assert [(r["entries"], r["allowed"]) for r in rows if r["name"] == "local"] == [(0, 0)]
    finally:
        server.stop()


def test_reload_good_and_broken_config(admin_server: tuple[RunningFilterd, Path]) -> None:
    server, config = admin_server
    assert addresses(server.query("newgame.example", "A")) != ["127.0.0.1"]
    (config.parent / "extra.txt").write_text("games.example\nnewgame.example\n")
    good = cli(config, "reload")
    assert good.returncode == 0 and good.stdout.startswith("reloaded in ") and "extra 2" in good.stdout
    assert addresses(server.query("newgame.example", "A")) == ["127.0.0.1"]

    text = config.read_text()
    config.write_text(text.replace("upstreams:", "upstreams: [nope]\n  x:"))
    broken = cli(config, "reload")
    assert broken.returncode == 1
    assert f"{config}:" in broken.stderr and "reload refused: the running config stays in use" in broken.stderr
    assert addresses(server.query("newgame.example", "A")) == ["127.0.0.1"]  # still the good config
    assert addresses(server.query("example.org", "A")) == ["192.0.2.10"]


def test_sighup_reloads(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    port = free_port()
    (tmp_path / "l.txt").write_text("one.example\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{dnsmasq.address}']\nlists: [{{path: l.txt}}]\n"
    )
    proc = subprocess.Popen([*FILTERD, "serve", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                assert addresses(query("one.example", "A", port, timeout=0.3)) == ["127.0.0.1"]
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        (tmp_path / "l.txt").write_text("two.example\n")
        proc.send_signal(1)  # SIGHUP
        deadline = time.monotonic() + 10
        while addresses(query("two.example", "A", port)) != ["127.0.0.1"]:
            assert time.monotonic() < deadline, "SIGHUP did not reload the list"
            time.sleep(0.1)
        assert addresses(query("one.example", "A", port)) != ["127.0.0.1"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "SIGHUP: reloading" in err and "reload: done" in err


QUERIES_DURING_RELOADS = 3000


def test_reload_under_continuous_queries(admin_server: tuple[RunningFilterd, Path]) -> None:
    """Every query answered correctly while the config and lists are reloaded several times."""
    server, config = admin_server
    assert server.app is not None
    expected = {"omegle.com": ["127.0.0.1"], "games.example": ["127.0.0.1"], "example.org": ["192.0.2.10"]}
    wrong: list[str] = []
    done = threading.Event()
    answered = [0]

    def ask() -> None:
        names = list(expected)
        started = time.monotonic()
        for i in range(QUERIES_DURING_RELOADS):
            if done.is_set() or time.monotonic() - started > 60:
                break
            name = names[i % len(names)]
            try:
                got = addresses(server.query(name, "A", timeout=2))
            except Exception as exc:  # a timeout is a wrong answer too
                wrong.append(f"{name}: {exc!r}")
                continue
            answered[0] += 1
            if got != expected[name]:
                wrong.append(f"{name}: {got}")

    worker = threading.Thread(target=ask)
    worker.start()
    try:
        for i in range(6):
            extra = "games.example\n" + "".join(f"n{j}-{i}.example\n" for j in range(20000))
            (config.parent / "extra.txt").write_text(extra)
            result = cli(config, "reload")
            assert result.returncode == 0, result.stderr
    finally:
        done.set()
        worker.join(70)
    assert answered[0] > 100
    assert wrong == []


def test_lists_update_and_force_from_the_cli(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    from tests.integration.test_subscriptions import ListServer, domains, names

    good = names("cli")
    lists = ListServer()
    lists.start()
    lists.serve("/sub.txt", domains(good))
    config = tmp_path / "c.yaml"
    config.write_text(f"""
dns:
  listen: ["127.0.0.1:0"]
  upstreams: ["{dnsmasq.address}"]
state_dir: {tmp_path / "state"}
admin: {{listen: "127.0.0.1:{free_port()}"}}
lists:
  - {{name: sub, url: "{lists.url("/sub.txt")}", refresh: 1d}}
""")
    server = RunningFilterd(config)
    server.start()
    try:
        first = cli(config, "lists", "update", "sub")
        assert first.returncode == 0 and first.stdout.startswith("sub: "), first.stdout + first.stderr
        assert addresses(server.query(good[0], "A")) == ["127.0.0.1"]
        lists.serve("/sub.txt", domains(good[:2]))
        held = cli(config, "lists", "update", "sub")
        assert held.returncode == 1
        assert held.stdout.startswith("sub: rejected: ") and "--force" in held.stdout
        assert addresses(server.query(good[5], "A")) == ["127.0.0.1"]  # the last good copy stays
        forced = cli(config, "lists", "update", "--force", "sub")
        assert forced.returncode == 0 and forced.stdout.startswith("sub: updated: ")
        assert addresses(server.query(good[5], "A")) != ["127.0.0.1"]
        shown = json.loads(cli(config, "lists", "show", "--json").stdout)
        sub = next(row for row in shown if row["name"] == "sub")
        assert sub["entries"] == 2 and sub["last_success"] > time.time() - 60 and sub["next_refresh"] > time.time()
        unknown = cli(config, "lists", "update", "nope")
        assert unknown.returncode == 1 and "no enabled list named nope" in unknown.stderr
    finally:
        server.stop()
        lists.stop()


def test_local_entries_are_counted_in_metrics_across_a_reload(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = _config(tmp_path, dnsmasq, free_port(), extra="metrics: {listen: 127.0.0.1:0}")
    server = RunningFilterd(config)
    server.start()
    try:
        assert server.metric("filterd_blocklist_entries", list="local") == 0
        assert cli(config, "block", "games2.example").returncode == 0
        assert server.metric("filterd_blocklist_entries", list="local") == 1
        assert cli(config, "reload").returncode == 0
        assert server.metric("filterd_blocklist_entries", list="local") == 1
        assert server.metric("filterd_blocklist_entries", list="extra") == 1
    finally:
        server.stop()


def test_a_connection_that_never_finishes_its_request_is_closed(
    tmp_path: Path, dnsmasq: Dnsmasq, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin page may be on the LAN: a client that opens connections and sends nothing, or half a request,
    cannot hold them (and the server's file descriptors) for ever."""
    import socket

    from filterd.web import admin

    monkeypatch.setattr(admin, "IDLE", 1.0)
    server = RunningFilterd(_config(tmp_path, dnsmasq, free_port()))
    server.start()
    try:
        assert server.app is not None and server.app.listening.admin is not None
        address = ("127.0.0.1", server.app.listening.admin.port)
        silent = socket.create_connection(address, timeout=10)
        partial = socket.create_connection(address, timeout=10)
        partial.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        started = time.monotonic()
        assert silent.recv(100) == b"" and partial.recv(100) == b""  # closed by the server
        assert time.monotonic() - started < 8
        silent.close()
        partial.close()
        status, _ = _api(server, "/api/status", None)
        assert status == 401  # still serving
    finally:
        server.stop()
