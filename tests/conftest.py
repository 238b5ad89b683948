"""Shared fixtures: a real upstream (dnsmasq), an in-process fake upstream for faults, and filterd itself
on ephemeral loopback ports, queried by real clients."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import Dnsmasq, FakeUpstream, RunningFilterd

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session", autouse=True)
def own_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The embedded default's state (`~/.local/state/filterd`, moved by $XDG_STATE_HOME) goes to a temporary
    directory for every filterd the tests start, in-process or as a command: never the user's own, which a
    Quick-start server may hold. Tests that need a state_dir set their own in their config."""
    state = tmp_path_factory.mktemp("xdg-state")
    patch = pytest.MonkeyPatch()
    patch.setenv("XDG_STATE_HOME", str(state))
    yield state
    patch.undo()


@pytest.fixture(scope="session")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    """dnsmasq from Debian on a free loopback port, serving the records in tests/support.py."""
    if shutil.which("dnsmasq") is None and not Path("/usr/sbin/dnsmasq").exists():
        pytest.fail("dnsmasq is not installed: `apt-get install dnsmasq-base` (the README's test command does it)")
    server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_filterd(tmp_path: Path) -> Iterator[Callable[..., RunningFilterd]]:
    """start_filterd(yaml_text) -> a running filterd (in a thread) on ephemeral ports; stopped afterwards."""
    running: list[RunningFilterd] = []

    def start(config_text: str, **app_options: Any) -> RunningFilterd:
        path = tmp_path / f"filterd-{len(running)}.yaml"
        path.write_text(textwrap.dedent(config_text))
        server = RunningFilterd(path, **app_options)
        server.start()
        running.append(server)
        return server

    yield start
    for server in running:
        server.stop()


@pytest.fixture
def filterd(start_filterd: Callable[..., RunningFilterd], dnsmasq: Dnsmasq) -> RunningFilterd:
    """filterd with the built-in chat-roulette list, forwarding to dnsmasq, with metrics on."""
    return start_filterd(f"""
        dns:
          listen: ["127.0.0.1:0"]
          upstreams: ["{dnsmasq.address}"]
        metrics:
          listen: 127.0.0.1:0
    """)
