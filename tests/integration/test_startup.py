"""Starting as a service does: readiness sent to systemd once DNS answers, a taken port named with its holder,
and listeners that open before their address is up (IP_FREEBIND), as at boot."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import Dnsmasq, RunningFilterd, addresses, free_port, query, running

FILTERD = [sys.executable, "-m", "filterd"]
#: TEST-NET-1 (RFC 5737): an address no machine here has. Only bound, never sent to.
ABSENT = "192.0.2.77"


def test_ready_once_dns_answers_and_stopping_on_sigterm(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    """What systemd sees under Type=notify: READY=1 only when a query is answered, STOPPING=1 on SIGTERM."""
    port = free_port()
    config = tmp_path / "filterd.yaml"
    config.write_text(f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['{dnsmasq.address}']\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        with running([*FILTERD, "serve", "-c", str(config)], stderr=subprocess.PIPE, env=env) as proc:
            message = notify.recv(4096).decode()
            assert message == f"READY=1\nSTATUS=answering DNS on 127.0.0.1:{port}"
            # No retry, no wait: once READY=1 is sent, DNS answers (dependents start at this moment).
            assert addresses(query("omegle.com", "A", port, timeout=2)) == ["127.0.0.1"]
            proc.send_signal(signal.SIGHUP)  # systemctl reload: RELOADING=1, then READY=1 when done
            reloading = notify.recv(4096).decode()
            assert reloading.startswith("RELOADING=1\n") and "MONOTONIC_USEC=" in reloading
            assert notify.recv(4096).decode().startswith("READY=1\n")
            proc.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"
            _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err


def _this_process_name() -> str:
    return Path("/proc/self/comm").read_text().strip()


@pytest.mark.skipif(not Path("/proc/net/udp").exists(), reason="needs Linux's /proc/net")
@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_a_taken_port_names_its_holder(tmp_path: Path, kind: socket.SocketKind) -> None:
    """This test process holds the port; filterd's error names it (python, this pid) and what to do."""
    port = free_port()
    config = tmp_path / "filterd.yaml"
    config.write_text(f"dns:\n  listen: ['127.0.0.1:{port}']\n  upstreams: ['127.0.0.1:9']\n")
    with socket.socket(socket.AF_INET, kind) as holder:
        holder.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            holder.listen(1)
        result = subprocess.run([*FILTERD, "serve", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    protocol = "udp" if kind == socket.SOCK_DGRAM else "tcp"
    expected = (
        f"dns ({protocol}): cannot listen on 127.0.0.1:{port}: Address already in use: port {port} on 127.0.0.1 "
        f"is held by {_this_process_name()} (pid {os.getpid()}): stop it, or move it to another port; "
        'see deploy/README.md, "Port 53 is taken"'
    )
    assert expected in result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="IP_FREEBIND is Linux's")
def test_listeners_open_before_their_address_exists(
    start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq, caplog: pytest.LogCaptureFixture
) -> None:
    """At boot the LAN address may come after filterd: DNS and the block page (aiohttp) bind it anyway, and
    the log says so, in case it is a typo. Loopback keeps answering meanwhile."""
    caplog.set_level(logging.WARNING, logger="filterd")
    server = start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0", "{ABSENT}:0"]
          upstreams: ["{dnsmasq.address}"]
        blockpage:
          listen: ["{ABSENT}:0"]
    """)
    assert server.app is not None
    assert [ep.host for ep in server.app.listening.dns] == ["127.0.0.1", ABSENT]
    assert [ep.host for ep in server.app.listening.blockpage] == [ABSENT]
    assert addresses(server.query("omegle.com")) == ["127.0.0.1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for what in ("dns", "blockpage"):
        assert f"{what}: {ABSENT} is not an address of this machine (yet): listening anyway" in "\n".join(warnings)
