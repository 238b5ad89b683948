"""A small network built from namespaces this test creates: a client, the filterd machine, a router and the
internet, each with its own interfaces, routes and firewall, so the deployment guide's network can be run
for real. Needs root and iproute2; nothing leaves the namespaces."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)


def missing(*tools: str) -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (`ip netns`)"
    for tool in tools:
        found = DNSMASQ if tool == "dnsmasq" else shutil.which(tool)
        if found is None:
            package = {"ip": "iproute2", "nft": "nftables", "dig": "bind9-dnsutils", "dnsmasq": "dnsmasq-base"}
            return f"needs `{tool}` (Debian: {package.get(tool, tool)})"
    return None


def require(*tools: str) -> None:
    """Skip without the tools, saying why; under CI (CI=true) fail instead: a skip there hides a broken setup."""
    reason = missing(*tools)
    if reason is not None:
        if IN_CI:
            pytest.fail(f"cannot run under CI: it {reason}")
        pytest.skip(reason)


@dataclass
class Netns:
    """One network namespace, and the processes started in it."""

    name: str
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.cmd(list(args)), capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name}: {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def ip(self, *args: str) -> None:
        _run(["ip", "-n", self.name, *args])

    def python(self, code: str, timeout: float = 30) -> str:
        return self.run(sys.executable, "-c", code, timeout=timeout).stdout

    def spawn(self, args: list[str], log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with (self.workdir / log_name).open("wb") as out:
            proc = subprocess.Popen(self.cmd(args), stdout=out, stderr=subprocess.STDOUT, cwd=self.workdir, env=env)
        self.procs.append(proc)
        return proc

    def dig(self, *args: str) -> str:
        """`dig +short` answers (one try, 3 s), or the error dig printed."""
        result = self.run("dig", "+short", "+tries=1", "+time=3", *args, check=False)
        return (result.stdout + result.stderr).strip()


class Lab:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.suffix = secrets.token_hex(3)
        self.namespaces: list[Netns] = []

    def ns(self, role: str) -> Netns:
        netns = Netns(f"fd-{role}-{self.suffix}", self.workdir)
        _run(["ip", "netns", "add", netns.name])
        self.namespaces.append(netns)
        netns.ip("link", "set", "lo", "up")
        return netns

    def link(self, a: Netns, a_if: str, b: Netns, b_if: str) -> None:
        """A cable (a veth pair) from `a` to `b`, both ends up; created inside the namespaces, never on the host."""
        a.ip("link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)
        a.ip("link", "set", a_if, "up")
        b.ip("link", "set", b_if, "up")

    def close(self) -> None:
        for netns in reversed(self.namespaces):
            for proc in reversed(netns.procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5)
        for netns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", netns.name], capture_output=True, timeout=20, check=False)


@contextmanager
def lab(workdir: Path) -> Iterator[Lab]:
    built = Lab(workdir)
    try:
        yield built
    finally:
        built.close()


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}")


def dnsmasq_dns(listen: list[str], records: dict[str, str], port: int = 53) -> list[str]:
    """dnsmasq as a plain DNS server on `listen`, answering `records` (name -> IPv4) and nothing else."""
    assert DNSMASQ is not None
    args = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--port={port}",
        "--pid-file",
        "--user=root",
        "--log-facility=-",
        *[f"--listen-address={address}" for address in listen],
    ]
    return args + [f"--host-record={name},{address}" for name, address in records.items()]


def production_config(workdir: Path) -> Path:
    """config/production.yaml as shipped (its example addresses are the lab's), with the state in `workdir`:
    the namespaces share this machine's file system, and /var/lib/filterd is not the test's to write."""
    text = (ROOT / "config" / "production.yaml").read_text()
    assert text.count("state_dir: /var/lib/filterd\n") == 1
    path = workdir / "filterd.yaml"
    path.write_text(text.replace("state_dir: /var/lib/filterd\n", f"state_dir: {workdir / 'state'}\n"))
    return path


def start_filterd(
    netns: Netns, config: Path, timeout: float = 30, command: list[str] | None = None
) -> subprocess.Popen[bytes]:
    """`filterd serve` (or `command`) in the namespace, returned once it sent READY=1 (Type=notify), as systemd
    would wait for it."""
    notify_path = netns.workdir / f"notify-{netns.name}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify_path.chmod(0o666)  # a service that is not root sends to it too
        notify.settimeout(timeout)
        env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
        args = command or [sys.executable, "-m", "filterd", "serve", "--config", str(config)]
        proc = netns.spawn(args, "filterd.log", env)
        try:
            message = notify.recv(4096).decode()
        except TimeoutError:
            log = (netns.workdir / "filterd.log").read_text(errors="replace")
            pytest.fail(f"filterd sent no READY=1 in {timeout} s:\n{log}")
    assert message.startswith("READY=1\n"), message
    return proc


def wait_for(check: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def addresses_in(text: str) -> list[str]:
    return re.findall(r"^\d+\.\d+\.\d+\.\d+$", text, flags=re.MULTILINE)
