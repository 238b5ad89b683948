"""Reloads (issue 13): what a reload keeps (the compiled lists, the cache, the upstreams' health) and what it must
change (the block page's allow_clients, the upstream metrics); list files that are broken or missing never take
a good list away, nor filterd's start; and reloads under a steady load from 127.0.0.1 lose no query (the short
version of bench/reload.py)."""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Dnsmasq, FakeUpstream, RunningFilterd, addresses, free_port, query

Start = Callable[..., RunningFilterd]
SINKHOLE = ["127.0.0.1"]


def reload(server: RunningFilterd, **options: Any) -> dict[str, Any]:
    assert server.app is not None
    result: dict[str, Any] = asyncio.run_coroutine_threadsafe(server.app.reload(**options), server.loop).result(30)
    return result


def _config(upstream: str, lists: Path, extra: str = "") -> str:
    return f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{upstream}"]
        lists:
          - builtin: chat-roulette
          - {{name: extra, path: {lists}}}
        metrics:
          listen: 127.0.0.1:0
        {extra}
    """


def _rewrite(server: RunningFilterd, text: str) -> None:
    import textwrap

    server.config_path.write_text(textwrap.dedent(text))


def test_a_reload_keeps_what_did_not_change(start_filterd: Start, fake_upstream: FakeUpstream, tmp_path: Path) -> None:
    """Nothing changed: the same lists and the same cache (its answers still served); the lists changed: new lists,
    the cache cleared; only a timeout changed: a new pipeline, the cache kept; `allow` changed: the cache cleared."""
    extra = tmp_path / "extra.txt"
    extra.write_text("games.example\n")
    text = _config(fake_upstream.address, extra)  # (it answers every name, TTL 60: cached)
    server = start_filterd(text)
    app = server.app
    assert app is not None and app.policy is not None
    assert addresses(server.query("example.org")) == ["192.0.2.1"]
    cache, matcher = app.cache, app.policy.matcher
    assert cache is not None and len(cache) == 1

    assert reload(server)["ok"]
    assert app.cache is cache and len(cache) == 1 and app.policy.matcher is matcher
    hits = cache.hits
    assert addresses(server.query("example.org")) == ["192.0.2.1"] and cache.hits == hits + 1

    extra.write_text("games.example\nwww.example.org\n")
    assert reload(server)["lists"]["extra"] == 2
    assert app.policy.matcher is not matcher and len(cache) == 0  # a cached answer may alias a newly listed name
    assert addresses(server.query("www.example.org")) == SINKHOLE

    assert addresses(server.query("example.org")) == ["192.0.2.1"]
    matcher = app.policy.matcher
    _rewrite(server, text.replace("upstreams:", "timeout: 1.5\n          upstreams:"))
    assert reload(server)["ok"]
    assert app.config.dns.timeout == 1.5 and app.cache is cache and len(cache) == 1 and app.policy.matcher is matcher

    _rewrite(server, text.replace("metrics:", "allow: [example.org]\n        metrics:"))
    assert reload(server)["ok"]
    assert app.cache is not cache and app.cache is not None and len(app.cache) == 0


def test_the_block_page_follows_allow_clients_across_a_reload(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    text = f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
          allow_clients: [127.0.0.0/8]
        blockpage:
          listen: ["127.0.0.1:0"]
    """
    server = start_filterd(text)
    assert "<title>Blocked: omegle.com</title>" in _page(server, "omegle.com")
    _rewrite(server, text.replace("127.0.0.0/8", "192.168.0.0/16"))
    assert reload(server)["ok"]
    page = _page(server, "omegle.com")  # 127.0.0.1 is no client any more: it learns nothing of the lists
    assert "<title>Blocked: this site</title>" in page and "chat-roulette" not in page
    _rewrite(server, text)
    assert reload(server)["ok"]
    assert "<title>Blocked: omegle.com</title>" in _page(server, "omegle.com")


def _page(server: RunningFilterd, host: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.blockpage_port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_an_upstream_removed_by_a_reload_leaves_the_metrics(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    gone = f"127.0.0.1:{free_port()}"
    text = f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}", "{gone}"]
        metrics:
          listen: 127.0.0.1:0
    """
    server = start_filterd(text)
    assert f'filterd_upstream_up{{upstream="{gone}"}} 1.0' in server.metrics_text()
    _rewrite(server, text.replace(f', "{gone}"', ""))
    assert reload(server)["ok"]
    metrics = server.metrics_text()
    assert gone not in metrics.split("# HELP filterd_upstream_up")[1].split("# HELP")[0]
    assert f'filterd_upstream_up{{upstream="{dnsmasq.address}"}} 1.0' in metrics


def test_a_broken_list_file_at_a_reload_keeps_the_good_list(
    start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("".join(f"n{i}.example\n" for i in range(500)))
    server = start_filterd(_config(dnsmasq.address, extra))
    assert server.metric("filterd_list_file_ok", list="extra") == 1
    for broken, why in (
        (b"\x00\x01garbage" * 10_000, "binary data"),
        (b"x" * 10_000_000, "no entries"),
        (b"", "empty file"),
        ("".join(f"n{i}.example\n" for i in range(100)).encode(), "shrank from 500 to 100 names"),
    ):
        extra.write_bytes(broken)
        with caplog.at_level(logging.WARNING):
            result = reload(server)
        assert result["ok"] and why in result["problems"]["extra"], result
        assert result["lists"]["extra"] == 500 and addresses(server.query("n499.example")) == SINKHOLE
        assert server.metric("filterd_list_file_ok", list="extra") == 0
        assert f"list extra: {extra}" in caplog.text and why in caplog.text
        caplog.clear()
    assert server.app is not None
    [row] = [r for r in server.app.lists_status() if r["name"] == "extra"]
    assert "shrank" in row["last_error"] and row["entries"] == 500
    # the admin meant it: `filterd lists update --force extra` takes the shorter file
    update = asyncio.run_coroutine_threadsafe(server.app.update_lists(["extra"], True), server.loop).result(30)
    assert update == [{"list": "extra", "result": "updated", "message": "read again: 100 names", "entries": 100}]
    assert addresses(server.query("n499.example")) != SINKHOLE and addresses(server.query("n99.example")) == SINKHOLE
    assert server.metric("filterd_list_file_ok", list="extra") == 1


def test_a_list_path_that_is_a_directory_does_not_stop_filterd(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """The probe's case: filterd exited at start, leaving the network without DNS. Now it starts with the other
    lists, says what is wrong (log, metric, `lists show`), and takes the file at a reload once it is one."""
    extra = tmp_path / "extra.txt"
    extra.mkdir()
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{dnsmasq.address}']\n"
        f"lists: [{{builtin: chat-roulette}}, {{name: extra, path: extra.txt}}]\n"
    )
    check = subprocess.run(
        [sys.executable, "-m", "filterd", "config", "check", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 1 and "lists[1].path:" in check.stderr and "is a directory" in check.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "filterd", "serve", "-c", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_answering(proc, port, "omegle.com", SINKHOLE)
        extra.rmdir()
        extra.write_text("games.example\n")
        proc.send_signal(signal.SIGHUP)
        _wait_answering(proc, port, "games.example", SINKHOLE)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert f"list extra: {extra}: is a directory, not a list file: the file cannot be used" in err
    assert "reload: done" in err


def _wait_answering(proc: subprocess.Popen[str], port: int, name: str, expected: list[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if addresses(query(name, "A", port, timeout=0.3)) == expected:
                return
        except Exception:
            pass
        assert proc.poll() is None, "filterd exited"
        assert time.monotonic() < deadline, f"{name} never answered {expected}"
        time.sleep(0.1)


def test_a_list_entry_that_is_a_public_suffix_blocks_no_tld(
    start_filterd: Start, dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    (tmp_path / "junk.txt").write_text("il\ncom\ngithub.io\n" + "".join(f"site{i}.example\n" for i in range(5)))
    (tmp_path / "forced.txt").write_text("org\n")
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        lists:
          - {{name: junk, path: {tmp_path / "junk.txt"}}}
          - {{name: forced, path: {tmp_path / "forced.txt"}, allow_suffixes: true}}
    """)
    for name in ("www.example.com", "www.gov.il", "me.github.io"):  # no list blocks a TLD or a platform
        assert addresses(server.query(name)) != SINKHOLE, name
    assert addresses(server.query("example.org")) == SINKHOLE  # forced: the admin asked for all of .org
    assert addresses(server.query("x.site1.example")) == SINKHOLE
    assert server.app is not None and server.app.lists is not None
    assert server.app.lists.entries == {"junk": 5, "forced": 1}


# --- reloads under load: no query lost --------------------------------------------------------------------

#: Queries per second and seconds of the load, a SIGHUP every RELOAD_EVERY seconds (half of them with a changed
#: list file of NAMES names). Modest for a 2-core CI machine that also runs this load (bench/reload.py goes to half
#: the measured capacity), yet the reloads before issue 13 lost 100 to 1,200 of these queries here (the cache thrown
#: away at every reload, the compile holding the GIL); now none, even with Linux's default socket buffer.
RATE = 6000
SECONDS = 8
RELOAD_EVERY = 1.0
NAMES = 100_000
HOT = 1000  # names the upstream answers (cached after their first query)


class WildcardDnsmasq(Dnsmasq):
    """dnsmasq answering every name under load.example, with a TTL (so they are cached)."""

    def command(self) -> list[str]:
        return [*super().command(), "--address=/load.example/192.0.2.77", "--local-ttl=3600"]


@pytest.fixture
def load_upstream(tmp_path: Path) -> Iterator[Dnsmasq]:
    server = WildcardDnsmasq(tmp_path)
    server.start()
    yield server
    server.stop()


def _packet(qid: int, name: str) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00\x00\x01\x00\x01"


def test_reloads_under_load_lose_no_query(tmp_path: Path, load_upstream: Dnsmasq) -> None:
    """RATE queries/s from 127.0.0.1 for SECONDS (90% cached names, 10% listed ones) while filterd is reloaded
    every second, every other time with its list file changed: every query is answered, without SERVFAIL."""
    listed = [f"blocked{i}.example" for i in range(NAMES)]
    listfile = tmp_path / "list.txt"
    listfile.write_text("\n".join(listed) + "\n")
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(
        f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{load_upstream.address}']\n"
        f"lists: [{{name: load, path: list.txt, format: domains}}]\n"
        f"state_dir: {tmp_path / 'state'}\nadmin: {{listen: '127.0.0.1:{free_port()}'}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "filterd", "serve", "-c", str(config)], stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_answering(proc, port, listed[-1], SINKHOLE)
        hot = [f"h{i}.load.example" for i in range(HOT)]
        for name in hot:  # warm the cache
            query(name, "A", port, timeout=2)
        names = [hot[i % HOT] if i % 10 else listed[(i * 7) % len(listed)] for i in range(RATE * SECONDS)]
        reloads = [0]

        def tick(elapsed: float) -> None:
            if elapsed >= (reloads[0] + 1) * RELOAD_EVERY and elapsed < SECONDS - 0.5:
                reloads[0] += 1
                if reloads[0] % 2 == 0:
                    with listfile.open("a") as f:
                        f.write(f"reload{reloads[0]}.example\n")
                proc.send_signal(signal.SIGHUP)

        sent, answered, bad = _load(port, names, RATE, tick)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert (sent, bad) == (len(names), 0)
    assert sent - answered == 0, f"{sent - answered} of {sent} queries lost"
    assert reloads[0] >= 6 and err.count("reload: done") >= reloads[0] - 1, err[-3000:]
    assert "the lists changed" in err and "nothing changed: the lists and the cache stay" in err


def _load(port: int, names: list[str], rate: int, tick: Callable[[float], None]) -> tuple[int, int, int]:
    """Send `names` at `rate` from one socket, reading replies as they come; (sent, answered, not NOERROR).
    Bounded: at most len(names) queries, and 5 s after the last one is sent."""
    assert len(names) < 65536  # one query ID each
    packets = [_packet(i, name) for i, name in enumerate(names)]
    seen = bytearray(len(names))
    answered = bad = sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.connect(("127.0.0.1", port))
        sock.setblocking(False)
        started = time.monotonic()
        finished: float | None = None
        while True:
            elapsed = time.monotonic() - started
            due = min(len(packets), int(elapsed * rate))
            while sent < due:
                sock.send(packets[sent])
                sent += 1
            tick(elapsed)
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                qid = struct.unpack("!H", data[:2])[0]
                if qid < len(seen) and not seen[qid]:
                    seen[qid] = 1
                    answered += 1
                    bad += data[3] & 0x0F != 0
            if sent == len(packets):
                finished = finished or time.monotonic()
                if answered == sent or time.monotonic() - finished > 5:
                    return sent, answered, bad
            time.sleep(0.001)


def test_the_dns_socket_has_room_for_a_busy_moment(start_filterd: Start, dnsmasq: Dnsmasq) -> None:
    """4 MiB of receive buffer (as much as net.core.rmem_max allows without CAP_NET_ADMIN): a moment of CPU taken
    by another process delays queries instead of dropping them (Linux's default holds about 270)."""
    from filterd.app import UDP_RCVBUF

    server = start_filterd(f'dns: {{listen: ["127.0.0.1:0"], upstreams: ["{dnsmasq.address}"]}}')
    assert server.app is not None
    sock = server.app._reading_udp[0].sock  # (the test's loop is stock asyncio's: filterd reads the socket itself)
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
    expected = UDP_RCVBUF if os.geteuid() == 0 or limit >= UDP_RCVBUF else limit
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= expected
