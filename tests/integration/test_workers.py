"""`dns.workers`: more processes answering on the same address (SO_REUSEPORT). Real worker processes, queried by
dnspython from a new source port each time (the kernel spreads clients over the processes by their address and
port), with dnsmasq as the upstream: every answer right whichever process gave it, the admin's changes and reloads
reaching every process, one set of metrics and one query log for all, a dead worker started again, and no worker
outliving the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from filterd.app import StartupError
from tests.support import Dnsmasq, RunningFilterd, addresses, free_port, query, wait_for

#: Queries sent to see every process answer: with two processes, the chance that all of them land on one is 2^-N.
SPREAD = 40


def config(dnsmasq: Dnsmasq, tmp_path: Path, extra: str = "", workers: int = 2, port: int = 0) -> str:
    (tmp_path / "mine.txt").write_text("blocked-here.example\n")
    return f"""
dns:
  listen: ["127.0.0.1:{port}"]
  upstreams: ["{dnsmasq.address}"]
  workers: {workers}
lists:
  - name: chat-roulette
    builtin: chat-roulette
  - name: mine
    path: {tmp_path / "mine.txt"}
metrics:
  listen: 127.0.0.1:0
state_dir: {tmp_path / "state"}
{extra}
"""


def own_answers(server: RunningFilterd) -> int:
    """Queries the main process answered itself (its own counters, before the workers' are added)."""
    assert server.app is not None
    return sum(server.app.metrics.queries.counts.values())


def test_every_process_answers_and_the_metrics_count_them_all(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path))
    assert server.app is not None and server.app.workers is not None
    assert len(server.app.workers.pids) == 1 and server.metric("filterd_dns_workers") == 2
    for i in range(SPREAD):
        blocked = query(f"w{i}.ometv.com", port=server.port)
        assert addresses(blocked) == ["127.0.0.1"], i  # the sinkhole from either process
        forwarded = query("example.org", port=server.port)
        assert addresses(forwarded) == ["192.0.2.10"], i
    tcp = query("omegle.com", port=server.port, tcp=True)
    assert addresses(tcp) == ["127.0.0.1"]
    total = 2 * SPREAD + 1
    # the main process answered some, a worker the rest, and the metrics endpoint counts every one once
    assert 0 < own_answers(server) < total
    assert server.metric("filterd_queries_total", decision="blocked", protocol="udp") == SPREAD
    assert server.metric("filterd_queries_total", decision="blocked", protocol="tcp") == 1
    forwarded_or_cached = server.metric("filterd_queries_total", decision="forwarded") + server.metric(
        "filterd_queries_total", decision="cached"
    )
    assert forwarded_or_cached == SPREAD
    assert server.metric("filterd_upstream_request_duration_seconds_count", upstream=dnsmasq.address) >= 2
    assert server.app.status()["workers"][0] == os.getpid()


def test_the_admins_block_and_allow_and_a_reload_reach_every_process(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    admin = f"admin: {{listen: 127.0.0.1:0, token_file: {tmp_path / 'token'}}}"
    server = start_filterd(config(dnsmasq, tmp_path, admin))
    assert server.app is not None
    for _ in range(SPREAD):  # in every process's cache
        assert addresses(query("example.org", port=server.port)) == ["192.0.2.10"]
    server.call(server.app.local_change, "block", "example.org")
    time.sleep(0.3)  # (the word to the workers: one loop turn, then their own)
    for i in range(SPREAD):
        assert addresses(query("example.org", port=server.port)) == ["127.0.0.1"], i
    server.call(server.app.local_change, "reset", "example.org")
    time.sleep(0.3)
    for i in range(SPREAD):
        assert addresses(query("example.org", port=server.port)) == ["192.0.2.10"], i
    # a path list edited, then reloaded: the new snapshot, mapped by every process
    (tmp_path / "mine.txt").write_text("blocked-here.example\nexample.com\n")
    assert server.run(server.app.reload())["ok"]
    time.sleep(0.3)
    for i in range(SPREAD):
        assert addresses(query("example.com", port=server.port)) == ["127.0.0.1"], i
    # a config change (a local record) too
    (tmp_path / "filterd-0.yaml").write_text(
        config(dnsmasq, tmp_path, admin).replace("  workers: 2", "  workers: 2\n  records: {nas.lan: 192.168.1.20}")
    )
    assert server.run(server.app.reload())["ok"]
    time.sleep(0.3)
    for i in range(SPREAD):
        assert addresses(query("nas.lan", port=server.port)) == ["192.168.1.20"], i


def test_the_workers_answers_reach_the_one_query_log(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path, "querylog: {retention: 1d}"))
    names = [f"n{i}.omegle.com" for i in range(SPREAD)]
    for name in names:
        q = dns.message.make_query(name, "A", use_edns=0)
        dns.query.udp(q, "127.0.0.1", port=server.port, source="127.0.0.7", timeout=3)
    assert server.app is not None and 0 < own_answers(server) < SPREAD
    querylog = server.app.querylog
    assert querylog is not None
    wait_for(lambda: len(querylog.rows(client="127.0.0.7")) == SPREAD, "every answer in the log")
    rows = querylog.rows(client="127.0.0.7")
    assert sorted(r.name for r in rows) == sorted(names)
    assert {(r.decision, r.list) for r in rows} == {("blocked", "chat-roulette")}


def test_a_worker_that_dies_is_started_again(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path))
    assert server.app is not None and server.app.workers is not None
    workers = server.app.workers
    (first,) = workers.pids
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: workers.pids and workers.pids != [first], "a new worker", timeout=15)
    wait_for(lambda: server.metric("filterd_dns_workers") == 2, "the new worker answering", timeout=15)
    assert server.metric("filterd_dns_worker_restarts_total") == 1
    for i in range(SPREAD):
        assert addresses(query(f"w{i}.ometv.com", port=server.port)) == ["127.0.0.1"], i
    assert 0 < own_answers(server) < SPREAD


def test_a_second_filterd_on_the_same_port_is_refused(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    """SO_REUSEPORT would let a second server of the same user share the port silently; it is refused instead."""
    server = start_filterd(config(dnsmasq, tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(StartupError, match="in use"):
        start_filterd(config(dnsmasq, other, port=server.port))
    with pytest.raises(StartupError, match="in use"):
        start_filterd(config(dnsmasq, other, port=server.port, workers=1))


def test_workers_stop_with_the_main_process_even_when_it_is_killed(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "filterd.yaml"
    path.write_text(config(dnsmasq, tmp_path, workers=3, port=port))
    filterd = Path(sys.executable).with_name("filterd")
    main = subprocess.Popen([str(filterd), "serve", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(port), "filterd answering", timeout=30)
        workers = _children(main.pid)
        assert len(workers) == 2
        main.kill()  # no chance to stop them: they see their channel close
        main.wait(5)
        wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), "the workers gone", timeout=10)
        assert not _answers(port)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(5)
        assert main.stderr is not None
        main.stderr.close()


def test_sigterm_stops_every_process_cleanly(dnsmasq: Dnsmasq, tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "filterd.yaml"
    path.write_text(config(dnsmasq, tmp_path, port=port))
    filterd = Path(sys.executable).with_name("filterd")
    main = subprocess.Popen([str(filterd), "serve", "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _answers(port), "filterd answering", timeout=30)
        workers = _children(main.pid)
        main.send_signal(signal.SIGTERM)
        assert main.wait(15) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        if main.poll() is None:
            main.kill()
            main.wait(5)
        assert main.stderr is not None
        errors = main.stderr.read()
    assert "Traceback" not in errors and "worker 1: " in errors


def _answers(port: int) -> bool:
    try:
        return query("omegle.com", port=port, timeout=0.5).rcode() == dns.rcode.NOERROR
    except Exception:
        return False


def _children(pid: int) -> list[int]:
    """The worker processes of `pid` (its children running filterd.workers)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"filterd.workers.worker" in cmdline:
            out.append(int(entry.name))
    return out


def test_a_worker_that_cannot_start_stops_filterd_with_the_reason(
    start_filterd: Callable[..., RunningFilterd],
    dnsmasq: Dnsmasq,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from filterd.workers import pool

    port = free_port()
    monkeypatch.setattr(pool.sys, "executable", "/bin/false")  # a worker that exits at once
    with pytest.raises(StartupError, match=r"dns.workers: worker 1 exited \(status 1\) before it answered"):
        start_filterd(config(dnsmasq, tmp_path, port=port))
    monkeypatch.undo()
    start_filterd(config(dnsmasq, tmp_path, port=port, workers=1))  # what it had bound was let go


def test_a_stalled_worker_does_not_stall_the_metrics(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, tmp_path: Path
) -> None:
    server = start_filterd(config(dnsmasq, tmp_path))
    assert server.app is not None and server.app.workers is not None
    for i in range(SPREAD):
        query(f"w{i}.ometv.com", port=server.port)
    assert server.metric("filterd_queries_total", decision="blocked") == SPREAD  # (the worker's counters, asked)
    (worker,) = server.app.workers.pids
    os.kill(worker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert server.metric("filterd_queries_total", decision="blocked") == SPREAD  # its last counters
        assert time.monotonic() - started < 3
    finally:
        os.kill(worker, signal.SIGCONT)
