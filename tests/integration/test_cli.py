"""The `filterd` command as a user runs it: serve in the foreground, stop on a signal, check configs."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import Dnsmasq, addresses, free_port, query, running

FILTERD = [sys.executable, "-m", "filterd"]


def _wait_for_dns(port: int, proc: subprocess.Popen[str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"filterd exited early: {proc.communicate()[1]}")
        try:
            query("omegle.com", "A", port, timeout=0.2)
            return
        except Exception:
            time.sleep(0.1)
    raise AssertionError("filterd did not answer")


@pytest.mark.parametrize("option_first", [True, False], ids=["global-option-first", "option-after-command"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_answers_and_stops_cleanly(tmp_path: Path, dnsmasq: Dnsmasq, option_first: bool, sig: int) -> None:
    port = free_port()
    config = tmp_path / "filterd.yaml"
    config.write_text(f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{dnsmasq.address}']\n")
    args = ["--config", str(config), "serve"] if option_first else ["serve", "--config", str(config)]
    with running([*FILTERD, *args], stderr=subprocess.PIPE, cwd=tmp_path) as proc:
        _wait_for_dns(port, proc)
        assert addresses(query("omegle.com", "A", port)) == ["127.0.0.1"]
        assert addresses(query("example.org", "A", port)) == ["192.0.2.10"]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert f"dns: listening on 127.0.0.1:{port} (udp, tcp)" in err
    chain = "access → ratelimit → client → bypass → local → cache → policy → safesearch → cname → rebind → upstream"
    assert f"pipeline: {chain}" in err
    assert "stopping" in err


#: The embedded default's fixed ports (config/filterd.yaml), as (what, protocol, host, port).
EMBEDDED_PORTS = [
    ("dns", socket.SOCK_DGRAM, "127.0.0.1", 1053),
    ("dns", socket.SOCK_STREAM, "127.0.0.1", 1053),
    ("dns", socket.SOCK_DGRAM, "::1", 1053),
    ("dns", socket.SOCK_STREAM, "::1", 1053),
    ("metrics", socket.SOCK_STREAM, "127.0.0.1", 9153),
    ("blockpage", socket.SOCK_STREAM, "127.0.0.1", 8080),
    ("admin", socket.SOCK_STREAM, "127.0.0.1", 8053),
]


def _in_use(kind: socket.SocketKind, host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as filterd: TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE  # no IPv6 on this machine: filterd skips ::1 too
    return False


def test_serve_with_the_embedded_default_runs_from_any_directory(tmp_path: Path) -> None:
    """`filterd serve` with no config. The embedded default listens on fixed ports, so the test skips, saying
    which, when something holds them (the Quick start's own server, most likely); its state goes to a temporary
    $XDG_STATE_HOME, never the user's ~/.local/state/filterd."""
    if not Path("/etc/resolv.conf").exists():
        pytest.skip("no /etc/resolv.conf for the default upstreams")
    taken = sorted({f"{what} {host}:{port}" for what, kind, host, port in EMBEDDED_PORTS if _in_use(kind, host, port)})
    if taken:
        pytest.skip(f"the embedded default's ports are in use ({', '.join(taken)}): is a Quick-start filterd running?")
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")}
    with running([*FILTERD, "serve"], stderr=subprocess.PIPE, cwd=tmp_path, env=env) as proc:
        _wait_for_dns(1053, proc)
        reply = query("front7.omegle.com", "AAAA", 1053)
        assert addresses(reply) == ["::1"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "metrics: listening on http://127.0.0.1:9153/" in err
    assert (tmp_path / "xdg" / "filterd" / "admin.token").exists()  # the state went where $XDG_STATE_HOME says


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("dns:\n  listen: [127.0.0.1:0]\nblocking:\n  mode: block\n")
    result = subprocess.run([*FILTERD, "serve", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"{config}:4: blocking.mode: 'block' is not one of" in result.stderr


def test_serve_says_why_when_the_port_is_taken(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"dns:\n  listen: ['{dnsmasq.address}']\n  upstreams: ['127.0.0.1:9']\n")
    result = subprocess.run([*FILTERD, "serve", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"cannot listen on {dnsmasq.address}" in result.stderr
    assert dnsmasq.proc is not None
    assert f"is held by dnsmasq (pid {dnsmasq.proc.pid}): stop it" in result.stderr  # names it, says what to do


def test_config_check(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("dns:\n  listen: [127.0.0.1:53]\n")
    ok = subprocess.run([*FILTERD, "config", "check", str(good)], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and ok.stdout.strip() == f"{good}: ok"

    bad = tmp_path / "bad.yaml"
    bad.write_text("dns:\n  listen: [router.lan]\n  upstreams: [x]\nblocking:\n  sinkhole:\n    ipv4: 1.2.3\n")
    result = subprocess.run([*FILTERD, "config", "check", str(bad)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith(f"{bad}:2: dns.listen[0]: 'router.lan' is not an IP address")
    assert lines[1] == f"{bad}:3: dns.upstreams[0]: 'x' is not an IP address"
    assert lines[2] == f"{bad}:6: blocking.sinkhole.ipv4: '1.2.3' is not an IPv4 address"


def test_installed_entry_point() -> None:
    exe = Path(sys.executable).parent / "filterd"
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stdout.startswith("filterd ")


def test_a_large_list_compiles_while_filterd_starts_and_a_restart_maps_it(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """`filterd serve` loads the lists while the rest of it is imported (a child process, with a helper for a large
    list: compiled.py's `_Part`); every name answers as listed, skipped lines are still reported once, and the
    next start maps the snapshot it left."""
    names = [f"n{i}.bulk{i % 97}.example" for i in range(240_000)]  # over 4 MB: read by two processes
    text = "# category: bulk\n" + "\n".join(names) + "\nbad..name\n"
    (tmp_path / "big.txt").write_text(text)
    assert len(text) > 4 << 20
    port = free_port()
    config = tmp_path / "filterd.yaml"
    config.write_text(
        f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{dnsmasq.address}']\n"
        f"lists:\n  - {{name: big, path: {tmp_path / 'big.txt'}}}\n"
        f"admin: {{listen: 127.0.0.1:0, token_file: {tmp_path / 'token'}}}\nstate_dir: {tmp_path / 'state'}\n"
    )
    for start in ("first", "restart"):
        with running([*FILTERD, "serve", "-c", str(config)], stderr=subprocess.PIPE) as proc:
            _wait_for_dns(port, proc, timeout=60)
            for name in (names[0], names[len(names) // 2], names[-1], f"x.{names[-7]}"):
                assert addresses(query(name, "A", port)) == ["127.0.0.1"], (start, name)
            assert addresses(query("example.org", "A", port)) == ["192.0.2.10"]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0 and "Traceback" not in err, err
        assert "list big: 240000 names" in err
        if start == "first":
            assert err.count("list big: skipped 1 unsupported or invalid lines") == 1, err
        else:
            assert "serving the compiled snapshot" in err


def test_a_second_filterd_on_the_same_state_dir_says_why(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    state = tmp_path / "state"
    configs, ports = [], [free_port(), free_port()]
    for n in range(2):
        config = tmp_path / f"c{n}.yaml"
        config.write_text(
            f"dns:\n  listen: ['127.0.0.1:{ports[n]}']\n  upstreams: ['{dnsmasq.address}']\n"
            f"admin: {{listen: 127.0.0.1:0, token_file: {tmp_path / f'token{n}'}}}\nstate_dir: {state}\n"
        )
        configs.append(config)
    first = subprocess.Popen([*FILTERD, "serve", "-c", str(configs[0])], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_dns(ports[0], first)
        second = subprocess.run([*FILTERD, "serve", "-c", str(configs[1])], capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert f"state_dir {state} is in use by another filterd (pid {first.pid})" in second.stderr, second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=15)
