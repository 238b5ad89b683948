"""sd_notify without libsystemd: datagrams to a real AF_UNIX socket, as systemd receives them."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from filterd import systemd


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket on a path, like systemd's /run/systemd/notify."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2)
        yield sock, str(path)


def test_ready_sends_one_datagram_with_every_field(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    assert systemd.ready("answering DNS on 192.168.1.2:53", environ={"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"READY=1\nSTATUS=answering DNS on 192.168.1.2:53"


def test_stopping_status_and_plain_notify(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    env = {"NOTIFY_SOCKET": path}
    assert systemd.stopping(environ=env)
    assert sock.recv(4096) == b"STOPPING=1"
    assert systemd.status("loading lists\nfrom disk", environ=env)  # a newline would start a new field
    assert sock.recv(4096) == b"STATUS=loading lists from disk"
    assert systemd.notify("WATCHDOG=1", environ=env)
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_reloading_carries_the_monotonic_clock(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading("reloading the config", environ={"NOTIFY_SOCKET": path})
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    fields = sock.recv(4096).decode().split("\n")
    assert fields[0] == "RELOADING=1" and fields[2] == "STATUS=reloading the config"
    key, value = fields[1].split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_namespace_socket() -> None:
    """`@name` in NOTIFY_SOCKET is the abstract namespace: a NUL byte, no file."""
    name = f"filterd-test-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        assert systemd.ready(environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_a_noop_outside_systemd() -> None:
    assert systemd.ready(environ={}) is False
    assert systemd.stopping(environ={"NOTIFY_SOCKET": ""}) is False


def test_never_raises_when_systemd_is_gone(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert systemd.ready(environ={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}) is False
    assert "could not notify" in caplog.text
    assert systemd.ready(environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False  # not AF_UNIX: ignored
